"""`rag` command: a thin shell over rag.api. Exit codes: 0 ok, 1 user error (one line), 2 usage,
3 `rag serve`'s port in use, 130 interrupted, 141 output pipe closed (docs/reference/errors.md).

Every file a command reads goes through rag.ingest.loaders' text reader (UTF-8, or UTF-16/32 by BOM;
one-line errors), and the `user_errors` funnel turns RagError, and any OS error (a path that is a
symlink loop, a file where a folder should be, no permission), into `Error: ...` and exit 1 instead
of a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import click

from rag.common.click_options import deprecated_alias, model_options
from rag.common.files import os_reason
from rag.common.text import read_lines, read_text
from rag.config import Settings
from rag.errors import NoDocuments, RagError


def index_dir_option(f: Callable) -> Callable:
    return click.option("--index-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Index folder (default: data/index in the project; env RAG_INDEX_DIR).")(f)


def engine_options(f: Callable) -> Callable:
    """--engine, --address, --ray-workers, --gpus-per-worker: where a batch job runs (`rag index`, `raft generate`)."""
    f = click.option("--gpus-per-worker", type=click.FloatRange(0), default=0.0, show_default=True,
                     help="With --engine ray: GPUs each embedding worker reserves (0 = embed on CPU).")(f)
    f = click.option("--ray-workers", type=click.IntRange(1), default=None,
                     help="With --engine ray: actors per stage (default: as many as the cluster's CPUs hold).")(f)
    f = click.option("--address", default=None,
                     help="With --engine ray: a running Ray cluster (HOST:6379; 'auto' = the one `ray start` "
                          "started here). Default: a one-machine cluster on 127.0.0.1 for this command.")(f)
    return click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="local = this process; ray = Ray Data pipelines on a Ray cluster "
                             "(pip install -e '.[ray]'; docs/guide/ray.md).")(f)


def check_engine_flags(engine: str, address: str | None, ray_workers: int | None, gpus_per_worker: float) -> None:
    """Refuse the Ray flags without `--engine ray` (exit 2), so a forgotten --engine cannot run locally unnoticed."""
    if engine != "ray" and (address is not None or ray_workers is not None or gpus_per_worker):
        raise click.UsageError("--address, --ray-workers and --gpus-per-worker need --engine ray")


def user_errors(f: Callable) -> Callable:
    """Turn RagError, and an OSError no check caught, into one line `Error: message` and exit 1."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except RagError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:  # the reader went away (`rag search ... | head -1`): stop quietly, like SIGPIPE
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise click.ClickException(f"cannot use{where}: {os_reason(exc)}") from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def _settings(**flags: Any):
    from rag.config import load_settings

    return load_settings(**flags)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="course-rag")
def cli() -> None:
    """Question answering over a course's documents (index, search, ask)."""


@cli.command()
@click.argument("corpus", type=click.Path(path_type=Path), required=False)
@index_dir_option
@click.option("--rebuild", is_flag=True, help="Re-read and re-embed everything.")
@click.option("--embed-model", default=None, help="sentence-transformers folder or name (default: bundled MiniLM).")
@click.option("--faiss-type", type=click.Choice(["flat", "hnsw", "ivf"]), default=None,
              help="flat = exact (default); hnsw/ivf = approximate, for large corpora.")
@click.option("--chunk-tokens", type=int, default=None, help="Target chunk size in embedder tokens.")
@click.option("--follow-outside-links", is_flag=True, default=None,
              help="Also index links that lead outside CORPUS (skipped by default; RAG_FOLLOW_OUTSIDE_LINKS).")
@click.option("--ocr", is_flag=True, default=None,
              help="Read scanned PDF pages with Tesseract (apt-get install tesseract-ocr; RAG_OCR).")
@click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON.")
@engine_options
@user_errors
def index(corpus: Path | None, index_dir: Path | None, rebuild: bool, embed_model: str | None,
          faiss_type: str | None, chunk_tokens: int | None, follow_outside_links: bool | None, ocr: bool | None,
          as_json: bool, engine: str, address: str | None, ray_workers: int | None, gpus_per_worker: float) -> None:
    """Build or update the index from CORPUS (a folder or file; default: corpus/)."""
    import contextlib

    from rag.api import index_corpus, index_report_lines
    from rag.common.progress import progress_bar

    check_engine_flags(engine, address, ray_workers, gpus_per_worker)

    settings = _settings(index_dir=index_dir, embed_model=embed_model, faiss_type=faiss_type, chunk_tokens=chunk_tokens,
                         follow_outside_links=follow_outside_links or None, ocr=ocr or None)
    corpus = corpus or settings.corpus_dir
    bars: dict[str, Any] = {}
    labels = {"read": "reading files", "embed": "embedding chunks", "index": "writing index"}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            unit = "file" if stage == "read" else "chunk" if stage == "embed" else "step"
            bars[stage] = progress_bar(total=total, desc=labels[stage], unit=unit, leave=False)
        bar = bars[stage]
        bar.total = total
        bar.update(done - bar.n)

    try:
        with contextlib.ExitStack() as stack:
            build_engine = None
            if engine == "ray":  # imported only here: without --engine ray nothing imports Ray
                from rag.index.ray_engine import RayCluster, RayEngine

                cluster = stack.enter_context(RayCluster(address))
                build_engine = RayEngine(cluster, ray_workers, gpus_per_worker=gpus_per_worker)
            report = index_corpus(corpus, settings, rebuild=rebuild, on_progress=progress, engine=build_engine)
    except NoDocuments as exc:
        for s in exc.skipped:
            click.echo(f"skipped {s.source}: {s.reason}", err=True)
        raise
    finally:
        for bar in bars.values():
            bar.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
        return
    for line in index_report_lines(report):
        click.echo(line, err=True)
    n_files = len(report.added) + len(report.changed) + len(report.unchanged) + len(report.kept_previous)
    if report.nothing_changed:
        click.echo(f"index is up to date: {n_files} files, {report.chunks_total} chunks, nothing changed "
                   f"({report.seconds:.1f}s) -> {settings.index_dir}")
        return
    click.echo(f"indexed {n_files} files -> {report.chunks_total} chunks in {report.seconds:.1f}s "
               f"({len(report.added)} added, {len(report.changed)} changed, {len(report.unchanged)} unchanged, "
               f"{len(report.deleted)} deleted, {len(report.skipped)} skipped; "
               f"{report.chunks_embedded} chunks embedded) -> {settings.index_dir}")


@cli.command()
@click.argument("query", required=False)
@index_dir_option
@click.option("-k", "--top-k", type=click.IntRange(1, 100), default=None, help="How many passages (default 5).")
@click.option("--mode", type=click.Choice(["dense", "bm25", "hybrid"]), default=None, help="Retrieval mode (default hybrid: see docs/results/retrieval.md).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of hits.")
@click.option("--queries-file", type=click.Path(allow_dash=True, path_type=Path), default=None,
              help="One query a line ('-' = stdin; UTF-8, or UTF-16 with a BOM); prints one JSON line per query.")
@user_errors
def search(query: str | None, index_dir: Path | None, top_k: int | None, mode: str | None, as_json: bool,
           queries_file: Path | None) -> None:
    """Find the passages that best match QUERY."""
    from rag.api import open_retriever

    if (query is None) == (queries_file is None):
        raise click.UsageError("give a QUERY or --queries-file, not both")
    settings = _settings(index_dir=index_dir, top_k=top_k, mode=mode)
    if queries_file is not None:
        if str(queries_file) == "-":  # streamed: each answer is printed as its line arrives
            lines: Iterable[str] = read_lines(click.open_file("-", "rb"), "stdin (--queries-file -)")
        else:  # read and checked whole before the models load
            lines = read_text(queries_file, "queries file").split("\n")
        retriever = open_retriever(settings)
        for line in lines:
            q = line.strip()
            if q:
                hits = retriever.search(q)
                click.echo(json.dumps({"query": q, "hits": [h.to_dict() for h in hits]}, ensure_ascii=False))
        return
    if not query.strip():
        raise RagError("the query is empty: type some words to search for")
    hits = open_retriever(settings).search(query)
    if as_json:
        click.echo(json.dumps([h.to_dict() for h in hits], indent=1, ensure_ascii=False))
        return
    if not hits:
        click.echo("no matching passages")
    for h in hits:
        click.secho(f"[{h.rank}] {h.score:.4f}  {h.label}", bold=True)
        text = " ".join(h.snippet.split())  # the window that matched, inside the passage the model reads
        click.echo("    " + (text[:300] + ("..." if len(text) > 300 else "")))


@cli.command("eval-retrieval")
@click.argument("questions", type=click.Path(path_type=Path))
@index_dir_option
@click.option("--mode", "modes", multiple=True, type=click.Choice(["dense", "bm25", "hybrid"]),
              help="Modes to compare (default: all three).")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@click.option("--details", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write per-question ranks to this JSONL file.")
@user_errors
def eval_retrieval(questions: Path, index_dir: Path | None, modes: tuple[str, ...], as_json: bool,
                   details: Path | None) -> None:
    """Recall@k and MRR@10 of each retrieval mode on a question file with evidence quotes."""
    from rag.api import open_retriever
    from rag.evaluation.retrieval import evaluate_retrieval, load_questions

    qs = load_questions(questions)
    retriever = open_retriever(_settings(index_dir=index_dir))
    results, rows = {}, []
    for mode in modes or ("dense", "bm25", "hybrid"):
        scores, per_q = evaluate_retrieval(retriever, qs, mode)
        results[mode] = scores.to_dict()
        rows.extend(per_q)
    if details:
        details.parent.mkdir(parents=True, exist_ok=True)
        details.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if as_json:
        click.echo(json.dumps(results, indent=1))
        return
    click.echo("| mode | n | recall@1 | recall@5 | recall@10 | MRR@10 |")
    click.echo("|---|---|---|---|---|---|")
    for mode, r in results.items():
        click.echo(f"| {mode} | {r['n']} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['recall@10']:.3f} | {r['mrr@10']:.3f} |")


EVAL_MAX_NEW_TOKENS = 128  # keeps a 29-question run of the bundled model to minutes on a CPU


@cli.command("eval")
@click.argument("questions", type=click.Path(path_type=Path))
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for results.jsonl, summary.json and summary.md.")
@index_dir_option
@click.option("--mode", type=click.Choice(["dense", "bm25", "hybrid"]), default=None, help="Retrieval mode (default hybrid).")
@click.option("-k", "--top-k", type=click.IntRange(1, 100), default=None,
              help="Passages given to the model (default 5); retrieval metrics always look 10 deep.")
@click.option("--model", default=None, help="bundled (default), teacher, a model folder, a .gguf file, a `raft train` output, or an OpenAI-compatible base URL.")
@click.option("--model-name", default=None, help="Model to request from an OpenAI-compatible server.")
@click.option("--max-new-tokens", type=click.IntRange(1, 8192), default=EVAL_MAX_NEW_TOKENS, show_default=True,
              help="Longest free answer, in tokens.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate only the first N questions.")
@click.option("--unseen-course", type=click.Path(path_type=Path), default=None,
              help="Index this course folder without its quizzes and without each asked question's own item "
                   "(a temporary index; --index-dir is not used) and evaluate there: the questions are asked "
                   "of notes that do not hold them, as a student meets them.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object instead of markdown.")
@user_errors
def eval_command(questions: Path, report_dir: Path, index_dir: Path | None, mode: str | None, top_k: int | None,
                 model: str | None, model_name: str | None, max_new_tokens: int, limit: int | None,
                 unseen_course: Path | None, as_json: bool) -> None:
    """Evaluate the whole RAG pipeline on QUESTIONS (JSONL): retrieval, multiple choice, free answers."""
    import tempfile

    from rag.api import get_generator, open_retriever
    from rag.evaluation.end_to_end import (
        evaluate_rag,
        format_summary,
        index_unseen_course,
        prepare_report_dir,
        write_report,
    )
    from rag.evaluation.retrieval import load_questions

    qs = load_questions(questions)[:limit]
    prepare_report_dir(report_dir)
    settings = _settings(index_dir=index_dir, mode=mode, top_k=top_k, model=model, model_name=model_name,
                         max_new_tokens=max_new_tokens)
    with tempfile.TemporaryDirectory(prefix="rag-eval-unseen-") as work:
        unseen = None
        if unseen_course is not None:
            settings, qs, unseen = index_unseen_course(unseen_course, qs, Path(work), settings)
        retriever = open_retriever(settings)
        needs_model = any("options" in q or "answer" in q for q in qs)
        generator = get_generator(settings) if needs_model else None
        summary, rows = evaluate_rag(qs, settings, retriever, generator, source=str(questions))
    if unseen is not None:
        summary["unseen_course"] = unseen
        summary["notes"].append(f"asked of {unseen_course} without its quizzes: {len(unseen['left_out'])} quiz "
                                f"file(s) left out, {sum(unseen['items_cut'].values())} asked item(s) cut from the rest")
    write_report(report_dir, summary, rows)
    for note in summary["notes"]:
        click.echo(f"note: {note}", err=True)
    click.echo(json.dumps(summary, ensure_ascii=False) if as_json else format_summary(summary), nl=as_json)
    click.echo(f"report written to {report_dir}", err=True)


@cli.command("eval-course")
@click.argument("course", type=click.Path(path_type=Path))
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for report.json, report.md and results.jsonl.")
@click.option("--quiz", type=click.Path(path_type=Path), default=None, help="Quiz file (default COURSE/quiz.jsonl).")
@click.option("--evidence", type=click.Path(path_type=Path), default=None,
              help="Evidence annotations (file + character offsets per question; docs/guide/evaluate.md).")
@click.option("--mode", type=click.Choice(["dense", "bm25", "hybrid"]), default=None, help="Retrieval mode (default hybrid).")
@click.option("-k", "--top-k", type=click.IntRange(1, 100), default=None, help="Passages given to the model (default 5).")
@click.option("--model", default=None, help="Model for multiple choice (default: what `auto` picks for the course).")
@click.option("--no-choices", is_flag=True, help="Score retrieval only (no model is loaded).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate only the first N questions.")
@user_errors
def eval_course(course: Path, report_dir: Path, quiz: Path | None, evidence: Path | None, mode: str | None,
                top_k: int | None, model: str | None, no_choices: bool, limit: int | None) -> None:
    """Index COURSE/course/ as a user would and ask COURSE/quiz.jsonl: retrieval against a plain LangChain
    pipeline and multiple choice (closed book, with passages, the product's choice), with 95% intervals."""
    from rag.api import get_embedder, get_generator
    from rag.common.atomic import write_json_atomic, write_text_atomic
    from rag.evaluation.course_run import evaluate_course, format_course_report
    from rag.evaluation.courses import load_course
    from rag.evaluation.end_to_end import prepare_report_dir

    loaded = load_course(course, quiz=quiz, evidence=evidence)
    loaded.questions = loaded.questions[:limit]
    prepare_report_dir(report_dir)
    settings = _settings(mode=mode, top_k=top_k, model=model)
    report, rows = evaluate_course(loaded, settings, get_embedder(settings),
                                   load_generator=None if no_choices else get_generator)
    text = format_course_report(report)
    flat = [{"pipeline": p, **r} for p, rs in rows["retrieval"].items() for r in rs] + rows.get("choices", [])
    write_json_atomic(report_dir / "report.json", report)
    write_text_atomic(report_dir / "report.md", text)
    write_text_atomic(report_dir / "results.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in flat))
    click.echo(text, nl=False)
    click.echo(f"report written to {report_dir}", err=True)


def generation_options(f: Callable) -> Callable:
    """The model backend and the generation settings the course teaches, as flags (built from Settings' fields:
    None = not given, so rag.toml and RAG_* apply); `--max-tokens` is a deprecated spelling of `--max-new-tokens`."""
    f = model_options(Settings, ["top_k"], given_only=True, decls=("-k", "--top-k"))(model_options(
        Settings, ["mode"], given_only=True)(f))
    f = model_options(Settings, ["top_p", "top_k_sampling", "repetition_penalty", "seed"], given_only=True)(f)
    f = model_options(Settings, ["max_new_tokens", "temperature"], given_only=True)(f)
    f = deprecated_alias("--max-tokens", "--max-new-tokens", "max_new_tokens", "rag")(f)
    return model_options(Settings, ["model", "model_name"], given_only=True)(f)


@cli.command()
@click.argument("question")
@index_dir_option
@generation_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: question, answer, abstained, sources, timings, model.")
@click.option("--answer-mode", type=click.Choice(["auto", "grounded", "free"]), default=None,
              help="grounded: quote the supporting sentence, then a short answer (default for local models); "
                   "free: the model writes the answer (default for HTTP models).")
@user_errors
def ask(question: str, index_dir: Path | None, as_json: bool, answer_mode: str | None, **gen: Any) -> None:
    """Answer QUESTION from the course documents, streaming the answer, then every passage given to the
    model (the ones that support the answer first, marked *)."""
    from rag.answering.plan import validate_question
    from rag.api import make_pipeline

    validate_question(question)
    settings = _settings(index_dir=index_dir, answer_mode=answer_mode, **gen)
    pipeline = make_pipeline(settings)
    resp = pipeline.ask(question)
    for piece in resp:
        if not as_json:
            click.echo(piece, nl=False)
    answer = resp.answer()
    if as_json:  # which model answered: the default differs by course (rag.api.effective_model)
        click.echo(json.dumps({**answer.to_dict(), "model": pipeline.generator.model_id}, ensure_ascii=False, indent=1))
        return
    click.echo()
    for note in answer.notes:
        click.echo(f"({note})", err=True)
    click.secho("\nNearest passages:" if answer.abstained else "\nSources:", bold=True)
    for s in answer.sources:
        mark = "*" if s.cited else " "
        label = "quoted" if s.quote else ("supports" if s.cited else "given")
        click.echo(f"{mark}[{s.n}] {s.label}  (score {s.score:.3f}, {label})")
        click.echo(f"    \"{' '.join(s.snippet.split())[:240]}\"")


@cli.command()
@index_dir_option
@generation_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every network, use --api-key).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--served-model-name", default="course-rag", show_default=True,
              help="Model id the API reports; requests must name it.")
@click.option("--api-key", default=None,
              help="Require 'Authorization: Bearer KEY' on every request (or set RAG_SERVER_API_KEY).")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="A browser origin allowed to call the API, e.g. http://localhost:3000 (repeatable; "
                   "default none; env RAG_CORS_ORIGINS, comma-separated).")
@click.option("--max-queue", type=click.IntRange(0, 10_000), default=16, show_default=True,
              help="Requests that may wait for the model; the next one gets 429 with Retry-After.")
@click.option("--slots", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Answers written at once (they share the model's decode passes); 1 = one at a time. Plain "
                   "transformers (RAG_DECODER=transformers) always writes one at a time.")
@click.option("--docs", is_flag=True, help="Serve the interactive API docs at /docs (off by default).")
@user_errors
def serve(index_dir: Path | None, host: str, port: int, served_model_name: str, api_key: str | None,
          cors_origins: tuple[str, ...], max_queue: int, slots: int, docs: bool, **gen: Any) -> None:
    """Serve an OpenAI-compatible /v1/chat/completions that answers from the course documents."""
    import uvicorn

    from rag.api import make_pipeline
    from rag.server import ServerConfig, create_app
    from rag.server.app import LOOPBACK_HOSTS

    settings = _settings(index_dir=index_dir, server_api_key=api_key, cors_origins=list(cors_origins) or None, **gen)
    key = settings.server_api_key.get_secret_value() if settings.server_api_key else None
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    if not loopback and not key:
        click.echo(f"warning: listening on {host} without --api-key: anyone who can reach it can use the model",
                   err=True)
    config = ServerConfig(model_name=served_model_name, api_key=key, docs=docs,
                          cors_origins=tuple(settings.cors_origins),
                          allowed_hosts=(*LOOPBACK_HOSTS, host) if loopback else None, max_queue=max_queue,
                          parallel_slots=slots)
    listener = listen(host, port)  # before the model loads: a port in use is known in a second, not after 30
    pipeline = make_pipeline(settings)
    pipeline.retriever.search("warm-up", 1)  # loads the embedder now, not during the first request
    port = listener.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serving {settings.index_dir} with {pipeline.generator.model_id} on http://{shown}:{port}/v1"
               f"{' (API key required)' if key else ''}", err=True)
    server = uvicorn.Server(uvicorn.Config(create_app(pipeline, config), log_level="warning"))
    server.run(sockets=[listener])



@cli.group()
def feedback() -> None:
    """The app's thumbs up/down on answers (kept in its chat history file)."""


@feedback.command("export")
@click.argument("out", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--history", "history", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The app's chat history file (default: the history_path setting, else chats.sqlite3 next to the index).")
@click.option("--rating", type=click.Choice(["all", "up", "down"]), default="all", show_default=True)
@user_errors
def feedback_export(out: Path, history: Path | None, rating: str) -> None:
    """Write every visitor's rated answers to OUT as `rag eval` questions (JSONL; - for stdout)."""
    from rag.common.atomic import write_text_atomic
    from ui.feedback import eval_jsonl
    from ui.history import ChatStore, history_path

    path = history or history_path(_settings())
    if not path.is_file():
        raise RagError(f"no chat history at {path}: the app writes it once someone asks a question "
                       "(or pass --history FILE)")
    text = eval_jsonl(ChatStore(path).feedback(None), rating)  # type: ignore[arg-type]
    if str(out) == "-":
        click.echo(text, nl=False)
    else:
        write_text_atomic(out, text)
    click.echo(f"{text.count(chr(10))} question(s) written to {'stdout' if str(out) == '-' else out}", err=True)

def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv6 when `host` has a colon; port 0 = any free port).

    Bound here rather than by uvicorn so that `rag serve` says a port is taken before it loads a model.
    :raises SystemExit: code 3 with a one-line error naming host and port when it cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        click.echo(f"Error: cannot listen on {host}:{port}: {os_reason(exc)} (another `rag serve` or program may "
                   f"use it: choose another --port)", err=True)
        sys.exit(3)


def main() -> None:
    cli(prog_name="rag")


if __name__ == "__main__":
    main()
