"""Retrieval evaluation that resembles real use: the product's default and its ablations against
LangChain's RecursiveCharacterTextSplitter(1000, 200) + flat FAISS (same MiniLM embedder), in one run.

Sets (rag/evaluation/sets.py says how each is made; nothing is picked by hand):
  quiz        COURSE without its quiz files and without the asked items, asked QUESTIONS (evidence quotes)
  quiz-extra  the same questions over EXTRA course material (default /work/shared/seeds, if present)
  quiz-dup    COURSE and EXTRA together (every passage there twice when EXTRA copies the course)
  cloze       inverse-cloze oracle questions drawn (seeded) from COURSE's prose

Scores: recall@1/5/10, MRR@10, prompt tokens of the top-5 passages (bundled generator's tokenizer, as
the prompt shows them), recall within a 1,024-token passage budget, passages that fit it; chunks,
median passage characters and index build seconds.

Run (from the project folder, ~5 min on 2 cores):
    . .venv/bin/activate
    python -m eval.retrieval_benchmark                    # default vs LangChain, all sets
    python -m eval.retrieval_benchmark --ablations        # + each change of the default switched off alone
Writes eval/results/retrieval_benchmark.md and .json, and the drawn cloze questions (cloze_questions.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Each change of the default (packed passages, child windows, ...), switched off alone (Settings overrides);
# "previous settings" switches all off (close to, not the same as, the old chunker: it keeps the heading line
# in the passage text).
ABLATIONS = {
    "no child windows": {"child_tokens": 0},
    "no section merging": {"merge_sections": False},
    "heading path embedded": {"embed_headings": True},
    "no collapse": {"collapse_duplicates": False},
    "even RRF weights": {"dense_weight": 0.5},
    "previous settings": {"child_tokens": 0, "merge_sections": False, "embed_headings": True,
                              "collapse_duplicates": False, "dense_weight": 0.5},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--course", type=Path, default=ROOT / "corpus", help="course folder (default corpus/)")
    ap.add_argument("--questions", type=Path, default=ROOT / "eval" / "dev_questions.jsonl",
                    help="quiz questions with evidence quotes (default eval/dev_questions.jsonl)")
    ap.add_argument("--extra", type=Path, default=Path("/work/shared/seeds"),
                    help="more course material for quiz-extra and quiz-dup (skipped when missing)")
    ap.add_argument("--cloze", type=int, default=40, help="cloze questions to draw (default 40)")
    ap.add_argument("--seed", type=int, default=13, help="cloze sampler seed")
    ap.add_argument("--budget", type=int, default=1024, help="passage budget in prompt tokens")
    ap.add_argument("--ablations", action="store_true", help="also run each change switched off alone")
    ap.add_argument("--modes", default="dense,bm25,hybrid", help="modes of the default to score")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    args = ap.parse_args()

    from rag.api import get_embedder
    from rag.common.atomic import write_json_atomic, write_text_atomic
    from rag.config import Settings
    from rag.evaluation.compare import (
        LangChainBaseline,
        ProductSearcher,
        build_product,
        generator_token_counter,
        markdown_table,
        score,
    )
    from rag.evaluation.retrieval import load_questions
    from rag.evaluation.sets import make_cloze_set, make_quiz_set

    defaults = Settings(index_dir=Path(tempfile.gettempdir()) / "unused")
    embedder = get_embedder(defaults)
    count = generator_token_counter(defaults.cache_dir)
    questions = load_questions(args.questions)
    default_mode = Settings.model_fields["mode"].default
    t0 = time.time()
    report = {"script": "eval/retrieval_benchmark.py", "args": {k: str(v) for k, v in vars(args).items()},
              "default_mode": default_mode, "sets": {}}
    md = ["# Retrieval benchmark (issue 13)", "",
          (f"Default = `{default_mode}` mode with the shipped settings; LangChain = RecursiveCharacterTextSplitter"
           f"(1000, 200) + faiss.IndexFlatIP over the same MiniLM. tokens@5 = prompt tokens of the top-5 passages; "
           f"recall@{args.budget}tok = a hit among the passages that fit {args.budget} prompt tokens, best first."), ""]
    with tempfile.TemporaryDirectory(prefix="rag-retrieval-bench-") as td:
        work = Path(td)
        sets = [make_quiz_set(args.course, questions, work / "quiz")]
        if args.extra.is_dir():
            extra = make_quiz_set(args.extra, questions, work / "quiz-extra")
            extra.name = "quiz-extra"
            both = work / "both"
            shutil.copytree(args.course, both / "course")
            shutil.copytree(args.extra, both / "extra")
            dup = make_quiz_set(both, questions, work / "quiz-dup")
            dup.name = "quiz-dup"
            sets += [extra, dup]
        sets.append(make_cloze_set(args.course, work / "cloze", n=args.cloze, seed=args.seed))
        for es in sets:
            rows = []
            lc = LangChainBaseline(es.corpus, embedder)
            for mode in ("dense", "bm25"):
                s, _ = score(lc.searcher(mode), es, count, args.budget)
                rows.append({"pipeline": f"LangChain 1000/200 {mode}", **s, "chunks": len(lc.chunks),
                             "median_chars": statistics.median(len(c.text) for c in lc.chunks), "build_s": lc.seconds})
            variants = {"default": {}, **(ABLATIONS if args.ablations else {})}
            per_question = {}
            for name, overrides in variants.items():
                retriever, seconds, sizes = build_product(es.corpus, embedder, overrides, work)
                modes = args.modes.split(",") if name == "default" else [default_mode]
                if name == "previous settings":
                    modes = ["dense", default_mode]
                for mode in modes:
                    s, per_q = score(ProductSearcher(retriever, mode), es, count, args.budget)
                    label = f"{name} {mode}" + (" (shipped)" if name == "default" and mode == default_mode else "")
                    rows.append({"pipeline": label, **s, "chunks": len(retriever.index.chunks),
                                 "median_chars": statistics.median(sizes), "build_s": seconds})
                    if name == "default" and mode == default_mode:
                        per_question = {r["id"]: r["rank"] for r in per_q}
            report["sets"][es.name] = {"notes": es.notes, "n": len(es.questions), "rows": rows,
                                       "default_ranks": per_question}
            md += [f"## {es.name} ({len(es.questions)} questions)", "", f"How made: {json.dumps(es.notes)}", "",
                   markdown_table(rows, args.budget), ""]
            print("\n".join(md[-4:]), flush=True)
    report["seconds"] = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "retrieval_benchmark.json", report)
    write_text_atomic(args.out / "retrieval_benchmark.md", "\n".join(md) + "\n")
    # the drawn cloze questions, for inspection (they are made again, identically, by every run)
    write_text_atomic(args.out / "cloze_questions.jsonl",
                      "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in sets[-1].questions))
    print(f"wrote {args.out / 'retrieval_benchmark.md'} ({report['seconds']:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
