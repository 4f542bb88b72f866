"""Installed course adapters: which RAFT adapter `model = "auto"` loads for which course, decided by content.

`raft course` tunes a LoRA adapter for one course and installs it here; `rag.api.effective_model` then loads
it wherever at least COURSE_SHARE of the indexed files are, by SHA-256, that course's files: the rule the
shipped course adapter follows (rag.generation.adapter). Several courses can be installed side by side; an
index matching more than one gets the one covering most of its files (the newest on a tie, and an installed
adapter before the shipped one).

The registry folder (`Settings.course_adapters_dir`, RAG_COURSE_ADAPTERS_DIR; default: `course-adapters/` in
the model cache):

  registry.json   {"format": 1, "courses": [entry, ...]}, replaced atomically under the folder's lock
  <id>-<stamp>/   one adapter folder per entry (peft's files + rag_adapter.json with the course's files),
                  complete before the entry naming it is written, so no reader sees an entry without it

An entry (`InstalledCourse`) holds the course's id (`course_fingerprint` of its files), a name, the folder,
the course's files (name -> SHA-256), when and from where it was installed, and a short evaluation. The file
is validated on load with pydantic, and so is each entry's folder (an adapter folder whose recorded course
is the entry's): a damaged registry is an error naming the file and what to do, never a silent fallback to
another model. Why a file of our own: no library keeps "which adapter for which content"; peft and
transformers only load an adapter once it is chosen.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from rag.common.atomic import fsync_dir, fsync_path, write_json_atomic
from rag.common.runfolder import FolderLock
from rag.errors import RagError
from rag.generation.adapter import (
    ADAPTER_INFO,
    COURSE_SHARE,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    AdapterInfo,
    course_share,
    is_adapter_folder,
    read_adapter_info,
)
from rag.generation.models import default_cache_dir

REGISTRY = "registry.json"
REGISTRY_FORMAT = 1
#: The registry's folder inside the model cache when Settings.course_adapters_dir is unset.
DEFAULT_SUBDIR = "course-adapters"
_OURS = re.compile(r"^\.?[0-9a-f]{16}-\d{8}T\d{6}-[0-9a-f]{6}(\.tmp)?$")  # folders install_course names
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class InstalledCourse(BaseModel):
    """One installed course adapter (an entry of registry.json)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[0-9a-f]{16}$", description="course_fingerprint of course_files")
    name: str = Field(min_length=1, description="the course's name (its folder's name), for people")
    adapter: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                         description="the adapter folder's name inside the registry folder")
    course_files: dict[str, Sha256] = Field(min_length=1, description="file name -> SHA-256 hex of the course")
    installed_at: str = Field(description="UTC ISO 8601")
    source: str = Field(description="the course folder it was tuned on, as installed")
    evaluation: dict[str, Any] | None = Field(None, description="the held-out evaluation it was installed on")

    def folder(self, root: Path) -> Path:
        """The adapter folder of this entry inside the registry folder `root`."""
        return Path(root) / self.adapter


class RegistryFile(BaseModel):
    """registry.json as a whole."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = REGISTRY_FORMAT
    courses: list[InstalledCourse] = Field(default_factory=list)


def registry_dir(configured: Path | str | None = None, cache_dir: Path | str | None = None) -> Path:
    """The registry folder: `configured` (Settings.course_adapters_dir), else `course-adapters/` in the model cache.

    :param configured: the setting course_adapters_dir, or None.
    :param cache_dir: the model cache (the setting cache_dir; None = models.default_cache_dir()).
    """
    if configured is not None:
        return Path(configured).expanduser()
    return (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / DEFAULT_SUBDIR


def course_fingerprint(files: Mapping[str, str]) -> str:
    """The id of a course by content: 16 hex digits of the SHA-256 of its files' sorted SHA-256s (names ignored).

    :param files: file name -> SHA-256 hex, as an index manifest lists them.
    :raises RagError: for an empty course.
    """
    if not files:
        raise RagError("a course with no files has no fingerprint: index the course first")
    return hashlib.sha256("\n".join(sorted(files.values())).encode()).hexdigest()[:16]


def _damaged(path: Path, why: str) -> RagError:
    return RagError(f"the course adapter registry {path} is damaged ({why}): fix or delete that file (and "
                    "rerun `raft course` for the courses it listed; their runs install again in seconds)")


def load_registry(root: Path) -> list[InstalledCourse]:
    """The installed courses, each checked against its folder.

    :param root: the registry folder (`registry_dir`).
    :returns: the entries in install order (oldest first); [] when there is no registry.json.
    :raises RagError: registry.json unreadable, not valid JSON, or of a bad shape; an entry whose folder is
        missing, is not an adapter folder, or records another course than the entry.
    """
    path = Path(root) / REGISTRY
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise _damaged(path, f"cannot be read: {e}") from None
    try:
        registry = RegistryFile.model_validate(json.loads(text))
    except ValueError as e:  # json.JSONDecodeError and pydantic's ValidationError are ValueErrors
        first = e.errors()[0] if isinstance(e, ValidationError) else None
        why = (f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else f"not JSON: {e}")
        raise _damaged(path, why) from None
    for entry in registry.courses:
        folder = entry.folder(root)
        if not is_adapter_folder(folder) or not (folder / PEFT_WEIGHTS).is_file():
            raise _damaged(path, f"course {entry.name!r} names the adapter folder {folder}, which is missing "
                                 "or incomplete")
        if dict(read_adapter_info(folder).course_files) != entry.course_files:
            raise _damaged(path, f"the adapter folder {folder} records another course than its entry")
    return registry.courses


def match_course(root: Path, indexed: Mapping[str, str],
                 shipped: AdapterInfo | None = None) -> InstalledCourse | Literal["shipped"] | None:
    """The course adapter for an index whose files are `indexed`: the installed or shipped course covering the
    largest share (at least COURSE_SHARE) of them; ties go to the newest install, then to the shipped one.

    :param root: the registry folder.
    :param indexed: file name -> SHA-256 of the index's files (its manifest's `files`).
    :param shipped: the shipped adapter's info, or None when this install has none.
    :returns: the entry, "shipped", or None when no course matches.
    :raises RagError: a damaged registry (`load_registry`).
    """
    best: tuple[float, int] | None = None
    chosen: InstalledCourse | Literal["shipped"] | None = None
    candidates: list[tuple[int, AdapterInfo, InstalledCourse | Literal["shipped"]]] = []
    if shipped is not None:
        candidates.append((-1, shipped, "shipped"))
    for order, entry in enumerate(load_registry(root)):
        candidates.append((order, AdapterInfo("bundled", course_files=entry.course_files), entry))
    for order, info, who in candidates:
        share = course_share(info, indexed)
        if share >= COURSE_SHARE and (best is None or (share, order) > best):
            best, chosen = (share, order), who
    return chosen


def _copy_adapter(source: Path, tmp: Path) -> None:
    tmp.mkdir(parents=True)
    for name in (PEFT_CONFIG, PEFT_WEIGHTS, ADAPTER_INFO):
        shutil.copyfile(source / name, tmp / name)
        fsync_path(tmp / name)
    fsync_dir(tmp)


def _remove_orphans(root: Path, listed: set[str]) -> None:
    """Remove adapter folders no entry names (an install killed between its copy and its registry.json)."""
    for path in root.iterdir():
        if path.is_dir() and path.name not in listed and _OURS.match(path.name):
            shutil.rmtree(path, ignore_errors=True)


def install_course(root: Path, adapter: Path, *, name: str, source: str,
                   evaluation: dict[str, Any] | None = None) -> InstalledCourse:
    """Install the adapter folder `adapter` for the course its rag_adapter.json records (`course_files`).

    The folder is copied whole into `root` first, then registry.json is replaced (atomically, under the
    folder's lock) by one listing it in place of any earlier install of the same course, whose folder is then
    removed. Installing the same course again replaces it.

    :param root: the registry folder (created when missing).
    :param adapter: an adapter folder (peft files + rag_adapter.json naming its base and course_files).
    :param name: the course's name, for people. :param source: where the course was read from.
    :param evaluation: a short summary of the held-out evaluation, kept in the entry.
    :returns: the new entry.
    :raises RagError: `adapter` is no complete adapter folder or records no course; the registry is damaged
        or cannot be written.
    """
    adapter, root = Path(adapter), Path(root)
    if not is_adapter_folder(adapter) or not (adapter / PEFT_WEIGHTS).is_file():
        raise RagError(f"{adapter} is not a complete adapter folder ({PEFT_CONFIG}, {PEFT_WEIGHTS}, {ADAPTER_INFO})")
    files = dict(read_adapter_info(adapter).course_files)
    if not files:
        raise RagError(f"{adapter / ADAPTER_INFO} records no course_files: it cannot be matched to a course")
    course_id = course_fingerprint(files)
    stamp = datetime.now(timezone.utc)
    with FolderLock(root, f"another install is writing {root}: wait for it to finish", what="registry folder",
                    hint="fix its permissions or set RAG_COURSE_ADAPTERS_DIR to another folder"):
        courses = load_registry(root)
        folder_name = f"{course_id}-{stamp.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        tmp = root / f".{folder_name}.tmp"
        try:
            _copy_adapter(adapter, tmp)
            tmp.rename(root / folder_name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(root)
        entry = InstalledCourse(id=course_id, name=name, adapter=folder_name, course_files=files,
                                installed_at=stamp.isoformat(timespec="seconds"), source=source, evaluation=evaluation)
        replaced = [c for c in courses if c.id == course_id]
        kept = [c for c in courses if c.id != course_id]
        write_json_atomic(root / REGISTRY, RegistryFile(courses=[*kept, entry]).model_dump(mode="json"))
        for old in replaced:
            shutil.rmtree(old.folder(root), ignore_errors=True)
        _remove_orphans(root, {c.adapter for c in [*kept, entry]})
        load_registry(root)  # what was written reads back valid
    return entry


def remove_course(root: Path, course_id: str) -> InstalledCourse | None:
    """Uninstall the course `course_id` (its entry, then its folder).

    :returns: the removed entry, or None when it was not installed.
    :raises RagError: a damaged registry, or one that cannot be written.
    """
    root = Path(root)
    with FolderLock(root, f"another install is writing {root}: wait for it to finish", what="registry folder"):
        courses = load_registry(root)
        gone = next((c for c in courses if c.id == course_id), None)
        if gone is None:
            return None
        write_json_atomic(root / REGISTRY,
                          RegistryFile(courses=[c for c in courses if c.id != course_id]).model_dump(mode="json"))
        shutil.rmtree(gone.folder(root), ignore_errors=True)
    return gone


__all__ = ["REGISTRY", "InstalledCourse", "RegistryFile", "registry_dir", "course_fingerprint", "load_registry",
           "match_course", "install_course", "remove_course"]
