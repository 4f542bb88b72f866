"""Issue 13: the evaluation sets (quizzes out, asked items cut, cloze oracles) and the pipeline comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.errors import RagError
from rag.evaluation.compare import (
    LangChainBaseline,
    ProductSearcher,
    build_product,
    passage_tokens,
    score,
    within_budget,
)
from rag.evaluation.retrieval import contains_evidence
from rag.evaluation.sets import (
    cloze_candidates,
    cut_items,
    looks_like_quiz,
    make_cloze_set,
    make_quiz_set,
)
from rag.ingest.loaders import Document

QUIZ = "\n".join(
    f"**{i}.** Which statement about topic {i} is true?\n\n- [ ] wrong {i}\n- [x] right {i}\n- [ ] also wrong {i}\n\n"
    f"Explanation {i}: the course says so.\n" for i in range(1, 6))

NOTES = """# Fine-tuning

LoRA is a parameter-efficient method. It freezes every weight of the pre-trained model and trains two small
low-rank matrices instead. The product of the two matrices is added to the frozen weights at inference time.
Only the small adapter has to be stored for each task.

## Quiz

Question 1
What does LoRA freeze during fine-tuning?

→ All the weights of the pre-trained model
The attention heads only

Question 2
Which precision does INT8 quantization use?

→ Eight bits
"""

QA = """# Questions

1. A language model is...
- A model that outputs a probability distribution over the next word.

2. What is quantization?
- Storing weights with fewer bits.
"""

SAMPLING = """# Sampling

Temperature rescales the logits before sampling happens in the decoder. A low temperature makes the
output almost deterministic and repetitive for every prompt. A high temperature flattens the distribution
so that rare tokens are picked more often than before. Top-k sampling keeps only the k most likely tokens
at each step of generation. Top-p sampling keeps the smallest set of tokens whose probabilities add up to p.
"""

ASKED = [{"id": "q1", "question": "What does LoRA freeze during fine-tuning?",
          "evidence": ["It freezes every weight of the pre-trained model"]},
         {"id": "q2", "question": "Which statement about topic 3 is true?",
          "evidence": ["The product of the two matrices is added to the frozen weights"]}]


@pytest.fixture
def course(tmp_path: Path) -> Path:
    root = tmp_path / "course"
    root.mkdir()
    (root / "quiz.md").write_text(QUIZ, encoding="utf-8")
    (root / "notes.md").write_text(NOTES, encoding="utf-8")
    (root / "qa.md").write_text(QA, encoding="utf-8")
    (root / "sampling.txt").write_text(SAMPLING, encoding="utf-8")
    return root


def test_quiz_files_are_told_from_notes_and_qa_sheets():
    assert looks_like_quiz(QUIZ)
    assert not looks_like_quiz(NOTES)  # a short quiz section inside notes
    assert not looks_like_quiz(QA)  # numbered questions answered in bullets, no options
    assert not looks_like_quiz(SAMPLING)


def test_only_the_asked_items_are_cut_and_evidence_is_never_cut():
    text, n = cut_items(NOTES, ["What does LoRA freeze during fine-tuning?"], ["freezes every weight"])
    assert n == 1
    assert "What does LoRA freeze" not in text and "The attention heads only" not in text
    assert "Which precision does INT8" in text and "freezes every weight" in text
    protected, _ = cut_items("1. What does LoRA freeze?\n\nIt freezes every weight.\n",
                             ["What does LoRA freeze?"], ["It freezes every weight."])
    assert "It freezes every weight." in protected


def test_quiz_set_indexes_the_course_without_its_quizzes(course, tmp_path):
    es = make_quiz_set(course, ASKED + [{"id": "q3", "question": "no evidence here"}], tmp_path / "out")
    assert [q["id"] for q in es.questions] == ["q1", "q2"]
    assert es.notes["left_out"] == ["quiz.md"] and es.notes["items_cut"] == {"notes.md": 1}
    assert not (es.corpus / "quiz.md").exists()
    kept = (es.corpus / "notes.md").read_text(encoding="utf-8")
    assert "What does LoRA freeze" not in kept and all(contains_evidence(kept, q["evidence"]) for q in ASKED)
    assert (course / "quiz.md").exists()  # the course itself is only read
    with pytest.raises(RagError, match="evidence"):
        make_quiz_set(course, [{"id": "x", "question": "q?"}], tmp_path / "none")


def test_cloze_set_removes_each_drawn_sentence_and_keeps_its_neighbours(course, tmp_path):
    doc = Document(SAMPLING, "sampling.txt", "0")
    cands = cloze_candidates(doc)
    assert cands and all(SAMPLING[c["start"]:c["end"]].split() == c["sentence"].split() for c in cands)
    es = make_cloze_set(course, tmp_path / "cloze", n=2, seed=1)
    again = make_cloze_set(course, tmp_path / "cloze2", n=2, seed=1)
    assert [q["question"] for q in es.questions] == [q["question"] for q in again.questions]
    assert len(es.questions) == 2
    text = "\n".join(p.read_text(encoding="utf-8") for p in es.corpus.rglob("*") if p.is_file())
    for q in es.questions:
        assert q["question"] not in " ".join(text.split())
        assert all(contains_evidence(text, [e]) for e in q["evidence"])
    empty = tmp_path / "bare"
    empty.mkdir()
    (empty / "q.md").write_text(QUIZ, encoding="utf-8")
    with pytest.raises(RagError, match="prose"):
        make_cloze_set(empty, tmp_path / "c3")


def test_budget_keeps_passages_best_first_while_they_fit():
    assert within_budget([400, 400, 300, 10], 1024) == 2
    assert within_budget([2000, 10], 1024) == 0
    assert within_budget([], 1024) == 0


def test_product_and_langchain_are_scored_alike(course, tmp_path, embedder):
    es = make_quiz_set(course, ASKED, tmp_path / "q")
    words = lambda text: len(text.split())
    lc = LangChainBaseline(es.corpus, embedder, chunk_size=200, chunk_overlap=40)
    assert lc.chunks and all(len(c.text) <= 200 for c in lc.chunks)
    retriever, seconds, sizes = build_product(es.corpus, embedder, {"child_tokens": 24}, tmp_path)
    assert seconds > 0 and sizes
    for name, searcher in (("dense", lc.searcher("dense")), ("bm25", lc.searcher("bm25")),
                           ("hybrid", ProductSearcher(retriever, "hybrid"))):
        summary, rows = score(searcher, es, words, budget=60)
        # a tiny course: the dense side finds both; q2 shares no word with its evidence, so BM25 cannot
        assert summary["n"] == 2 and summary["recall@10"] == (0.5 if name == "bm25" else 1.0)
        assert 0 < summary["mrr@10"] <= 1.0 and summary["tokens@5"] > 0
        assert all(r["fit"] <= 10 for r in rows)
        hits = searcher.search(ASKED[0]["question"], 3)
        assert passage_tokens(hits, words)[0] == words(f"[1] ({hits[0].chunk.source}"
                                                       + (f" > {hits[0].chunk.section})" if hits[0].chunk.section else ")")
                                                       + f"\n{hits[0].chunk.text.strip()}") + 2
    json.dumps(summary)  # the report is JSON


def test_rag_eval_asks_an_unseen_course_without_its_quizzes(course, tmp_path):
    """`rag eval --unseen-course`: the real CLI indexes the course without its quiz file and without the asked
    item, in a temporary index (the course and --index-dir are left alone), and scores retrieval there."""
    import json

    from click.testing import CliRunner

    from rag.cli import cli

    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in [*ASKED, {"id": "q3", "question": "no evidence?"}]),
                     encoding="utf-8")
    report = tmp_path / "report"
    r = CliRunner().invoke(cli, ["eval", str(qfile), "--report", str(report), "--json", "--unseen-course", str(course),
                                 "--index-dir", str(tmp_path / "never")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["n"] == 2 and out["retrieval"]["n"] == 2  # the question without evidence cannot be scored here
    assert out["unseen_course"]["left_out"] == ["quiz.md"] and out["unseen_course"]["items_cut"] == {"notes.md": 1}
    assert out["retrieval.recall@5"] == 1.0  # both evidence sentences are in the notes that stay
    assert any("1 quiz file(s) left out, 1 asked item(s) cut" in n for n in out["notes"])
    assert not (tmp_path / "never").exists() and (course / "quiz.md").exists()
    r = CliRunner().invoke(cli, ["eval", str(qfile), "--report", str(report), "--unseen-course", str(tmp_path / "no")])
    assert r.exit_code == 1 and r.output.startswith("Error: corpus folder") and "does not exist" in r.output
