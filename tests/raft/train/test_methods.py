"""`raft train --method dsf` and `--oracle-fraction`: which documents the training examples get (no model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raft.prompts import instruction
from raft.records import documents_with_oracle, documents_without_oracle
from raft.train.config import TrainConfig
from raft.train.data import load_examples, with_oracle_fraction, with_random_distractors
from rag.errors import RagError
from tests.raft.train.test_train import FACTS, write_dataset

DISTRACTORS = ["Beam search keeps the best few sequences.", "Tokenizers split text into pieces.",
               "Embeddings map text to vectors."]


def record(i: int, present: bool) -> dict:
    """A dataset.jsonl record: 2 distractors + the oracle, or 3 distractors when the oracle was dropped."""
    topic, oracle, question, final = FACTS[i % len(FACTS)]
    docs = [DISTRACTORS[0], oracle, DISTRACTORS[1]] if present else list(DISTRACTORS)
    return {"id": f"r{i}", "type": "general", "question": question,
            "context": {"title": ["n.md"] * 3, "sentences": docs}, "oracle_context": oracle, "oracle_present": present,
            "oracle_index": 1 if present else -1, "distractor_ids": [7, 8], "final_answer": final,
            "cot_answer": f"##begin_quote##{oracle}##end_quote## <ANSWER>: {final}", "quotes_verified": 1,
            "instruction": instruction(docs, question), "source_chunk_id": i, "source": f"n.md > {topic}",
            "generator_model": "hand", "seed": 0}


RECORDS = [record(i, i % 3 != 0) for i in range(12)]  # 8 of 12 keep the oracle (P = 2/3 as generated)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data", RECORDS)


def test_oracle_documents_put_back_or_take_out_the_oracle() -> None:
    kept, dropped = RECORDS[1], RECORDS[0]
    assert documents_with_oracle(kept) == (kept["context"]["sentences"], 1)
    assert documents_without_oracle(kept) == [DISTRACTORS[0], DISTRACTORS[1]]
    docs, at = documents_with_oracle(dropped, seed=0, purpose="train-oracle")
    assert docs[at] == dropped["oracle_context"] and len(docs) == 3
    assert [d for i, d in enumerate(docs) if i != at] == [d for d in DISTRACTORS if d in docs]
    assert documents_without_oracle(dropped) == DISTRACTORS


@pytest.mark.parametrize("fraction, shown", [(1.0, 12), (0.0, 0), (0.5, 6), (0.8, 10)])
def test_oracle_fraction_is_exact_and_seeded(fraction: float, shown: int) -> None:
    out = with_oracle_fraction(RECORDS, fraction, seed=0)
    assert sum(r["oracle_present"] for r in out) == shown
    for r in out:
        docs = r["context"]["sentences"]
        assert (r["oracle_context"] in docs) == r["oracle_present"]
        assert r["oracle_index"] == (docs.index(r["oracle_context"]) if r["oracle_present"] else -1)
        assert len(r["context"]["title"]) == len(docs)
    assert with_oracle_fraction(RECORDS, fraction, seed=0) == out
    assert RECORDS[0]["oracle_present"] is False  # the input records are not modified


def test_load_examples_by_method_and_fraction(dataset: Path) -> None:
    split = "0.75,0.25"
    raft_train, raft_val, info = load_examples(dataset, TrainConfig(split=split))
    assert info["method"] == "raft" and all(e.docs for e in raft_train)
    dsf_train, dsf_val, info = load_examples(dataset, TrainConfig(split=split, method="dsf"))
    assert info["method"] == "dsf" and info["train_oracle_shown"] == 0.0
    assert [e.id for e in dsf_train] == [e.id for e in raft_train]  # same split, same samples
    assert [(e.question, e.answer) for e in dsf_train] == [(e.question, e.answer) for e in raft_train]
    assert all(e.docs == [] and e.oracle_index == -1 for e in dsf_train + dsf_val)
    p1, _, info = load_examples(dataset, TrainConfig(split=split, oracle_fraction=1.0))
    assert info["train_oracle_shown"] == 1.0 and all(e.docs[e.oracle_index] == r["oracle_context"]
                                                     for e in p1 for r in RECORDS if r["id"] == e.id)
    assert [e.id for e in p1] == [e.id for e in raft_train]


def test_method_and_fraction_are_validated_and_part_of_the_identity(dataset: Path, tmp_path: Path) -> None:
    assert "method" not in TrainConfig().identity()  # folders trained before --method existed still resume
    assert TrainConfig(method="dsf").identity()["method"] == "dsf"
    assert TrainConfig(oracle_fraction=1.0).identity()["oracle_fraction"] == 1.0
    for given, message in [({"method": "sft"}, "--method must be one of raft, dsf, got 'sft'"),
                           ({"oracle_fraction": 1.5}, r"--oracle-fraction must be in \[0.0, 1.0\], got 1.5"),
                           ({"method": "dsf", "oracle_fraction": 1.0}, "needs --method raft")]:
        with pytest.raises(RagError, match=message):  # refused when made (pydantic), one line
            TrainConfig(**given)
    from raft.export import export

    chat = export(dataset, "chat", "jsonl", "1.0", tmp_path / "chat")
    with pytest.raises(RagError, match="--oracle-fraction needs a `raft generate` folder"):
        load_examples(Path(chat["dir"]), TrainConfig(oracle_fraction=1.0))
    dsf_chat, _, _ = load_examples(Path(chat["dir"]), TrainConfig(method="dsf"))
    assert dsf_chat and all(e.docs == [] for e in dsf_chat)


def test_random_distractors_come_from_the_other_chunks_and_keep_the_oracle() -> None:
    out = with_random_distractors(RECORDS, seed=0)
    oracles = {r["oracle_context"] for r in RECORDS}
    for before, after in zip(RECORDS, out):
        docs = after["context"]["sentences"]
        assert len(docs) == len(before["context"]["sentences"]) and len(after["context"]["title"]) == len(docs)
        assert after["oracle_present"] == before["oracle_present"]
        if before["oracle_present"]:
            assert docs[after["oracle_index"]] == before["oracle_context"] == docs[before["oracle_index"]]
        others = [d for i, d in enumerate(docs) if i != after["oracle_index"]]
        assert before["oracle_context"] not in others  # never the sample's own oracle as a distractor
        assert set(others) <= oracles - {before["oracle_context"]}  # drawn from the other chunks, not stored ones
        assert not set(others) & set(DISTRACTORS)
        assert after["question"] == before["question"] and after["cot_answer"] == before["cot_answer"]
    assert with_random_distractors(RECORDS, seed=0) == out
    assert with_random_distractors(RECORDS, seed=1) != out


def test_random_distractors_stay_inside_each_split_part(dataset: Path) -> None:
    split = "0.75,0.25"
    plain, plain_val, _ = load_examples(dataset, TrainConfig(split=split))
    train, val, info = load_examples(dataset, TrainConfig(split=split, distractor_strategy="random"))
    assert info["distractor_strategy"] == "random" and [e.id for e in train] == [e.id for e in plain]
    val_oracles = {r["oracle_context"] for r in RECORDS if r["id"] in {e.id for e in val}}
    train_oracles = {r["oracle_context"] for r in RECORDS if r["id"] in {e.id for e in train}}
    assert all(set(e.docs) <= train_oracles for e in train)
    assert all(set(e.docs) <= val_oracles for e in val)
    assert TrainConfig(distractor_strategy="random").identity()["distractor_strategy"] == "random"
    for given, message in [({"distractor_strategy": "hard"}, "--distractor-strategy must be random, got 'hard'"),
                           ({"method": "dsf", "distractor_strategy": "random"}, "needs --method raft")]:
        with pytest.raises(RagError, match=message):
            TrainConfig(**given)
