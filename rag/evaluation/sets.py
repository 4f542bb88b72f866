"""Evaluation sets that resemble real use, built from any course folder without hand-picked questions.

Two sets, both written into a fresh corpus folder that the pipelines under test index:

* **quiz set** (`make_quiz_set`): the course *without its quizzes*, asked the quiz questions. A student
  asks the quiz's question; the quiz itself is not there to answer it. Files that are quizzes (most of
  their text is numbered questions with option lists, see `looks_like_quiz`) are left out whole, and
  every asked question's own item (stem, options, explanation) is cut out of the files that stay (quiz
  sections inside lecture notes, Q&A sheets). A hit is a passage holding one of the question's evidence
  quotes (`rag.evaluation.retrieval.contains_evidence`). Why: with the quizzes indexed, the dev set
  rewarded the mode that finds the quiz item that repeats the question.
* **cloze set** (`make_cloze_set`): a course-independent oracle check in the style of the inverse cloze
  task (Lee, Chang & Toutanova 2019, ORQA): sentences drawn by a seeded sampler from the prose of the
  course's non-quiz files are removed from the indexed copy and used as the queries; the passage they
  came from is the oracle, recognised by the sentence just before or after the removed one (what stays
  of the oracle wherever a pipeline cuts its chunks). It needs no language model and no hand-written
  question, so it runs on any course; like RAFT's generated questions it pairs each query with the one
  passage it came from, and unlike them it cannot leak the answer's words into the query.
"""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rapidfuzz import fuzz

from rag.common.text import normalize_ws
from rag.errors import RagError
from rag.evaluation.retrieval import contains_evidence
from rag.ingest.loaders import Document, load_documents

# A numbered quiz item at the start of a line (same forms as the chunker's QUESTION_START).
_ITEM = re.compile(r"^[ \t]*(?:\*\*|__)?(?:(?:Question|Q)[ \t]*\d{1,3}\b|\d{1,3}[.)](?=[ \t*_]))", re.MULTILINE)
# An answer option line: checkbox lists, ballot boxes, lettered options, arrow-marked choices.
_OPTION = re.compile(r"^[ \t]*(?:[-*+][ \t]+)?(?:\[[ xX]\]|[☐☒☑✓✗]|\(?[A-Ha-h][.)](?=[ \t])|→|‚Üí)", re.MULTILINE)
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+\S", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
MAX_ITEM_CHARS = 1500  # a quiz item (stem, options, explanation) is cut at most this long
STEM_MATCH = 90.0  # fuzzy score (0-100) at which an item's opening is the asked question's stem


@dataclass
class EvalSet:
    """Questions with evidence, and the corpus folder (written by the builder) that answers them.

    :param name: short label for tables ("quiz", "cloze").
    :param corpus: folder holding the files to index.
    :param questions: rows {"id", "question", "evidence": [quote, ...]}.
    :param notes: how the set was made (files left out, items cut, sampling), for the report.
    """

    name: str
    corpus: Path
    questions: list[dict[str, Any]]
    notes: dict[str, Any] = field(default_factory=dict)


def _items(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the numbered items of `text`; an item ends at the next item or heading."""
    starts = [m.start() for m in _ITEM.finditer(text)]
    stops = sorted(set(starts) | {m.start() for m in _HEADING.finditer(text)} | {len(text)})
    spans = []
    for s in starts:
        e = next(x for x in stops if x > s)
        spans.append((s, e))
    return spans


def looks_like_quiz(text: str) -> bool:
    """Whether a document is a quiz: at least 3 numbered items with 2+ option lines, covering half its text.

    Lecture notes with a short quiz section, and Q&A sheets (numbered questions answered in bullet
    points, no options), are not quizzes by this rule; their asked items are cut by `cut_items`.

    :param text: the document's text.
    :returns: True when the document is mostly multiple-choice items.
    """
    covered, n = 0, 0
    for s, e in _items(text):
        if len(_OPTION.findall(text[s:e])) >= 2:
            n += 1
            covered += e - s
    return n >= 3 and covered >= 0.5 * len(text.strip())


def cut_items(text: str, stems: list[str], protect: list[str]) -> tuple[str, int]:
    """Remove the numbered items whose opening matches one of `stems`, never removing a `protect` quote.

    :param text: a document's text.
    :param stems: the asked questions (their text as asked).
    :param protect: evidence quotes; an item holding one keeps the paragraphs up to the quote.
    :returns: the text without those items, and how many were cut.
    """
    keys = [normalize_ws(s).lower()[:160] for s in stems if s.strip()]
    cuts: list[tuple[int, int]] = []
    for s, e in _items(text):
        e = min(e, s + MAX_ITEM_CHARS)
        head = normalize_ws(text[s:e]).lower()[:400]
        if not any(fuzz.partial_ratio(k, head) >= STEM_MATCH for k in keys if len(k) <= len(head) + 40):
            continue
        body = text[s:e]
        for q in protect:  # keep lecture text that happens to follow the last item of a quiz section
            nq = normalize_ws(q)
            if nq and contains_evidence(body, [q]):
                para = [m.start() for m in re.finditer(r"\n\s*\n", body)]
                keep_from = next((p for p in reversed(para) if not contains_evidence(body[:p], [q])), 0)
                e = min(e, s + keep_from)
        if e > s:
            cuts.append((s, e))
    for s, e in sorted(cuts, reverse=True):
        text = text[:s] + text[e:]
    return text, len(cuts)


def _write(folder: Path, docs: Iterable[Document]) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    for d in docs:
        path = folder / d.source
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(d.text, encoding="utf-8")


def _load(corpus: Path) -> list[Document]:
    if not corpus.exists():
        raise RagError(f"corpus folder {corpus} does not exist: give a folder of course files")
    docs, _ = load_documents(corpus)
    if not docs:
        raise RagError(f"corpus folder {corpus} has no readable .md/.txt/.pdf/.html file")
    return docs


def make_quiz_set(corpus: Path, questions: list[dict[str, Any]], out: Path) -> EvalSet:
    """The course without its quizzes, asked the quiz questions (see the module docstring).

    :param corpus: the course folder (read only).
    :param questions: rows with "question" and "evidence" quotes (rows without evidence are dropped).
    :param out: folder to write the evaluation corpus into (replaced).
    :returns: the set; `notes` lists the quiz files left out and the items cut.
    :raises RagError: when no question has evidence, or an evidence quote is in none of the kept files.
    """
    asked = [q for q in questions if q.get("evidence")]
    if not asked:
        raise RagError("no question has \"evidence\" quotes: the quiz set scores evidence hits")
    quotes = [e for q in asked for e in q["evidence"]]
    stems = [q["question"] for q in asked]
    kept, left_out, cut = [], [], {}
    for d in _load(corpus):
        if looks_like_quiz(d.text):
            left_out.append(d.source)
            continue
        text, n = cut_items(d.text, stems, quotes)
        if n:
            cut[d.source] = n
        kept.append(Document(text, d.source, d.sha256, d.metadata))
    _write(out, kept)
    missing = [q["id"] for q in asked if not any(contains_evidence(d.text, q["evidence"]) for d in kept)]
    return EvalSet("quiz", out, asked, {"left_out": left_out, "items_cut": cut, "files": len(kept),
                                        "no_evidence_left": missing})


_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])")
_PROSE = re.compile(r"^[A-Za-z\"'(]")
_LIST = re.compile(r"^[ \t]*[-*+•][ \t]", re.MULTILINE)
_URL = re.compile(r"https?://|www\.|\]\(|\|")


def _paragraphs(text: str) -> Iterable[tuple[int, str]]:
    """(offset, text) of blank-line separated paragraphs outside code fences."""
    pos, start, buf, fence = 0, None, [], None
    for line in text.splitlines(keepends=True):
        f = _FENCE.match(line)
        if f:
            fence = None if fence == f.group(1) else (fence or f.group(1))
        if fence or f or not line.strip():
            if buf:
                yield start, "".join(buf)
            buf, start = [], None
        else:
            if start is None:
                start = pos
            buf.append(line)
        pos += len(line)
    if buf:
        yield start, "".join(buf)


def cloze_candidates(doc: Document, min_words: int = 8, max_words: int = 45) -> list[dict[str, Any]]:
    """Prose sentences of `doc` that have a prose sentence before and after them in the same paragraph.

    :returns: rows {"source", "start", "end", "sentence", "before", "after"} (character offsets in doc.text).
    """
    out = []
    for off, para in _paragraphs(doc.text):
        if para.lstrip().startswith(("#", "|", ">", "<")) or _ITEM.search(para) or _OPTION.search(para) \
                or _LIST.search(para):
            continue  # headings, tables, quotes, quiz items, options and lists are not running prose
        bounds = [0] + [m.end() for m in _SENT_END.finditer(para)] + [len(para)]
        sents = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
        for i in range(1, len(sents) - 1):
            s, e = sents[i]
            texts = [normalize_ws(para[a:b]) for a, b in sents[i - 1:i + 2]]
            if not all(_PROSE.match(t) and not _URL.search(t) for t in texts):
                continue
            words = [len(t.split()) for t in texts]
            if not (min_words <= words[1] <= max_words and words[0] >= 6 and words[2] >= 6):
                continue
            out.append({"source": doc.source, "start": off + s, "end": off + e, "sentence": texts[1],
                        "before": texts[0], "after": texts[2]})
    return out


def make_cloze_set(corpus: Path, out: Path, n: int = 40, seed: int = 13) -> EvalSet:
    """Inverse-cloze oracle questions from the course's non-quiz prose (see the module docstring).

    Sentences are drawn uniformly (seeded) among the candidates, at most one per paragraph neighbourhood
    (a drawn sentence's neighbours are never drawn themselves), and removed from every file holding them.

    :param corpus: the course folder (read only).
    :param out: folder to write the evaluation corpus into (replaced).
    :param n: how many questions to draw.
    :param seed: the sampler's seed.
    :returns: the set: query = the removed sentence, evidence = [sentence before, sentence after].
    :raises RagError: when the course has no prose to draw from.
    """
    docs = [d for d in _load(corpus) if not looks_like_quiz(d.text)]
    cands = [c for d in docs for c in cloze_candidates(d)]
    if not cands:
        raise RagError(f"{corpus} has no prose paragraphs of 3+ sentences to draw cloze questions from")
    rng = random.Random(seed)
    rng.shuffle(cands)
    chosen, used = [], set()
    for c in cands:
        key = c["sentence"].lower()
        if key in used or c["before"].lower() in used or c["after"].lower() in used:
            continue
        used.update({key, c["before"].lower(), c["after"].lower()})
        chosen.append(c)
        if len(chosen) == n:
            break
    texts = {d.source: d.text for d in docs}
    for c in chosen:  # remove each drawn sentence wherever it occurs (duplicate files included)
        pat = re.compile(r"\s+".join(re.escape(w) for w in c["sentence"].split()) + r"[ \t]*")
        texts = {src: pat.sub("", text) for src, text in texts.items()}
    _write(out, [Document(texts[d.source], d.source, d.sha256, d.metadata) for d in docs])
    questions = [{"id": f"c{i:02d}", "question": c["sentence"], "evidence": [c["before"], c["after"]],
                  "source": c["source"]} for i, c in enumerate(chosen, start=1)]
    return EvalSet("cloze", out, questions, {"candidates": len(cands), "drawn": len(chosen), "seed": seed,
                                             "files": len(docs)})
