"""Progress that a log file can show (rag.common.progress): a line per update, never a '\\r' redraw."""

from __future__ import annotations

import io

from rag.common.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_and_the_final_count():
    log = io.StringIO()
    with progress_bar(total=5, initial=2, desc="raft chunks", unit="chunk", stream=log) as bar:
        for _ in range(3):
            bar.update(1)
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines[0].startswith("raft chunks:") and "2/5" in lines[0]  # a resumed run starts where it was
    assert "5/5" in lines[-1]
    assert len(lines) <= 3  # updates within LOG_INTERVAL_S are not each written


def test_a_terminal_gets_tqdms_redrawn_bar_and_disabled_prints_nothing():
    term = Terminal()
    with progress_bar(total=2, desc="rag eval", unit="question", stream=term) as bar:
        bar.update(2)
    assert "\r" in term.getvalue() and "2/2" in term.getvalue()
    quiet = io.StringIO()
    assert list(progress_bar([1, 2], total=2, desc="x", unit="y", enabled=False, stream=quiet)) == [1, 2]
    assert quiet.getvalue() == ""
