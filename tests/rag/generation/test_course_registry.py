"""The registry of installed course adapters (rag.generation.course_registry) and `model = auto` reading it
(rag.api.effective_model): an installed adapter is picked for exactly its course, by content, on any index of
it; another course gets the base; the newest install of a course replaces the older; a damaged registry is one
line naming the file, never a silent fallback.

Real parts: the bundled embedder and real indexes of real course folders. The adapter folders hold peft's file
names with placeholder bytes: matching reads only their records, nothing here loads them (the e2e test of
`raft course`, tests/raft/course/test_course_run.py, installs and answers with a real one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.errors import RagError
from rag.generation.adapter import ADAPTER_INFO, PEFT_CONFIG, PEFT_WEIGHTS
from rag.generation.course_registry import (
    REGISTRY,
    course_fingerprint,
    install_course,
    load_registry,
    match_course,
    remove_course,
)
from tests.conftest import write_small_corpus


def course_files(index_dir: Path) -> dict[str, str]:
    from rag.index.store import current_generation

    manifest = json.loads((current_generation(index_dir) / "manifest.json").read_text(encoding="utf-8"))
    return {name: f["sha256"] for name, f in manifest["files"].items()}


def adapter_folder(folder: Path, files: dict[str, str], weights: bytes = b"weights") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PEFT_CONFIG).write_text("{}", encoding="utf-8")
    (folder / PEFT_WEIGHTS).write_bytes(weights)
    (folder / ADAPTER_INFO).write_text(json.dumps({"base": "bundled", "course_files": files}), encoding="utf-8")
    return folder


@pytest.fixture
def two_courses(tmp_path: Path):
    """Two real indexed courses: the small corpus, and one of different files."""
    from rag.api import index_corpus
    from rag.config import Settings

    small = write_small_corpus(tmp_path / "small")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.md").write_text("# Databases\n\nA relational database stores rows in tables with keys.\n",
                                    encoding="utf-8")
    settings = {}
    for name, folder in (("small", small), ("other", other)):
        s = Settings(index_dir=tmp_path / f"index-{name}", corpus_dir=folder, model="auto",
                     course_adapters_dir=tmp_path / "registry")
        index_corpus(folder, s)
        settings[name] = s
    return settings


def test_model_auto_picks_the_installed_adapter_for_exactly_its_course(two_courses, tmp_path: Path) -> None:
    from rag.api import effective_model, index_corpus

    small, other = two_courses["small"], two_courses["other"]
    assert effective_model(small) == "bundled" and effective_model(other) == "bundled"  # nothing installed
    files = course_files(small.index_dir)
    entry = install_course(tmp_path / "registry", adapter_folder(tmp_path / "run" / "adapter", files),
                           name="small", source=str(small.corpus_dir), evaluation={"primary": "retrieved"})
    installed = entry.folder(tmp_path / "registry")
    assert entry.id == course_fingerprint(files) and installed.is_dir()
    assert (installed / PEFT_WEIGHTS).read_bytes() == b"weights"  # copied whole
    assert effective_model(small) == str(installed)
    assert effective_model(other) == "bundled"  # another course: the base
    assert effective_model(small.model_copy(update={"model": "bundled-base"})) == "bundled-base"  # a named model stays
    # the same course indexed anywhere else (copied files: the same content) gets it too; half of it still does
    from rag.config import Settings

    copy = tmp_path / "copy"
    write_small_corpus(copy)
    (copy / "extra.md").write_text("# Extra\n\nA note the course did not have.\n", encoding="utf-8")
    elsewhere = Settings(index_dir=tmp_path / "index-copy", corpus_dir=copy, model="auto",
                         course_adapters_dir=tmp_path / "registry")
    index_corpus(copy, elsewhere)
    assert effective_model(elsewhere) == str(installed)  # 3 of its 4 files are the course's


def test_a_reinstall_replaces_the_course_and_the_largest_share_then_the_newest_wins(two_courses, tmp_path: Path) -> None:
    root = tmp_path / "registry"
    files = course_files(two_courses["small"].index_dir)
    wider = {**files, "more.md": "f" * 64}  # a course with one more file: another id
    install_course(root, adapter_folder(tmp_path / "w", wider), name="wider", source="y")
    first = install_course(root, adapter_folder(tmp_path / "a", files, b"first"), name="small", source="x")
    orphan = root / f"{first.id}-20260101T000000-abcdef"  # an install killed after its copy, before registry.json
    adapter_folder(orphan, files)
    (root / "notes").mkdir()  # not ours: kept
    second = install_course(root, adapter_folder(tmp_path / "b", files, b"second"), name="small", source="x")
    assert [c.name for c in load_registry(root)] == ["wider", "small"]  # one entry per course
    assert not first.folder(root).exists() and (second.folder(root) / PEFT_WEIGHTS).read_bytes() == b"second"
    assert not orphan.exists() and (root / "notes").is_dir()
    assert match_course(root, wider).name == "wider"  # 4/4 of the index against small's 3/4, though older
    assert match_course(root, files).id == second.id  # 3/3 each: a tie, the newest install
    assert match_course(root, {"unrelated.md": "e" * 64}) is None
    assert remove_course(root, second.id).id == second.id and not second.folder(root).exists()
    assert [c.name for c in load_registry(root)] == ["wider"] and remove_course(root, second.id) is None


def test_an_installed_course_comes_before_the_shipped_adapter_on_a_tie(tmp_path: Path) -> None:
    from rag.generation.adapter import AdapterInfo

    files = {"a.md": "1" * 64, "b.md": "2" * 64}
    shipped = AdapterInfo("bundled", course_files=files)
    root = tmp_path / "registry"
    assert match_course(root, files, shipped) == "shipped"
    install_course(root, adapter_folder(tmp_path / "mine", files), name="mine", source="z")
    assert match_course(root, files, shipped).name == "mine"


@pytest.mark.parametrize("damage, why", [
    (lambda root, entry: (root / REGISTRY).write_text("{oops", encoding="utf-8"), "not JSON"),
    (lambda root, entry: (root / REGISTRY).write_text(json.dumps({"format": 2, "courses": []}), encoding="utf-8"),
     "format"),
    (lambda root, entry: (entry.folder(root) / PEFT_WEIGHTS).unlink(), "missing or incomplete"),
    (lambda root, entry: (entry.folder(root) / ADAPTER_INFO).write_text(
        json.dumps({"base": "bundled", "course_files": {"x.md": "0" * 64}}), encoding="utf-8"), "another course"),
])
def test_a_damaged_registry_is_one_line_naming_it(two_courses, tmp_path: Path, damage, why: str) -> None:
    from rag.api import effective_model

    root = tmp_path / "registry"
    small = two_courses["small"]
    entry = install_course(root, adapter_folder(tmp_path / "a", course_files(small.index_dir)), name="s", source="x")
    damage(root, entry)
    with pytest.raises(RagError, match=why) as e:
        effective_model(small)
    message = str(e.value)
    assert str(root / REGISTRY) in message and "\n" not in message and "raft course" in message


def test_an_adapter_without_its_course_is_not_installed(tmp_path: Path) -> None:
    with pytest.raises(RagError, match="records no course_files"):
        install_course(tmp_path / "registry", adapter_folder(tmp_path / "a", {}), name="n", source="s")
    with pytest.raises(RagError, match="not a complete adapter folder"):
        install_course(tmp_path / "registry", tmp_path / "nothing", name="n", source="s")
    assert load_registry(tmp_path / "registry") == []
