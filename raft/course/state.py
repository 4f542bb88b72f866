"""The state file of a `raft course` run: which stages are done, with what result, written atomically after each.

OUT/course_state.json = {"format": 1, "stages": {name: StageRecord}}. A stage is "running" from its start
until its result is on disk, then "done"; a run that resumes skips the done stages and runs the others again,
each of which resumes its own work (`raft generate`, `raft train` and `raft eval` folders are crash-safe).
A damaged state file is moved aside (course_state.json.damaged), not deleted, and the run goes on without it:
every stage then resumes from its own folder, which costs a little checking and loses nothing.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rag.common.atomic import write_json_atomic

STATE = "course_state.json"


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StageRecord(BaseModel):
    """One stage's bookkeeping: status, times over every session that ran it, and its result."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["running", "done"]
    started_at: str = Field(description="UTC ISO 8601, the first session that started it")
    finished_at: str | None = None
    sessions: int = Field(1, ge=1, description="sessions (invocations) that ran it")
    seconds: float = Field(0.0, ge=0, description="wall-clock seconds over every session, up to the last finish")
    result: dict[str, Any] = Field(default_factory=dict)


class CourseState(BaseModel):
    """course_state.json as a whole."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    stages: dict[str, StageRecord] = Field(default_factory=dict)

    def done(self, stage: str) -> bool:
        """Whether `stage` finished (in this or an earlier session)."""
        record = self.stages.get(stage)
        return record is not None and record.status == "done"

    def result(self, stage: str) -> dict[str, Any]:
        """The result of a finished stage ({} when it has not finished)."""
        return self.stages[stage].result if self.done(stage) else {}


def load_state(out: Path) -> tuple[CourseState, str | None]:
    """The state of the run in OUT, and a note when a damaged file was moved aside.

    :returns: (state, None), or a fresh state and "OUT/course_state.json was damaged (...): moved to ..." .
    """
    path = Path(out) / STATE
    try:
        return CourseState.model_validate(json.loads(path.read_text(encoding="utf-8"))), None
    except FileNotFoundError:
        return CourseState(), None
    except (OSError, UnicodeDecodeError, ValueError, ValidationError) as e:
        aside = path.with_name(f"{STATE}.damaged")
        os.replace(path, aside)
        reason = e.errors()[0]["msg"] if isinstance(e, ValidationError) else type(e).__name__
        return CourseState(), (f"{path} was damaged ({reason}): moved to {aside.name}; every stage resumes from "
                               "its own folder")


def save_state(out: Path, state: CourseState) -> None:
    """Write OUT/course_state.json atomically."""
    write_json_atomic(Path(out) / STATE, state.model_dump(mode="json"))


__all__ = ["STATE", "StageRecord", "CourseState", "load_state", "save_state", "now_iso"]
