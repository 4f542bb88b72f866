"""Robustness evaluation of RAFT students: answer the held-out questions with the oracle, with distractors only,
closed book and with the product's own retrieved passages, for one or more models, and score the final
answers side by side with 95% bootstrap intervals and a paired comparison (raft.eval_report).

Questions come from the TEST split of `raft.splits.split_by_chunk` (same fractions and seed as `raft export`;
`raft train` trains on the TRAIN split of the same function), so no evaluated question's oracle chunk was
trained on. A file given instead of a dataset folder (a `raft export --format hf` jsonl/parquet file) is
used whole. The `--format eval` export is refused: it does not say which document is the oracle.

Settings (documents shown with the question, conversation = raft.prompts.student_messages, greedy):
  oracle       the record's documents; a record that dropped its oracle gets it back in place of one
               distractor at a seeded position, so the oracle is always shown (k+1 documents)
  distractors  the record's documents without the oracle (k documents, or k+1 when the record had dropped it)
  closed       the question alone
  retrieved    the top-k passages the product's retriever (rag.api.open_retriever: --index-dir, -k, the
               configured mode) returns for the question: the real use. The oracle is shown when a passage
               holds its text (or is held by it: the index may hold child windows of a passage)

Scores per answer: the final answer is the text after the last `<ANSWER>:` (compliant), else the last
non-empty line (non-compliant); normalised exact match and token F1 against the record's `final_answer`;
each ##begin_quote##...##end_quote## quote is valid when raft.answers.check_quote finds it (exact or snapped)
in one of the documents shown. Per model and setting: mean F1 / EM, format compliance, quote rate (answers
quoting at all), quote validity = the fraction of QUOTING answers whose quotes are all valid (null when no
answer quotes, and always null closed book, where no document is shown: any quote there is made up and
shows in the quote rate), and the mean answer length in the model's tokens (an estimate for HTTP models).

Report folder: run.json (what decides the answers), results.jsonl (one line per model, setting, question,
appended as batches finish: a re-run with the same arguments skips what is done), summary.json,
summary.md, chart.png. summary.json's `run` records the session (command, seed, times, peak memory).
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Literal, TypedDict

from raft.eval_report import (
    bootstrap_info,
    check_baseline,
    compare,
    format_markdown,
    summarize,
    write_chart,
)
from raft.prompts import ANSWER_MARK, QUOTE, student_messages
from raft.records import (
    DATASET,
    DEFAULT_SPLIT,
    check_unique_ids,
    derive_rng,
    documents_with_oracle,
    documents_without_oracle,
    load_records,
)
from raft.runinfo import Session
from raft.splits import SPLIT_NAMES, parse_split, split_by_chunk
from raft.synth.answers import check_quote
from rag.common.atomic import write_json_atomic, write_text_atomic
from rag.common.runfolder import FolderLock, append_jsonl, check_identity, differences, read_jsonl, repair_jsonl
from rag.errors import GeneratorError, RagError
from rag.evaluation.bootstrap import DEFAULT_RESAMPLES
from rag.evaluation.metrics import exact_match, token_f1

SETTINGS = ("oracle", "distractors", "closed", "retrieved")
DEFAULT_SETTINGS = ("oracle", "distractors", "closed")
RESULTS = "results.jsonl"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
CHART = "chart.png"
RUN = "run.json"
DEFAULT_MAX_NEW_TOKENS = 192
DEFAULT_BATCH = 8
_STOP_TAIL = re.compile(r"\s*<STOP>\s*$")
_FILE_FIELDS = ("oracle_context", "context", "final_answer", "question", "id")  # what an evaluated record needs


# --------------------------------------------------------------------------- questions


def _read_file(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a bad file
            raise RagError(f"cannot read {path} as parquet: {e}") from None
    return read_jsonl(path)  # a damaged line: refused, naming it


def load_questions(source: Path, split: str = DEFAULT_SPLIT, seed: int = 0,
                   limit: int | None = None) -> tuple[list[dict], dict[str, Any]]:
    """The records to evaluate and where they came from: the test split of a dataset folder, or a whole export file."""
    source = Path(source)
    info: dict[str, Any] = {"source": str(source)}
    if source.is_dir():
        path = source / DATASET
        if not path.is_file():
            raise RagError(f"no {DATASET} in {source}: run `raft generate FOLDER --out {source}` first")
        records = load_records(path)  # a damaged line or a duplicate id: refused, naming the line
        if not records:
            raise RagError(f"{path} has no samples: nothing to evaluate")
        fractions = parse_split(split)
        parts = split_by_chunk(records, fractions, seed)
        name = "test" if "test" in parts else SPLIT_NAMES[len(fractions) - 1]
        records = parts[name]
        info.update(split=name, fractions=fractions)
        if name != "test":
            info["note"] = (f"--split {split} has no test part: evaluating the {name} split"
                            + (" (its questions may have been trained on)" if name == "train" else ""))
        if not records:
            raise RagError(f"the {name} split of {path} is empty: use a bigger last fraction in --split "
                           f"(now {split}) or a larger dataset")
    elif source.is_file():
        records = _read_file(source)
        if not records:
            raise RagError(f"{source} has no records: nothing to evaluate")
        for i, rec in enumerate(records):
            missing = [k for k in _FILE_FIELDS if k not in rec]
            if missing and i == 0:
                raise RagError(f"{source} lacks {', '.join(missing)} (a `--format eval` export does not say which "
                               "document is the oracle): pass the dataset folder or a `raft export --format hf` file")
            if missing:
                raise RagError(f"{source} row {i + 1}: missing field {', '.join(missing)}: repair or delete that row")
        check_unique_ids(records, source, unit="row")
        records = [_flat_context(r) for r in records]
        info.update(split="file", note=f"{source.name} is used whole (no split applied)")
    else:
        raise RagError(f"{source} does not exist: pass a `raft generate` output folder or an exported hf file")
    info["available"] = len(records)
    if limit is not None and limit < len(records):
        keep = set(sorted(range(len(records)), key=lambda i: derive_rng(seed, "eval-limit", records[i]["id"]).random())[:limit])
        records = [r for i, r in enumerate(records) if i in keep]
    info["questions"] = len(records)
    return records, info


def _flat_context(record: dict) -> dict:
    """An `hf` export row nests its documents as the RAFT reference does (`sentences: [[d1, ..., dn]]`):
    give it the flat `context` of a dataset.jsonl record."""
    ctx = record.get("context")
    if isinstance(ctx, dict) and all(isinstance(ctx.get(k), list) and len(ctx[k]) == 1 and isinstance(ctx[k][0], list)
                                     for k in ("title", "sentences")):
        return {**record, "context": {"title": ctx["title"][0], "sentences": ctx["sentences"][0]}}
    return record


Retrieved = dict[str, tuple[list[str], int]]  # record id -> (retrieved passage texts, oracle's rank or -1)


def setting_documents(record: dict, setting: str, seed: int = 0,
                      retrieved: Retrieved | None = None) -> tuple[list[str], int]:
    """The document texts shown in `setting` and the oracle's position among them (-1 when not shown).

    :param retrieved: the `retrieve_documents` result, needed for the retrieved setting.
    :raises RagError: an unknown setting, or the retrieved setting without `retrieved` for this record.
    """
    if setting == "oracle":
        return documents_with_oracle(record, seed, "eval-oracle")
    if setting == "distractors":
        return documents_without_oracle(record), -1
    if setting == "closed":
        return [], -1
    if setting == "retrieved":
        if retrieved is None or record["id"] not in retrieved:
            raise RagError(f"no retrieved passages for {record['id']}: call retrieve_documents first")
        texts, at = retrieved[record["id"]]
        return list(texts), at
    raise RagError(f"unknown setting {setting!r}: use {', '.join(SETTINGS)}")


def _squash(text: str) -> str:
    return " ".join(text.split()).lower()


def retrieve_documents(records: list[dict], index_dir: Path | None = None,
                       k: int | None = None) -> tuple[Retrieved, dict[str, Any]]:
    """Each record's question searched with the product's retriever, as `rag search`/`rag ask` would.

    :param index_dir: the index (default: rag.config's, i.e. data/index, RAG_INDEX_DIR or rag.toml).
    :param k: passages per question (default: the configured top_k, 5).
    :returns: ({id: (passage texts best first, 0-based rank of the first passage holding the oracle or -1)},
        {index_dir, generation, k, mode, dense_weight}: what decides the passages).
    :raises RagError: no index there, a damaged index, or one built with another embedder (rag.errors).
    """
    from rag.api import open_retriever
    from rag.config import load_settings

    settings = load_settings(index_dir=index_dir, top_k=k)
    retriever = open_retriever(settings)
    out: Retrieved = {}
    for rec in records:
        texts = [h.chunk.text for h in retriever.search(rec["question"], settings.top_k)]
        oracle = _squash(rec["oracle_context"])
        at = next((i for i, t in enumerate(texts) if t.strip() and (oracle in _squash(t) or _squash(t) in oracle)), -1)
        out[rec["id"]] = (texts, at)
    info = {"index_dir": str(Path(settings.index_dir).resolve()), "generation": retriever.index.generation,
            "k": settings.top_k, "mode": settings.mode, "dense_weight": settings.dense_weight}
    return out, info


# --------------------------------------------------------------------------- scoring


def extract_final(prediction: str) -> tuple[str, bool]:
    """(final answer, compliant): the text after the last `<ANSWER>:`, else the last non-empty line (non-compliant)."""
    text = prediction or ""
    at = text.rfind(ANSWER_MARK)
    if at >= 0:
        final = _STOP_TAIL.sub("", text[at + len(ANSWER_MARK):]).strip()
        return final, bool(final)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (_STOP_TAIL.sub("", lines[-1]).strip() if lines else ""), False


# The scores below are fields of each results.jsonl line; TypedDicts change nothing at runtime (the file stays
# byte-identical, which the resume of a report folder relies on).
QuoteStatus = Literal["exact", "snapped", "fabricated"]


class QuoteCheck(TypedDict):
    """The quotes (##begin_quote##...##end_quote##) of one answer, checked against the documents shown."""

    n_quotes: int  # quotes in the answer
    n_valid_quotes: int  # of those, found exact or snapped in a document shown
    quote_statuses: list[QuoteStatus]  # one per quote, in order (raft.synth.answers.check_quote)
    quotes_valid: bool | None  # all quotes valid; None when the answer quotes nothing (and always closed book)


class PredictionScore(QuoteCheck):
    """The scores of one answer against the gold final answer (plus its `QuoteCheck` keys)."""

    final: str  # the final answer extracted by `extract_final`
    compliant: bool  # the answer ends with a non-empty `<ANSWER>:` line
    em: float  # exact match after SQuAD normalisation: 0.0 or 1.0
    f1: float  # token F1 after the same normalisation, in [0, 1]


def check_quotes(prediction: str, docs: list[str]) -> QuoteCheck:
    """Quotes of `prediction` checked against the documents shown: counts and whether all are valid (None: no quote).

    A quote is "exact" or "snapped" when raft.synth.answers.check_quote finds it in one of `docs`, else "fabricated".
    """
    quotes = QUOTE.findall(prediction or "")
    statuses: list[QuoteStatus] = []
    for q in quotes:
        found = [check_quote(q, d).status for d in docs]
        statuses.append("exact" if "exact" in found else "snapped" if "snapped" in found else "fabricated")
    valid = sum(s != "fabricated" for s in statuses)
    return {"n_quotes": len(quotes), "n_valid_quotes": valid, "quote_statuses": statuses,
            "quotes_valid": (valid == len(quotes)) if quotes else None}


def score_prediction(prediction: str, gold: str, docs: list[str], setting: str = "oracle") -> PredictionScore:
    """Scores of one answer: final answer, compliance, EM, token F1, quote checks (quotes_valid None closed book).

    :param prediction: the model's whole reply.
    :param gold: the record's `final_answer`.
    :param docs: the document texts shown with the question (empty closed book).
    :param setting: one of SETTINGS; "closed" sets quotes_valid to None.
    """
    final, compliant = extract_final(prediction)
    quotes = check_quotes(prediction, docs)
    if setting == "closed":
        quotes["quotes_valid"] = None
    return {"final": final, "compliant": compliant, "em": exact_match(final, gold), "f1": token_f1(final, gold),
            **quotes}


# --------------------------------------------------------------------------- the run


def parse_list(text: str, what: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    """'a, b,a' -> ['a', 'b']; RagError when empty or (with `allowed`) an unknown item."""
    items = list(dict.fromkeys(p.strip() for p in str(text).split(",") if p.strip()))
    if not items:
        raise RagError(f"{what} is empty: give a comma-separated list")
    bad = [i for i in items if allowed is not None and i not in allowed]
    if bad:
        raise RagError(f"unknown {what} {', '.join(bad)}: use {', '.join(allowed or ())}")
    return items


def model_fingerprint(spec: str, model_name: str | None = None) -> str:
    """Sizes and times of a local model's files (or the URL + model name): a retrained model gets new answers.

    The spec is parsed by the one model factory (`rag.generation.factory.resolve_model`), so `--models`
    accepts what every other command accepts; an unknown spec raises GeneratorError before any work.
    """
    from rag.generation.factory import resolve_model

    return resolve_model(spec, model_name=model_name).fingerprint()


def _questions_key(records: list[dict]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r["id"], r["question"], r["final_answer"]], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def _open_report(report: Path, config: dict[str, Any], fingerprints: dict[str, str],
                 log: Callable[[str], None] | None = None, retrieval: dict[str, Any] | None = None) -> list[dict]:
    """Check run.json against this run (refuse other arguments, a changed model, or other retrieved passages:
    another index generation, k or mode); return the finished rows.

    Called under the report folder's lock. results.jsonl is repaired for appending (rag.common.runfolder):
    a torn last line is cut, damaged lines go to results.jsonl.damaged (their answers are made again).
    """
    run_path, results = report / RUN, report / RESULTS
    old = check_identity(report, RUN, config, what="results", option="--report", leftovers=(RESULTS,),
                         ignore=("models", "retrieval"), write=False)
    models = dict(fingerprints)
    before_retrieval = (old or {}).get("retrieval")
    if retrieval and before_retrieval and before_retrieval != retrieval:
        diffs = differences(before_retrieval, retrieval) if isinstance(before_retrieval, dict) else ["run.json"]
        raise RagError(f"the retrieved passages changed since the answers in {report} were made "
                       f"({'; '.join(diffs)}): use another --report, or delete the report folder")
    kept = retrieval or before_retrieval  # the passages the retrieved answers in results.jsonl were given
    if old is not None:
        before = old.get("models") if isinstance(old.get("models"), dict) else {}
        changed = [m for m, fp in fingerprints.items() if m in before and before[m] != fp]
        if changed:
            raise RagError(f"{', '.join(changed)} changed since its answers in {report} were made: "
                           "use another --report, or delete the report folder")
        models = {**before, **fingerprints}
    write_json_atomic(run_path, {**config, "models": models, **({"retrieval": kept} if kept else {})})
    repaired = repair_jsonl(results, validate=_check_result)
    if (note := repaired.note()) and log:
        log(f"note: {note}")
    return repaired.rows


def _check_result(row: dict) -> None:
    """The validator of results.jsonl rows: what resuming and summarising read."""
    for k in ("model", "setting", "id"):
        if not isinstance(row.get(k), str):
            raise ValueError(f"field {k} must be a string, got {row.get(k)!r}")
    missing = [k for k in ("f1", "em", "compliant", "n_quotes", "quotes_valid", "answer_tokens") if k not in row]
    if missing:
        raise ValueError(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")


def _free(local: bool) -> None:
    """Drop local models from the process-wide cache so the next model does not share the RAM with this one."""
    from rag.generation.local import release_local_models

    if local:
        release_local_models()
    gc.collect()


def run_eval(source: Path, models: list[str], report: Path, *, split: str = DEFAULT_SPLIT, seed: int = 0,
             limit: int | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
             settings: list[str] | tuple[str, ...] = DEFAULT_SETTINGS, model_name: str | None = None,
             batch_size: int = DEFAULT_BATCH, index_dir: Path | None = None, k: int | None = None,
             baseline: str | None = None, resamples: int = DEFAULT_RESAMPLES, command: str | None = None,
             progress: bool = True, log: Callable[[str], None] | None = None,
             on_progress: Callable[[int, int], None] | None = None, rag_settings: Any = None) -> dict[str, Any]:
    """Answer the held-out questions with every model in every setting; write the report folder; return the summary.

    One `raft eval` at a time per report folder (its .lock); the same arguments resume. `index_dir` and `k`
    choose the retrieved setting's passages (see retrieve_documents); `baseline` (default: the first model)
    and `resamples` only shape the summary (raft.eval_report), never the answers. `command` is recorded in
    summary.json's `run` (default: this process's command line). `on_progress(done, total)` is called with the
    answers on disk (of all models and settings) before the first batch and after each one. `rag_settings`
    (rag.config.Settings; default: load_settings()) gives each model's backend its options: a server's key and
    limits, a local model's cache, decoder and draft (rag.api.backend_options).

    :raises RagError: an unknown setting or baseline, no model, bad numbers, or what loading the questions,
        the index or a model raises.
    """
    session = Session(seed, command)
    settings = list(settings)
    for s in settings:
        if s not in SETTINGS:
            raise RagError(f"unknown setting {s!r}: use {', '.join(SETTINGS)}")
    if not models:
        raise RagError("no model to evaluate: give --models bundled,PATH,...")
    if max_new_tokens < 1 or batch_size < 1 or resamples < 1:
        raise RagError(f"--max-new-tokens, --batch-size and --resamples must be >= 1, got {max_new_tokens}, "
                       f"{batch_size} and {resamples}")
    baseline = baseline if baseline is not None else models[0]
    check_baseline(baseline, models)
    records, info = load_questions(Path(source), split, seed, limit)
    if info.get("note") and log:
        log(f"note: {info['note']}")
    report = Path(report)
    config = {"source": str(Path(source).resolve()), "questions": _questions_key(records), "split": split,
              "seed": seed, "limit": limit, "max_new_tokens": max_new_tokens, "model_name": model_name}
    fingerprints = {m: model_fingerprint(m, model_name) for m in models}
    retrieved, retrieval = (retrieve_documents(records, index_dir, k) if "retrieved" in settings else (None, None))
    with FolderLock(report, f"another `raft eval` is writing {report}: wait for it to finish, or use another "
                    "--report", what="report folder", hint="fix its permissions or use another --report"):
        rows = _open_report(report, config, fingerprints, log, retrieval)
        if rag_settings is None:
            from rag.config import load_settings

            rag_settings = load_settings(index_dir=index_dir)
        rows = _answer(records, rows, models=models, report=report, settings=settings, seed=seed, rag_settings=rag_settings,
                       max_new_tokens=max_new_tokens, model_name=model_name, batch_size=batch_size,
                       retrieved=retrieved, progress=progress, on_progress=on_progress)
        wanted = {(m, s, r["id"]) for m in models for s in settings for r in records}
        latest = {(r["model"], r["setting"], r["id"]): r for r in rows if (r["model"], r["setting"], r["id"]) in wanted}
        summary = {
            "source": str(source), "split_used": info["split"], "split": split if info["split"] != "file" else None,
            "note": info.get("note"), "seed": seed, "limit": limit, "questions": len(records),
            "available_questions": info["available"], "max_new_tokens": max_new_tokens, "models": list(models),
            "settings": settings, "retrieval": retrieval,
            "quote_valid_definition": "fraction of quoting answers whose quotes are all found (exact or snapped) "
            "in the documents shown; null when no answer quotes and for closed book",
            "bootstrap": bootstrap_info(resamples, seed),
            "results": summarize(latest.values(), list(models), settings, resamples=resamples, seed=seed),
            "comparison": compare(latest.values(), list(models), settings, baseline, resamples=resamples, seed=seed),
            "files": {k: str(report / v) for k, v in (("results", RESULTS), ("summary_json", SUMMARY_JSON),
                                                      ("summary_md", SUMMARY_MD), ("chart", CHART))},
        }
        write_chart(summary, report / CHART)
        summary["run"] = session.finish()
        write_json_atomic(report / SUMMARY_JSON, summary)
        write_text_atomic(report / SUMMARY_MD, format_markdown(summary))
        return summary


def _answer(records: list[dict], rows: list[dict], *, models: list[str], report: Path, settings: list[str],
            seed: int, max_new_tokens: int, model_name: str | None, batch_size: int, retrieved: Retrieved | None,
            progress: bool, rag_settings: Any, on_progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """run_eval under the report folder's lock: answer what is not done yet (appended to results.jsonl as each
    batch finishes); return every row, old and new."""
    from rag.common.progress import progress_bar
    from rag.generation.base import GenerationParams
    from rag.api import backend_options
    from rag.generation.factory import get_generator

    done = {(r["model"], r["setting"], r["id"]) for r in rows}
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
    total = len(models) * len(settings) * len(records)
    todo_all = sum((m, s, r["id"]) not in done for m in models for s in settings for r in records)
    bar = progress_bar(total=total, initial=total - todo_all, desc="raft eval", unit="answer", enabled=progress)
    answered = total - todo_all
    if on_progress is not None:
        on_progress(answered, total)
    try:
        for m in models:
            todo = [(s, r) for s in settings for r in records if (m, s, r["id"]) not in done]
            if not todo:
                continue
            bar.set_postfix_str(m[-30:])
            generator = get_generator(m, model_name=model_name, **backend_options(rag_settings, m))
            try:
                for start in range(0, len(todo), batch_size):
                    batch = todo[start:start + batch_size]
                    shown = [setting_documents(r, s, seed, retrieved) for s, r in batch]
                    answers = generator.generate_batch(
                        [student_messages(docs, r["question"]) for (docs, _), (s, r) in zip(shown, batch)], params)
                    if len(answers) != len(batch):
                        raise GeneratorError(f"{m} returned {len(answers)} answers for {len(batch)} questions")
                    new = []
                    for (s, r), (docs, oracle_at), pred in zip(batch, shown, answers):
                        new.append({"model": m, "model_id": generator.model_id, "setting": s, "id": r["id"],
                                    "question": r["question"], "gold": r["final_answer"], "prediction": pred,
                                    **score_prediction(pred, r["final_answer"], docs, s),
                                    "n_docs": len(docs), "oracle_position": oracle_at,
                                    "answer_tokens": generator.count_tokens(pred) if pred else 0})
                    append_jsonl(report / RESULTS, new)
                    rows.extend(new)
                    bar.update(len(new))
                    answered += len(new)
                    if on_progress is not None:
                        on_progress(answered, total)
            finally:
                local = generator.local
                del generator
                _free(local)
    finally:
        bar.close()
    return rows


__all__ = ["SETTINGS", "DEFAULT_SETTINGS", "load_questions", "setting_documents", "retrieve_documents", "extract_final",
           "QuoteCheck", "PredictionScore", "check_quotes", "score_prediction", "parse_list", "model_fingerprint",
           "run_eval"]
