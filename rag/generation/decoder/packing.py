"""Lossless 4-bit storage of an fp32 ONNX decoder whose weights came from a 4-bit GGUF.

Why: the bundled model ships as a Q4_1 GGUF. Converting it for transformers dequantizes every block of 32
weights of a row to fp32, w = d*q + m (d and m fp16, q in 0..15), and the fp32 ONNX decoder then reads all
540 MB of those fp32 values on every decode step, a step being bound by memory bandwidth. Yet each such
matrix still is a 4-bit one, exactly: in a block, the smallest weight is m (its q is 0), the largest gives
d = fp16((max - min) / 15), and fl32(d*q) + m returns every weight bit for bit. `pack_exact_blocks` checks
that for every matrix (one block that does not come back leaves its matrix in fp32, like those a LoRA
merge changed; a model with few exact matrices is left as it was) and rewrites each exact one as ONNX Runtime's MatMulNBits - 4 bits, blocks of 32,
accuracy_level 1, i.e. the weights are expanded to fp32 and multiplied in fp32, not int8 activations as
in the int4 decoder - with its default zero point 8, plus the blocks' offsets as a small fp32 product of
the input's block sums:

    x . w  =  sum_b d_b sum_{k in b} x_k (q_k - 8)  +  sum_b (m_b + 8 d_b) sum_{k in b} x_k

A matrix from GGUF's Q8_0 (w = d*q, q in -127..127: the bundled model's tied embedding, i.e. its LM head)
is exact too, and goes in as two 4-bit planes, q = 16h + l: 16d*((h + 8) - 8) + d*(l - 8) + 8d. (MatMulNBits
has 8 bits, but its fp32 arithmetic has no fast kernel - about 70x slower for a 576x1536 matrix,
ONNX Runtime 1.32 - and its fast one quantizes the activations.)

The weights are the same numbers; the products are summed in another order (as between any two fp32
kernels), so the greedy text is checked like the fp32 decoder's (tests/rag/generation/decoder/test_onnx.py, the
bench's fidelity set).

Written by hand: ONNX Runtime's quantizers (MatMulNBitsQuantizer, the genai builder's int4) quantize the
fp32 weights anew - rounding to their own scales and integer zero points - which changes the weights;
none recognises blocks that are already exact. MatMulNBits with fp32 zero points could hold d*q + m in
one node, but ONNX Runtime runs it by expanding the whole matrix on every call (about 30x slower than
with the default zero point, same matrix).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BLOCK = 32  # weights per block, along the input dimension (GGUF's Q4_0/Q4_1/Q8_0 and MatMulNBits alike)
_LEVELS = 15  # q in 0..15


@dataclass
class PackReport:
    """What `pack_exact_blocks` did: matrices packed, found exact, and seen; the weights file before and after."""

    packed: int
    exact: int
    matrices: int
    bytes_before: int
    bytes_after: int

    def to_dict(self) -> dict[str, int]:
        return {"packed": self.packed, "exact": self.exact, "matrices": self.matrices,
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after}


def exact_blocks(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The 4-bit blocks a float32 matrix was dequantized from, if it was (GGUF Q4_1's w = d*q + m).

    :param weight: float32 [K, N] as a MatMul's right operand (K inputs, N outputs); blocks run along K.
    :returns: (q uint8 [N, K/32, 32] in 0..15, d float32 [N, K/32] (fp16 values), m float32 [N, K/32]) such
        that float32(d*q) + m equals `weight.T` bit for bit; None when K is not a multiple of 32 or any
        block does not come back exactly.
    """
    if weight.ndim != 2 or weight.dtype != np.float32 or weight.shape[0] % BLOCK:
        return None
    k, n = weight.shape
    blocks = np.ascontiguousarray(weight.T).reshape(n, k // BLOCK, BLOCK)
    low, high = blocks.min(-1), blocks.max(-1)
    d = ((high - low) / np.float32(_LEVELS)).astype(np.float16).astype(np.float32)
    step = np.where(d == 0, np.float32(1), d)
    q = np.clip(np.rint((blocks - low[..., None]) / step[..., None]), 0, _LEVELS).astype(np.uint8)
    back = (d[..., None] * q.astype(np.float32)).astype(np.float32) + low[..., None]
    if not np.array_equal(back, blocks) or not np.isfinite(d).all():
        return None
    return q, d, low


def exact_int8_blocks(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The 8-bit blocks a float32 matrix was dequantized from, if it was (GGUF Q8_0's w = d*q).

    :param weight: float32 [K, N] as a MatMul's right operand; blocks run along K.
    :returns: (q int8 [N, K/32, 32] in -127..127, d float32 [N, K/32] (fp16 values)) such that float32(d*q)
        equals `weight.T` bit for bit; None when K is not a multiple of 32 or a block does not come back.
    """
    if weight.ndim != 2 or weight.dtype != np.float32 or weight.shape[0] % BLOCK:
        return None
    k, n = weight.shape
    blocks = np.ascontiguousarray(weight.T).reshape(n, k // BLOCK, BLOCK)
    d = (np.abs(blocks).max(-1) / np.float32(127)).astype(np.float16).astype(np.float32)
    step = np.where(d == 0, np.float32(1), d)
    q = np.clip(np.rint(blocks / step[..., None]), -127, 127).astype(np.int8)
    if not np.array_equal((d[..., None] * q.astype(np.float32)).astype(np.float32), blocks) or not np.isfinite(d).all():
        return None
    return q, d


def _planes(weight: np.ndarray) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray] | None:
    """`weight` [K, N] as 4-bit planes for MatMulNBits with zero point 8, and the blocks' offsets.

    :returns: ([(q uint8 [N, K/32, 32] in 0..15, scale float32 [N, K/32]), ...], offsets float32 [N, K/32])
        with weight.T = sum over planes of scale*(q - 8) + offsets, per block; None when not exact.
    """
    found = exact_blocks(weight)
    if found is not None:  # d*q + m = d*(q - 8) + (m + 8d)
        q, d, m = found
        return [(q, d)], m + np.float32(8) * d
    found8 = exact_int8_blocks(weight)
    if found8 is not None:  # d*q, q = 16h + l: 16d*((h + 8) - 8) + d*(l - 8) + 8d
        q8, d = found8
        low = (q8.astype(np.int16) & 15).astype(np.uint8)
        high = ((q8.astype(np.int16) - low) // 16 + 8).astype(np.uint8)
        return [(high, np.float32(16) * d), (low, d)], np.float32(8) * d
    return None


def _packed_matmul(node: Any, shape: tuple[int, int], planes: list[tuple[np.ndarray, np.ndarray]],
                   offsets: np.ndarray, block_sums: dict[tuple[str, int], str],
                   ones: dict[int, str]) -> tuple[list[Any], list[Any]]:
    """The nodes and constants that replace one MatMul `node` of weight [K, N] = `shape` by its 4-bit planes.

    y = sum over planes of MatMulNBits(x, plane) + BlockSums(x) @ offsets, where BlockSums(x) [.., K/32] is x
    multiplied by a [K, K/32] matrix of ones per block. `block_sums` ((input, K) -> its block-sums output) and
    `ones` (K -> the ones matrix) are shared across the MatMuls of one graph and filled here when new.

    :param planes: from `_planes`: [(q uint8 [N, K/32, 32], scale float32 [N, K/32]), ...]; offsets [N, K/32].
    :returns: (nodes in execution order, new initializers).
    """
    from onnx import helper, numpy_helper

    k, n = shape
    nodes: list[Any] = []
    added: list[Any] = []
    x, y, base = node.input[0], node.output[0], node.name or node.output[0]
    key = (x, k)
    if key not in block_sums:
        if k not in ones:  # [K, K/32]: 1 where input k is in block b; one per width, shared by every layer
            ones[k] = f"packing.block_ones.{k}"
            added.append(numpy_helper.from_array(
                np.kron(np.eye(k // BLOCK, dtype=np.float32), np.ones((BLOCK, 1), np.float32)), ones[k]))
        block_sums[key] = f"{base}.block_sums"
        nodes.append(helper.make_node("MatMul", [x, ones[k]], [block_sums[key]], name=f"{base}/BlockSums"))
    added.append(numpy_helper.from_array(np.ascontiguousarray(offsets.T, dtype=np.float32), f"{base}.offsets"))
    nodes.append(helper.make_node("MatMul", [block_sums[key], f"{base}.offsets"], [f"{y}.offsets"],
                                  name=f"{base}/Offsets"))
    total = f"{y}.offsets"
    for i, (q, scale) in enumerate(planes):
        added += [numpy_helper.from_array((q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8), f"{base}.q4.{i}"),
                  numpy_helper.from_array(np.ascontiguousarray(scale, dtype=np.float32).reshape(-1),
                                          f"{base}.scales.{i}")]
        out = y if i == len(planes) - 1 else f"{y}.sum.{i}"
        nodes += [helper.make_node("MatMulNBits", [x, f"{base}.q4.{i}", f"{base}.scales.{i}"], [f"{y}.plane.{i}"],
                                   name=f"{base}/Q4.{i}", domain="com.microsoft", K=k, N=n, bits=4,
                                   block_size=BLOCK, accuracy_level=1),
                  helper.make_node("Add", [f"{y}.plane.{i}", total], [out], name=f"{base}/Add.{i}")]
        total = out
    return nodes, added


def _save_packed(model: Any, folder: Path, nodes: list[Any], added: list[Any], dropped: set[str]) -> None:
    """Write `model` with its graph's nodes replaced by `nodes`, `added` initializers appended and the `dropped`
    ones (weights no node reads any more) removed, over `folder`/model.onnx and its weights file."""
    import onnx
    from onnx import helper

    graph = model.graph
    kept = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend([*kept, *added])
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    data = folder / "model.onnx.data"
    data.unlink()  # onnx appends to an existing weights file
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location=data.name, size_threshold=1024)


def pack_exact_blocks(folder: Path, min_share: float = 0.5) -> PackReport:
    """Rewrite `folder`/model.onnx (+ model.onnx.data) in place: every MatMul whose constant weight is exact
    4-bit blocks (`exact_blocks`) becomes MatMulNBits plus the block-offset product; the rest is unchanged.

    Nothing is rewritten unless more than `min_share` of the matrices are exact. Why: a model merged with a
    LoRA on every projection (the shipped course adapter) keeps only its LM head exact; packed alone, it
    made the weights file larger (579 MB against 540) and decoded no faster (21.0 against 21.8 tokens/s,
    one token per pass, bundled-raft, 3 rounds).

    Call it on a folder nothing has opened (build_onnx_decoder's temp folder): the weights file is replaced.

    :param folder: an ONNX model with its weights in model.onnx.data (onnxruntime-genai's builder output).
    :param min_share: the share of exact matrices (0..1) above which the model is rewritten.
    :returns: a PackReport (packed 0 when nothing was rewritten).
    :raises OSError: when the folder cannot be read or written; ValueError (onnx) for a malformed model.
    """
    import onnx
    from onnx import numpy_helper

    data = folder / "model.onnx.data"
    before = data.stat().st_size
    model = onnx.load(str(folder / "model.onnx"))  # weights read into memory
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    nodes: list[Any] = []
    added: list[Any] = []
    dropped: set[str] = set()
    block_sums: dict[tuple[str, int], str] = {}  # (input, K) -> its block sums, shared by the MatMuls it feeds
    ones: dict[int, str] = {}
    matrices = exact = 0
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in constants:
            nodes.append(node)
            continue
        matrices += 1
        weight = numpy_helper.to_array(constants[node.input[1]])
        found = _planes(weight)
        if found is None:
            nodes.append(node)
            continue
        planes, offsets = found
        new_nodes, new_constants = _packed_matmul(node, weight.shape, planes, offsets, block_sums, ones)
        nodes += new_nodes
        added += new_constants
        readers[node.input[1]] -= 1
        if readers[node.input[1]] == 0:
            dropped.add(node.input[1])
        exact += 1
    packed = exact if matrices and exact > min_share * matrices else 0
    if packed:
        _save_packed(model, folder, nodes, added, dropped)
    return PackReport(packed, exact, matrices, before, data.stat().st_size)


#: MatMulNBits' accuracy_level for 8-bit activations: each input row is quantized to int8 per block of 32 and
#: multiplied with the 4-bit blocks in integer arithmetic (ONNX Runtime's AVX2/AVX512-VNNI kernels), as
#: llama.cpp computes a Q4_1 matrix against Q8_1 activations. The weights stay the same exact blocks.
INT8_ACTIVATIONS_LEVEL = 4


def set_accuracy_level(model_path: Path, level: int) -> int:
    """Set `accuracy_level` on every MatMulNBits node of an ONNX model file, in place (its external weights
    file is neither read nor changed).

    :param model_path: a model.onnx written by `pack_exact_blocks` (a folder nothing has opened).
    :param level: 1 (fp32 products, as packed) or INT8_ACTIVATIONS_LEVEL (int8 activations).
    :returns: the number of MatMulNBits nodes set.
    :raises OSError: when the file cannot be read or written; ValueError (onnx) for a malformed model.
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(model_path), load_external_data=False)
    count = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("accuracy_level", level)])
            count += 1
    onnx.save(model, str(model_path))
    return count
