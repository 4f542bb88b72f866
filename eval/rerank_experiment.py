"""A second stage measured on the independent courses: a cross-encoder reranker trained here, per course,
from the bundled MiniLM on synthetic question-passage pairs with hard negatives mined from the index.

No cross-encoder installs offline from the package registries here, so one is trained the way the product
could at index time, on the course alone (no quiz): inverse-cloze pairs (Lee, Chang & Toutanova 2019) — a
sentence of a passage is the query, the passage without it the positive, the retriever's best other
passages for that sentence the hard negatives — fine-tune all-MiniLM-L6-v2 with a one-logit head
(transformers' AutoModelForSequenceClassification, binary cross-entropy). Then the default's top 30 for each
quiz question are re-scored: by the cross-encoder alone, and by RRF of the retriever's rank and the
cross-encoder's. Scored like eval/courses_benchmark.py, paired against the default, with the time the
rerank adds per question. Written by hand (a 40-line loop) because sentence-transformers 6's
CrossEncoderTrainer wants a datasets pipeline for what is one small loop here.

Run: python -m eval.rerank_experiment [--pairs 600] [--epochs 1]   (~10 min a course on 2 cores)
Writes eval/results/courses/rerank_experiment.md and .json.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SENTENCE = re.compile(r"(?<=[.!?])\s+")
DEPTH = 30


def ict_pairs(retriever: Any, n: int, seed: int) -> list[tuple[str, str, float]]:
    """(query, passage, label) pairs: a passage's sentence against the passage without it (1) and against the
    retriever's three best other passages for it (0)."""
    rng = random.Random(seed)
    passages = retriever.passages().passages
    candidates = []
    for p in passages:
        sentences = [s for s in SENTENCE.split(p.text) if len(s.split()) >= 8 and not s.lstrip().startswith(("#", "|", "!"))]
        candidates += [(p, s) for s in sentences]
    rng.shuffle(candidates)
    pairs = []
    for p, s in candidates[:n]:
        # ORQA keeps the sentence in 10% of positives, so that word overlap stays a cue, not a give-away
        pairs.append((s, p.text if rng.random() < 0.1 else p.text.replace(s, " "), 1.0))
        # a negative never holds the sentence itself (passages overlap): else overlap would teach "irrelevant"
        others = [h for h in retriever.search(s, k=8) if h.chunk.id != p.id and s[:60] not in h.chunk.text][:3]
        pairs += [(s, h.chunk.text, 0.0) for h in others]
    return pairs


def train(pairs: list[tuple[str, str, float]], epochs: int, seed: int) -> tuple[Any, Any]:
    """Fine-tune the bundled MiniLM with a one-logit head on the pairs (AdamW 3e-5, batch 16, BCE)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rag.index.embeddings import bundled_model_path

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(bundled_model_path()))
    model = AutoModelForSequenceClassification.from_pretrained(str(bundled_model_path()), num_labels=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    rng = random.Random(seed)
    for _ in range(epochs):
        rng.shuffle(pairs)
        for i in range(0, len(pairs), 16):
            batch = pairs[i:i + 16]
            enc = tok([q for q, _, _ in batch], [p for _, p, _ in batch], truncation=True, max_length=256,
                      padding=True, return_tensors="pt")
            logits = model(**enc).logits.squeeze(-1)
            loss = loss_fn(logits, torch.tensor([y for _, _, y in batch]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return tok, model


def rerank(tok: Any, model: Any, query: str, hits: list[Any]) -> list[float]:
    """Cross-encoder score of each hit's passage for the query."""
    import torch

    with torch.inference_mode():
        enc = tok([query] * len(hits), [h.chunk.text for h in hits], truncation=True, max_length=256,
                  padding=True, return_tensors="pt")
        return model(**enc).logits.squeeze(-1).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "eval-courses")
    ap.add_argument("--evidence", type=Path, default=ROOT / "eval" / "courses")
    ap.add_argument("--pairs", type=int, default=600, help="inverse-cloze queries per course")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="first N questions a course (a smoke run)")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "courses")
    args = ap.parse_args()

    from rag.answering.choices import search_wordings
    from rag.api import get_embedder
    from rag.common.atomic import write_json_atomic, write_text_atomic
    from rag.config import Settings
    from rag.evaluation.compare import build_product
    from rag.evaluation.course_run import fmt_delta, fmt_interval
    from rag.evaluation.courses import load_course, paired, question_ranks, rank_summary
    from rag.evaluation.retrieval import product_search
    from rag.retrieval.fusion import rrf

    embedder = get_embedder(Settings())
    defaults = {k: getattr(Settings(), k) for k in ("chunk_tokens", "chunk_overlap", "merge_sections",
                                                     "embed_headings", "child_tokens", "dense_weight")}
    ways = ("default", "cross-encoder alone", "RRF(default, cross-encoder)")
    ranks: dict[str, dict[str, dict[str, list]]] = {}
    report: dict[str, Any] = {"script": "eval/rerank_experiment.py", "args": {k: str(v) for k, v in vars(args).items()},
                              "courses": {}}
    with tempfile.TemporaryDirectory(prefix="rag-rerank-") as td:
        for folder in sorted(p for p in args.shared.iterdir() if (p / "quiz.jsonl").is_file()):
            ev = args.evidence / f"{folder.name}.evidence.jsonl"
            course = load_course(folder, evidence=ev if ev.is_file() else None)
            retriever, _, _ = build_product(course.lessons, embedder, defaults, Path(td))
            t0 = time.perf_counter()
            pairs = ict_pairs(retriever, args.pairs, args.seed)
            tok, model = train(pairs, args.epochs, args.seed)
            train_s = time.perf_counter() - t0
            per = {w: {"lesson": [], "evidence": []} for w in ways}
            search_s, rerank_s = [], []
            for q in course.questions[:args.limit]:
                t1 = time.perf_counter()
                hits = product_search(retriever, q, DEPTH, None)
                t2 = time.perf_counter()
                scores = rerank(tok, model, search_wordings(q["question"], q["options"])[1], hits)
                t3 = time.perf_counter()
                search_s.append(t2 - t1)
                rerank_s.append(t3 - t2)
                alone = [h for _, h in sorted(zip(scores, hits), key=lambda x: -x[0])]
                order = [i for i, _ in sorted(enumerate(scores), key=lambda x: -x[1])]
                fused_ids = rrf([list(range(len(hits))), order], 60)
                fused = [hits[i] for i, _ in fused_ids]
                for way, ranked in zip(ways, (hits, alone, fused)):
                    for grain, r in question_ranks(ranked[:10], q).items():
                        per[way][grain].append(r)
            ranks[course.name] = per
            report["courses"][course.name] = {
                "pairs": len(pairs), "train_s": round(train_s, 1),
                "search_ms_median": round(1000 * sorted(search_s)[len(search_s) // 2], 1),
                "rerank_ms_median": round(1000 * sorted(rerank_s)[len(rerank_s) // 2], 1),
                **{w: {g: rank_summary(per[w][g]) for g in ("lesson", "evidence")} for w in ways},
                **{f"{w} − default": {g: paired(per[w][g], per["default"][g]) for g in ("lesson", "evidence")}
                   for w in ways[1:]}}
            print(f"{course.name}: trained on {len(pairs)} pairs in {train_s:.0f} s", file=sys.stderr, flush=True)
    pooled = {w: {g: [r for c in ranks.values() for r in c[w][g]] for g in ("lesson", "evidence")} for w in ways}
    report["pooled"] = {f"{w} − default": {g: paired(pooled[w][g], pooled["default"][g]) for g in ("lesson", "evidence")}
                        for w in ways[1:]}
    lines = ["# Cross-encoder reranker trained per course (eval/rerank_experiment.py)", "",
             "| course | way | grain | recall@5 | MRR@10 | − default recall@5 | − default MRR@10 |", "|---|---|---|---|---|---|---|"]
    for name, c in report["courses"].items():
        for w in ways:
            for g in ("evidence", "lesson"):
                s = c[w][g]
                d = c.get(f"{w} − default", {}).get(g)
                lines.append(f"| {name} | {w} | {g} | {fmt_interval(s['recall@5'])} | {fmt_interval(s['mrr@10'])} | "
                             + (f"{fmt_delta(d['recall@5'])} | {fmt_delta(d['mrr@10'])} |" if d else "| |"))
    for w in ways[1:]:
        for g in ("evidence", "lesson"):
            d = report["pooled"][f"{w} − default"][g]
            lines.append(f"| pooled | {w} | {g} | | | {fmt_delta(d['recall@5'])} | {fmt_delta(d['mrr@10'])} |")
    lines += ["", "Per course: pairs, training seconds, median search ms and median rerank ms of a question "
              f"({DEPTH} passages):", ""]
    lines += [f"- {n}: {c['pairs']} pairs, {c['train_s']} s, search {c['search_ms_median']} ms, rerank "
              f"{c['rerank_ms_median']} ms" for n, c in report["courses"].items()]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "rerank_experiment.json", report)
    write_text_atomic(args.out / "rerank_experiment.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
