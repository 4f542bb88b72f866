"""RAFT data generation: real index, real embedder, real bundled model end to end; a scripted teacher only
where the real model's output can't be controlled."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from raft.synth import answers, questions
from raft.prompts import ANSWER_SYSTEM, ANSWER_SYSTEM_SMALL
from raft.records import DATASET, PROGRESS, RUN, STATS, derive_rng, read_jsonl
from raft.synth.distractors import DistractorSampler
from raft.synth.samples import SampleBuilder
from rag.generation.base import Generator

from tests.conftest import ROOT


# --------------------------------------------------------------------------- a scripted teacher


class ScriptedTeacher(Generator):
    """Not a mock of a backend: a scripted teacher so parsing/verification paths are exercised
    deterministically. Question requests get a messy numbered list built from the chunk's words; answer
    requests quote the context's first sentence (with case/whitespace changed) and end with <ANSWER>:."""

    model_id = "scripted-teacher"
    context_window = 8192

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.fail_after = fail_after

    def count_tokens(self, messages_or_text) -> int:
        text = messages_or_text if isinstance(messages_or_text, str) else " ".join(m["content"] for m in messages_or_text)
        return len(text.split())

    def stream(self, messages, params=None):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("injected crash")
        system, user = messages[0]["content"], messages[-1]["content"]
        if system in (ANSWER_SYSTEM, ANSWER_SYSTEM_SMALL):
            context = user.split("Context:\n", 1)[1].split("\n\nQuestion:", 1)[0]
            sentence = re.split(r"(?<=[.!?])\s", " ".join(context.split()))[0]
            quote = "  ".join(sentence.upper().split()[:12])
            yield f"The context says ##begin_quote##{quote}##end_quote## which answers it.\n<ANSWER>: {sentence[:40]}"
            return
        words = re.findall(r"[A-Za-z][A-Za-z-]{3,}", user)
        yield (f"Here are some questions:\n1. What is meant by {words[0]} and {words[1]}?\n"
               f"2) How does {words[2]} relate to {words[3]} here?\n- What is meant by {words[0]} and {words[1]} ?\n"
               f"Q4: What does the passage say about {words[4]}?")


def teacher_reply(request: dict) -> str:
    """What ScriptedTeacher answers to a chat completion request (the `messages` of its JSON body): the
    reply of the suite's fake OpenAI server (tests/fake_openai.py) standing for a vLLM teacher."""
    try:
        return "".join(ScriptedTeacher().stream(request["messages"]))
    except IndexError:  # not a RAFT request (a one-token warm-up): any server answers something
        return "OK"


@pytest.fixture(scope="module")
def course(course_index, embedder):
    from rag.index.store import VectorIndex

    return VectorIndex.load(course_index.index_dir, embedder)


# --------------------------------------------------------------------------- questions


MESSY = """Sure! Here are 3 questions about the passage:

1. What does LoRA freeze during fine-tuning?
2) How many low-rank matrices does LoRA train?
**3.** What is stored after LoRA training finishes?
Q4: Why does full fine-tuning need so much memory?
Question 5 - What does the passage say about adapters?
- what does LoRA freeze during fine tuning?
* Is LoRA a parameter-efficient method? Which weights are updated by full fine-tuning?
6. What is the product of the two low-rank
matrices added to?
7. Why?
The answer is: the adapter.
"""


def test_parse_messy_question_list():
    got = questions.parse_questions(MESSY)
    assert "What does LoRA freeze during fine-tuning?" in got
    assert "How many low-rank matrices does LoRA train?" in got
    assert "What is stored after LoRA training finishes?" in got
    assert "Why does full fine-tuning need so much memory?" in got
    assert "Is LoRA a parameter-efficient method?" in got  # two on one line
    assert "Which weights are updated by full fine-tuning?" in got
    assert "What is the product of the two low-rank matrices added to?" in got  # wrapped over two lines
    assert not any("Here are" in q or "answer is" in q for q in got)  # preamble and answers dropped


def test_select_filters_and_dedupes():
    res = questions.select_questions(MESSY, n=20)
    assert res.questions[0] == "What does LoRA freeze during fine-tuning?"
    assert not any("passage" in q for q in res.questions)
    assert "Why?" not in res.questions
    # the lower-case "fine tuning" variant is a near duplicate of the first question
    assert sum("freeze" in q for q in res.questions) == 1
    assert res.rejected["question_duplicate"] == 1
    assert res.rejected["question_about_the_text"] == 1
    assert res.rejected["question_too_short"] == 1
    assert questions.select_questions(MESSY, n=2).questions == res.questions[:2]
    empty = questions.select_questions("I cannot help with that.", n=3)
    assert empty.questions == [] and empty.rejected["chunk_no_questions"] == 1


@pytest.mark.parametrize("q,reason", [
    ("What is LoRA", "not_a_question"),
    ("Why LoRA?", "too_short"),
    ("What " + "very " * 40 + "big?", "too_long"),
    ("According to the text, what is LoRA used for?", "about_the_text"),
    ("What does the author think about adapters?", "about_the_text"),
    ("What does LoRA train instead of the full weights?", None),
])
def test_question_filters(q, reason):
    assert questions.rejection_reason(q) == reason


# --------------------------------------------------------------------------- samples and distractors


def test_oracle_fraction_close_to_p_and_documents_unique(course):
    sampler = DistractorSampler(course, "random")
    builder = SampleBuilder(course, sampler, k=4, p=0.8)
    n, present = 1500, 0
    for i in range(n):
        pos = i % len(course.chunks)
        plan = builder.plan(pos, derive_rng(7, course.chunks[pos].id, i))
        ids = [d.id for d in plan.docs]
        assert len(ids) == 5 and len(set(ids)) == 5
        assert len({" ".join(d.text.split()) for d in plan.docs}) == 5  # no duplicate texts either
        if plan.oracle_present:
            present += 1
            assert plan.docs[plan.oracle_index].id == course.chunks[pos].id
        else:
            assert plan.oracle_index == -1 and course.chunks[pos].id not in ids
        assert course.chunks[pos].id not in plan.distractor_ids
    assert abs(present / n - 0.8) < 0.04  # 4 sigma is ~0.041


def test_plans_are_deterministic_per_seed_and_chunk(course):
    builder = SampleBuilder(course, DistractorSampler(course, "mixed"), k=4, p=0.5)
    a = [builder.plan(3, derive_rng(1, 42, q)) for q in range(5)]
    b = [builder.plan(3, derive_rng(1, 42, q)) for q in reversed(range(5))][::-1]
    assert [[d.id for d in p.docs] for p in a] == [[d.id for d in p.docs] for p in b]
    c = [builder.plan(3, derive_rng(2, 42, q)) for q in range(5)]
    assert [[d.id for d in p.docs] for p in a] != [[d.id for d in p.docs] for p in c]


def test_hard_distractors_are_neighbours_never_the_oracle(course):
    import numpy as np

    sampler = DistractorSampler(course, "hard")
    rng = random.Random(0)
    for pos in range(0, len(course.chunks), 9):
        oracle = course.chunks[pos]
        hard = sampler(pos, 4, rng)
        assert len(hard) == 4 and len(set(hard)) == 4 and pos not in hard
        for h in hard:
            assert not sampler.near_duplicate(pos, h)
            c = course.chunks[h]
            assert (c.source, c.section) != (oracle.source, oracle.section)
        # they are the nearest eligible chunks: better than the typical random chunk
        sims = course.vectors @ course.vectors[pos]
        hard_sim = float(np.mean(sims[hard]))
        rand_sim = float(np.mean(sims[sampler.uniform(pos, 4, random.Random(pos))]))
        eligible, texts = [], set()
        for i in np.argsort(-sims):  # nearest first; a text already taken is not taken twice (repeated slides)
            text = " ".join(course.chunks[i].text.split()).lower()
            if (not sampler.near_duplicate(pos, i) and text not in texts
                    and (course.chunks[i].source, course.chunks[i].section) != (oracle.source, oracle.section)):
                eligible.append(int(i))
                texts.add(text)
        same_text = lambda ids: sorted(" ".join(course.chunks[i].text.split()).lower() for i in ids)  # noqa: E731
        assert same_text(hard) == same_text(eligible[:4])  # which of two identical chunks is a tie
        assert hard_sim >= rand_sim
    mixed = DistractorSampler(course, "mixed")(0, 4, random.Random(1))
    assert len(set(mixed)) == 4 and 0 not in mixed
    assert set(sampler(0, 2, rng)) <= set(mixed)  # the hard half is the two nearest


def test_distractors_never_hold_the_answer(course):
    """A chunk containing the verified quote is a second oracle: no strategy may pick it, even a near one."""
    from rag.common.text import normalize_ws

    for strategy in ("hard", "random", "mixed"):
        sampler = DistractorSampler(course, strategy)
        for pos in range(0, len(course.chunks), 17):
            plain = sampler(pos, 4, random.Random(pos))
            # pretend the answer is a phrase that the first and third chosen chunks contain
            banned = [normalize_ws(course.chunks[plain[i]].text)[:60] for i in (0, 2)]
            again = sampler(pos, 4, random.Random(pos), answer=banned)
            assert plain[0] not in again and plain[2] not in again and len(set(again)) == 4
            for h in again:
                text = normalize_ws(course.chunks[h].text).lower()
                assert not any(b.lower() in text for b in banned)


# --------------------------------------------------------------------------- answers and quotes


ORACLE = """LoRA (low-rank adaptation) freezes all the weights of the pre-trained model and trains two small
low-rank matrices whose product is added to the frozen weight matrix. Only the adapter is stored."""


def test_quote_exact_is_case_and_whitespace_tolerant():
    r = answers.verify_answer("Reason: ##begin_quote##ONLY the adapter\n  is stored##end_quote##.\n<ANSWER>: the adapter", ORACLE)
    assert r.ok and r.quotes_verified == 1 and r.quotes_snapped == 0
    assert "##begin_quote##Only the adapter is stored##end_quote##" in r.cot_answer
    assert r.cot_answer.endswith("<ANSWER>: the adapter") and r.final_answer == "the adapter"


def test_quote_near_miss_is_snapped_to_the_oracle():
    r = answers.verify_answer("##begin_quote##freezes all the wieghts of the pretrained model##end_quote##\n<ANSWER>: the weights", ORACLE)
    assert r.ok and r.quotes_snapped == 1
    assert "##begin_quote##freezes all the weights of the pre-trained model##end_quote##" in r.cot_answer
    # a snapped quote is the oracle's own text
    snapped = re.search(r"##begin_quote##(.*?)##end_quote##", r.cot_answer).group(1)
    assert snapped in " ".join(ORACLE.split())


@pytest.mark.parametrize("reply,reason", [
    ("##begin_quote##LoRA trains the whole network from scratch on images##end_quote##\n<ANSWER>: x", "fabricated_quote"),
    ("##begin_quote##Only the adapter is stored##end_quote## so the adapter.", "no_answer_marker"),
    ("##begin_quote##Only the adapter is stored##end_quote##\n<ANSWER>:   ", "empty_answer"),
    ("##begin_quote##Only the adapter is stored##end_quote##\n<ANSWER>: " + "The answer is: " * 5, "degenerate_answer"),
    ("It is the adapter.\n<ANSWER>: the adapter", "no_quote"),
    ("##begin_quote##Only##end_quote##\n<ANSWER>: the adapter", "fabricated_quote"),  # too short to verify
])
def test_quote_rejections(reply, reason):
    r = answers.verify_answer(reply, ORACLE)
    assert not r.ok and r.reason == reason
    assert answers.verify_answer("It is the adapter.\n<ANSWER>: the adapter", ORACLE, require_quote=False).ok


# --------------------------------------------------------------------------- the run, resume, export


def _config(corpus: Path, **kw):
    from raft.synth.run import RaftConfig

    base = dict(corpus=str(corpus), questions=2, distractors=2, p=0.8, strategy="hard", seed=3,
                min_chunk_words=5, progress=False)
    base.update(kw)
    return RaftConfig(**base)


def _ids(out: Path) -> list[str]:
    return [r["id"] for r in read_jsonl(out / DATASET)]


def test_run_resume_after_injected_crash_matches_uninterrupted(small_corpus, settings, tmp_path):
    from raft.synth.run import run

    full = tmp_path / "full"
    stats = run(small_corpus, full, settings, _config(small_corpus), generator=ScriptedTeacher())
    records = read_jsonl(full / DATASET)
    assert stats["samples"] == len(records) > 0
    assert stats["chunks_done"] == len(read_jsonl(full / PROGRESS))
    assert len(set(_ids(full))) == len(records)
    rec = records[0]
    assert rec["instruction"].count("<DOCUMENT>") == len(rec["context"]["sentences"]) == 3  # k=2 (+1 if no oracle)
    assert rec["instruction"].endswith(rec["question"]) and rec["quotes_verified"] == 1
    assert stats["rejections"]["question_about_the_text"] >= 1 and stats["rejections"]["question_duplicate"] >= 1

    # crash after the first chunk is on disk, then resume with the same arguments
    crashed = tmp_path / "crashed"

    def boom(result):
        raise KeyboardInterrupt("injected crash after one chunk")

    with pytest.raises(KeyboardInterrupt):
        run(small_corpus, crashed, settings, _config(small_corpus), generator=ScriptedTeacher(), on_chunk=boom)
    assert len(read_jsonl(crashed / PROGRESS)) >= 1
    # and a crash in the middle of a chunk (the teacher dies on a later call), leaving a torn line too
    with pytest.raises(RuntimeError):
        run(small_corpus, crashed, settings, _config(small_corpus), generator=ScriptedTeacher(fail_after=2))
    with open(crashed / DATASET, "a") as f:
        f.write('{"id": "torn')
    resumed = run(small_corpus, crashed, settings, _config(small_corpus), generator=ScriptedTeacher())
    assert resumed["this_run"]["resumed"]
    assert sorted(_ids(crashed)) == sorted(_ids(full))
    assert len(set(_ids(crashed))) == len(_ids(crashed))
    key = lambda r: r["id"]
    assert sorted(read_jsonl(crashed / DATASET), key=key) == sorted(records, key=key)
    assert resumed["samples"] == stats["samples"]
    assert resumed["rejections"] == stats["rejections"]
    rkey = lambda r: json.dumps(r, sort_keys=True)
    assert sorted(read_jsonl(crashed / "rejected.jsonl"), key=rkey) == sorted(read_jsonl(full / "rejected.jsonl"), key=rkey)

    # other arguments against the same output are refused, naming the difference
    from rag.errors import RagError

    with pytest.raises(RagError, match=r"other arguments.*\bp: 0.8 before, 0.5 now"):
        run(small_corpus, crashed, settings, _config(small_corpus, p=0.5), generator=ScriptedTeacher())


def test_thread_pool_run_gives_the_same_samples_as_sequential(small_corpus, settings, tmp_path):
    from raft.synth.run import run

    class ParallelTeacher(ScriptedTeacher):
        """The scripted teacher, declared able to serve parallel requests like an HTTP backend."""

        parallel_requests = True

    seq = tmp_path / "seq"
    run(small_corpus, seq, settings, _config(small_corpus, strategy="mixed"), generator=ScriptedTeacher())
    par = tmp_path / "par"
    stats = run(small_corpus, par, settings, _config(small_corpus, strategy="mixed", workers=4),
                generator=ParallelTeacher())
    key = lambda r: r["id"]
    assert sorted(read_jsonl(par / DATASET), key=key) == sorted(read_jsonl(seq / DATASET), key=key)
    assert stats["this_run"]["workers"] == 4 and stats["distractor_strategy"] == "mixed"


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_every_export_format_round_trips_through_datasets(small_corpus, settings, tmp_path, kind):
    from raft.export import export, load
    from raft.synth.run import run

    out = tmp_path / "raft"
    run(small_corpus, out, settings, _config(small_corpus, p=0.5), generator=ScriptedTeacher())
    records = {r["id"]: r for r in read_jsonl(out / DATASET)}
    for fmt in ("hf", "chat", "completion", "eval"):
        result = export(out, fmt, kind, "0.5,0.25,0.25", system_prompt="Be brief." if fmt == "chat" else None)
        ds = load(result)
        assert sum(len(ds[s]) for s in ds) == len(records)
        seen_chunks: dict[int, str] = {}
        for split in ds:
            for row in ds[split]:
                rec = records[row["id"]]
                cid = rec["source_chunk_id"]
                assert seen_chunks.setdefault(cid, split) == split  # no oracle chunk in two splits
                if fmt == "hf":
                    assert row["context"]["sentences"] == [rec["context"]["sentences"]]  # the reference's nesting
                    assert row["instruction"] == rec["instruction"] and row["oracle_context"] == rec["oracle_context"]
                    assert row["cot_answer"] == rec["cot_answer"] and row["type"] == "general"
                elif fmt == "chat":
                    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
                    assert row["messages"][2]["content"] == rec["cot_answer"]
                elif fmt == "completion":
                    assert row["prompt"] == rec["instruction"] and row["completion"] == rec["cot_answer"] + "<STOP>"
                else:
                    assert row["gold_final_answer"] == rec["final_answer"] and row["question"] == rec["question"]
                    assert row["context"].count("<DOCUMENT>") == len(rec["context"]["sentences"])


def test_export_errors(tmp_path):
    from raft.export import export
    from raft.splits import parse_split
    from rag.errors import RagError

    with pytest.raises(RagError, match="no dataset.jsonl"):
        export(tmp_path, "hf")
    with pytest.raises(RagError, match="summing to 1"):
        parse_split("0.8,0.3")
    assert parse_split("1") == [1.0]


@pytest.mark.llm
def test_raft_generate_cli_end_to_end_with_the_bundled_model(small_corpus, tmp_path):
    """The real `raft generate` with the real bundled model on one chunk, one question, few tokens:
    the 135M model rarely writes a verifiable answer in 24 tokens, so 0 kept samples is possible: the run
    must finish, write run.json/stats.json, and its counts must add up; with no sample it exits 1 with one
    line saying why (issue 31), else 0."""
    out, index = tmp_path / "raft", tmp_path / "index"
    cmd = [sys.executable, "-m", "raft.cli", "generate", str(small_corpus), "--out", str(out), "--index-dir",
           str(index), "--questions", "1", "--distractors", "2", "--limit", "1", "--max-new-tokens", "24", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    stats = json.loads((out / STATS).read_text())
    if stats["samples"]:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout) == stats
    else:
        assert proc.returncode == 1 and "Error: no sample was kept from 1 chunk(s)" in proc.stderr, proc.stderr[-2000:]
    run_cfg = json.loads((out / RUN).read_text())
    assert run_cfg["questions"] == 1 and run_cfg["model"] == "bundled" and run_cfg["max_new_tokens"] == 24
    assert stats["chunks_done"] == 1 and stats["generator_model"].startswith("HuggingFaceTB/SmolLM2-135M")
    samples = read_jsonl(out / DATASET) if (out / DATASET).exists() else []
    assert stats["samples"] == len(samples) <= 1
    q_rejects = sum(v for k, v in stats["rejections"].items() if k.startswith(("answer_", "sample_")))
    assert stats["answers_attempted"] == stats["questions"] == stats["samples"] + q_rejects
    # the same command again resumes: nothing left to do, same counts
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == proc.returncode, again.stderr[-2000:]
    assert json.loads((out / STATS).read_text())["samples"] == stats["samples"]
    # a changed argument is a one-line user error, exit 1
    bad = subprocess.run(cmd[:-1] + ["--p", "0.5"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 1 and "other arguments" in bad.stderr and bad.stderr.count("\n") == 1
    usage = subprocess.run([sys.executable, "-m", "raft.cli", "generate", str(small_corpus)], capture_output=True,
                           text=True, cwd=ROOT)
    assert usage.returncode == 2


@pytest.mark.llm
def test_guided_answers_quote_the_oracle_with_the_real_model():
    """The small-model mode: the real 135M model picks an oracle sentence to quote and writes the answer."""
    from rag.generation.base import GenerationParams
    from rag.generation.local import LocalGenerator

    gen = LocalGenerator("bundled", prefill_dtype="float32")
    writer = answers.AnswerWriter(gen, GenerationParams(max_new_tokens=24))
    assert writer.mode == "guided"
    results = writer.many([("What does LoRA freeze?", ORACLE), ("What is stored after training?", ORACLE)])
    for r in results:
        assert r.quotes and all(q.status == "exact" for q in r.quotes)
        # the oracle's words, verbatim, from the spans the product quotes (statements, or two adjacent ones)
        assert " ".join(r.quotes[0].text.split()) in answers.quote_candidates(ORACLE, spans=answers.QUOTE_SPANS)
        assert r.ok == bool(r.final_answer) and r.cot_answer.startswith("##Reason: The answer to")
    assert any(r.ok for r in results)
    assert "freezes all the weights" in results[0].quotes[0].text  # the sentence that answers it
    # a sentence the course repeats everywhere (here: declared so) is never the quote
    best = " ".join(results[0].quotes[0].text.split())
    again = answers.AnswerWriter(gen, GenerationParams(max_new_tokens=24), exclude={best})
    quote = again.many([("What does LoRA freeze?", ORACLE)])[0].quotes[0].text
    assert " ".join(quote.split()) != best and " ".join(quote.split()) in answers.quote_candidates(ORACLE)


def test_quote_candidates_are_sentences_and_items_of_the_oracle():
    text = "## LoRA\nLoRA freezes the weights. It trains two small matrices! The product is\nadded to them.\n\n- First list item here\n1. A numbered item here\n"
    assert answers.quote_candidates(text) == ["LoRA freezes the weights.", "It trains two small matrices!",
                                              "The product is added to them.", "First list item here",
                                              "A numbered item here"]


def test_a_failing_teacher_skips_chunks_and_a_rerun_finishes_them(small_corpus, settings, tmp_path):
    from raft.synth.run import run
    from rag.errors import GeneratorError, RagError

    class FlakyTeacher(ScriptedTeacher):
        """Fails every question request about one chunk, like a server returning 500s for it."""

        def stream(self, messages, params=None):
            if "Self-attention" in messages[-1]["content"] and messages[0]["content"] not in (ANSWER_SYSTEM, ANSWER_SYSTEM_SMALL):
                raise GeneratorError("HTTP 500 from the teacher")
            yield from super().stream(messages, params)

    out = tmp_path / "flaky"
    first = run(small_corpus, out, settings, _config(small_corpus, batch_size=1), generator=FlakyTeacher())
    assert len(first["this_run"]["failed_chunks"]) == 1
    assert first["chunks_done"] == first["chunks_selected"] - 1
    second = run(small_corpus, out, settings, _config(small_corpus, batch_size=1), generator=ScriptedTeacher())
    assert second["this_run"]["chunks"] == 1 and not second["this_run"]["failed_chunks"]
    full = tmp_path / "full"
    run(small_corpus, full, settings, _config(small_corpus), generator=ScriptedTeacher())
    assert sorted(_ids(out)) == sorted(_ids(full))

    class DeadTeacher(ScriptedTeacher):
        def stream(self, messages, params=None):
            raise GeneratorError("cannot reach http://127.0.0.1:9/v1")

    with pytest.raises(RagError, match="failed 3 times in a row"):
        run(small_corpus, tmp_path / "dead", settings, _config(small_corpus, batch_size=1, min_chunk_words=1),
            generator=DeadTeacher())
