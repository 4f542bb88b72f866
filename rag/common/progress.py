"""Progress bars that show on a terminal and in a log file alike: every long command uses `progress_bar`.

tqdm redraws one line with carriage returns. With stderr redirected (`nohup raft generate ... > log`, a CI
log, a service manager) tqdm's `disable=None` shows nothing at all, and an enabled bar writes one endless
line of '\\r'-joined updates. A RAFT generation runs for hours, so its log must say how far it is: when
stderr is not a terminal, this writes each update as a line of its own, at most one every
`LOG_INTERVAL_S` seconds (tqdm's `mininterval`), plus the final one. On a terminal it is plain tqdm.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

#: Seconds between two progress lines in a log (a terminal's bar redraws as tqdm likes).
LOG_INTERVAL_S = 30.0


class LineWriter:
    """A file-like wrapper that turns tqdm's carriage-return redraws into whole lines.

    :param stream: where the lines go (a text stream: stderr, a log file).
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip("\n")
        if line.strip():
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Iterable[Any] | None = None, *, total: int | None, desc: str, unit: str, initial: int = 0,
                 enabled: bool = True, leave: bool = True, stream: IO[str] | None = None, **options: Any) -> tqdm:
    """A tqdm bar on `stream` (default stderr): redrawn on a terminal, a line per update in a log.

    :param iterable: items to iterate with progress (optional; else call `update`).
    :param total: items in all (None: unknown); `initial`: items already done (a resumed run).
    :param desc: the label, e.g. "raft chunks"; `unit`: what an item is, e.g. "chunk".
    :param enabled: False gives a bar that prints nothing (`--json` output, tests, library use).
    :param leave: keep the finished bar on a terminal.
    :param options: more tqdm options (e.g. `postfix`).
    :returns: the bar; update it with `update(n)` / `set_postfix`, and `close()` it (or use `with`).
    """
    stream = stream or sys.stderr
    if not enabled:
        return tqdm(iterable, total=total, initial=initial, disable=True)
    if stream.isatty():
        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, file=stream, leave=leave,
                    dynamic_ncols=True, **options)
    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, file=LineWriter(stream), leave=True,
                mininterval=LOG_INTERVAL_S, maxinterval=max(LOG_INTERVAL_S, 10.0), ncols=100, ascii=True, **options)
