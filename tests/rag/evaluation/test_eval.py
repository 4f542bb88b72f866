"""`rag eval`: retrieval, multiple-choice and free-answer scoring on a real tiny index with the real bundled model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.cli import cli
from rag.errors import RagError
from rag.evaluation.end_to_end import (
    answer_scores,
    evaluate_rag,
    mc_correct,
    mc_messages,
)
from rag.evaluation.metrics import token_f1
from rag.evaluation.retrieval import load_questions
from tests.conftest import write_small_corpus

# Dense ranks on the tiny corpus for "What does LoRA freeze?": 1 the LoRA section, 2 sampling.txt,
# 3 the full fine-tuning section, 4 attention.md.
RETRIEVAL = [
    {"id": "hit1", "question": "What does LoRA freeze?", "evidence": ["freezes all the weights of the pre-trained model"]},
    {"id": "hit3", "question": "What does LoRA freeze?", "evidence": ["Full fine-tuning updates every weight of the network"]},
    {"id": "miss", "question": "What does self-attention do?", "evidence": ["Dropout randomly zeroes activations"]},
]
# Checked by hand: the bundled model gives the first option about 2.5x (closed book) and 3x (RAG) the
# per-byte log-likelihood of the second.
MC = {"id": "mc", "question": "Which model does LoRA freeze the weights of?",
      "options": ["The pre-trained model.", "Banana bread recipe."], "correct": [0]}
ANSWERS = [
    {"id": "on", "question": "What does LoRA freeze?", "answer": "all the weights of the pre-trained model"},
    {"id": "off", "question": "Who won the football world cup in 1998?", "answer": "France"},  # abstains
]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every test of this module runs with one torch thread (conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, embedder):
    """conftest's small corpus, indexed once for the module; settings with tiny generation."""
    from rag.api import make_chunker
    from rag.config import Settings
    from rag.index.build import build_index

    base = tmp_path_factory.mktemp("eval")
    corpus = write_small_corpus(base / "corpus")
    # One chunk per section, as the ranks above assume (the default packs small sections: issue 13).
    settings = Settings(index_dir=base / "index", corpus_dir=corpus, mode="dense", top_k=2, max_new_tokens=8,
                        merge_sections=False, child_tokens=0)
    build_index(corpus, settings.index_dir, embedder, make_chunker(embedder, settings))
    return settings


@pytest.fixture(scope="module")
def retriever(tiny, embedder):
    from rag.retrieval.retriever import Retriever

    return Retriever(tiny.index_dir, embedder, tiny.mode, tiny.top_k)


@pytest.fixture(scope="module")
def generator():
    from rag.generation.local import LocalGenerator

    return LocalGenerator("bundled", prefill_dtype="float32")  # exact: compared with plain forward passes


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.llm  # runs the bundled causal model in-process
def test_whole_pipeline_scores_on_a_tiny_index(tiny, retriever, generator):
    summary, rows = evaluate_rag([*RETRIEVAL, MC, *ANSWERS], tiny, retriever, generator, progress=False)
    by_id = {r["id"]: r for r in rows}
    assert [by_id[i]["retrieval"]["rank"] for i in ("hit1", "hit3", "miss")] == [1, 3, None]
    r = summary["retrieval"]
    assert r["n"] == 3 and r["recall@1"] == pytest.approx(1 / 3) and r["recall@5"] == pytest.approx(2 / 3)
    assert r["recall@10"] == pytest.approx(2 / 3) and r["mrr@10"] == pytest.approx((1 + 1 / 3) / 3)

    mc = by_id["mc"]["mc"]
    assert mc["closed_book"]["predicted"] == [0] and mc["rag"]["predicted"] == [0] and mc["rag"]["passages"] == 2
    assert mc["rag_plain"]["predicted"] == [0]
    # the reported RAG choice is the product's: the options' support in the passages (rag.answering.choices)
    from rag.answering.grounding import combine

    assert mc["rag"]["weight"] == 1.0 and len(mc["rag"]["support"]) == len(MC["options"])
    assert mc["rag"]["scores"] == pytest.approx(list(combine(None, mc["rag"]["support"], 1.0)), abs=1e-3)
    assert summary["mc"] == {"n": 1, "accuracy_closed_book": 1.0, "accuracy_rag": 1.0, "accuracy_rag_plain": 1.0}

    on, off = by_id["on"]["answer"], by_id["off"]["answer"]
    assert off["abstained"] and off["f1"] == 0.0 and off["exact_match"] == 0.0
    assert not on["abstained"] and on["prediction"].strip()
    assert on["f1"] == pytest.approx(token_f1(on["prediction"], on["gold"]))
    a = summary["answer"]
    assert a["n"] == 2 and a["n_abstained"] == 1 and a["abstention_rate"] == 0.5 and summary["abstained"] == 0.5
    assert a["f1"] == pytest.approx(on["f1"] / 2) and a["f1_answered"] == pytest.approx(on["f1"])
    assert summary["retrieval.mrr@10"] == r["mrr@10"] and summary["answer.f1"] == a["f1"]
    assert summary["model"] == generator.model_id and summary["k"] == 2 and summary["mode"] == "dense"


@pytest.mark.llm  # runs the bundled causal model in-process
def test_option_scores_equal_a_full_forward_pass(generator):
    import torch

    from rag.evaluation.loglik import option_scores, prompt_ids

    messages = mc_messages(MC["question"], MC["options"])
    scores = option_scores(generator, messages, MC["options"])
    context, model = prompt_ids(generator, messages), generator._loaded.model
    for text, got in zip(MC["options"], scores):
        ids = generator.tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=torch.tensor([context + ids])).logits[0].float(), -1)
        expected = sum(float(logp[len(context) - 1 + j, t]) for j, t in enumerate(ids))
        assert got.logprob == pytest.approx(expected, abs=1e-3)
        assert got.n_tokens == len(ids) and got.n_bytes == len(text.encode()) and got.per_byte < 0


def test_multi_answer_rule():
    assert mc_correct([0.1, 0.9, 0.2], [1]) and not mc_correct([0.9, 0.1, 0.2], [1])
    assert mc_correct([-1.0, -2.0, -5.0, -1.5], [0, 1, 3])  # every correct option above the only wrong one
    assert not mc_correct([-1.0, -6.0, -5.0, -1.5], [0, 1, 3])  # option 1 ranks below the wrong option 2
    assert not mc_correct([-1.0, -1.0], [0])  # a tie with a wrong option is not a win
    assert mc_correct([-3.0, -1.0], [0, 1])  # no wrong option to beat


def test_exact_match_and_f1_on_known_strings():
    assert answer_scores("The prompt, completion.", "prompt completion", False) == {"exact_match": 1.0, "f1": 1.0}
    # prediction [prompt] vs gold [prompt, and, completion]: precision 1, recall 1/3, F1 0.5
    assert answer_scores("prompt", "prompt and completion", False) == {"exact_match": 0.0, "f1": 0.5}
    assert answer_scores("prompt completion", "prompt completion", True) == {"exact_match": 0.0, "f1": 0.0}


@pytest.mark.parametrize("line, message", [
    ({"question": "q", "options": ["a", "b"], "correct": [2]}, "\"correct\" index 2 is out of range: there are 2 options"),
    ({"question": "q", "options": ["a", "b"]}, "\"correct\" must be a non-empty list"),
    ({"question": "q", "correct": [0]}, "\"options\" must be a list of at least two"),
    ({"question": "q", "options": ["a", ""], "correct": [0]}, "\"options\" must be a list of at least two"),
    ({"question": "q", "options": ["a", "b"], "correct": [True]}, "\"correct\" must be a non-empty list"),
    ({"question": "q", "answer": 3}, "\"answer\" must be a non-empty string"),
])
def test_bad_fields_are_refused_with_their_line(tmp_path, line, message):
    path = _write(tmp_path / "q.jsonl", [{"question": "fine"}, line])
    with pytest.raises(RagError) as err:
        load_questions(path)
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value)


def test_http_backend_leaves_multiple_choice_null(tiny, retriever):
    from rag.generation.http import OpenAIGenerator

    http = OpenAIGenerator("http://127.0.0.1:9/v1")  # never contacted: no question needs an answer
    summary, rows = evaluate_rag([MC], tiny, retriever, http, progress=False)
    assert summary["mc"] == {"n": 1, "accuracy_closed_book": None, "accuracy_rag": None, "accuracy_rag_plain": None}
    assert "log-probabilities" in summary["notes"][0] and "mc" not in rows[0]


def test_cli_json_keys_are_null_where_the_file_cannot_tell(tiny, tmp_path):
    qfile = _write(tmp_path / "retrieval.jsonl", RETRIEVAL)
    report = tmp_path / "report"
    r = CliRunner().invoke(cli, ["eval", str(qfile), "--report", str(report), "--json",
                                 "--index-dir", str(tiny.index_dir), "--mode", "dense"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for key in ("mc.accuracy_closed_book", "mc.accuracy_rag", "answer.f1", "answer.exact_match", "abstained", "model"):
        assert out[key] is None, key
    assert out["n"] == 3 and out["mc.n"] == 0 and out["answer.n"] == 0
    assert out["retrieval.recall@1"] == pytest.approx(1 / 3) == out["retrieval"]["recall@1"]
    assert out["retrieval.mrr@10"] == pytest.approx(4 / 9) == out["retrieval"]["mrr@10"]
    assert out["mc"]["accuracy_rag"] is None and out["answer"]["f1"] is None
    assert json.loads((report / "summary.json").read_text()) == out
    assert [json.loads(x)["id"] for x in (report / "results.jsonl").read_text().splitlines()] == ["hit1", "hit3", "miss"]
    assert "| 0.333 | 0.667 | 0.667 | 0.444 |" in (report / "summary.md").read_text()


def test_cli_bad_file_is_a_one_line_error(tmp_path):
    qfile = _write(tmp_path / "bad.jsonl", [{"question": "ok"}, {"question": "q", "options": ["a", "b"], "correct": [5]}])
    r = CliRunner().invoke(cli, ["eval", str(qfile), "--report", str(tmp_path / "rep")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip().splitlines() == [
        f"Error: {qfile}:2: \"correct\" index 5 is out of range: there are 2 options (indices 0-1)"]
    assert not (tmp_path / "rep").exists()
