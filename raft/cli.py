"""`raft` command: a thin shell over raft.generate and raft.export. Exit codes: 0 ok, 1 user error (one line), 2 usage."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rag.cli import index_dir_option, user_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="course-rag")
def cli() -> None:
    """RAFT training data from a course's documents (generate, export)."""


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (dataset.jsonl, run.json, progress.jsonl, stats.json). Same args = resume.")
@click.option("--questions", type=click.IntRange(1, 20), default=3, show_default=True, help="Questions per chunk.")
@click.option("--distractors", type=click.IntRange(0, 50), default=4, show_default=True, help="Distractor documents per sample.")
@click.option("--p", "p", type=click.FloatRange(0, 1), default=0.8, show_default=True,
              help="Fraction of samples that keep the oracle (else one more distractor).")
@click.option("--distractor-strategy", "strategy", type=click.Choice(["hard", "random", "mixed"]), default="hard",
              show_default=True, help="hard = nearest non-oracle chunks of the index; random = uniform; mixed = half each.")
@click.option("--model", default=None, help="Teacher: bundled (default), a local model folder, or an OpenAI-compatible base URL.")
@click.option("--model-name", default=None, help="Model to request from an OpenAI-compatible server.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Parallel requests (HTTP backends only; the local model runs sequentially).")
@click.option("--max-tokens", "max_new_tokens", type=click.IntRange(1, 8192), default=None,
              help="Max new tokens per question list / answer (default 256).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use at most N chunks (seeded choice).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every sampling decision.")
@click.option("--allow-no-quote", is_flag=True, help="Keep answers that quote nothing (default: reject them).")
@click.option("--no-index", is_flag=True, help="Use the index as it is; don't update it from FOLDER first.")
@click.option("--json", "as_json", is_flag=True, help="Print the stats as JSON.")
@index_dir_option
@user_errors
def generate(folder: Path, out_dir: Path, questions: int, distractors: int, p: float, strategy: str,
             model: str | None, model_name: str | None, workers: int, max_new_tokens: int | None,
             limit: int | None, seed: int, allow_no_quote: bool, no_index: bool, as_json: bool,
             index_dir: Path | None) -> None:
    """Generate (or resume) a RAFT dataset from the course files in FOLDER."""
    from rag.config import load_settings
    from raft.generate import RaftConfig, format_stats, run

    settings = load_settings(index_dir=index_dir, model=model, model_name=model_name, max_new_tokens=max_new_tokens)
    config = RaftConfig(corpus=str(folder), questions=questions, distractors=distractors, p=p, strategy=strategy,
                        seed=seed, require_quote=not allow_no_quote, limit=limit, workers=workers)
    stats = run(folder, out_dir, settings, config, index_first=not no_index)
    if as_json:
        click.echo(json.dumps(stats, indent=1))
        return
    click.echo(format_stats(stats))
    click.echo(f"-> {out_dir / 'dataset.jsonl'} (stats: {out_dir / 'stats.json'})")


@cli.command()
@click.argument("dataset_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["hf", "chat", "completion", "eval"]), default="hf", show_default=True)
@click.option("--type", "kind", type=click.Choice(["jsonl", "parquet"]), default="jsonl", show_default=True)
@click.option("--split", default="0.8,0.1,0.1", show_default=True,
              help="train,validation,test fractions, by source chunk (no oracle in two splits).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: DATASET_DIR/export/FORMAT-TYPE).")
@click.option("--system-prompt", default=None, help="chat format: a system message for every sample.")
@click.option("--stop", default="<STOP>", show_default=True, help="completion format: appended to every completion.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split.")
@user_errors
def export(dataset_dir: Path, fmt: str, kind: str, split: str, out_dir: Path | None, system_prompt: str | None,
           stop: str, seed: int) -> None:
    """Export the dataset in DATASET_DIR for training or evaluation."""
    from raft.export import export as do_export

    result = do_export(dataset_dir, fmt, kind, split, out_dir, system_prompt, stop, seed)
    for name, path in result["files"].items():
        click.echo(f"{name}: {result['rows'][name]} rows -> {path}")


def main() -> None:
    cli(prog_name="raft")


if __name__ == "__main__":
    main()
