"""The course harness (`rag eval-course`): loading a course and its evidence, hits at both grains, intervals,
paired deltas, the decision rule, and whole runs on tiny courses made here with the real embedder."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from rag.cli import cli
from rag.errors import RagError
from rag.evaluation.courses import (
    evidence_rank,
    file_sha256,
    lesson_rank,
    load_course,
    paired,
    per_question,
    question_ranks,
    rank_summary,
    no_loss_verdict,
    rule_verdict,
)
from tests.conftest import ATTENTION_MD, LORA_MD

SAMPLING_MD = """# Sampling

Greedy decoding always picks the most probable next token. Temperature rescales the logits before
sampling: a low temperature makes the output more deterministic, a high one more random.
"""
QUIZ = [
    {"id": "q1", "question": "What does LoRA freeze?", "options": ["The pre-trained weights", "Nothing at all"],
     "correct": [0], "lesson_file": "01-lora.md"},
    {"id": "q2", "question": "What does a high temperature do when sampling?",
     "options": ["Makes the output more random", "Makes decoding greedy"], "correct": [0], "lesson_file": "03-sampling.md"},
    {"id": "q3", "question": "Which are true of self-attention? (select all that apply)",
     "options": ["Every token attends to every other token", "Several heads run in parallel", "It needs no input"],
     "correct": [0, 1], "lesson_file": "02-attention.md"},
    {"id": "q4", "question": "Weak AI solves many tasks", "options": ["True", "False"], "correct": [1]},
]


def make_course(root: Path, quiz: list[dict] = QUIZ) -> Path:
    """A three-lesson course folder with its quiz, as ../shared/eval-courses lays one out."""
    lessons = root / "course"
    lessons.mkdir(parents=True)
    for name, text in (("01-lora.md", LORA_MD), ("02-attention.md", ATTENTION_MD), ("03-sampling.md", SAMPLING_MD)):
        (lessons / name).write_text(text, encoding="utf-8")
    (root / "quiz.jsonl").write_text("".join(json.dumps(q) + "\n" for q in quiz), encoding="utf-8")
    return root


def span_of(root: Path, name: str, quote: str) -> dict:
    text = (root / "course" / name).read_text(encoding="utf-8")
    start = text.index(quote)
    return {"file": name, "start": start, "end": start + len(quote)}


def write_evidence(root: Path, rows: list[dict]) -> Path:
    path = root / "evidence.jsonl"
    for row in rows:
        row.setdefault("sha256", {s["file"]: file_sha256(root / "course" / s["file"]) for s in row["spans"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def hit(source: str, text: str) -> SimpleNamespace:
    return SimpleNamespace(chunk=SimpleNamespace(source=source, text=text))


# ------------------------------------------------------------------------------------------ loading


def test_a_course_loads_with_its_evidence_read_from_offsets(tmp_path: Path) -> None:
    root = make_course(tmp_path / "c")
    quote = "trains two small\nlow-rank matrices"
    ev = write_evidence(root, [{"id": "q1", "spans": [span_of(root, "01-lora.md", quote)]},
                               {"id": "q4", "spans": [], "why": "general knowledge"}])
    course = load_course(root, evidence=ev)
    assert course.name == "c" and course.lessons == root / "course"
    assert course.questions[0]["evidence"] == [quote]
    assert "evidence" not in course.questions[3] or not course.questions[3]["evidence"]
    assert course.notes["with_evidence"] == 1 and course.notes["with_lesson"] == 3


@pytest.mark.parametrize("change, message", [
    (lambda root: (root / "course" / "01-lora.md").write_text(LORA_MD + "\nedited\n", encoding="utf-8"),
     "not the version the evidence was annotated on"),
    (lambda root: None, None),
])
def test_evidence_made_for_another_version_of_a_file_is_refused(tmp_path: Path, change, message) -> None:
    root = make_course(tmp_path / "c")
    ev = write_evidence(root, [{"id": "q1", "spans": [span_of(root, "01-lora.md", "freezes all the weights")]}])
    change(root)
    if message is None:
        assert load_course(root, evidence=ev).questions[0]["evidence"] == ["freezes all the weights"]
    else:
        with pytest.raises(RagError, match=message):
            load_course(root, evidence=ev)


@pytest.mark.parametrize("row, message", [
    ({"id": "nope", "spans": []}, "id 'nope' is not a question of the quiz"),
    ({"spans": []}, "needs an \"id\" of the quiz"),
    ({"id": "q1", "spans": [{"file": "01-lora.md", "start": 10, "end": 10_000}]}, "does not fit"),
    ({"id": "q1", "spans": [{"file": "../quiz.jsonl", "start": 0, "end": 5}]}, "is not a file of"),
    ({"id": "q1", "spans": [{"file": "01-lora.md", "start": "0", "end": 5}]}, "character offsets"),
])
def test_a_bad_evidence_line_is_one_error_naming_the_line(tmp_path: Path, row: dict, message: str) -> None:
    root = make_course(tmp_path / "c")
    ev = tmp_path / "ev.jsonl"
    sha = {"01-lora.md": file_sha256(root / "course" / "01-lora.md")}
    ev.write_text(json.dumps({**row, "sha256": sha}) + "\n", encoding="utf-8")
    with pytest.raises(RagError, match=message) as err:
        load_course(root, evidence=ev)
    assert f"{ev}:1" in str(err.value)


def test_a_course_folder_without_lessons_or_with_a_wrong_lesson_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RagError, match="has no course/ folder"):
        load_course(tmp_path)
    root = make_course(tmp_path / "c", [{**QUIZ[0], "lesson_file": "99-missing.md"}])
    with pytest.raises(RagError, match="names lesson_file '99-missing.md'"):
        load_course(root)
    root = make_course(tmp_path / "d", [QUIZ[0], QUIZ[0]])
    with pytest.raises(RagError, match="is used twice"):
        load_course(root)


# ------------------------------------------------------------------------------------------ scoring


def test_hits_at_both_grains_and_a_miss() -> None:
    hits = [hit("02-attention.md", "Self-attention lets every token attend"),
            hit("01-lora.md", "LoRA freezes all the weights of the pre-trained model"),
            hit("sub/01-lora.md", "Full fine-tuning updates every weight")]
    assert lesson_rank(hits, "01-lora.md") == 2
    assert lesson_rank(hits, "sub/01-lora.md") == 3
    assert lesson_rank(hits, "03-sampling.md") is None
    assert evidence_rank(hits, ["freezes all the weights of the  pre-trained MODEL"]) == 2
    assert evidence_rank(hits, ["temperature rescales the logits"]) is None
    q = {"lesson_file": "02-attention.md", "evidence": ["updates every weight"]}
    assert question_ranks(hits, q) == {"lesson": 1, "evidence": 3}
    assert question_ranks(hits, {"question": "x"}) == {}


def test_metrics_intervals_and_paired_deltas() -> None:
    ranks = [1, 2, None, 6, 1]
    assert per_question(ranks, "recall@1") == [1, 0, 0, 0, 1]
    assert per_question(ranks, "recall@5") == [1, 1, 0, 0, 1]
    assert per_question(ranks, "mrr@10") == pytest.approx([1, 0.5, 0, 1 / 6, 1])
    s = rank_summary(ranks)
    assert s["n"] == 5 and s["recall@5"]["mean"] == pytest.approx(0.6)
    low, high = s["mrr@10"]["ci"]
    assert 0 <= low <= s["mrr@10"]["mean"] <= high <= 1 and high > low
    d = paired(ranks, [None, None, None, 6, 1], ("recall@5",))["recall@5"]
    assert d["mean_delta"] == pytest.approx(0.4) and d["wins"] == 2 and d["ties"] == 3 and d["losses"] == 0


def test_the_rule_needs_a_pooled_win_and_no_course_lost_beyond_its_interval() -> None:
    up, flat, down = {"ci": [0.01, 0.2]}, {"ci": [-0.1, 0.1]}, {"ci": [-0.3, -0.02]}
    assert rule_verdict({"a": up, "b": flat}, up)["wins"] is True
    lost = rule_verdict({"a": up, "b": down}, up)
    assert lost["wins"] is False and lost["courses_below_zero"] == ["b"] and lost["pooled_above_zero"]
    assert rule_verdict({"a": flat}, flat)["wins"] is False
    assert rule_verdict({"a": up}, {"ci": None})["wins"] is False


def test_a_faster_path_passes_unless_an_interval_lies_wholly_below_zero() -> None:
    up, flat, down = {"ci": [0.01, 0.2]}, {"ci": [-0.1, 0.1]}, {"ci": [-0.3, -0.02]}
    assert no_loss_verdict({"a": flat, "b": up}, flat)["passes"] is True  # no gain needed, no loss allowed
    one = no_loss_verdict({"a": flat, "b": down}, flat)
    assert one["passes"] is False and one["courses_below_zero"] == ["b"] and not one["pooled_below_zero"]
    pooled = no_loss_verdict({"a": flat, "b": flat}, down)
    assert pooled["passes"] is False and pooled["pooled_below_zero"] and pooled["courses_below_zero"] == []
    assert no_loss_verdict({"a": {"ci": None}}, {"ci": None})["passes"] is True


def test_the_generation_quality_summary_pairs_each_path_with_the_reference_per_course_and_pooled() -> None:
    from bench.generation_quality import render, summarize

    def rows(rights: list[bool], f1: float) -> list[dict]:
        return [{"id": f"q{i}", "course": "a" if i < len(rights) // 2 else "b",
                 "right": {"product": r, "rag_plain": r, "closed_book": False},
                 "answer": {"right": r, "f1_key": f1}} for i, r in enumerate(rights)]

    ref = rows([True] * 20 + [False] * 20, 0.5)  # course a: all right; course b: all wrong
    worse = rows([False] * 20 + [False] * 20, 0.5)  # loses every item of course a
    same = rows([True] * 20 + [False] * 20, 0.5)
    s = summarize({"fp32": ref, "fast": worse, "same": same})
    assert s["n"] == {"a": 20, "b": 20, "pooled": 40} and s["courses"] == ["a", "b"]
    assert s["accuracy"]["fp32"]["a"]["product"]["mean"] == 1.0 and s["accuracy"]["fp32"]["pooled"]["product"]["mean"] == 0.5
    fast = s["vs_base"]["fast"]["product"]
    assert fast["a"]["mean_delta"] == -1.0 and fast["b"]["mean_delta"] == 0.0 and fast["pooled"]["mean_delta"] == -0.5
    assert fast["verdict"] == {"passes": False, "pooled_below_zero": True, "courses_below_zero": ["a"]}
    assert s["vs_base"]["same"]["f1_key"]["verdict"]["passes"] is True
    text = render(s, {"fp32": {}, "fast": {}, "same": {}})
    assert "| verdict | FAILS (a)" in text and "`same` − `fp32`" in text


# ------------------------------------------------------------------------------------------ whole runs


def test_rag_eval_course_scores_retrieval_against_the_baseline(tmp_path: Path) -> None:
    root = make_course(tmp_path / "c")
    ev = write_evidence(root, [{"id": "q2", "spans": [span_of(root, "03-sampling.md", "a high one more random")]}])
    report = tmp_path / "report"
    result = CliRunner().invoke(cli, ["eval-course", str(root), "--report", str(report), "--evidence", str(ev),
                                      "--no-choices"])
    assert result.exit_code == 0, result.output
    data = json.loads((report / "report.json").read_text(encoding="utf-8"))
    summary = data["retrieval"]["summary"]
    assert set(summary) == {"LangChain 1000/200 dense", "product hybrid"}
    # three lessons, each question's lesson holds its answer: both pipelines find all three within 5
    assert summary["product hybrid"]["lesson"]["n"] == 3
    assert summary["product hybrid"]["lesson"]["recall@5"]["mean"] == 1.0
    assert summary["product hybrid"]["evidence"]["n"] == 1
    assert data["retrieval"]["vs_baseline"]["product hybrid"]["lesson"]["recall@5"]["n"] == 3
    assert "choices" not in data
    assert "## Retrieval, hit = a passage from the question's lesson file" in result.output
    rows = [json.loads(line) for line in (report / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 * len(QUIZ)


@pytest.mark.llm  # runs the bundled causal model in-process
def test_multiple_choice_is_scored_three_ways_with_multi_answer_items(tmp_path: Path, embedder) -> None:
    from rag.api import get_generator
    from rag.config import Settings
    from rag.evaluation.course_run import evaluate_course, format_course_report

    course = load_course(make_course(tmp_path / "c"))
    settings = Settings(index_dir=tmp_path / "unused", max_new_tokens=8)
    report, rows = evaluate_course(course, settings, embedder, load_generator=get_generator, baseline=False,
                                   progress=False)
    ch = report["choices"]
    assert ch["n"] == 4 and ch["multi_answer"] == 1
    multi = next(r for r in rows["choices"] if r["id"] == "q3")["mc"]
    for way in ("closed_book", "rag_plain"):
        assert len(multi[way]["predicted"]) == 2  # the model's ways: as many picks as correct options
    for way in ("closed_book", "rag_plain", "rag"):
        assert 0.0 <= ch["accuracy"][way]["mean"] <= 1.0
    # the product's choice is the set it chose, right only when that set is the key's whole set
    assert multi["rag"]["predicted"] and multi["rag"]["right"] == (set(multi["rag"]["predicted"]) == set(multi["correct"]))
    assert ch["vs_closed_book"]["rag"]["n"] == 4
    assert "| product's choice |" in format_course_report(report)
