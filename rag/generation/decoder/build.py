"""Building the ONNX decoder of a transformers model folder once, into the model cache (decoder/onnx.py runs it).

onnxruntime-genai's model builder writes the decoder (CPU target, fp32/int8/int4 weights) in a subprocess,
whose progress is turned into a few lines on stderr; an fp32 decoder's exact 4-bit matrices are then
packed (rag/generation/decoder/packing.py). The folder is named by the source's fingerprint (its weights' sizes
and times, the builder's version, _FORMAT) and validated by its manifest, so a changed model, builder or
format is rebuilt and a damaged folder is never used; builds that nothing can use again are pruned.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rag.common.atomic import write_json_atomic
from rag.errors import GeneratorError
from rag.generation.models import default_cache_dir, publish_cached
from rag.generation.decoder.packing import INT8_ACTIVATIONS_LEVEL, pack_exact_blocks, set_accuracy_level

#: Weights an ONNX decoder can have.
#: "packed-a8": the fp32 decoder's exact 4-bit blocks (packing.py) multiplied against 8-bit activations
#: (packing.INT8_ACTIVATIONS_LEVEL); the weights are the GGUF's, the products are not fp32's.
PRECISIONS = ("int4", "int8", "fp32", "packed-a8")
DECODER_ENV = "RAG_DECODER"
_MANIFEST = "rag_decoder.json"
_FORMAT = 4  # bump when the decoder written changes (2: logits of every position; 4: exact 4-bit blocks packed)
_BUILD_TIMEOUT_S = 1800


def _source_fingerprint(model_dir: Path) -> str:
    """Sizes and modification times of the folder's weights and config (what the builder reads)."""
    import onnxruntime_genai

    digest = hashlib.sha256(f"{_FORMAT}:{onnxruntime_genai.__version__};".encode())
    for f in sorted(p for p in model_dir.glob("*") if p.is_file() and p.suffix in (".safetensors", ".json")):
        st = f.stat()
        digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()[:12]


def _decoder_validator(fingerprint: str, precision: str, pack: bool,
                       accuracy_level: int | None = None) -> Callable[[Path], bool]:
    """True for a complete decoder folder of this source, precision and packing (manifest, model, weights' size),
    and, when given, the MatMulNBits accuracy level its manifest records."""

    def valid(folder: Path) -> bool:
        try:
            manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (
            isinstance(manifest, dict)
            and manifest.get("source") == fingerprint
            and manifest.get("precision") == precision
            and isinstance(manifest.get("packed"), dict) == pack
            and (folder / "model.onnx").is_file()
            and (folder / "model.onnx.data").is_file()
            and (folder / "model.onnx.data").stat().st_size == manifest.get("data_bytes")
            and (accuracy_level is None or manifest.get("accuracy_level") == accuracy_level)
        )

    return valid


def _run_builder(cmd: list[str], label: str, layers: int) -> None:
    """Run onnxruntime-genai's builder, saying on stderr what is happening.

    :raises GeneratorError: when it fails (its last lines) or runs longer than _BUILD_TIMEOUT_S.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.monotonic()
    print(f"rag: building {label} once (seconds to a minute; cached for every later run; "
          f"{DECODER_ENV}=transformers skips it)", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    timer = threading.Timer(_BUILD_TIMEOUT_S, proc.kill)
    timer.start()
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = [*tail[-2:], line.strip()]
            if line.startswith("Reading layer "):
                done = int(line.split()[-1]) + 1
                if done in {max(1, layers // 4), layers // 2, 3 * layers // 4}:
                    print(f"rag: ... read {done}/{layers} layers ({time.monotonic() - started:.0f} s)",
                          file=sys.stderr, flush=True)
            elif line.startswith("Saving ONNX model"):
                print("rag: ... writing the decoder", file=sys.stderr, flush=True)
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - started
    if elapsed >= _BUILD_TIMEOUT_S:
        raise GeneratorError(f"building {label} took over {_BUILD_TIMEOUT_S} s; "
                             f"set {DECODER_ENV}=transformers to skip it")
    if code != 0:
        raise GeneratorError(f"cannot build {label}: {' | '.join(tail)}; set {DECODER_ENV}=transformers "
                             "to use plain transformers")
    print(f"rag: built {label} in {elapsed:.0f} s", file=sys.stderr, flush=True)


_build_lock = threading.Lock()


def prune_stale_decoders(root: Path, keep: Path | None = None) -> list[Path]:
    """Delete the decoders in `root` nothing can use again: their source folder is gone (a test's or a
    deleted run's model), or it changed since (`raft train` wrote a new merged/ there), keeping `keep`.

    Why: each decoder is a second copy of a model's weights (519 MB for the bundled model in fp32), and
    model folders come and go; `build_onnx_decoder` calls this after every build.

    :param root: a model cache folder.
    :param keep: a decoder folder never deleted (the one just built).
    :returns: the folders deleted.
    """
    newest: dict[tuple[str, str], str] = {}
    found: list[tuple[Path, str, str, str]] = []
    for folder in root.glob("*-onnx-*"):
        try:
            manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
            source, precision, fingerprint = Path(manifest["model_dir"]), manifest["precision"], manifest["source"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours, or still being written by another process
        if folder.name.startswith(".") or folder == keep:
            continue
        if not source.is_dir():
            found.append((folder, "", "", ""))
            continue
        key = (str(source), precision)
        if key not in newest:
            try:
                newest[key] = _source_fingerprint(source)
            except OSError:
                newest[key] = ""
        found.append((folder, key[0], key[1], fingerprint))
    removed = []
    for folder, source, precision, fingerprint in found:
        if not source or newest.get((source, precision)) != fingerprint:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def builder_command(model_dir: Path, out: Path, precision: str, options: list[str]) -> list[str]:
    """The onnxruntime-genai model builder's command line for `model_dir` into `out`.

    :param options: builder `--extra_options` entries ("key=value"); the flag is left out when there are
        none, because the builder's argparse rejects it without a value (models with untied embeddings).
    :returns: argv for `subprocess`.
    """
    extra = ["--extra_options", *options] if options else []
    return [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir), "-o", str(out),
            "-p", precision, "-e", "cpu", "-c", str(out / ".hf-cache"), *extra]


def build_onnx_decoder(model_dir: str | Path, precision: str = "fp32",
                       cache_dir: str | Path | None = None, *, pack: bool = True) -> Path:
    """Return the ONNX decoder of a transformers model folder, building it once and reusing it.

    Runs onnxruntime-genai's model builder (`python -m onnxruntime_genai.models.builder`, CPU target, the
    LM head pruned to the last position, embeddings shared with the head when the model ties them) in a
    subprocess, reporting progress on stderr, into a temp folder renamed into place
    (models.publish_cached), so an interrupted build never leaves a half cache and none is built twice;
    then deletes the decoders in the same cache whose model folder is gone or changed (prune_stale_decoders).
    An fp32 decoder's matrices that are exact 4-bit blocks (a model from a Q4_1 GGUF, like the bundled one)
    are then stored as such (rag/generation/decoder/packing.py): same weights, a fraction of the bytes per step.

    :param model_dir: a folder with config.json and safetensors weights (the GGUF cache, a merged model).
    :param precision: "int4", "int8", "fp32" (weights of the ONNX decoder) or "packed-a8" (the packed fp32
        decoder's exact 4-bit blocks against 8-bit activations, `_build_int8_activations`).
    :param cache_dir: the model cache root (default: models.default_cache_dir(); callers pass the setting cache_dir).
    :param pack: fp32 only: store exact 4-bit blocks packed (False: every matrix in fp32, a folder of its
        own, "-plain"; bench/generation.py's comparison).
    :returns: the folder holding model.onnx and model.onnx.data.
    :raises GeneratorError: for an unknown precision, a folder the builder rejects, or a failed build.
    """
    if precision not in PRECISIONS:
        raise GeneratorError(f"unknown ONNX decoder precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if precision == "packed-a8":
        return _build_int8_activations(Path(model_dir).resolve(), cache_dir)
    model_dir = Path(model_dir).resolve()
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GeneratorError(f"cannot read {model_dir / 'config.json'}: {e}") from e
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    fingerprint = _source_fingerprint(model_dir)
    label = f"the ONNX {precision} decoder of {model_dir.name}"
    # the LM head is not pruned: a speculative pass needs the logits of every position it feeds
    options = ["shared_embeddings=true"] if config.get("tie_word_embeddings") else []

    def write(tmp: Path) -> None:
        _run_builder(builder_command(model_dir, tmp, precision, options), label, int(config.get("num_hidden_layers", 0)))
        shutil.rmtree(tmp / ".hf-cache", ignore_errors=True)
        data = tmp / "model.onnx.data"
        if not (tmp / "model.onnx").is_file() or not data.is_file():
            raise GeneratorError(f"building {label} produced no model.onnx(.data) in {tmp}")
        packed = pack_exact_blocks(tmp).to_dict() if pack else None
        manifest = {"source": fingerprint, "precision": precision, "model_dir": str(model_dir),
                    "data_bytes": data.stat().st_size, "builder_options": options, "packed": packed}
        write_json_atomic(tmp / _MANIFEST, manifest)

    pack = pack and precision == "fp32"
    target = root / f"{model_dir.name}-onnx-{precision}{'' if pack or precision != 'fp32' else '-plain'}-{fingerprint}"
    valid = _decoder_validator(fingerprint, precision, pack)
    if valid(target):
        return target
    publish_cached(target, valid, write, _build_lock, f"cannot build {label}")
    prune_stale_decoders(root, keep=target)
    return target


def _build_int8_activations(model_dir: Path, cache_dir: str | Path | None) -> Path:
    """The "packed-a8" decoder: a copy of the packed fp32 decoder whose 4-bit products take 8-bit activations;
    the fp32 decoder itself when nothing of the model was packed (no exact 4-bit matrix to run so).

    :raises GeneratorError: when the fp32 decoder cannot be built or the copy cannot be written.
    """
    packed = build_onnx_decoder(model_dir, "fp32", cache_dir)
    try:
        if not is_packed(packed):
            return packed
        manifest = json.loads((packed / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GeneratorError(f"cannot read the decoder {packed}: {e}; delete the folder to rebuild it") from None
    root = packed.parent
    fingerprint = _source_fingerprint(model_dir)

    def write(tmp: Path) -> None:
        for f in packed.iterdir():
            if not f.is_file() or f.name == _MANIFEST:
                continue
            if f.name == "model.onnx.data":  # the weights, unchanged: a second name, not a second copy
                try:
                    os.link(f, tmp / f.name)
                    continue
                except OSError:
                    pass
            shutil.copy2(f, tmp / f.name)  # model.onnx is rewritten below: never a link to the fp32 one
        set_accuracy_level(tmp / "model.onnx", INT8_ACTIVATIONS_LEVEL)
        write_json_atomic(tmp / _MANIFEST, {**manifest, "source": fingerprint, "precision": "packed-a8",
                                           "accuracy_level": INT8_ACTIVATIONS_LEVEL})

    target = root / f"{model_dir.name}-onnx-packed-a8-{fingerprint}"
    valid = _decoder_validator(fingerprint, "packed-a8", True, INT8_ACTIVATIONS_LEVEL)

    if valid(target):
        return target
    publish_cached(target, valid, write, _build_lock, f"cannot write the 8-bit-activation decoder of {model_dir.name}")
    prune_stale_decoders(root, keep=target)
    return target


def is_packed(onnx_dir: Path) -> bool:
    """True when a decoder from `build_onnx_decoder` holds packed 4-bit blocks (its manifest; `pack_exact_blocks`
    packs a model only when most of its matrices are exact)."""
    packed = json.loads((onnx_dir / _MANIFEST).read_text(encoding="utf-8")).get("packed") or {}
    return packed.get("packed", 0) > 0
