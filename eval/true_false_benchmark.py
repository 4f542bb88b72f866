"""How a model is asked a true/false quiz item: in the chat form (the statement, "Answer True or False", the
first word scored) or in the conversation it was tuned on (`rag.answering.choices.true_false_query`: a
RAFT-tuned model gets `<DOCUMENT>` blocks and its answer is scored after `<ANSWER>:`), paired on the same
items of an independent course's own quiz, through the product's choice (`rag.evaluation.end_to_end.score_mc`).

For a chat model the two are the same prompt (a check: every item ties). Rows are kept per (course, model,
question) in --cache (outside the repository: they hold no course text, but the cache lives with the others),
so an interrupted run resumes.

    python -m eval.true_false_benchmark --course ai --model RUN/train
Writes --out/true_false_benchmark.{md,json}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def chat_form(generator: Any, statement: str, evidence: Any, answers: Any) -> tuple[Any, str, list[str]]:
    """The chat form for every model (what the product asked a RAFT-tuned model before)."""
    from rag.answering.choices import true_false_messages

    return true_false_messages(statement, evidence), "", list(answers)


def main() -> None:
    from eval import courses_benchmark as cb
    from eval.raft_quiz_benchmark import model_stamp, numerics, product_parts, resumed_rows

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cb.add_course_arguments(ap)
    ap.add_argument("--course", default="ai", help="the course folder under --shared")
    ap.add_argument("--model", required=True, help="the model spec (a `raft train` output, bundled, ...)")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "true_false")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "course-rag" / "true-false")
    args = ap.parse_args()

    from rag.answering import choices
    from rag.api import get_embedder
    from rag.common.progress import progress_bar
    from rag.config import Settings
    from rag.evaluation.bootstrap import paired_comparison
    from rag.evaluation.course_run import fmt_delta, fmt_interval
    from rag.evaluation.courses import with_interval
    from rag.evaluation.end_to_end import score_mc

    settings = cb.default_pipeline()
    embedder = get_embedder(Settings())
    own_form = choices.true_false_query
    key = json.dumps({"course": args.course, "model": model_stamp(args.model), "settings": settings,
                      **cb.versions(), "numerics": numerics()}, sort_keys=True)
    path = args.cache / f"{args.course}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = resumed_rows(path)
    with tempfile.TemporaryDirectory(prefix="rag-true-false-") as td:
        course = next((c for c in cb.courses(args.shared, args.evidence, Path(td), False)
                       if c.name.startswith(args.course)), None)
        if course is None:
            raise SystemExit(f"no course {args.course!r} under {args.shared}")
        items = [q for q in course.questions if choices.is_true_false(q["options"])]
        todo = [q for q in items if q["id"] not in done]
        if todo:
            run, generator, pipe, budget, search = product_parts(course, args.model, embedder, settings, Path(td))
            with path.open("a", encoding="utf-8") as out:
                for q in progress_bar(todo, total=len(todo), desc=f"true/false items of {course.name}", unit="item"):
                    row = {"id": q["id"], "prompt_format": generator.prompt_format}
                    try:
                        for name, form in (("chat_form", chat_form), ("own_form", own_form)):
                            choices.true_false_query = form
                            mc = score_mc(generator, q, search(q), run.top_k, budget, embedder, pipe.boilerplate(),
                                          weight=run.choice_retriever_weight)
                            row[name] = bool(mc["rag"]["right"])
                    finally:
                        choices.true_false_query = own_form
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    done[q["id"]] = row
        rows = [done[q["id"]] for q in items]
    chat = [float(r["chat_form"]) for r in rows]
    own = [float(r["own_form"]) for r in rows]
    result = {"course": course.name, "model": args.model, "n": len(rows), "chat_form": with_interval(chat),
              "own_form": with_interval(own), "own_minus_chat": paired_comparison(own, chat), "rows": rows}
    md = (f"# True/false items of {course.name}: {args.model}, asked in the chat form vs its own form\n\n"
          f"{len(rows)} items, through the product's choice; mean [95% bootstrap interval], paired difference.\n\n"
          "| chat form | own form | own − chat |\n|---|---|---|\n"
          f"| {fmt_interval(result['chat_form'])} | {fmt_interval(result['own_form'])} | "
          f"{fmt_delta(result['own_minus_chat'])} |\n")
    cb.save_report(args.out, "true_false_benchmark", result, md)


if __name__ == "__main__":
    main()
