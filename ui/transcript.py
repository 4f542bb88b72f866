"""A conversation as a Markdown file to download: questions, answers with their [n] markers, and sources.

The file is for the reader to keep; it is downloaded, never rendered by the app. Answers and quotes are
written as the pipeline returned them (markdown, code and math as they are); file names and headings are
put in code spans so their `_` and `*` stay literal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from ui.citations import mark_citations


def _code(text: str) -> str:
    """`text` as an inline code span (a fence longer than any run of backticks inside)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _quoted(text: str) -> str:
    return "\n".join("> " + line if line.strip() else ">" for line in text.strip().split("\n"))


def conversation_markdown(title: str, messages: Iterable[dict[str, Any]], now: datetime | None = None) -> str:
    """The conversation as Markdown.

    :param title: the conversation's title.
    :param messages: the session messages (role, content, error, abstained, sources, citations).
    :param now: the export time written in the header (default: now, UTC).
    :returns: the document text, ending in a newline.
    """
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"# {' '.join(title.split()) or 'Conversation'}", "", f"_Exported from the course assistant, {stamp}._", ""]
    for msg in messages:
        if msg.get("role") == "user":
            out += ["## Question", "", msg.get("content", "").strip(), ""]
            continue
        out += ["### Answer", ""]
        if msg.get("error"):
            if msg.get("content"):
                out += [msg["content"].strip(), ""]
            out += [f"**Error:** {msg['error']}", ""]
            continue
        text = mark_citations(msg.get("content", ""), msg.get("citations", []))
        out += [text.strip() or "_(no text)_", ""]
        sources = msg.get("sources", [])
        if sources:
            out += ["**Nearest passages:**" if msg.get("abstained") else "**Sources:**", ""]
        for src in sources:
            where = src.source + (f" › {src.section}" if src.section and src.section != src.source else "")
            mark = " (quoted)" if src.quote is not None else (" (supports the answer)" if src.cited else "")
            out.append(f"- [{src.n}] {_code(where)}{mark}")
            words = src.quote.text if src.quote is not None else src.snippet
            if (src.cited or src.quote is not None) and words.strip():
                out += ["", "  " + _quoted(" ".join(words.split())).replace("\n", "\n  ")]
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"
