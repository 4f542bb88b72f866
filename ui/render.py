"""Text the chat page shows, built as plain strings (no Streamlit here, so tests can check it directly)."""

from __future__ import annotations

import html
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from rag.answering.pipeline import Source
from rag.config import project_root

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~$:])")
# Fenced code blocks (``` or ~~~ at most 3 spaces in, to their closing fence or the end), which markdown shows
# as written. A backtick fence's info string holds no backtick (else it is no fence). Inline code spans are
# not skipped: what counts as one depends on escapes, autolinks and HTML around it, and a wrong guess would
# leave an image live; inside one the neutralised text just shows as it is.
_FENCE = re.compile(r"^ {0,3}(?:(`{3,})[^`\n]*|(~{3,})[^\n]*)\n(?:.*?\n)??(?: {0,3}(?:\1|\2)[`~]*[ \t]*(?:\n|\Z)|\Z)",
                    re.MULTILINE | re.DOTALL)
# The start of a raw HTML tag, comment or declaration (`<img`, `</iframe`, `<!--`, `<?`); not an autolink
# (`<https://…>`: a colon follows the name) nor an email autolink.
_RAW_TAG = re.compile(r"<(?=/?[A-Za-z][A-Za-z0-9-]*(?:[\s/>]|$)|[!?])")
IMAGE_MARK = "🖼 "  # what a neutralised image's link text starts with


def md_escape(text: str) -> str:
    """`text` shown literally in Streamlit markdown (file names and headings contain _ * [ ] and the like)."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def _neutralise(text: str) -> str:
    """`text` (no code in it) with images made links and raw HTML tags shown as text."""
    return _RAW_TAG.sub("&lt;", text.replace("![", "[" + IMAGE_MARK))


def safe_markdown(text: str) -> str:
    """Markdown that came from a course file or a model, made unable to load anything when rendered.

    An image is a link with a `!` in front in every markdown form (`![a](url)`, `![a][ref]`, `![a][]`,
    `![a]`), so dropping the `!` makes each one a plain link, shown as text starting with IMAGE_MARK and
    fetched only if the reader clicks it: no visitor's browser requests a URL chosen by whoever wrote a
    course file or runs the model server (`data:` images become links too, which browsers do not open by
    themselves). Raw HTML (`<img>`, `<iframe>`, `<video>`, `<audio>`, `<source>`, `<link>`, `<object>`,
    `<svg>`…) is shown as text (its `<` escaped), whether or not the renderer would pass HTML through.
    Fenced code blocks are left as they are: markdown shows them as written, loading nothing.

    Used for every text of a course file or a model the app renders as markdown (answers while they stream
    and after, quotes, history, messages naming files); passages are escaped HTML (`passage_html`).

    :param text: the untrusted markdown.
    :returns: markdown to render (Streamlit's `st.markdown`, `st.warning`, …).
    """
    out, at = [], 0
    for code in _FENCE.finditer(text):
        out += [_neutralise(text[at:code.start()]), code.group(0)]
        at = code.end()
    out.append(_neutralise(text[at:]))
    return "".join(out)


def _find(text: str, snippet: str) -> tuple[int, int] | None:
    """Where `snippet` occurs in `text`, tolerating different whitespace; None if it does not."""
    snippet = snippet.strip()
    if not snippet:
        return None
    i = text.find(snippet)
    if i >= 0:
        return i, i + len(snippet)
    words = snippet.split()
    m = re.search(r"\s+".join(re.escape(w) for w in words), text)
    return (m.start(), m.end()) if m else None


def passage_html(text: str, snippet: str = "", highlight: bool = True) -> str:
    """The passage as escaped HTML with the supporting `snippet` wrapped in <mark>.

    One line without blank lines, so markdown treats it as a single raw HTML block and never
    interprets the passage's own markdown, links or images.
    """
    span = _find(text, snippet) if highlight else None
    if span:
        a, b = span
        body = f"{html.escape(text[:a])}<mark>{html.escape(text[a:b])}</mark>{html.escape(text[b:])}"
    else:
        body = html.escape(text)
    body = re.sub(r"\n[ \t]*(?:\n[ \t]*)+", "\n\n", body.strip().replace("\r", "")).replace("\n", "<br>")
    return f'<div class="rag-passage" style="font-size:0.9em;line-height:1.45">{body}</div>'


def source_label(src: Source) -> str:
    """The expander title of one source: number, file, heading and score."""
    where = src.source + (f" › {src.section}" if src.section and src.section != src.source else "")
    mark = " · quoted" if src.quote is not None else (" · supports the answer" if src.cited else "")
    return md_escape(f"[{src.n}] {where}") + f" · score {src.score:.2f}{mark}"


def display_path(path: Path) -> str:
    """`path` relative to the project when it lies inside it (shorter in the sidebar), else absolute."""
    try:
        return Path(path).resolve().relative_to(project_root().resolve()).as_posix()
    except ValueError:
        return str(path)


def format_built(stamp: str | None) -> str:
    """An ISO timestamp from the manifest as 'YYYY-MM-DD HH:MM UTC'."""
    if not stamp:
        return "unknown"
    try:
        return datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return stamp


def index_facts(manifest: dict[str, Any]) -> dict[str, str]:
    """Documents, chunks, embedder and last build time of an index, for the sidebar."""
    counts = manifest.get("counts", {})
    return {
        "Documents": str(counts.get("files", len(manifest.get("files", {})))),
        "Chunks": str(counts.get("chunks", "?")),
        "Embedder": str(manifest.get("embedding", {}).get("model_id", "unknown")),
        "Last build": format_built(manifest.get("updated")),
    }


def timing_caption(timings: dict[str, float]) -> str:
    """A short line with where the time went, e.g. 'retrieval 0.4 s · first token 4.5 s · answer 4.9 s'."""
    names = [("retrieve", "retrieval"), ("first_token", "first token"), ("generate", "answer"),
             ("attribute", "sources")]
    return " · ".join(f"{label} {timings[key]:.1f} s" for key, label in names if key in timings)
