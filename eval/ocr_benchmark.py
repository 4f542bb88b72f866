"""Does OCR of scanned PDFs (the opt-in setting `ocr`, rag.ingest.ocr) measure well? Every lesson of the
independent courses (../shared/eval-courses) printed to page images and scanned into an image-only PDF,
then searched with each course's own quiz, against the same pages with a text layer, in one run.

Arms, on the same questions (recall@k and MRR@10 at the lesson grain: a hit is a passage of the quiz
item's lesson; rag.evaluation.courses):
- typed: each lesson's printed lines as a .txt file (what the scan shows, with a perfect text layer);
- ocr: the scanned PDFs indexed with `ocr` on (Tesseract reads each page);
- no OCR: the scanned PDFs indexed as shipped by default: every one is skipped (scanned, no text layer),
  so every question scores 0; reported for the paired delta OCR - no OCR.
Also measured: OCR's character accuracy against the printed text (rapidfuzz normalized Levenshtein
similarity, per lesson, whitespace collapsed) and seconds per page on this machine.

Pages: the lesson's markdown wrapped at 90 characters, 48 lines a page, drawn in Pillow's default font
(DejaVu Sans, 20 px) on A4 at 150 dpi, grey-scale, as a plain office scanner writes them.

Run (from the project folder, with `apt-get install tesseract-ocr`; ~10 min on 2 cores):
    . .venv/bin/activate && python -m eval.ocr_benchmark
Writes --out/ocr_benchmark.md and .json (numbers and question ids only: no course text).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

COURSES = ROOT.parent / "shared" / "eval-courses"
WIDTH, LINES_PER_PAGE = 90, 48
METRICS_SHOWN = ("recall@1", "recall@5", "mrr@10")


def printed_pages(text: str) -> list[str]:
    """The lesson as printed pages: lines wrapped at WIDTH, LINES_PER_PAGE a page."""
    lines: list[str] = []
    for line in text.splitlines():
        lines += textwrap.wrap(line, WIDTH, break_long_words=True, break_on_hyphens=False) or [""]
    return ["\n".join(lines[i:i + LINES_PER_PAGE]) for i in range(0, len(lines), LINES_PER_PAGE)]


def scan(pages: list[str], path: Path) -> None:
    """An image-only PDF of `pages`: each drawn on an A4 page at 150 dpi and saved by Pillow."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=20)
    images = []
    for page in pages:
        image = Image.new("L", (1240, 1754), 255)
        ImageDraw.Draw(image).multiline_text((70, 70), page, fill=0, font=font, spacing=10)
        images.append(image)
    images[0].save(path, "PDF", resolution=150.0, save_all=True, append_images=images[1:])


def lesson_rank(hits: list[Any], lesson_file: str) -> int | None:
    """Rank of the first passage of the lesson (typed .txt or scanned .pdf of the same stem)."""
    stem = Path(lesson_file).stem
    return next((i for i, h in enumerate(hits, start=1) if Path(h.chunk.source).stem == stem), None)


def indexed_text(chunks: list[Any]) -> dict[str, str]:
    """Each file's text as the index holds it, rebuilt from its chunks' spans (overlaps written once)."""
    by_stem: dict[str, list[str]] = {}
    for chunk in chunks:
        stem = Path(chunk.source).stem
        text = by_stem.setdefault(stem, [])
        if len(text) < chunk.span[1]:
            text.extend(" " * (chunk.span[1] - len(text)))
        text[chunk.span[0]:chunk.span[1]] = chunk.text
    return {stem: "".join(chars) for stem, chars in by_stem.items()}


def run_course(name: str, work: Path, embedder: Any, lessons: int = 0) -> dict[str, Any]:
    from rapidfuzz.distance import Levenshtein

    from rag.api import make_chunker
    from rag.config import Settings
    from rag.evaluation.courses import load_course, paired, rank_summary
    from rag.evaluation.retrieval import product_search
    from rag.index.build import build_index
    from rag.common.text import normalize_ws
    from rag.retrieval.retriever import Retriever

    course = load_course(COURSES / name)
    typed, scanned = work / name / "typed", work / name / "scanned"
    typed.mkdir(parents=True)
    scanned.mkdir(parents=True)
    printed: dict[str, str] = {}
    n_pages = 0
    for lesson in sorted(course.lessons.glob("*.md"))[:lessons or None]:
        pages = printed_pages(lesson.read_text(encoding="utf-8"))
        n_pages += len(pages)
        printed[lesson.stem] = "\n\n".join(pages)
        (typed / f"{lesson.stem}.txt").write_text(printed[lesson.stem], encoding="utf-8")
        scan(pages, scanned / f"{lesson.stem}.pdf")
    retrievers, seconds = {}, {}
    for arm, folder, ocr in (("typed", typed, False), ("ocr", scanned, True)):
        settings = Settings(index_dir=work / name / f"index-{arm}", corpus_dir=folder, ocr=ocr)
        start = time.perf_counter()
        report = build_index(folder, settings.index_dir, embedder, make_chunker(embedder, settings))
        seconds[arm] = time.perf_counter() - start
        assert not report.skipped, report.skipped
        retrievers[arm] = Retriever(settings.index_dir, embedder, mode=settings.mode, top_k=10,
                                    dense_weight=settings.dense_weight)
    from rag.index.store import VectorIndex

    accuracy = {stem: Levenshtein.normalized_similarity(normalize_ws(printed[stem]), normalize_ws(text))
                for stem, text in indexed_text(VectorIndex.load(work / name / "index-ocr", embedder).chunks).items()}
    accuracy.update({stem: 0.0 for stem in printed if stem not in accuracy})
    ranks: dict[str, list[int | None]] = {"typed": [], "ocr": [], "no OCR": []}
    for q in course.questions:
        if not q.get("lesson_file") or Path(q["lesson_file"]).stem not in printed:
            continue
        for arm in ("typed", "ocr"):
            ranks[arm].append(lesson_rank(product_search(retrievers[arm], q, 10), q["lesson_file"]))
        ranks["no OCR"].append(None)
    return {"course": name, "lessons": len(printed), "pages": n_pages, "questions": len(ranks["typed"]),
            "build_seconds": seconds, "ocr_seconds_per_page": (seconds["ocr"] - seconds["typed"]) / n_pages,
            "char_accuracy": {"mean": sum(accuracy.values()) / len(accuracy), "min": min(accuracy.values())},
            "ranks": ranks, "summary": {arm: rank_summary(r) for arm, r in ranks.items()},
            "ocr_minus_typed": paired(ranks["ocr"], ranks["typed"]),
            "ocr_minus_no_ocr": paired(ranks["ocr"], ranks["no OCR"])}


def cell(summary: dict[str, Any]) -> str:
    ci = summary.get("ci")
    return f"{summary['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def delta(result: dict[str, Any]) -> str:
    ci = result.get("ci")
    return f"{result['mean_delta']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")


def report(results: list[dict[str, Any]], pooled: dict[str, Any]) -> str:
    out = ["# OCR of scanned lessons (eval/ocr_benchmark.py)", "",
           "Every lesson of the independent courses printed to A4 page images (150 dpi) in an image-only PDF; "
           "each course's own quiz searched at the lesson grain (hybrid, the product's defaults). typed = the "
           "same printed lines as text; ocr = the scanned PDFs with `ocr` on (tesseract 5, eng); no OCR = the "
           "default, which skips every scanned PDF. Means with 95% bootstrap intervals; deltas paired. OCR s/page: "
           "the OCR index's build time over the typed index's, per page (one tesseract thread).", "",
           "| course | lessons | pages | OCR s/page | char accuracy (mean, min) | arm | " +
           " | ".join(METRICS_SHOWN) + " |", "|---|---|---|---|---|---|" + "---|" * len(METRICS_SHOWN)]
    for r in [*results, pooled]:
        first = True
        for arm in ("typed", "ocr", "no OCR"):
            head = (f"| {r['course']} | {r.get('lessons', '')} | {r.get('pages', '')} | "
                    f"{r['ocr_seconds_per_page']:.2f} | {r['char_accuracy']['mean']:.3f}, {r['char_accuracy']['min']:.3f} |"
                    if first else "| | | | | |")
            out.append(f"{head} {arm} | " + " | ".join(cell(r["summary"][arm][m]) for m in METRICS_SHOWN) + " |")
            first = False
    out += ["", "| course | ocr - typed: " + " | ".join(METRICS_SHOWN) + " | ocr - no OCR: recall@5 |",
            "|---|" + "---|" * (len(METRICS_SHOWN) + 1)]
    for r in [*results, pooled]:
        out.append(f"| {r['course']} | " + " | ".join(delta(r["ocr_minus_typed"][m]) for m in METRICS_SHOWN)
                   + f" | {delta(r['ocr_minus_no_ocr']['recall@5'])} |")
    return "\n".join(out) + "\n"


def main() -> None:
    from rag.api import get_embedder
    from rag.config import Settings
    from rag.evaluation.courses import paired, rank_summary
    from rag.ingest.ocr import tesseract_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    parser.add_argument("--courses", nargs="*", default=["ai", "data-science"])
    parser.add_argument("--lessons", type=int, default=0, help="only the first N lessons of each course (a smoke run)")
    args = parser.parse_args()
    if tesseract_path() is None:
        sys.exit("tesseract is not installed: apt-get install tesseract-ocr")
    embedder = get_embedder(Settings())
    with tempfile.TemporaryDirectory(prefix="ocr-bench-") as tmp:
        results = [run_course(name, Path(tmp), embedder, args.lessons) for name in args.courses]
    ranks = {arm: [r for res in results for r in res["ranks"][arm]] for arm in ("typed", "ocr", "no OCR")}
    pages = sum(r["pages"] for r in results)
    pooled = {"course": "pooled", "pages": pages, "lessons": sum(r["lessons"] for r in results),
              "ocr_seconds_per_page": sum(r["ocr_seconds_per_page"] * r["pages"] for r in results) / pages,
              "char_accuracy": {"mean": sum(r["char_accuracy"]["mean"] * r["lessons"] for r in results)
                                / sum(r["lessons"] for r in results),
                                "min": min(r["char_accuracy"]["min"] for r in results)},
              "summary": {arm: rank_summary(r) for arm, r in ranks.items()},
              "ocr_minus_typed": paired(ranks["ocr"], ranks["typed"]),
              "ocr_minus_no_ocr": paired(ranks["ocr"], ranks["no OCR"])}
    args.out.mkdir(parents=True, exist_ok=True)
    text = report(results, pooled)
    (args.out / "ocr_benchmark.md").write_text(text, encoding="utf-8")
    (args.out / "ocr_benchmark.json").write_text(json.dumps({"courses": results, "pooled": pooled}, indent=1),
                                                  encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
