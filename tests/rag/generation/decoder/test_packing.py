"""Lossless 4-bit packing of fp32 matrices that were dequantized from GGUF blocks (rag/generation/decoder/packing.py).

Real ONNX models run by the real ONNX Runtime; the weights are made the way GGUF's Q4_1 / Q8_0 dequantize
(w = d*q + m, w = d*q with fp16 d and m). The bundled model's own decoder is checked in test_onnx.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from rag.generation.decoder.packing import BLOCK, exact_blocks, exact_int8_blocks, pack_exact_blocks

K, N = 4 * BLOCK, 48


def _q4_1(rng: np.random.Generator, k: int = K, n: int = N) -> np.ndarray:
    """float32 [k, n] dequantized from Q4_1 blocks of 32 along k: d*q + m, d and m fp16, q in 0..15."""
    q = rng.integers(0, 16, size=(n, k // BLOCK, BLOCK)).astype(np.float32)
    q[..., 0], q[..., 1] = 0, 15  # the block's minimum and maximum are on the grid, as in a real GGUF block
    d = rng.uniform(1e-3, 5e-2, size=(n, k // BLOCK)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.4, 0.1, size=(n, k // BLOCK)).astype(np.float16).astype(np.float32)
    return np.ascontiguousarray(((d[..., None] * q).astype(np.float32) + m[..., None]).reshape(n, k).T)


def _q8_0(rng: np.random.Generator, k: int = K, n: int = N) -> np.ndarray:
    """float32 [k, n] dequantized from Q8_0 blocks: d*q, d fp16, q in -127..127."""
    q = rng.integers(-127, 128, size=(n, k // BLOCK, BLOCK)).astype(np.float32)
    q[..., 0] = 127
    d = rng.uniform(1e-4, 1e-2, size=(n, k // BLOCK)).astype(np.float16).astype(np.float32)
    return np.ascontiguousarray((d[..., None] * q).astype(np.float32).reshape(n, k).T)


def test_exact_blocks_give_back_every_weight_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    w = _q4_1(rng)
    q, d, m = exact_blocks(w)
    assert q.shape == (N, K // BLOCK, BLOCK) and q.max() <= 15
    back = ((d[..., None] * q.astype(np.float32)).astype(np.float32) + m[..., None]).reshape(N, K).T
    assert np.array_equal(back, w)
    w8 = _q8_0(rng)
    q8, d8 = exact_int8_blocks(w8)
    assert np.array_equal((d8[..., None] * q8.astype(np.float32)).reshape(N, K).T, w8)


def test_a_matrix_that_is_not_exact_blocks_is_refused() -> None:
    rng = np.random.default_rng(1)
    w = _q4_1(rng)
    nudged = w.copy()
    nudged[5, 7] = np.nextafter(nudged[5, 7], np.float32(1))  # one weight one ulp off
    assert exact_blocks(nudged) is None and exact_int8_blocks(nudged) is None
    assert exact_blocks(w + np.float32(1e-3) * rng.standard_normal(w.shape).astype(np.float32)) is None  # a merged LoRA delta
    assert exact_blocks(rng.standard_normal((K, N)).astype(np.float32)) is None
    assert exact_blocks(w[:-1]) is None  # K not a multiple of 32
    assert exact_blocks(w.astype(np.float64)) is None


def _matmuls(folder: Path, weights: list[np.ndarray]) -> None:
    """An ONNX model y_i = x @ W_i (the weights in model.onnx.data, as the genai builder writes them)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])
    outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [None, N]) for i in range(len(weights))]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"/layer{i}/MatMul") for i in range(len(weights))]
    inits = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]
    model = helper.make_model(helper.make_graph(nodes, "m", [x], outs, inits), opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)


def _run(folder: Path, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_packed_model_computes_the_same_products_from_fewer_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    weights = [_q4_1(rng), _q8_0(rng), _q4_1(rng) + np.float32(1e-3)]  # the last: not on any grid
    folder = tmp_path / "decoder"
    _matmuls(folder, weights)
    x = rng.standard_normal((3, K)).astype(np.float32)
    before = _run(folder, x)

    report = pack_exact_blocks(folder)

    assert (report.packed, report.exact, report.matrices) == (2, 2, 3)
    assert report.bytes_after == (folder / "model.onnx.data").stat().st_size < report.bytes_before
    ops = [n.op_type for n in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == 3 and ops.count("MatMul") >= 1  # Q4_1: one plane, Q8_0: two, the rest fp32
    after = _run(folder, x)
    for y, w, y0 in zip(after, weights, before):
        exact = x.astype(np.float64) @ w.astype(np.float64)
        assert np.abs(y - exact).max() <= 4 * np.abs(y0 - exact).max() + 1e-5  # fp32 rounding, in another order
    assert np.array_equal(after[2], before[2])  # the matrix left in fp32 runs as before


def test_a_model_with_few_exact_matrices_is_left_untouched(tmp_path: Path) -> None:
    """Like a model merged with a LoRA on every projection: only its LM head is still exact."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "decoder"
    _matmuls(folder, [_q4_1(rng), *(rng.standard_normal((K, N)).astype(np.float32) for _ in range(2))])
    onnx_before = (folder / "model.onnx").read_bytes()
    report = pack_exact_blocks(folder)
    assert (report.packed, report.exact, report.matrices) == (0, 1, 3)
    assert report.bytes_after == report.bytes_before and (folder / "model.onnx").read_bytes() == onnx_before
