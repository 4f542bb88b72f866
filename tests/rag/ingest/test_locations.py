"""Passage locations and labels: one label for the CLI, the server and the app, never two alike for two
passages of a file (the shipped slides used to read five times 'workshop-slides-….md > Workshop Slides: …')."""

from __future__ import annotations

import pytest

from rag.api import make_chunker
from rag.config import Settings
from rag.ingest.loaders import load_documents
from rag.ingest.locations import (
    SHARED_LABEL,
    locate,
    location_text,
    opening_words,
    part_regions,
    parts_meta,
    passage_label,
)
from rag.retrieval.parent_child import Passages
from tests.conftest import CORPUS


def test_locate_names_the_part_where_a_passage_starts_and_ends():
    parts = parts_meta("page", [0, 100, 250], [1, 2, 4])  # page 3 held no text
    assert locate(parts, 0, 50) == {"page": 1}
    assert locate(parts, 120, 250) == {"page": 2}  # ends on the last character of page 2
    assert locate(parts, 120, 251) == {"page": 2, "page_end": 4}
    assert locate(None, 0, 10) == {}
    assert location_text({"page": 2, "page_end": 4}) == "pages 2–4" and location_text({"cell": 7}) == "cell 7"
    with pytest.raises(ValueError):
        parts_meta("chapter", [0], [1])


def test_only_slides_are_hard_boundaries():
    assert part_regions(parts_meta("slide", [0, 10, 30], [1, 2, 3]), 50) == [(0, 10), (10, 30), (30, 50)]
    assert part_regions(parts_meta("page", [0, 10], [1, 2]), 50) == [(0, 50)]
    assert part_regions(None, 50) == [(0, 50)]


def test_labels_read_as_a_student_says_them():
    assert passage_label("slides.pptx", "Fine-tuning vs prompting", {"slide": 12}) == \
        "slides.pptx · slide 12 · Fine-tuning vs prompting"
    assert passage_label("notes.md", "Week 1 > LoRA", {}) == "notes.md · Week 1 > LoRA"
    shared = {SHARED_LABEL: True}
    assert passage_label("notes.md", "Week 1", shared, "# Week 1\n\n**LoRA** [freezes](http://x) the weights") == \
        "notes.md · Week 1 · “LoRA freezes the weights”"
    assert opening_words("one two three four five six seven eight nine") == "“one two three four five six seven eight…”"
    assert opening_words("# Only a heading") == ""


def test_no_two_passages_of_the_shipped_course_share_a_label(embedder):
    docs, _ = load_documents(CORPUS)
    chunker = make_chunker(embedder, Settings())
    passages = Passages.of([c for d in docs for c in chunker.split(d)]).passages
    labels = [passage_label(p.source, p.section, p.metadata, p.text) for p in passages]
    assert len(set(labels)) == len(labels), sorted(labels)
    deck = [label for label, p in zip(labels, passages) if p.source.startswith("workshop-slides")]
    assert len(deck) >= 5
    assert all(label.startswith("workshop-slides-generative-ai-with-llms.md · Workshop Slides: Generative AI "
                                "with Large Language Models · “") for label in deck)
