"""Text the chat page shows, built as plain strings (no Streamlit here, so tests can check it directly)."""

from __future__ import annotations

import html
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from rag.answering.answer import Source
from rag.config import project_root
from rag.ingest.locations import passage_label

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~$:])")
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
    Fenced code blocks are left as they are: markdown shows them as written, loading nothing. They are found
    by a CommonMark parser (markdown-it), not by the look of a line: a fence inside a list item or a quote
    ends with it, and a regex that ran on to the next fence line left an image between them live. The
    result is parsed again, and if it still holds an image or raw HTML (a case the split missed), all of
    the text, code included, is neutralised.

    Used for every text of a course file or a model the app renders as markdown (answers while they stream
    and after, quotes, history, messages naming files); passages are escaped HTML (`passage_html`).

    :param text: the untrusted markdown.
    :returns: markdown to render (Streamlit's `st.markdown`, `st.warning`, …).
    """
    if "```" not in text and "~~~" not in text:
        return _neutralise(text)
    lines = text.split("\n")
    code = [False] * len(lines)
    for start, end in _fence_lines(text):
        code[start:end] = [True] * (end - start)
    out, run = [], []
    for line, is_code in zip(lines, code):
        if is_code:
            if run:
                out.append(_neutralise("\n".join(run)))
                run = []
            out.append(line)
        else:
            run.append(line)
    if run:
        out.append(_neutralise("\n".join(run)))
    safe = "\n".join(out)
    return safe if not _loads_anything(safe) else _neutralise(text)


def _parser():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark")


def _fence_lines(text: str) -> list[tuple[int, int]]:
    """The [start, end) line ranges of the fenced code blocks of `text`, wherever they are (lists, quotes)."""
    return [tuple(t.map) for t in _parser().parse(text) if t.type == "fence" and t.map]


def _loads_anything(text: str) -> bool:
    """Whether markdown `text` still renders an image or raw HTML (the check of `safe_markdown`'s result)."""
    for token in _parser().parse(text):
        if token.type == "html_block":
            return True
        if any(child.type in ("image", "html_inline") for child in token.children or []):
            return True
    return False


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
    """The expander title of one source: number, its label (file · slide/page/cell · heading, as the CLI and
    API name it: rag.ingest.locations.passage_label) and score."""
    where = src.label or passage_label(src.source, src.section, src.location)
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
