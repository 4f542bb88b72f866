"""Issue 11, "RAFT data quality": every kept sample has one verified answer, the duplicate filter keeps
questions that differ in the word that matters, no sample is silently short of documents (and none has
no document), and the `hf` export has the RAFT reference's nested `context`.

Real parts: the real embedder, real FAISS indexes of real corpora, the real `raft generate` run and
export, `datasets` loading the exported files. The teacher is the scripted one of test_synth.py where a
test needs a reply the bundled 135M model cannot be made to write (each test says why).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raft.prompts import (
    ANSWER_MARK,
    ANSWER_SYSTEM,
    ANSWER_SYSTEM_SMALL,
    BEGIN_QUOTE,
    END_QUOTE,
)
from raft.records import DATASET, REJECTED, read_jsonl
from raft.synth import answers, questions
from tests.raft.synth.test_synth import ORACLE, ScriptedTeacher

Q = BEGIN_QUOTE
E = END_QUOTE
GOOD_QUOTE = f"{Q}Only the adapter is stored{E}"


def _config(corpus: Path, **kw):
    from raft.synth.run import RaftConfig

    base = {"corpus": str(corpus), "questions": 2, "distractors": 2, "p": 0.8, "strategy": "hard", "seed": 3,
            "min_chunk_words": 5, "progress": False}
    base.update(kw)
    return RaftConfig(**base)


# --------------------------------------------------------------------------- one verified answer


@pytest.mark.parametrize("reply,reason", [
    # the case: two answer lines (the old parser kept "the adapter\n<ANSWER>: the weights")
    (f"{GOOD_QUOTE}\n<ANSWER>: the adapter\n<ANSWER>: the weights", "multiple_answers"),
    (f"<ANSWER>: the weights\n{GOOD_QUOTE}\n<ANSWER>: the adapter", "multiple_answers"),
    (f"{GOOD_QUOTE}\n<ANSWER>: the adapter <answer>: the weights", "multiple_answers"),
    (f"{GOOD_QUOTE}\n<ANSWER>: the adapter</ANSWER>", "malformed_answer_marker"),
    (f"{GOOD_QUOTE}\n<Answer> the adapter", "malformed_answer_marker"),
    # the answer mark inside a quote: the "answer" is part of a quote
    (f"{Q}Only the adapter is stored <ANSWER>: the adapter{E}", "answer_in_quote"),
    # reasoning or a second answer after the final answer line
    (f"{GOOD_QUOTE}\n<ANSWER>: the adapter\nBut it could also be the weights.", "text_after_answer"),
    (f"{GOOD_QUOTE}\n<ANSWER>: {Q}the adapter{E}", "marker_in_answer"),
    (f"{GOOD_QUOTE}\n<ANSWER>: ...", "empty_answer"),
    (f"{GOOD_QUOTE}\n<ANSWER>: **", "empty_answer"),
    (f"{GOOD_QUOTE}\n<ANSWER>: $answer", "placeholder_answer"),
    # quote markers that do not pair up leave marker text in the training target
    (f"{Q}Only the adapter is stored\n<ANSWER>: the adapter", "unbalanced_quote"),
    (f"Only the adapter is stored{E}\n<ANSWER>: the adapter", "unbalanced_quote"),
    (f"{Q}Only {Q}the adapter is stored{E}\n<ANSWER>: the adapter", "unbalanced_quote"),
    ("##BEGIN_QUOTE##Only the adapter is stored##END_QUOTE##\n<ANSWER>: the adapter", "malformed_quote_marker"),
    # a quote that is not in the oracle, one too short to check, and no quote at all
    (f"{Q}LoRA retrains the whole network on images{E}\n<ANSWER>: the network", "fabricated_quote"),
    (f"{Q}Only{E}\n<ANSWER>: the adapter", "fabricated_quote"),
    (f"{GOOD_QUOTE} and {Q}adapters are trained with reinforcement learning{E}\n<ANSWER>: x y", "fabricated_quote"),
    ("It is the adapter.\n<ANSWER>: the adapter", "no_quote"),
    (f"{GOOD_QUOTE} so it is the adapter.", "no_answer_marker"),
])
def test_every_unverifiable_answer_is_rejected_with_its_reason(reply, reason):
    r = answers.verify_answer(reply, ORACLE)
    assert not r.ok, f"kept: {r.final_answer!r}"
    assert r.reason == reason and reason in answers.REASONS


def test_a_kept_answer_parses_to_exactly_one_clean_final_answer():
    reply = f"  Reasoning: {Q}ONLY the adapter\n is stored{E}.\n\n**<ANSWER>:**   the   adapter  \n"
    r = answers.verify_answer(reply, ORACLE)
    assert r.ok and r.final_answer == "the adapter"
    assert r.cot_answer.count(ANSWER_MARK) == 1 and r.cot_answer.endswith(f"{ANSWER_MARK} the adapter")
    assert answers.parse_answer(r.cot_answer) == ("the adapter", None)
    # the reference's own reader (gorilla raft/format.py, extract_final_answer) gets the same answer
    assert r.cot_answer.split("<ANSWER>: ")[-1] == r.final_answer


def test_an_oracle_holding_a_marker_cannot_put_a_second_answer_in_a_kept_sample():
    """A course about RAFT may contain `<ANSWER>:` in its own text: a verified quote of that sentence would
    add a second answer mark to the rebuilt CoT answer."""
    oracle = "RAFT answers end with a line like <ANSWER>: Paris in the training data. The rest is reasoning."
    r = answers.verify_answer(f"{Q}end with a line like <ANSWER>: Paris{E}\n<ANSWER>: a marked line", oracle)
    assert not r.ok and r.reason == "answer_in_quote"
    # the model's quote has no marker, but snapping it to the oracle's own words brings one in
    r = answers.verify_answer(f"{Q}a line like ANSWER: Paris in the training{E}\n<ANSWER>: a marked line", oracle)
    assert r.quotes[0].status == "snapped" and ANSWER_MARK in r.quotes[0].text
    assert not r.ok and r.reason == "marker_in_quote"
    r = answers.verify_answer(f"{Q}RAFT answers end with a line like{E}\n<ANSWER>: a marked line", oracle)
    assert r.ok  # quoting around the marker is fine


def test_a_quote_starting_with_a_markdown_heading_is_not_a_malformed_marker():
    """Chunks keep their markdown headings: "##begin_quote##" + "## LoRA" reads "##begin_quote#### LoRA"."""
    oracle = "## LoRA\n\nLoRA freezes all the weights of the pre-trained model."
    r = answers.verify_answer(f"{Q}## LoRA LoRA freezes all the weights{E}\n<ANSWER>: all the weights", oracle)
    assert r.ok, r.reason
    assert r.cot_answer.startswith(f"{Q}## LoRA\n\nLoRA freezes all the weights{E}")


class TwoAnswerTeacher(ScriptedTeacher):
    """The scripted teacher, but its answers about LoRA end with TWO `<ANSWER>:` lines (the issue's reply).
    Scripted because the bundled model in guided mode writes one answer line after our prefix and is
    stopped at the newline: it cannot be made to produce this reply on purpose."""

    model_id = "two-answer-teacher"

    def stream(self, messages, params=None):
        reply = "".join(super().stream(messages, params))
        if messages[0]["content"] in (ANSWER_SYSTEM, ANSWER_SYSTEM_SMALL) and "LoRA" in messages[-1]["content"]:
            reply += "\n<ANSWER>: the frozen weights"
        yield reply


def test_run_keeps_no_sample_with_two_answers_and_records_why(small_corpus, settings, tmp_path):
    from raft.synth.run import run

    out = tmp_path / "raft"
    stats = run(small_corpus, out, settings, _config(small_corpus), generator=TwoAnswerTeacher())
    samples = read_jsonl(out / DATASET)
    assert samples, "the other chunks still give samples"
    assert [s["cot_answer"].count(ANSWER_MARK) for s in samples] == [1] * len(samples)
    assert not any("\n" in s["final_answer"] or ANSWER_MARK in s["final_answer"] for s in samples)
    assert not any("LoRA" in s["oracle_context"] for s in samples)
    for s in samples:
        assert answers.parse_answer(s["cot_answer"]) == (s["final_answer"], None)
    rejected = [r for r in read_jsonl(out / REJECTED) if r.get("reason") == "multiple_answers"]
    assert rejected and all(r["raw"].count(ANSWER_MARK) == 2 and r["question"] for r in rejected)
    assert stats["rejections"]["answer_multiple_answers"] == len(rejected)


# --------------------------------------------------------------------------- duplicate questions


def test_dedupe_drops_repeats_and_rephrasings_but_keeps_the_word_that_matters():
    reply = "\n".join([
        "1. What does the encoder do in a transformer?",
        "2. What does the decoder do in a transformer?",  # issue 11: was dropped as a duplicate of 1
        "3. What are the advantages of LoRA?",
        "4. What are the disadvantages of LoRA?",  # issue 11: was dropped as a duplicate of 3
        "5. Which weights does LoRA freeze during full fine-tuning?",
        "6. Which weights does LoRA freeze during fine-tuning?",  # 'full' matters
        "7. Which weights does LoRA not freeze during fine-tuning?",  # 'not' matters
        "8. What does the encoder do in a transformer?",  # exact repeat of 1
        "9. what does the Encoder do in transformers ?",  # case, plural, spacing: a repeat of 1
        "10. What are the main advantages of LoRA?",  # a filler word added: a rephrasing of 3
        "11. During fine tuning, what weights does LoRA freeze?",  # reordered, 'fine tuning', 'what': of 6
        "12. Which weights doesn't LoRA freeze during fine-tuning?",  # contraction: a rephrasing of 7
    ])
    res = questions.select_questions(reply, n=20)
    assert res.questions == [
        "What does the encoder do in a transformer?",
        "What does the decoder do in a transformer?",
        "What are the advantages of LoRA?",
        "What are the disadvantages of LoRA?",
        "Which weights does LoRA freeze during full fine-tuning?",
        "Which weights does LoRA freeze during fine-tuning?",
        "Which weights does LoRA not freeze during fine-tuning?",
    ]
    assert res.rejected["question_duplicate"] == 5


# --------------------------------------------------------------------------- documents per sample


PAGE = """# Revision sheet

The attention mechanism lets every token of the input sequence attend to every other token, so the model
learns which words relate to which. Page {i} of the handout repeats this summary for revision.
"""


@pytest.fixture
def near_identical_pages(tmp_path: Path) -> Path:
    root = tmp_path / "pages"
    root.mkdir()
    for i in range(1, 7):
        (root / f"page{i}.md").write_text(PAGE.format(i=i), encoding="utf-8")
    return root


def test_no_sample_is_silently_short_of_documents_and_none_has_no_document(near_identical_pages, tmp_path,
                                                                            capsys):
    """The issue's run: six near-identical pages, `--distractors 1 --p 0.5`. Every other page is a near
    duplicate of the oracle (a second oracle), so no sample can get its distractor. The scripted teacher
    makes every chunk yield one verified answer, so the document counts are what is tested (the 135M
    model keeps 0-1 samples at test-sized budgets, see test_synth.py)."""
    from raft.synth.run import run
    from rag.config import Settings

    settings = Settings(index_dir=tmp_path / "index", corpus_dir=near_identical_pages)
    out = tmp_path / "raft"
    stats = run(near_identical_pages, out, settings, _config(near_identical_pages, questions=1, distractors=1,
                                                               p=0.5, seed=0), generator=ScriptedTeacher())
    samples = read_jsonl(out / DATASET)
    shown = [len(s["context"]["sentences"]) for s in samples]
    assert all(n >= 1 for n in shown), "a sample with no documents was written"
    for s in samples:  # so the only document left is the oracle, and the answer quotes what is shown
        assert s["oracle_present"] and s["context"]["sentences"] == [s["oracle_context"]]
    no_docs = [r for r in read_jsonl(out / REJECTED) if r.get("reason") == "no_documents"]
    assert len(samples) + len(no_docs) == stats["answers_attempted"] == 6
    assert samples and no_docs  # seed 0 drops the oracle for some of the six, keeps it for others
    assert all(r["question"] and r["documents_wanted"] == 2 for r in no_docs)
    assert stats["rejections"]["sample_no_documents"] == len(no_docs)
    assert stats["documents"] == {"per_sample": 2, "short_samples": len(samples), "missing": len(samples),
                                  "no_documents_dropped": len(no_docs)}
    assert stats["oracle_fraction"] == 1.0
    assert len(stats["warnings"]) == 2
    err = capsys.readouterr().err
    assert f"{len(samples)} of {len(samples)} samples show fewer than the 2 documents asked" in err
    assert f"{len(no_docs)} samples were dropped because they would show no document" in err
    assert json.loads((out / "stats.json").read_text())["documents"] == stats["documents"]


def test_short_plans_say_how_many_documents_are_missing(near_identical_pages, small_corpus, tmp_path, embedder):
    """Below the run: six near-identical pages plus a few distinct chunks, one distractor more asked for than
    there are distinct chunks: every plan says how many documents it lacks."""
    import random

    from raft.synth.distractors import DistractorSampler
    from raft.synth.samples import SampleBuilder
    from rag.api import index_corpus
    from rag.config import Settings
    from rag.index.store import VectorIndex

    for f in small_corpus.rglob("*.*"):  # two distinct pages beside the six near-identical ones
        if "attention" not in f.name:
            (near_identical_pages / f.name).write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    settings = Settings(index_dir=tmp_path / "mixed-index", corpus_dir=near_identical_pages)
    index_corpus(near_identical_pages, settings)
    index = VectorIndex.load(settings.index_dir, embedder)
    page = next(i for i, c in enumerate(index.chunks) if "Page 3" in c.text)
    distinct = sum("Page" not in c.text for c in index.chunks)
    assert distinct >= 2
    k = distinct + 1
    builder = SampleBuilder(index, DistractorSampler(index, "random"), k=k, p=0.5)
    seen = set()
    for i in range(40):
        plan = builder.plan(page, random.Random(i))
        assert plan.wanted == k + 1 and len(plan.docs) + plan.missing == k + 1
        assert sum("Page" not in d.text for d in plan.docs) == distinct  # every distinct chunk, and
        assert not any("Page" in d.text and d.id != index.chunks[page].id for d in plan.docs)  # no other page
        seen.add((plan.oracle_present, plan.missing))
    assert seen == {(True, 1), (False, 2)}  # oracle + k-1 of k distractors, or k-1 of k+1 distractors


# --------------------------------------------------------------------------- the hf export


REFERENCE_COLUMNS = ["id", "type", "question", "context", "oracle_context", "cot_answer", "instruction"]


def _reference_datapoint(docs: list[str], question: str, oracle: str, cot: str) -> dict:
    """A row built the way gorilla raft/raft.py `generate_question_cot_answer` builds it."""
    d = {"title": [], "sentences": []}
    d["title"].append(["placeholder_title"] * len(docs))
    d["sentences"].append(docs)
    context = ""
    for doc in docs:
        context += "<DOCUMENT>" + str(doc) + "</DOCUMENT>\n"
    context += question
    return {"id": "seed_task_0", "type": "general", "question": question, "context": d, "oracle_context": oracle,
            "cot_answer": cot, "instruction": context}


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_hf_export_has_the_reference_shape_and_reads_like_it(small_corpus, settings, tmp_path, kind):
    """Read the export the way code written for the reference dataset reads it: `context.sentences[0]` is
    the list of documents, `context.title[0]` their titles; format.py's extract_final_answer and
    extract_context work; and the rows concatenate with a reference-built row (same nested features)."""
    from datasets import Dataset, concatenate_datasets

    from raft.export import export, load
    from raft.synth.run import run

    out = tmp_path / "raft"
    run(small_corpus, out, settings, _config(small_corpus, p=0.5), generator=ScriptedTeacher())
    records = {r["id"]: r for r in read_jsonl(out / DATASET)}
    ds = load(export(out, "hf", kind, "1"))["train"]
    assert len(ds) == len(records)
    for row in ds:
        rec = records[row["id"]]
        docs = row["context"]["sentences"][0]
        assert len(row["context"]["sentences"]) == 1 and len(row["context"]["title"]) == 1
        assert docs == rec["context"]["sentences"] and row["context"]["title"][0] == rec["context"]["title"]
        assert len(docs) == len(row["context"]["title"][0]) >= 2
        if row["oracle_present"]:
            assert docs[row["oracle_index"]] == row["oracle_context"]
        # gorilla raft/format.py, EvalDatasetFormatter
        assert row["cot_answer"].split("<ANSWER>: ")[-1] == rec["final_answer"]  # extract_final_answer
        assert "\n".join(row["instruction"].split("\n")[:-1]) + "\n" == "".join(  # extract_context
            f"<DOCUMENT>{d}</DOCUMENT>\n" for d in docs)
    first = ds[0]
    ref = Dataset.from_list([_reference_datapoint(first["context"]["sentences"][0], first["question"],
                                                  first["oracle_context"], first["cot_answer"])])
    ours = ds.select_columns(REFERENCE_COLUMNS)
    assert ours.features["context"] == ref.features["context"]
    both = concatenate_datasets([ours, ref])
    assert both[-1]["instruction"] == first["instruction"]
    assert both[-1]["context"]["sentences"] == first["context"]["sentences"]
