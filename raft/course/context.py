"""What every stage of a `raft course` run shares: the course, the output folder's layout, the options, the
teacher (loaded once, released after the generate stage), the course's index and the event callback.

OUT holds: course.json (the arguments that decide the run), course_state.json (raft.course.state), index/
(the course's own index, unless --index-dir), data/ (`raft generate`), train/ (`raft train`), adapter/ (the
course adapter: train/adapter/ with the course's files recorded, what is evaluated and installed), eval/
(`raft eval`: base against tuned on the held-out split).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raft.course.options import CourseOptions
from raft.course.progress import CourseEvent
from raft.course.teacher import TeacherChoice

IDENTITY = "course.json"
DATA, TRAIN, ADAPTER, EVAL, INDEX = "data", "train", "adapter", "eval", "index"


@dataclass
class CourseRun:
    """One invocation of `raft course` on CORPUS -> OUT.

    :param corpus: the course folder. :param out: the output folder.
    :param options: the run's options. :param settings: rag Settings with the course's index_dir, the teacher as
        `model` (+ model_name, max_new_tokens) and the server limits.
    :param teacher: the chosen teacher. :param registry: the folder of installed course adapters.
    :param emit: where events go (raft.course.progress). :param command: the command line, for the run records.
    """

    corpus: Path
    out: Path
    options: CourseOptions
    settings: Any
    teacher: TeacherChoice
    registry: Path
    emit: Callable[[CourseEvent], None]
    command: str | None = None
    course_files: dict[str, str] = field(default_factory=dict)
    _index: Any = field(default=None, repr=False)
    _teacher: Any = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        return self.out / DATA

    @property
    def train_dir(self) -> Path:
        return self.out / TRAIN

    @property
    def adapter(self) -> Path:
        return self.out / ADAPTER

    @property
    def eval_dir(self) -> Path:
        return self.out / EVAL

    def note(self, message: str) -> None:
        """Show one line to the user (above the progress bar)."""
        self.emit(CourseEvent("note", message=message))

    def raft_config(self) -> Any:
        """The `raft generate` configuration (raft.synth.run.RaftConfig) of this run; its own bar is off."""
        from raft.synth.run import RaftConfig

        o = self.options
        return RaftConfig(corpus=str(self.corpus), questions=o.questions, distractors=o.distractors, p=o.p,
                          strategy=o.strategy, seed=o.seed, min_chunk_words=o.min_chunk_words, limit=o.limit,
                          workers=o.workers, progress=False)

    def index(self) -> Any:
        """The course's index (rag.index.store.VectorIndex), loaded once."""
        if self._index is None:
            from rag.api import get_embedder
            from rag.index.store import VectorIndex

            self._index = VectorIndex.load(self.settings.index_dir, get_embedder(self.settings))
        return self._index

    def chunks(self) -> list[Any]:
        """The chunks the teacher is given, in `raft generate`'s seeded order (too-short ones left out)."""
        from raft.synth.run import select_chunks

        o = self.options
        chosen, _ = select_chunks(self.index().chunks, o.seed, o.limit, o.min_chunk_words)
        return chosen

    def teacher_generator(self) -> Any:
        """The teacher's backend, built once (a server: nothing is contacted until asked)."""
        if self._teacher is None:
            from rag.api import backend_options
            from rag.generation.factory import get_generator

            self._teacher = get_generator(self.teacher.spec, model_name=self.options.teacher_name,
                                          **backend_options(self.settings, self.teacher.spec))
        return self._teacher

    def release_teacher(self) -> None:
        """Free the teacher's memory (an in-process model) before training needs it."""
        if self._teacher is not None:
            local = self._teacher.local
            self._teacher = None
            if local:
                import gc

                from rag.generation.local import release_local_models

                release_local_models()
                gc.collect()


__all__ = ["IDENTITY", "DATA", "TRAIN", "ADAPTER", "EVAL", "INDEX", "CourseRun"]
