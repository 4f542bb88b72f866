"""The one progress view of `raft course`: its events, the time left from measured rates, and the bar.

The run (raft.course.run) emits `CourseEvent`s; it draws nothing. `Eta` turns them into the share of the
work done and the time left: the running stage at the rate measured in this session once one unit is done
(before that, at the plan's probed rate), every later stage at its planned seconds. `ProgressView` shows both
on one bar (rag.common.progress: redrawn on a terminal, a line every 30 s in a log); the stages' own bars are
off, so there is one view for the whole run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from raft.course.estimate import human_seconds
from rag.common.progress import progress_bar

EventKind = Literal["plan", "start", "advance", "done", "skip", "note"]


@dataclass(frozen=True)
class CourseEvent:
    """Something that happened in a run.

    :param kind: plan (the plan is known: `data` is the plan record with `left`, seconds per stage still to do),
        start (a stage starts: `done` of `total` units are already done), advance (`done` units now),
        done / skip (a stage finished now / had finished before), note (a line to show: `message`).
    :param stage: the stage's name. :param unit: what a unit is ("chunk", "step", "answer").
    """

    kind: EventKind
    stage: str = ""
    done: int = 0
    total: int = 0
    unit: str = ""
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class Eta:
    """The share of a run's work done and the seconds left, from the plan and the rates measured as it goes.

    :param planned: seconds each stage still needs by the plan, e.g. {"generate": 600, "train": 1800, ...};
        stages absent or at 0 count as done.
    :param clock: seconds (monotonic), injectable for tests.
    """

    def __init__(self, planned: dict[str, float], clock: Callable[[], float] = time.monotonic) -> None:
        self.planned = {k: max(0.0, float(v)) for k, v in planned.items()}
        self.clock = clock
        self.finished: set[str] = {k for k, v in self.planned.items() if v <= 0}
        self.stage: str | None = None
        self.last: str | None = None  # the stage that finished last
        self.total = self.done = self.done_at_start = 0
        self.started = 0.0

    def start(self, stage: str, done: int, total: int) -> None:
        """`stage` starts with `done` of `total` units already done."""
        self.stage, self.done, self.done_at_start, self.total = stage, done, done, max(total, done)
        self.started = self.clock()

    def advance(self, done: int) -> None:
        """The running stage has `done` units done."""
        self.done = done
        self.total = max(self.total, done)

    def finish(self, stage: str) -> None:
        """`stage` is done."""
        self.finished.add(stage)
        self.last = stage
        if stage == self.stage:
            self.stage = None

    def _stage_left(self) -> tuple[float, bool]:
        if self.stage is None:
            return 0.0, False
        units_left = max(0, self.total - self.done)
        ran = self.done - self.done_at_start
        if ran > 0:  # measured in this session
            return units_left * (self.clock() - self.started) / ran, True
        share_left = units_left / self.total if self.total else 1.0
        return self.planned.get(self.stage, 0.0) * share_left, False

    def remaining(self) -> tuple[float, bool]:
        """(seconds left, whether the running stage's part is measured rather than planned)."""
        current, measured = self._stage_left()
        later = sum(v for k, v in self.planned.items() if k not in self.finished and k != self.stage)
        return current + later, measured

    def fraction(self) -> float:
        """The share of the planned work done, 0.0 to 1.0."""
        total = sum(self.planned.values())
        if total <= 0:
            return 1.0
        done = sum(v for k, v in self.planned.items() if k in self.finished)
        if self.stage is not None and self.total:
            done += self.planned.get(self.stage, 0.0) * self.done / self.total
        return min(1.0, done / total)


class ProgressView:
    """One bar for a whole `raft course` run: the share done, the running stage's units, the time left.

    Call it with each CourseEvent (it is the run's `on_event`); `write` prints a line above the bar; `close` ends it.

    :param enabled: False draws no bar (--json); lines are still written. :param clock: as for Eta.
    :param stream: where the bar and the lines go (default: stderr).
    """

    STEPS = 1000  # the bar counts permille of the planned work

    def __init__(self, enabled: bool = True, clock: Callable[[], float] = time.monotonic,
                 stream: IO[str] | None = None) -> None:
        self.enabled = enabled
        self.clock = clock
        self.stream = stream
        self.eta: Eta | None = None
        self.bar: Any = None
        self.unit = ""

    def _draw(self) -> None:
        if self.bar is None or self.eta is None:
            return
        left, measured = self.eta.remaining()
        stage = self.eta.stage
        where = (f"{stage} {self.eta.done}/{self.eta.total} {self.unit}s" if stage and self.eta.total
                 else stage or (f"{self.eta.last} done" if self.eta.last else "starting"))
        self.bar.set_postfix_str(f"{where}, ~{human_seconds(left)} left "
                                 f"({'measured' if measured else 'estimate'})", refresh=False)
        # update() redraws at most every mininterval (a line every 30 s in a log), never once per event
        self.bar.update(max(0, round(self.eta.fraction() * self.STEPS) - self.bar.n))

    def __call__(self, event: CourseEvent) -> None:
        if event.kind == "note":
            self.write(event.message)
            return
        if event.kind == "plan":
            self.eta = Eta(event.data.get("left", {}), self.clock)
            if self.bar is None:
                self.bar = progress_bar(total=self.STEPS, desc="raft course", unit="permille", enabled=self.enabled,
                                        stream=self.stream,
                                        bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed} {postfix}")
        elif self.eta is None:
            return
        elif event.kind == "start":
            self.unit = event.unit
            self.eta.start(event.stage, event.done, event.total)
        elif event.kind == "advance":
            self.eta.advance(event.done)
        elif event.kind in ("done", "skip"):
            self.eta.finish(event.stage)
        self._draw()

    def write(self, line: str) -> None:
        """Print `line` above the bar (on stderr; also without a bar: what the run says is never dropped)."""
        stream = self.stream or sys.stderr  # tqdm.write defaults to stdout, which --json keeps for JSON
        if self.bar is not None:
            self.bar.write(line, file=stream)
        else:
            print(line, file=stream, flush=True)

    def close(self) -> None:
        """End the bar (idempotent)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


__all__ = ["CourseEvent", "Eta", "ProgressView"]
