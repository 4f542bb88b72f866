"""Chunking: within the embedder's window, heading paths, quiz items whole, stable ids, exact spans."""

from __future__ import annotations

import re

import pytest

from rag.ingest.chunking import Chunker, sections
from rag.ingest.loaders import Document, load_documents
from tests.conftest import CORPUS


@pytest.fixture(scope="module")
def chunker(embedder):
    return Chunker(embedder.tokenizer, embedder.max_tokens, chunk_tokens=200, overlap=32)


@pytest.fixture(scope="module")
def cutting(embedder):
    """A chunker that cuts at every heading (merge_sections=False): one passage per section."""
    return Chunker(embedder.tokenizer, embedder.max_tokens, chunk_tokens=200, overlap=32, merge_sections=False)


def doc(text: str, source: str = "x.md") -> Document:
    return Document(text=text, source=source, sha256="0")


def test_every_corpus_chunk_fits_the_window_and_spans_are_exact(chunker, embedder):
    docs, skipped = load_documents(CORPUS)
    assert not skipped and len(docs) >= 5
    for d in docs:
        chunks = chunker.split(d)
        assert chunks, d.source
        for c in chunks:
            n = len(embedder.tokenizer(c.embed_text)["input_ids"])  # with [CLS]/[SEP]
            assert n <= embedder.max_tokens, (c.source, c.section, n)
            assert d.text[c.span[0]:c.span[1]] == c.text


def test_heading_path_and_code_fence_headings(cutting):
    text = ("# Course\n\nintro words\n\n## Week 1\n\n### LoRA\n\nLoRA trains adapters.\n\n"
            "```python\n# not a heading\nx = 1\n```\n\n## Week 2\n\nAttention.\n")
    chunks = cutting.split(doc(text))
    by_text = {[ln for ln in c.text.split("\n") if ln and not ln.startswith("#")][0]: c.section
               for c in chunks if any(ln and not ln.startswith("#") for ln in c.text.split("\n"))}
    assert by_text["intro words"] == "Course"
    assert by_text["LoRA trains adapters."] == "Course > Week 1 > LoRA"
    assert by_text["Attention."] == "Course > Week 2"
    assert not any("not a heading" in c.section for c in chunks)
    assert [s[0] for s in sections(text)][-1] == "Course > Week 2"


def _quiz(n: int) -> str:
    parts = ["# Quiz\n"]
    for i in range(1, n + 1):
        parts.append(
            f"**{i}.** Question number {i}: which statement about topic {i} and its many subtle properties is true?\n\n"
            f"- [ ] Option alpha for question {i} describing an incorrect idea in several words\n"
            f"- [x] Option beta for question {i} describing the correct idea in several words\n"
            f"- [ ] Option gamma for question {i} which is also wrong for a reason\n\n"
            f"Explanation {i}: beta is right because the course says so in lecture {i}, and the other options confuse terms.\n")
    return "\n".join(parts)


@pytest.mark.parametrize("style", ["bold", "plain", "question"])
def test_quiz_question_stays_whole_with_options_and_explanation(chunker, style):
    text = _quiz(12)
    if style == "plain":
        text = re.sub(r"\*\*(\d+)\.\*\*", r"\1.", text)
    elif style == "question":
        text = re.sub(r"\*\*(\d+)\.\*\*", r"Question \1:", text)
    chunks = chunker.split(doc(text))
    assert len(chunks) > 2  # the quiz is longer than one chunk
    for i in range(1, 13):
        holders = [c for c in chunks if f"Question number {i}:" in c.text]
        assert len(holders) >= 1
        whole = [c for c in holders if f"Option gamma for question {i} " in c.text and f"Explanation {i}:" in c.text]
        assert whole, f"question {i} split across chunks"


def test_long_paragraph_is_split_under_budget_with_overlap(chunker, embedder):
    sentences = [f"Sentence {i} talks about attention heads and key value caches in detail." for i in range(120)]
    chunks = chunker.split(doc("# Long\n\n" + " ".join(sentences)))
    assert len(chunks) >= 4
    for c in chunks:
        assert len(embedder.tokenizer(c.embed_text)["input_ids"]) <= embedder.max_tokens
    # overlap: consecutive chunks share text
    assert any(a.text[-40:] in b.text or b.text[:40] in a.text for a, b in zip(chunks, chunks[1:]))


def test_ids_are_stable_and_depend_on_source_and_content(cutting):
    text = "# A\n\nsame words\n\n# B\n\nother words\n"
    first = [c.id for c in cutting.split(doc(text))]
    assert first == [c.id for c in cutting.split(doc(text))]
    assert first != [c.id for c in cutting.split(doc(text, source="y.md"))]
    assert len(set(first)) == len(first)
    edited = [c.id for c in cutting.split(doc(text.replace("other", "changed")))]
    assert edited[0] == first[0] and edited[1] != first[1]


def test_duplicate_passages_in_one_file_get_distinct_ids(cutting):
    chunks = cutting.split(doc("# A\n\nrepeat me\n\n# A\n\nrepeat me\n"))
    assert len(chunks) == 2 and chunks[0].id != chunks[1].id


def _paths(text: str) -> list[str]:
    """Heading path of each non-empty section, in order."""
    return [p for p, start, end in sections(text) if text[start:end].strip()]


# Issue 11: a fence closes only at a fence of the same character at least as long as its opener
# (CommonMark 4.5). The cases marked "was wrong" gave another heading path before the CommonMark parser.
FENCE_CASES = {
    # was wrong: the ```` fence's inner ``` closed it, "# comment" became a heading of "Real"
    "four backticks hold a python block": (
        "# Course\n\n````markdown\n```python\n# comment\nx = 1\n```\n````\n\n## Real\n\nreal text\n",
        ["Course", "Course > Real"]),
    # was wrong: ~~~ closed a ~~~~ fence
    "a shorter tilde fence does not close": (
        "# Course\n\n~~~~\n~~~\n# inside\n~~~\n~~~~\n\n## Real\n\nreal text\n", ["Course", "Course > Real"]),
    "tildes hold backticks and close only with tildes": (
        "# Course\n\n~~~\n```\n# inside\n~~~\n\n## Real\n\nreal text\n```\n", ["Course", "Course > Real"]),
    # was wrong: a line starting with inline code (backticks in the info string) opened a fence
    "inline code at a line start is no fence": (
        "# Course\n\n```x``` is inline code\n\n## Real\n\nreal text\n", ["Course", "Course > Real"]),
    "a longer closing fence closes": (
        "# Course\n\n```\n# inside\n`````\n\n## Real\n\nreal text\n", ["Course", "Course > Real"]),
    "a fence inside a list item": (
        "# Course\n\n1. Install:\n   ```bash\n   # install\n   pip install x\n   ```\n\n## Real\n\nreal text\n",
        ["Course", "Course > Real"]),
    "an unclosed fence runs to the end": (
        "# Course\n\ntext\n\n```\n# inside\n\n## not real\n", ["Course"]),
}


@pytest.mark.parametrize("case", list(FENCE_CASES))
def test_code_fences_follow_commonmark(case):
    text, expected = FENCE_CASES[case]
    assert _paths(text) == expected


def test_sections_spans_cover_the_text_after_each_heading():
    text = "intro\n\n# A\n\n````\n```\n# x\n```\n````\nbody A\r\n## B\nbody B"
    got = list(sections(text))
    assert [p for p, _, _ in got] == ["", "A", "A > B"]
    assert [text[s:e] for _, s, e in got] == ["intro\n\n", "\n````\n```\n# x\n```\n````\nbody A\r\n", "body B"]


# ---- issue 13: passages that fill the embedder's window, child windows --------------------------------


def _notes(n_sections: int, sentences: int = 2) -> str:
    parts = ["# Notes\n"]
    for i in range(n_sections):
        body = " ".join(f"Topic {i} sentence {j} explains one idea about adapters and attention." for j in range(sentences))
        parts.append(f"## Topic {i}\n\n{body}\n")
    return "\n".join(parts)


def test_small_sections_are_packed_up_to_the_budget_with_their_headings(chunker, cutting, embedder):
    text = _notes(12)
    d = doc(text)
    merged, cut = chunker.split(d), cutting.split(d)
    assert len(cut) >= 12 and len(merged) <= len(cut) // 3
    for c in merged:
        assert d.text[c.span[0]:c.span[1]] == c.text
        assert len(embedder.tokenizer(c.embed_text)["input_ids"]) <= embedder.max_tokens
        # the section is the heading path where the passage starts; later headings stay in its text
        first_heading = next(ln for ln in c.text.splitlines() if ln.startswith("## "))
        assert c.section.endswith(first_heading[3:]) or c.section == "Notes"
    # no section lost, headings shown to the model (a small section may repeat as the next one's overlap)
    assert {ln for c in merged for ln in c.text.splitlines() if ln.startswith("## ")} == {f"## Topic {i}" for i in range(12)}


def test_passages_end_at_sentence_ends(embedder):
    ch = Chunker(embedder.tokenizer, embedder.max_tokens, chunk_tokens=60, overlap=0)
    sentences = [f"Sentence number {i} describes how low-rank adapters are trained on frozen weights." for i in range(40)]
    chunks = ch.split(doc("# Long\n\n" + " ".join(sentences)))
    assert len(chunks) >= 5
    for c in chunks:
        assert c.text.rstrip().endswith("."), c.text[-40:]
        assert c.text.lstrip("# Long\n").startswith("Sentence number")


def test_heading_path_is_embedded_only_on_request(embedder):
    text = "# Course\n\n## LoRA\n\nLoRA trains adapters.\n"
    plain = Chunker(embedder.tokenizer, embedder.max_tokens).split(doc(text))[0]
    headed = Chunker(embedder.tokenizer, embedder.max_tokens, embed_headings=True).split(doc(text))[0]
    assert plain.section == headed.section == "Course"
    assert plain.embed_text == plain.text
    assert headed.embed_text.startswith("Course\n\n") and headed.embed_text.endswith(headed.text)


def test_child_windows_carry_their_passage(embedder):
    ch = Chunker(embedder.tokenizer, embedder.max_tokens, chunk_tokens=200, child_tokens=40)
    d = doc(_notes(10, sentences=3))
    parents = Chunker(embedder.tokenizer, embedder.max_tokens, chunk_tokens=200).split(d)
    children = ch.split(d)
    assert len(children) > len(parents) >= 2
    assert ch.params()["child_tokens"] == 40
    by_parent: dict[int, list] = {}
    for c in children:
        assert d.text[c.span[0]:c.span[1]] == c.text
        assert len(embedder.tokenizer(c.embed_text)["input_ids"]) <= 40 + 20  # a window, not a passage
        ps = c.metadata["parent_span"]
        assert ps[0] <= c.span[0] and c.span[1] <= ps[1]
        by_parent.setdefault(c.metadata["parent"], []).append(c)
    assert sorted(by_parent) == sorted(p.id for p in parents)
    for p in parents:
        kids = by_parent[p.id]
        assert kids[0].metadata["parent_text"] == p.text
        assert not any("parent_text" in k.metadata for k in kids[1:])
        assert " ".join(k.text for k in kids).split() == p.text.split()  # the windows tile the passage
