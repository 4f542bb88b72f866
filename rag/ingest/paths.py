"""The course folder: what it may contain, and the walk that lists it.

The walk (`walk_corpus`) lists every entry it sees: the files to read, and the rest as skipped with a
reason: hidden entries, unsupported types (.ppt, .doc, images…), broken links, symlink loops, unreadable folders,
special files, links out of the course. Symlinked folders inside the course are followed once; a link back
to one of its own ancestors is a loop and is not followed. It is iterative: 1,100 nested folders raised
RecursionError.

One rule for what a course contains: an entry is part of the course when its resolved path lies
inside the course folder. A link that leads out of it (`ln -s /etc/passwd corpus/week4-notes.txt`, or a
folder linked in from elsewhere) is not read unless the user opts in: `rag index --follow-outside-links`,
or the setting `follow_outside_links` (`RAG_FOLLOW_OUTSIDE_LINKS=true`, `rag.toml`). Without it, whoever can
drop a link into a course folder that someone else indexes and serves gets any file that user can read into
the index, and from there into search results and answers.

`outside_course` is that rule. The walk asks it about every link it meets, so `rag index`, `raft generate`
(which indexes its folder through the same build) and the app's "build the index" skip the same entries
with the same reason. The app's upload and removal (ui/files.py) ask it too: an upload never reads a file
through a link out of the course, and a removal never deletes through one.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rag.common.files import os_reason
from rag.errors import RagError

SUPPORTED = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".pdf": "pdf", ".html": "html", ".htm": "html",
             ".pptx": "pptx", ".docx": "docx", ".ipynb": "notebook"}  # suffix -> reader (rag.ingest.loaders)
MAX_FILE_BYTES = 50 * 1024 * 1024
SUPPORTED_LIST = ", ".join(sorted(SUPPORTED))
OPT_IN = "pass --follow-outside-links or set RAG_FOLLOW_OUTSIDE_LINKS=true"


def outside_course(path: Path, root: Path, follow_outside_links: bool = False) -> Path | None:
    """Where the entry `path` of the course folder `root` leads when that is outside the course, else None.

    :param path: a file or folder at or under `root`, by name (it may be a link, a link to a link, ...).
    :param root: the course folder, resolved (see `open_corpus`).
    :param follow_outside_links: the user's opt-in: entries that resolve outside `root` are part of it.
    :returns: the resolved path when it lies outside `root` and the user did not opt in; None when `path` is
        part of the course, or cannot be resolved (the caller reports broken links and loops itself).
    """
    if follow_outside_links:
        return None
    try:
        resolved = Path(os.path.realpath(path, strict=True))
    except (OSError, RuntimeError):
        return None
    if resolved == root or resolved.is_relative_to(root):
        return None
    return resolved


def outside_reason(target: Path) -> str:
    """The skip reason of an entry that leads to `target`, outside the course (see `outside_course`)."""
    return f"links outside the course folder (to {target}), not read; to index it, {OPT_IN}"


@dataclass
class Skipped:
    """A file or folder that was not indexed, and why (one line a user can act on)."""

    source: str  # path relative to the corpus root; folders end with "/"
    reason: str


def type_problem(name: str, size: int) -> str | None:
    """Why a file named `name` of `size` bytes is not indexed before it is even read, or None.

    :returns: "unsupported file type …" or "file too large …", or None for a supported file.
    """
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED:
        kind = suffix or "(no extension)"
        return f"unsupported file type {kind}; indexed types are {SUPPORTED_LIST} (export or save it as one of them)"
    if size > MAX_FILE_BYTES:
        return f"file too large ({size // 1_048_576} MiB > {MAX_FILE_BYTES // 1_048_576} MiB)"
    return None


def open_corpus(root: Path) -> Path:
    """The corpus folder or file `root`, resolved, after checking it can be walked.

    :raises RagError: one line when `root` does not exist, is a symlink loop or a broken link, cannot
        be read, or is neither a file nor a folder.
    """
    root = Path(root)
    try:
        resolved = root.resolve(strict=True)
        st = resolved.stat()
    except FileNotFoundError:
        broken = " (a broken symlink)" if root.is_symlink() else ""
        raise RagError(f"corpus folder {root} does not exist{broken}: give a folder of "
                       f"{SUPPORTED_LIST} files") from None
    except RuntimeError:  # Python < 3.13 reports a symlink loop in resolve() as RuntimeError
        raise RagError(f"corpus {root}: {os_reason(OSError(errno.ELOOP, 'loop'))}") from None
    except OSError as exc:
        raise RagError(f"corpus {root}: {os_reason(exc)}") from None
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise RagError(f"corpus {root} is neither a folder nor a file")
    return resolved


def walk_corpus(root: Path, follow_outside_links: bool = False) -> tuple[list[Path], list[Skipped]]:
    """Every entry under `root` (a folder or one file): the files to read, and the rest with its reason.

    Sorted by path (the same order as `sorted(root.rglob("*"))`). Skipped with a reason: hidden files
    and folders (name starts with "."; a folder is one line), unsupported types, files over
    MAX_FILE_BYTES, broken links, symlink loops, links that lead out of the course folder (unless
    `follow_outside_links`: see rag.ingest.paths), a second link to a folder already walked, folders that
    cannot be listed, and devices, pipes or sockets. Iterative, so any depth of folders is walked.

    :param root: the corpus, as returned by `open_corpus` (resolved).
    :param follow_outside_links: the user's opt-in to read links that resolve outside `root`.
    :returns: (files to read, skipped entries); sources are relative to `root` (see `source_name`).
    :raises RagError: from `open_corpus` when `root` itself cannot be walked.
    """
    root = open_corpus(root)
    if root.is_file():
        problem = type_problem(root.name, root.stat().st_size)
        return ([root], []) if problem is None else ([], [Skipped(root.name, problem)])
    walk = CorpusWalk(root, follow_outside_links)
    walk.run()
    return walk.files, walk.skipped


class CorpusWalk:
    """One depth-first walk of a corpus folder (see `walk_corpus`): an explicit stack, no recursion.

    :param root: the corpus folder, resolved.
    :param follow_outside_links: read links that resolve outside `root`.
    """

    def __init__(self, root: Path, follow_outside_links: bool) -> None:
        self.root = root
        self.follow_outside_links = follow_outside_links
        self.files: list[Path] = []
        self.skipped: list[Skipped] = []
        st = root.stat()
        self.walked: dict[tuple[int, int], str] = {(st.st_dev, st.st_ino): ""}  # folder -> first source
        self.open: set[tuple[int, int]] = set()  # the folders from the root down to the one being listed
        self.stack: list[tuple[str, tuple[int, int], Iterator[os.DirEntry]]] = []

    def run(self) -> None:
        """Walk the whole tree, filling `files` and `skipped`."""
        self.enter(self.root, "", (self.root.stat().st_dev, self.root.stat().st_ino))
        while self.stack:
            rel, key, entries = self.stack[-1]
            entry = next(entries, None)
            if entry is None:
                self.stack.pop()
                self.open.discard(key)
                continue
            self.visit(entry, f"{rel}/{entry.name}" if rel else entry.name)

    def enter(self, folder: Path, rel: str, key: tuple[int, int]) -> None:
        """List `folder` (source name `rel`) and push its entries, sorted by name; an unlistable folder is skipped."""
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.skipped.append(Skipped(f"{rel}/", f"cannot list folder: {os_reason(exc)}"))
            return
        self.open.add(key)
        self.stack.append((rel, key, iter(entries)))

    def visit(self, entry: os.DirEntry, src: str) -> None:
        """Sort one entry (source name `src`) into `files`, `skipped` or the folders still to list."""
        if entry.name.startswith("."):
            is_dir = entry.is_dir()
            what = "folder" if is_dir else "file"
            self.skipped.append(Skipped(src + "/" * is_dir, f"hidden {what} (name starts with '.'), not read"))
            return
        try:
            est = entry.stat()  # follows symlinks
        except OSError as exc:
            if exc.errno == errno.ENOENT and entry.is_symlink():
                target = os.readlink(entry.path)
                self.skipped.append(Skipped(src, f"broken symlink (its target {target} does not exist)"))
            else:
                self.skipped.append(Skipped(src, os_reason(exc)))
            return
        is_dir = stat.S_ISDIR(est.st_mode)
        # Only a link can lead out: every folder listed so far lies inside the root (or the user opted in).
        target = outside_course(Path(entry.path), self.root, self.follow_outside_links) if entry.is_symlink() else None
        if target is not None:
            self.skipped.append(Skipped(src + "/" * is_dir, outside_reason(target)))
        elif is_dir:
            self.folder(entry, src, (est.st_dev, est.st_ino))
        elif stat.S_ISREG(est.st_mode):
            problem = type_problem(entry.name, est.st_size)
            if problem:
                self.skipped.append(Skipped(src, problem))
            else:
                self.files.append(Path(entry.path))
        else:
            self.skipped.append(Skipped(src, "not a regular file (a device, pipe or socket)"))

    def folder(self, entry: os.DirEntry, src: str, key: tuple[int, int]) -> None:
        """A folder entry: listed unless it is one of its own ancestors (a loop) or a folder already walked."""
        if key in self.open:
            inside = self.walked[key] + "/" if self.walked[key] else "the corpus folder"
            self.skipped.append(Skipped(f"{src}/", f"symlink loop: links back to {inside}, not followed"))
        elif key in self.walked:
            self.skipped.append(Skipped(f"{src}/", f"same folder as {self.walked[key]}/, read there"))
        else:
            self.walked[key] = src
            self.enter(Path(entry.path), src, key)


def source_name(path: Path, root: Path) -> str:
    """The stable name a file is indexed under: its path relative to the corpus root."""
    if root.is_file():
        return path.name
    return path.relative_to(root).as_posix()
