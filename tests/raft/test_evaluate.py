"""`raft eval`: hand-computed document sets, answer extraction, quote checks and scores; then a real end-to-end run
with the bundled model (and the same weights as a model folder) on a tiny hand-made dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from raft.eval_report import summarize
from raft.evaluate import (
    check_quotes,
    extract_final,
    load_questions,
    score_prediction,
    setting_documents,
)
from raft.export import export
from raft.prompts import instruction
from raft.records import DATASET, read_jsonl
from raft.splits import parse_split, split_by_chunk
from rag.errors import RagError

LORA = ("LoRA (low-rank adaptation) freezes all the weights of the pre-trained model and trains two small "
        "low-rank matrices whose product is added to the frozen weight matrix.")
FULL = "Full fine-tuning updates every weight of the network and needs as much memory as pre-training."
ATTN = "Self-attention lets every token attend to every other token of the input sequence."
TEMP = "Temperature scales the logits before sampling: a low temperature gives deterministic output."
TOPK = "Top-k keeps the k most likely tokens; top-p keeps the smallest set whose probability adds up to p."
DOCS = {1: LORA, 2: FULL, 3: ATTN, 4: TEMP, 5: TOPK}


def record(rid: str, chunk: int, question: str, final: str, docs: list[int], present: bool) -> dict:
    """A hand-made sample record in the format `raft generate` writes."""
    texts = [DOCS[d] for d in docs]
    return {"id": rid, "type": "general", "question": question,
            "context": {"title": [f"doc{d}.md" for d in docs], "sentences": texts},
            "oracle_context": DOCS[chunk], "oracle_present": present,
            "oracle_index": docs.index(chunk) if present else -1,
            "distractor_ids": [d for d in docs if d != chunk], "cot_answer": f"##begin_quote##{DOCS[chunk]}"
            f"##end_quote##\n<ANSWER>: {final}", "final_answer": final, "quotes_verified": 1, "quotes_snapped": 0,
            "instruction": instruction(texts, question), "source_chunk_id": chunk, "source": f"doc{chunk}.md",
            "generator_model": "hand", "seed": 0}


RECORDS = [
    record("r-lora", 1, "What does LoRA freeze?", "all the weights of the pre-trained model", [3, 1, 4], True),
    record("r-full", 2, "What does full fine-tuning update?", "every weight of the network", [1, 3, 5], False),
    record("r-attn", 3, "What can every token attend to in self-attention?", "every other token", [3, 5, 2], True),
    record("r-temp", 4, "What does temperature scale?", "the logits", [2, 1, 5], False),
]


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    d = tmp_path / "raft"
    d.mkdir()
    (d / DATASET).write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    return d


# --------------------------------------------------------------------------- the three settings


def test_documents_when_the_record_kept_its_oracle() -> None:
    rec = RECORDS[0]  # [ATTN, LORA(oracle), TEMP]
    assert setting_documents(rec, "oracle") == ([ATTN, LORA, TEMP], 1)
    assert setting_documents(rec, "distractors") == ([ATTN, TEMP], -1)
    assert setting_documents(rec, "closed") == ([], -1)


def test_documents_when_the_record_dropped_its_oracle() -> None:
    rec = RECORDS[1]  # [LORA, ATTN, TOPK], oracle FULL dropped
    docs, at = setting_documents(rec, "oracle", seed=0)
    assert len(docs) == 3 and docs[at] == FULL
    assert [d for i, d in enumerate(docs) if i != at] == [t for i, t in enumerate([LORA, ATTN, TOPK]) if i != at]
    assert setting_documents(rec, "oracle", seed=0) == (docs, at)  # seeded: same every time
    positions = {setting_documents({**rec, "id": f"q{i}"}, "oracle")[1] for i in range(20)}
    assert len(positions) > 1 and positions <= {0, 1, 2}  # the position depends on the record, not fixed
    assert setting_documents(rec, "distractors") == ([LORA, ATTN, TOPK], -1)
    assert setting_documents(rec, "closed") == ([], -1)
    with pytest.raises(RagError, match="unknown setting"):
        setting_documents(rec, "open")


def test_retrieved_documents_are_what_the_retriever_returned() -> None:
    rec = RECORDS[0]
    retrieved = {rec["id"]: ([TOPK, LORA], 1)}
    assert setting_documents(rec, "retrieved", retrieved=retrieved) == ([TOPK, LORA], 1)
    with pytest.raises(RagError, match="no retrieved passages for r-lora"):
        setting_documents(rec, "retrieved")


# --------------------------------------------------------------------------- answers and quotes


def test_final_answer_extraction_and_compliance() -> None:
    assert extract_final("It says so.\n<ANSWER>: LoRA") == ("LoRA", True)
    assert extract_final("<ANSWER>: first\nthen <ANSWER>:  second <STOP>\n") == ("second", True)
    assert extract_final("Some reasoning.\n\nthe logits  \n\n") == ("the logits", False)
    assert extract_final("reasoning <ANSWER>:   ") == ("", False)
    assert extract_final("") == ("", False)


def test_quote_validity_exact_snapped_fabricated() -> None:
    exact = "##begin_quote##FREEZES all the   weights of the pre-trained model##end_quote##"
    snapped = "##begin_quote##freezes all the weight of the pretrained model##end_quote##"
    fabricated = "##begin_quote##transformers use recurrent layers to remember tokens##end_quote##"
    shown = [ATTN, LORA]
    q = check_quotes(f"{exact} and {snapped} and {fabricated}", shown)
    assert q["quote_statuses"] == ["exact", "snapped", "fabricated"]
    assert (q["n_quotes"], q["n_valid_quotes"], q["quotes_valid"]) == (3, 2, False)
    assert check_quotes(f"{exact} {snapped}", shown)["quotes_valid"] is True
    assert check_quotes(exact, [ATTN, TEMP])["quotes_valid"] is False  # the oracle was not shown
    assert check_quotes("no quote here", shown) == {"n_quotes": 0, "n_valid_quotes": 0, "quote_statuses": [],
                                                    "quotes_valid": None}


def test_scores_of_crafted_predictions() -> None:
    gold = "two small low-rank matrices"
    pred = "##begin_quote##trains two small low-rank matrices##end_quote##\n<ANSWER>: The two low-rank matrices."
    s = score_prediction(pred, gold, [LORA])
    # normalised: "two low rank matrices" vs "two small low rank matrices": P = 4/4, R = 4/5
    assert s["final"] == "The two low-rank matrices." and s["compliant"] is True
    assert s["em"] == 0.0 and s["f1"] == pytest.approx(2 * 1.0 * 0.8 / 1.8)
    assert s["quotes_valid"] is True
    exact = score_prediction("<ANSWER>: Two small low-rank matrices!", gold, [LORA])
    assert (exact["em"], exact["f1"], exact["n_quotes"], exact["quotes_valid"]) == (1.0, 1.0, 0, None)
    closed = score_prediction(pred + "\n", gold, [], "closed")
    assert closed["quotes_valid"] is None and closed["n_quotes"] == 1
    wrong = score_prediction("I think it is attention", gold, [LORA])
    assert (wrong["final"], wrong["compliant"], wrong["em"], wrong["f1"]) == ("I think it is attention", False, 0.0, 0.0)


def test_summary_quote_validity_counts_only_quoting_answers() -> None:
    base = {"model": "m", "setting": "oracle", "em": 0.0, "f1": 0.5, "compliant": True, "answer_tokens": 10}
    rows = [{**base, "id": "a", "n_quotes": 2, "quotes_valid": True},
            {**base, "id": "b", "n_quotes": 1, "quotes_valid": False, "em": 1.0, "f1": 1.0},
            {**base, "id": "c", "n_quotes": 0, "quotes_valid": None, "compliant": False, "answer_tokens": 4},
            {**base, "id": "a", "setting": "closed", "n_quotes": 1, "quotes_valid": None}]
    s = summarize(rows, ["m"], ["oracle", "closed"])["m"]
    assert s["oracle"]["n"] == 3 and s["oracle"]["quote_valid"] == 0.5
    assert s["oracle"]["quote_rate"] == pytest.approx(2 / 3) and s["oracle"]["format"] == pytest.approx(2 / 3)
    assert s["oracle"]["f1"] == pytest.approx(2 / 3) and s["oracle"]["em"] == pytest.approx(1 / 3)
    assert s["oracle"]["answer_tokens"] == pytest.approx(8.0)
    assert s["closed"]["quote_valid"] is None and s["closed"]["quote_rate"] == 1.0


# --------------------------------------------------------------------------- which questions


def test_questions_are_the_test_split_of_export(dataset_dir: Path, tmp_path: Path) -> None:
    expected = split_by_chunk(RECORDS, parse_split("0.25,0.25,0.5"), 0)["test"]
    recs, info = load_questions(dataset_dir, "0.25,0.25,0.5", 0)
    assert [r["id"] for r in recs] == [r["id"] for r in expected] and len(recs) == 2 and info["split"] == "test"
    recs, info = load_questions(dataset_dir, "0.5,0.5", 0)  # no test part: the last split, and a note
    assert info["split"] == "validation" and "no test part" in info["note"]
    assert [r["id"] for r in recs] == [r["id"] for r in split_by_chunk(RECORDS, [0.5, 0.5], 0)["validation"]]
    one, _ = load_questions(dataset_dir, "0.25,0.25,0.5", 0, limit=1)
    assert len(one) == 1 and one[0]["id"] in {r["id"] for r in expected}
    with pytest.raises(RagError, match="test split .* is empty"):
        load_questions(dataset_dir, "0.8,0.2,0.0", 0)
    hf = export(dataset_dir, "hf", "jsonl", "0.25,0.25,0.5", tmp_path / "hf")
    recs, info = load_questions(Path(hf["files"]["test"]))
    assert [r["id"] for r in recs] == [r["id"] for r in expected] and info["split"] == "file"
    ev = export(dataset_dir, "eval", "jsonl", "0.25,0.25,0.5", tmp_path / "ev")
    with pytest.raises(RagError, match="oracle_context"):
        load_questions(Path(ev["files"]["test"]))


# --------------------------------------------------------------------------- end to end, real model


@pytest.mark.llm
def test_raft_eval_end_to_end_with_the_bundled_model(dataset_dir: Path, tmp_path: Path) -> None:
    from raft.cli import cli
    from rag.generation.models import bundled_gguf_path, convert_gguf

    folder = convert_gguf(bundled_gguf_path())  # the bundled weights as a plain model folder: a second "model"
    report = tmp_path / "report"
    args = ["eval", str(dataset_dir), "--models", f"bundled,{folder}", "--report", str(report),
            "--split", "0.25,0.25,0.5", "--limit", "1", "--max-new-tokens", "4", "--batch-size", "2"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "| setting |" in r.stdout and "closed book" in r.stdout and f"`{folder}`" in r.stdout

    rows = read_jsonl(report / "results.jsonl")
    assert len(rows) == 2 * 3 * 1  # models x settings x questions
    by = {(x["model"], x["setting"], x["id"]): x for x in rows}
    test_ids = {x["id"] for x in split_by_chunk(RECORDS, parse_split("0.25,0.25,0.5"), 0)["test"]}
    assert len({x["id"] for x in rows}) == 1 and {x["id"] for x in rows} <= test_ids
    for x in rows:
        rec = next(rr for rr in RECORDS if rr["id"] == x["id"])
        assert x["n_docs"] == {"oracle": 3, "distractors": 2 + (not rec["oracle_present"]), "closed": 0}[x["setting"]]
        assert 0.0 <= x["f1"] <= 1.0 and x["em"] in (0.0, 1.0) and x["gold"] == rec["final_answer"]
        assert x["answer_tokens"] <= 4 + 1
        same = by[(str(folder), x["setting"], x["id"])]
        assert same["prediction"] == x["prediction"]  # same weights, greedy: the same answer

    summary = json.loads((report / "summary.json").read_text())
    assert summary["questions"] == 1 and summary["split_used"] == "test"
    assert summary["models"] == ["bundled", str(folder)]
    for model in summary["models"]:
        for setting in ("oracle", "distractors", "closed"):
            cell = summary["results"][model][setting]
            assert cell["n"] == 1
            for key in ("f1", "em", "format", "quote_rate"):
                assert 0.0 <= cell[key] <= 1.0
        assert summary["results"][model]["closed"]["quote_valid"] is None
    md = (report / "summary.md").read_text()
    assert "1 question (test split" in md and md.count("\n| ") >= 8
    assert (report / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    before = (report / "results.jsonl").read_bytes()
    again = CliRunner().invoke(cli, args + ["--json"])  # resume: everything done, nothing regenerated
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["results"] == summary["results"]
    assert (report / "results.jsonl").read_bytes() == before

    other = CliRunner().invoke(cli, args[:-4] + ["--max-new-tokens", "5"])
    assert other.exit_code == 1 and "other arguments" in other.output and "max_new_tokens" in other.output
    bad = CliRunner().invoke(cli, ["eval", str(dataset_dir), "--settings", "oracle,open", "--report", str(report)])
    assert bad.exit_code == 1 and "unknown --settings open" in bad.output
