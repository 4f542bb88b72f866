"""raft.records and raft.splits: the one record type and its check, the one duplicate-id rule, the split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raft.records import (
    DEFAULT_SPLIT,
    RECORD_FIELDS,
    RaftRecord,
    check_record,
    check_unique_ids,
    load_records,
)
from raft.splits import SPLIT_NAMES, parse_split, split_by_chunk
from rag.errors import RagError


def good(i: int = 1, **changes) -> dict:
    rec = {"id": f"raft-{i}", "type": "general", "question": "What does LoRA train?",
           "context": {"title": ["a.md", "b.md"], "sentences": ["LoRA trains matrices.", "Other text."]},
           "oracle_context": "LoRA trains matrices.", "oracle_present": True, "oracle_index": 0,
           "distractor_ids": [7], "cot_answer": "##begin_quote##LoRA trains matrices.##end_quote## <ANSWER>: matrices",
           "final_answer": "matrices", "quotes_verified": 1, "quotes_snapped": 0,
           "instruction": "<DOCUMENT>LoRA trains matrices.</DOCUMENT>\n...", "source_chunk_id": i, "source": "a.md",
           "generator_model": "hand", "seed": 0}
    rec.update(changes)
    return rec


def test_record_fields_are_the_record_type() -> None:
    assert set(RECORD_FIELDS) == set(RaftRecord.__required_keys__)
    assert RaftRecord.__optional_keys__ == {"quotes_snapped"}
    assert RECORD_FIELDS[:3] == ("id", "type", "question") and len(RECORD_FIELDS) == 16
    check_record(good())
    check_record({k: v for k, v in good().items() if k != "quotes_snapped"})
    check_record(good(extra="kept"))  # unknown fields are allowed


@pytest.mark.parametrize("changes,message", [
    ({"source_chunk_id": [1, 2]}, r"field source_chunk_id must be an integer, got a list \(\[1, 2\]\)"),
    ({"source_chunk_id": True}, "field source_chunk_id must be an integer, got true/false"),
    ({"cot_answer": None}, "field cot_answer must be a string, got null"),
    ({"id": ""}, "field id must be a non-empty string"),
    ({"context": {"title": [], "sentences": "text"}}, "field context must be an object with lists of strings"),
    ({"distractor_ids": [1, "2"]}, "field distractor_ids must be a list of integers"),
    ({"oracle_present": 1}, "field oracle_present must be true or false"),
    ({"quotes_snapped": "no"}, "field quotes_snapped must be an integer"),
])
def test_check_record_names_the_field(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_record(good(**changes))


def test_check_record_lists_missing_fields() -> None:
    rec = good()
    del rec["source_chunk_id"], rec["seed"]
    with pytest.raises(ValueError, match="not a RAFT record: missing fields source_chunk_id, seed"):
        check_record(rec)


def _write(path: Path, rows: list) -> Path:
    path.write_bytes(b"".join(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode() for r in rows))
    return path


def test_load_records_reads_a_good_file_and_drops_a_torn_last_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "dataset.jsonl", [good(1), good(2), b'{"id": "raft-3", "ty'])
    assert [r["id"] for r in load_records(path)] == ["raft-1", "raft-2"]


@pytest.mark.parametrize("bad,message", [
    (b"[1, 2]\n", "line 2: not a JSON object (an array)"),
    (b'{"id": "x", \xff}\n', "line 2: not a JSON object (not UTF-8: byte 0xff at column 13)"),
    ((json.dumps({k: v for k, v in good(5).items() if k != "source_chunk_id"}) + "\n").encode(),
     "line 2: not a RAFT record: missing field source_chunk_id"),
    ((json.dumps(good(5, cot_answer=None)) + "\n").encode(), "line 2: field cot_answer must be a string, got null"),
])
def test_load_records_refuses_a_damaged_line_naming_file_and_line(tmp_path: Path, bad: bytes, message: str) -> None:
    path = _write(tmp_path / "dataset.jsonl", [good(1), bad, good(3), good(4)])
    with pytest.raises(RagError) as info:
        load_records(path)
    text = str(info.value)
    assert text.startswith(f"{path} {message}") and "\n" not in text


def test_one_duplicate_id_rule(tmp_path: Path) -> None:
    path = _write(tmp_path / "dataset.jsonl", [good(1), good(2), good(3, id="raft-1")])
    with pytest.raises(RagError, match=r"dataset.jsonl line 3: duplicate id 'raft-1' \(also on line 1\)"):
        load_records(path)
    with pytest.raises(RagError, match=r"f.parquet row 2: duplicate id 'a' \(also on row 1\)"):
        check_unique_ids([{"id": "a"}, {"id": "a"}], "f.parquet", unit="row")
    check_unique_ids([{"id": "a"}, {"id": "b"}], "f")


# ---------------------------------------------------------------------------------------------- splits


def test_default_split_parses() -> None:
    assert parse_split(DEFAULT_SPLIT) == [0.8, 0.1, 0.1]
    assert parse_split("1") == [1.0] and parse_split("0.5, 0.5") == [0.5, 0.5]


@pytest.mark.parametrize("text", ["nan", "0.5,nan,0.5", "inf", "1,-inf,inf", "1.2,-0.2", "0.8,0.3", "0.25,0.25,0.25,0.25",
                                  "abc", "", ","])
def test_parse_split_refuses_bad_fractions(text: str) -> None:
    with pytest.raises(RagError, match="--split") as info:
        parse_split(text)
    assert "\n" not in str(info.value)


def test_split_by_chunk_keeps_chunks_whole() -> None:
    records = [good(i, id=f"r{i}-{q}", source_chunk_id=i) for i in range(10) for q in range(3)]
    parts = split_by_chunk(records, parse_split(DEFAULT_SPLIT), seed=1)
    assert list(parts) == list(SPLIT_NAMES) and sum(map(len, parts.values())) == len(records)
    owners = {}
    for name, recs in parts.items():
        for r in recs:
            assert owners.setdefault(r["source_chunk_id"], name) == name
    assert [len(parts[n]) for n in SPLIT_NAMES] == [24, 3, 3]
