"""Summarise the partial RAFT comparison of README "The whole course": per setting, only the questions every model
has answered (paired). Reads the per-model/per-setting report folders the session wrote under /work/runs
(bundled, DSF and RAFT); usage: partial_summary.py OUT [MODELS]."""
import json, sys
from pathlib import Path
sys.path.insert(0, "/work/main")
from raft.eval_report import compare, format_markdown, summarize, bootstrap_info
runs = Path("/work/runs")
names = {"bundled": "bundled", "/work/runs/dsf": "DSF", "/work/runs/raft-p08": "RAFT P=0.8"}
rows = []
for f in ["eval-bundled", "eval-dsf-oracle", "eval-dsf-distractors", "eval-raft-p08-oracle", "eval-raft-p08-distractors"]:
    rows += [json.loads(l) for l in (runs / f / "results.jsonl").read_text().splitlines()]
models = sys.argv[2].split(",") if len(sys.argv) > 2 else list(names)
settings = ["oracle", "distractors"]
keep = []
for s in settings:
    ids = set.intersection(*[{r["id"] for r in rows if r["model"] == m and r["setting"] == s} for m in models])
    keep += [r for r in rows if r["setting"] == s and r["id"] in ids]
    print(s, len(ids), "questions answered by all three")
summary = {"source": "raft-datasets/course-teacher", "split_used": "test", "split": "0.7,0.1,0.2", "note": None,
           "seed": 0, "limit": 100, "questions": len({r["id"] for r in keep}), "available_questions": 185,
           "max_new_tokens": 192, "models": models, "settings": settings, "retrieval": None,
           "bootstrap": bootstrap_info(2000, 0),
           "results": summarize(keep, models, settings, resamples=2000, seed=0),
           "comparison": compare(keep, models, settings, "bundled", resamples=2000, seed=0)}
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
(out / "results.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep), encoding="utf-8")
(out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
md = format_markdown(summary)
(out / "summary.md").write_text(md, encoding="utf-8")
print(md)
