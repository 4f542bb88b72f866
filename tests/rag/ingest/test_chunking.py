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


def test_heading_path_and_code_fence_headings(chunker):
    text = ("# Course\n\nintro words\n\n## Week 1\n\n### LoRA\n\nLoRA trains adapters.\n\n"
            "```python\n# not a heading\nx = 1\n```\n\n## Week 2\n\nAttention.\n")
    chunks = chunker.split(doc(text))
    by_text = {c.text.split("\n")[0]: c.section for c in chunks}
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


def test_ids_are_stable_and_depend_on_source_and_content(chunker):
    text = "# A\n\nsame words\n\n# B\n\nother words\n"
    first = [c.id for c in chunker.split(doc(text))]
    assert first == [c.id for c in chunker.split(doc(text))]
    assert first != [c.id for c in chunker.split(doc(text, source="y.md"))]
    assert len(set(first)) == len(first)
    edited = [c.id for c in chunker.split(doc(text.replace("other", "changed")))]
    assert edited[0] == first[0] and edited[1] != first[1]


def test_duplicate_passages_in_one_file_get_distinct_ids(chunker):
    chunks = chunker.split(doc("# A\n\nrepeat me\n\n# A\n\nrepeat me\n"))
    assert len(chunks) == 2 and chunks[0].id != chunks[1].id
