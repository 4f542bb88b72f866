"""Maintainer step: copy a `raft train` adapter into the package as the shipped course adapter (issue 15).

    python scripts/ship_course_adapter.py models/course-raft --index-dir data/index --eval reports/course/summary.json

Writes rag/generation/course_adapter/: peft's adapter files (the base path peft recorded is replaced by the
model's public id) and rag_adapter.json with the base spec ("bundled"), the prompt format, the SHA-256 of
every file of the index the adapter was tuned for (`course_files`: where `model = auto` loads it), the
training report's command, seed, duration and losses, and the evaluation summary it was chosen on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the `raft train` OUT folder (adapter/, train_report.json)")
    ap.add_argument("--index-dir", type=Path, default=ROOT / "data" / "index", help="the index of the course")
    ap.add_argument("--eval", type=Path, default=None, help="the raft eval summary.json the adapter was chosen on")
    args = ap.parse_args(argv)

    from rag.common.atomic import write_json_atomic
    from rag.generation.adapter import ADAPTER_INFO, COURSE_ADAPTER, PEFT_CONFIG, PEFT_WEIGHTS
    from rag.index.store import current_generation

    report = json.loads((args.run / "train_report.json").read_text(encoding="utf-8"))
    manifest = json.loads((current_generation(args.index_dir) / "manifest.json").read_text(encoding="utf-8"))
    COURSE_ADAPTER.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.run / "adapter" / PEFT_WEIGHTS, COURSE_ADAPTER / PEFT_WEIGHTS)
    peft_config = json.loads((args.run / "adapter" / PEFT_CONFIG).read_text(encoding="utf-8"))
    peft_config["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"  # not this machine's cache path
    write_json_atomic(COURSE_ADAPTER / PEFT_CONFIG, peft_config)
    record = {
        "base": "bundled",
        "prompt_format": "raft",
        "course_files": {name: f["sha256"] for name, f in sorted(manifest["files"].items())},
        "method": report.get("method", "raft"),
        "training": {k: report.get(k) for k in ("args", "samples", "steps", "seconds", "val_loss_before",
                                                "val_loss_after", "initial_loss", "final_loss", "run", "versions")},
    }
    if args.eval is not None:
        summary = json.loads(args.eval.read_text(encoding="utf-8"))
        record["evaluation"] = {k: summary.get(k) for k in ("questions", "split", "seed", "models", "settings",
                                                             "results", "comparison")}
    write_json_atomic(COURSE_ADAPTER / ADAPTER_INFO, record)
    print(f"shipped {args.run / 'adapter'} -> {COURSE_ADAPTER} ({len(record['course_files'])} course files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
