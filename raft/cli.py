"""`raft` command: a thin shell over raft.synth (generate), raft.export, raft.train and raft.evaluate. Exit codes: 0 ok, 1 user error (one line), 2 usage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from raft.course.options import INSTALL_POLICIES, CourseOptions
from raft.records import DEFAULT_SPLIT
from raft.synth.config import RaftConfig
from raft.train.config import TrainConfig
from rag.cli import check_engine_flags, engine_options, index_dir_option, user_errors
from rag.common.click_options import deprecated_alias, model_option, model_options
from rag.config import Settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="course-rag")
def cli() -> None:
    """RAFT from a course's documents: generate training data, export it, fine-tune the model, evaluate it
    (or all of it in one resumable command: `raft course CORPUS`)."""


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (dataset.jsonl, run.json, progress.jsonl, stats.json). Same args = resume.")
@model_options(RaftConfig, ["questions", "distractors", "p", "strategy"])
@click.option("--model", default=None, help="Teacher: bundled (default), teacher, a model folder, a .gguf file, a `raft train` output, or an OpenAI-compatible base URL.")
@click.option("--model-name", default=None, help="Model to request from an OpenAI-compatible server.")
@model_options(RaftConfig, ["workers"])
@deprecated_alias("--max-tokens", "--max-new-tokens", "max_new_tokens", "raft")
@model_option(Settings, "max_new_tokens", given_only=True,
              help="Max new tokens per question list / answer (the setting max_new_tokens).")
@model_options(RaftConfig, ["batch_size", "answer_mode", "limit", "seed"])
@click.option("--allow-no-quote", is_flag=True, help="Keep answers that quote nothing (default: reject them).")
@click.option("--no-index", is_flag=True, help="Use the index as it is; don't update it from FOLDER first.")
@click.option("--follow-outside-links", is_flag=True, default=None,
              help="Also index links that lead outside FOLDER (skipped by default; RAG_FOLLOW_OUTSIDE_LINKS).")
@click.option("--json", "as_json", is_flag=True, help="Print the stats as JSON.")
@index_dir_option
@engine_options
@user_errors
def generate(folder: Path, out_dir: Path, questions: int, distractors: int, p: float, strategy: str,
             model: str | None, model_name: str | None, workers: int, max_new_tokens: int | None,
             batch_size: int, answer_mode: str, limit: int | None, seed: int, allow_no_quote: bool, no_index: bool,
             follow_outside_links: bool | None, as_json: bool, index_dir: Path | None, engine: str,
             address: str | None, ray_workers: int | None, gpus_per_worker: float) -> None:
    """Generate (or resume) a RAFT dataset from the course files in FOLDER."""
    import contextlib

    from raft.synth.run import format_stats, run
    from rag.config import load_settings

    check_engine_flags(engine, address, ray_workers, gpus_per_worker)

    settings = load_settings(index_dir=index_dir, model=model, model_name=model_name, max_new_tokens=max_new_tokens,
                             follow_outside_links=follow_outside_links or None)
    config = RaftConfig(corpus=str(folder), questions=questions, distractors=distractors, p=p, strategy=strategy,
                        seed=seed, require_quote=not allow_no_quote, limit=limit, workers=workers,
                        batch_size=batch_size, answer_mode=answer_mode)
    with contextlib.ExitStack() as stack:
        raft_engine = None
        if engine == "ray":  # imported only here: without --engine ray nothing imports Ray
            from raft.synth.ray_engine import RaftRayEngine
            from rag.index.ray_engine import RayCluster

            cluster = stack.enter_context(RayCluster(address))
            raft_engine = RaftRayEngine(cluster, ray_workers, gpus_per_worker=gpus_per_worker)
        stats = run(folder, out_dir, settings, config, index_first=not no_index, engine=raft_engine)
    if as_json:
        click.echo(json.dumps(stats, indent=1))
        return
    click.echo(format_stats(stats))
    click.echo(f"-> {out_dir / 'dataset.jsonl'} (stats: {out_dir / 'stats.json'})")


@cli.command()
@click.argument("dataset_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["hf", "chat", "completion", "eval"]), default="hf", show_default=True)
@click.option("--type", "kind", type=click.Choice(["jsonl", "parquet"]), default="jsonl", show_default=True)
@click.option("--split", default=DEFAULT_SPLIT, show_default=True,
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


@cli.command("eval")
@click.argument("dataset_dir", type=click.Path(path_type=Path))
@click.option("--models", default="bundled", show_default=True,
              help="Comma-separated: bundled, teacher, model folders, .gguf files, `raft train` outputs, http(s) URLs (with --model-name).")
@click.option("--model-name", default=None, help="Model to request from an OpenAI-compatible server.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/raft"),
              show_default=True, help="Report folder (results.jsonl, summary.json/.md, chart.png). Same args = resume.")
@click.option("--split", default=DEFAULT_SPLIT, show_default=True,
              help="Same fractions as `raft export`/`raft train`: the test (else last) split is evaluated.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the split, --limit, oracle placement and the bootstrap.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate at most N questions (seeded choice).")
@click.option("--max-new-tokens", type=click.IntRange(1, 8192), default=192, show_default=True)
@click.option("--settings", "settings_", default="oracle,distractors,closed", show_default=True,
              help="oracle = oracle + distractors; distractors = without the oracle; closed = question alone; "
                   "retrieved = the top -k passages the product's retriever finds in --index-dir (the real use).")
@index_dir_option
@click.option("-k", "--top-k", "top_k", type=click.IntRange(1, 100), default=None,
              help="retrieved setting: passages per question (default: the configured top_k, 5).")
@click.option("--baseline", default=None,
              help="Model the others are compared with, question by question (default: the first of --models).")
@click.option("--resamples", type=click.IntRange(1), default=2000, show_default=True,
              help="Bootstrap resamples of the 95% intervals.")
@click.option("--batch-size", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print summary.json instead of the table.")
@user_errors
def eval_cmd(dataset_dir: Path, models: str, model_name: str | None, report_dir: Path, split: str, seed: int,
             limit: int | None, max_new_tokens: int, settings_: str, index_dir: Path | None, top_k: int | None,
             baseline: str | None, resamples: int, batch_size: int, as_json: bool) -> None:
    """Score models on the held-out questions of DATASET_DIR (oracle, distractors only, closed book, retrieved),
    with 95% bootstrap intervals and a paired comparison with --baseline."""
    import sys

    from raft.eval_report import format_markdown
    from raft.evaluate import SETTINGS, parse_list, run_eval
    from raft.runinfo import command_line

    summary = run_eval(dataset_dir, parse_list(models, "--models"), report_dir, split=split, seed=seed, limit=limit,
                       max_new_tokens=max_new_tokens, settings=parse_list(settings_, "--settings", SETTINGS),
                       model_name=model_name, batch_size=batch_size, index_dir=index_dir, k=top_k,
                       baseline=baseline, resamples=resamples, command=command_line(sys.argv),
                       log=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps(summary, indent=1, ensure_ascii=False))
        return
    click.echo(format_markdown(summary))
    click.echo(f"-> {report_dir / 'summary.md'}, {report_dir / 'chart.png'}, {report_dir / 'results.jsonl'}")


@cli.command()
@click.argument("dataset_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("models/raft-smollm2"),
              show_default=True, help="Output folder (adapter/, merged/, checkpoints/, loss.png, train_report.json).")
@model_options(TrainConfig, ["base", "method", "oracle_fraction", "distractor_strategy", "epochs", "lr", "lora_r",
                             "lora_alpha", "lora_dropout", "batch_size", "grad_accum", "max_length", "max_samples",
                             "max_val_samples", "split", "seed", "dtype"])
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from OUT's newest checkpoint (--no-resume: start over, same arguments).")
@model_options(TrainConfig, ["save_steps", "threads"])
@click.option("--json", "as_json", is_flag=True, help="Print train_report.json.")
@user_errors
def train(dataset_dir: Path, out_dir: Path, resume: bool, as_json: bool, **options: Any) -> None:
    """LoRA fine-tune the model on the train split of DATASET_DIR; same args = resume, different = refused."""
    import os
    import sys

    from raft.runinfo import command_line

    # 2 busy-waiting OpenMP threads slow to a crawl when other processes share the cores (must precede torch).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from raft.train.loop import train as run_train
    from raft.train.report import format_report
    from rag.config import load_settings

    config = TrainConfig(**options)
    report = run_train(dataset_dir, out_dir, config, resume=resume, command=command_line(sys.argv),
                       cache_dir=load_settings().cache_dir)
    click.echo(json.dumps(report, indent=1, ensure_ascii=False) if as_json else format_report(report))


@cli.command()
@click.argument("corpus", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default: models/course-NAME, NAME = CORPUS's folder name). Same args = resume.")
@model_options(CourseOptions, ["teacher", "teacher_name", "workers", "questions", "distractors", "limit"],
               given_only=True, checked=False)
@deprecated_alias("--max-tokens", "--max-new-tokens", "teacher_max_tokens", "raft")
@model_options(CourseOptions, ["teacher_max_tokens", "split", "seed", "base", "epochs", "lr", "lora_r", "grad_accum",
                               "max_length", "max_samples", "max_val_samples", "save_steps", "threads"],
               given_only=True, checked=False)
@click.option("--eval-settings", default=None, help="Held-out settings, comma-separated (oracle,distractors,retrieved).")
@model_options(CourseOptions, ["eval_limit", "eval_max_new_tokens"], given_only=True, checked=False)
@model_option(CourseOptions, "top_k", decls=("-k", "--top-k"), given_only=True, checked=False)
@model_options(CourseOptions, ["resamples"], given_only=True, checked=False)
@click.option("--install", "install_policy", type=click.Choice(INSTALL_POLICIES), default=None,
              help=CourseOptions.model_fields["install"].description + " (default: if-better)")
@model_options(CourseOptions, ["quiz"], given_only=True, checked=False)
@click.option("--plan", "plan_only", is_flag=True, help="Say how long the run takes and what disk it needs, then stop.")
@click.option("--uninstall", is_flag=True, help="Remove the adapter installed for CORPUS (the run folder is kept).")
@click.option("--json", "as_json", is_flag=True, help="Print the run's state as JSON at the end.")
@index_dir_option
@user_errors
def course(corpus: Path, out_dir: Path | None, index_dir: Path | None, install_policy: str | None, plan_only: bool,
           uninstall: bool, as_json: bool, eval_settings: str | None, **given: object) -> None:
    """Make a RAFT adapter for the course in CORPUS and install it for `model = auto`: plan (time, disk), generate
    with the teacher, train, evaluate base vs tuned on the held-out split (and on --quiz), install. Killed, the same
    command resumes."""
    import os
    import sys

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `raft train` (must precede torch)
    from raft.course.options import make_options
    from raft.course.progress import CourseEvent, ProgressView
    from raft.course.report import format_outcome, format_plan
    from raft.course.run import run_course, uninstall_course
    from raft.evaluate import SETTINGS, parse_list
    from raft.runinfo import command_line
    from rag.config import load_settings

    if uninstall:
        gone = uninstall_course(corpus, load_settings(index_dir=index_dir))
        click.echo(f"removed {len(gone)} adapter(s) installed for {corpus}: `model = auto` no longer uses them"
                   if gone else f"no adapter is installed for {corpus}")
        return
    out = out_dir or Path("models") / f"course-{corpus.resolve().name}"
    settings_list = tuple(parse_list(eval_settings, "--eval-settings", SETTINGS)) if eval_settings else None
    options = make_options(install=install_policy, eval_settings=settings_list, **given)
    settings = load_settings(index_dir=index_dir or out / "index")
    view = ProgressView(enabled=not (as_json or plan_only))  # the bar; lines are always written (stderr)

    def on_event(event: CourseEvent) -> None:
        if event.kind == "plan":
            view.write(format_plan(event.data, event.data["left"], str(out), event.data["chunks_done_now"],
                                   tuple(event.data.get("started", ()))))
        view(event)

    try:
        result = run_course(corpus, out, options, settings, on_event=on_event, command=command_line(sys.argv),
                            plan_only=plan_only)
    finally:
        view.close()
    if as_json:
        click.echo(json.dumps(result, indent=1, ensure_ascii=False))
        return
    if text := format_outcome(result):
        click.echo(text)


def main() -> None:
    cli(prog_name="raft")


if __name__ == "__main__":
    main()
