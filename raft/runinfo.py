"""What every `raft train` / `raft eval` run folder records about the session that made it: the command
line, the seed, start and end times, duration and peak memory (long runs are compared and resumed,
so their cost must be on file next to their results)."""

from __future__ import annotations

import resource
import shlex
import sys
import time
from datetime import datetime, timezone
from typing import Any


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed (sys.argv by default), program name without its folder, shell-quoted."""
    args = list(sys.argv if argv is None else argv)
    if args:
        args[0] = args[0].rsplit("/", 1)[-1]
    return shlex.join(args)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (getrusage ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


class Session:
    """One run of a command: started at construction, described by `finish()`."""

    def __init__(self, seed: int, command: str | None = None) -> None:
        """:param seed: the run's --seed. :param command: the command line (default: this process's argv)."""
        self.seed = seed
        self.command = command if command is not None else command_line()
        self.started = time.time()
        self._clock = time.perf_counter()

    def finish(self) -> dict[str, Any]:
        """{command, seed, started_at, finished_at (UTC ISO 8601), duration_s (wall clock), peak_rss_mb}."""
        return {"command": self.command, "seed": self.seed, "started_at": _iso(self.started),
                "finished_at": _iso(time.time()), "duration_s": round(time.perf_counter() - self._clock, 1),
                "peak_rss_mb": peak_rss_mb()}


__all__ = ["command_line", "peak_rss_mb", "Session"]
