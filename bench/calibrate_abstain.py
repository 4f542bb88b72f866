"""Calibrate the abstain threshold: best dense cosine of on-topic vs off-topic questions on an index.

On-topic questions come from a question file (JSONL with "question"), off-topic ones from a text file
(one a line). Prints both score distributions and the threshold with the fewest errors (ties: the
midpoint of the widest gap), to put in rag.toml as abstain_threshold.

    python -m bench.calibrate_abstain [eval/dev_questions.jsonl] [eval/off_topic_questions.txt]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    from rag.api import open_retriever
    from rag.config import load_settings
    from rag.evaluation.retrieval import load_questions

    on_file = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "eval" / "dev_questions.jsonl"
    off_file = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "eval" / "off_topic_questions.txt"
    retriever = open_retriever(load_settings())
    on = sorted(retriever.search(q["question"], k=1, mode="dense")[0].score for q in load_questions(on_file))
    off = sorted(retriever.search(q, k=1, mode="dense")[0].score
                 for q in off_file.read_text().splitlines() if q.strip())
    candidates = sorted(set(on + off))
    best = None
    for lo, hi in zip(candidates, candidates[1:]):
        t = (lo + hi) / 2
        errors = sum(s < t for s in on) + sum(s >= t for s in off)
        key = (errors, -(hi - lo))
        if best is None or key < best[0]:
            best = (key, t)
    print(f"on-topic  (n={len(on)}): min {on[0]:.3f}, 5 lowest {[round(s, 3) for s in on[:5]]}")
    print(f"off-topic (n={len(off)}): max {off[-1]:.3f}, 5 highest {[round(s, 3) for s in off[-5:]]}")
    print(f"cosine alone: threshold {best[1]:.3f} gives {best[0][0]} misclassified")
    # The product's rule: abstain iff cosine < abstain_threshold and term coverage < abstain_coverage.
    from rag.api import make_pipeline

    settings = load_settings()
    cov = retriever.term_coverage
    on_q = [q["question"] for q in load_questions(on_file)]
    off_q = [q for q in off_file.read_text().splitlines() if q.strip()]
    # the model is not needed here: should_abstain() reads only the hits and the retriever's term coverage
    from types import SimpleNamespace

    planner = make_pipeline(settings, retriever=retriever, generator=SimpleNamespace(small_model=True)).planner()
    wrong_on = [q for q in on_q if planner.should_abstain(q, retriever.search(q, k=5))]
    wrong_off = [q for q in off_q if not planner.should_abstain(q, retriever.search(q, k=5))]
    print(f"off-topic term coverage: max {max(cov(q) for q in off_q):.2f}; on-topic: min {min(cov(q) for q in on_q):.2f}")
    print(f"product rule (cosine < {settings.abstain_threshold} and coverage < {settings.abstain_coverage}): "
          f"{len(wrong_on)} on-topic abstained {wrong_on}, {len(wrong_off)} off-topic answered {wrong_off}")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "calibrate_abstain.json").write_text(
        json.dumps({"on": on, "off": off, "threshold": best[1], "errors": best[0][0]}, indent=1))


if __name__ == "__main__":
    main()
