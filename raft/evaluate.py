"""Robustness evaluation of RAFT students: answer the held-out questions with the oracle, with distractors only,
and closed book, for one or more models, and score the final answers side by side.

Questions come from the TEST split of `raft.splits.split_by_chunk` (same fractions and seed as `raft export`;
`raft train` trains on the TRAIN split of the same function), so no evaluated question's oracle chunk was
trained on. A file given instead of a dataset folder (a `raft export --format hf` jsonl/parquet file) is
used whole. The `--format eval` export is refused: it does not say which document is the oracle.

Settings (documents shown with the question, conversation = raft.prompts.student_messages, greedy):
  oracle       the record's documents; a record that dropped its oracle gets it back in place of one
               distractor at a seeded position, so the oracle is always shown (k+1 documents)
  distractors  the record's documents without the oracle (k documents, or k+1 when the record had dropped it)
  closed       the question alone

Scores per answer: the final answer is the text after the last `<ANSWER>:` (compliant), else the last
non-empty line (non-compliant); normalised exact match and token F1 against the record's `final_answer`;
each ##begin_quote##...##end_quote## quote is valid when raft.answers.check_quote finds it (exact or snapped)
in one of the documents shown. Per model and setting: mean F1 / EM, format compliance, quote rate (answers
quoting at all), quote validity = the fraction of QUOTING answers whose quotes are all valid (null when no
answer quotes, and always null closed book, where no document is shown: any quote there is made up and
shows in the quote rate), and the mean answer length in the model's tokens (an estimate for HTTP models).

Report folder: run.json (what decides the answers), results.jsonl (one line per model, setting, question,
appended as batches finish: a re-run with the same arguments skips what is done), summary.json,
summary.md, chart.png.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from raft.prompts import ANSWER_MARK, QUOTE, student_messages
from raft.records import DATASET, DEFAULT_SPLIT, check_unique_ids, derive_rng, load_records
from raft.splits import SPLIT_NAMES, parse_split, split_by_chunk
from raft.synth.answers import check_quote
from rag.common.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from rag.common.runfolder import FolderLock, append_jsonl, check_identity, read_jsonl, repair_jsonl
from rag.errors import GeneratorError, RagError
from rag.evaluation.metrics import exact_match, token_f1

SETTINGS = ("oracle", "distractors", "closed")
SETTING_LABELS = {"oracle": "oracle + distractors", "distractors": "distractors only", "closed": "closed book"}
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


def setting_documents(record: dict, setting: str, seed: int = 0) -> tuple[list[str], int]:
    """The document texts shown in `setting` and the oracle's position among them (-1 when not shown)."""
    texts = list(record["context"]["sentences"])
    oracle = record["oracle_context"]
    present = bool(record.get("oracle_present"))
    at = int(record.get("oracle_index", -1)) if present else -1
    if present and not (0 <= at < len(texts) and texts[at] == oracle):
        at = texts.index(oracle) if oracle in texts else -1
    if setting == "oracle":
        if at >= 0:
            return texts, at
        if oracle in texts:  # a distractor with the oracle's very text
            return texts, texts.index(oracle)
        if not texts:
            return [oracle], 0
        pos = derive_rng(seed, "eval-oracle", record["id"]).randrange(len(texts))
        texts[pos] = oracle
        return texts, pos
    if setting == "distractors":
        return [t for i, t in enumerate(texts) if i != at and t != oracle], -1
    if setting == "closed":
        return [], -1
    raise RagError(f"unknown setting {setting!r}: use {', '.join(SETTINGS)}")


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


def check_quotes(prediction: str, docs: list[str]) -> dict[str, Any]:
    """Quotes of `prediction` checked against the documents shown: counts and whether all are valid (None: no quote)."""
    quotes = QUOTE.findall(prediction or "")
    statuses = []
    for q in quotes:
        found = [check_quote(q, d).status for d in docs]
        statuses.append("exact" if "exact" in found else "snapped" if "snapped" in found else "fabricated")
    valid = sum(s != "fabricated" for s in statuses)
    return {"n_quotes": len(quotes), "n_valid_quotes": valid, "quote_statuses": statuses,
            "quotes_valid": (valid == len(quotes)) if quotes else None}


def score_prediction(prediction: str, gold: str, docs: list[str], setting: str = "oracle") -> dict[str, Any]:
    """Scores of one answer: final answer, compliance, EM, token F1, quote checks (quotes_valid None closed book)."""
    final, compliant = extract_final(prediction)
    quotes = check_quotes(prediction, docs)
    if setting == "closed":
        quotes["quotes_valid"] = None
    return {"final": final, "compliant": compliant, "em": exact_match(final, gold), "f1": token_f1(final, gold),
            **quotes}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(rows: Iterable[dict], models: list[str], settings: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{model: {setting: n, f1, em, format, quote_rate, quote_valid, answer_tokens}} from result rows."""
    out: dict[str, dict[str, dict[str, Any]]] = {m: {s: {} for s in settings} for m in models}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["setting"]), []).append(r)
    for m in models:
        for s in settings:
            rs = groups.get((m, s), [])
            quoting = [r for r in rs if r["n_quotes"]]
            valid = [float(r["quotes_valid"]) for r in quoting if r["quotes_valid"] is not None]
            out[m][s] = {
                "n": len(rs),
                "f1": _mean([r["f1"] for r in rs]),
                "em": _mean([r["em"] for r in rs]),
                "format": _mean([float(r["compliant"]) for r in rs]),
                "quote_rate": _mean([float(bool(r["n_quotes"])) for r in rs]),
                "quote_valid": None if s == "closed" else _mean(valid),
                "answer_tokens": _mean([float(r["answer_tokens"]) for r in rs]),
            }
    return out


def _num(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def format_markdown(summary: dict[str, Any]) -> str:
    """The side-by-side tables: rows = setting, columns = model; cells F1 / EM / format / quote-valid."""
    models, settings, res = summary["models"], summary["settings"], summary["results"]
    head = "| setting | " + " | ".join(f"`{m}`" for m in models) + " |"
    rule = "|---|" + "---|" * len(models)
    n = summary["questions"]
    lines = [f"# RAFT evaluation: {n} question{'s' if n != 1 else ''} ({summary['split_used']} split of "
             f"`{summary['source']}`)", ""]
    if summary.get("note"):
        lines += [f"Note: {summary['note']}.", ""]
    lines += ["Cells: token F1 / exact match / `<ANSWER>:` format rate / quote validity (of the answers that "
              "quote; – = none quoted, or closed book).", "", head, rule]
    for s in settings:
        cells = [" / ".join([_num(res[m][s]["f1"]), _num(res[m][s]["em"]), _num(res[m][s]["format"]),
                             _num(res[m][s]["quote_valid"])]) for m in models]
        lines.append(f"| {SETTING_LABELS[s]} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: answers quoting at all / mean answer length in tokens.", "", head, rule]
    for s in settings:
        cells = [f"{_num(res[m][s]['quote_rate'])} / {_num(res[m][s]['answer_tokens'], 1)}" for m in models]
        lines.append(f"| {SETTING_LABELS[s]} | " + " | ".join(cells) + " |")
    lines += ["", f"Greedy decoding, at most {summary['max_new_tokens']} new tokens; split "
              f"{summary.get('split', '-')} seed {summary['seed']}."]
    return "\n".join(lines) + "\n"


def write_chart(summary: dict[str, Any], path: Path) -> None:
    """Grouped bar chart of token F1 per setting, one labelled bar per model, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, settings, res = summary["models"], summary["settings"], summary["results"]
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(settings) * max(1, len(models)) ** 0.5 + 2), 4.2))
    try:
        for j, m in enumerate(models):
            xs = [i - 0.4 + width * (j + 0.5) for i in range(len(settings))]
            ys = [res[m][s]["f1"] or 0.0 for s in settings]
            bars = ax.bar(xs, ys, width * 0.95, label=m)
            ax.bar_label(bars, labels=[_num(res[m][s]["f1"]) for s in settings], fontsize=8, padding=2)
        ax.set_xticks(range(len(settings)), [SETTING_LABELS[s] for s in settings])
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("token F1 of the final answer")
        ax.set_title(f"RAFT eval: {summary['questions']} held-out question{'s' if summary['questions'] != 1 else ''}")
        ax.legend(fontsize=8, loc="upper right")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
    finally:
        plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


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
                 log: Callable[[str], None] | None = None) -> list[dict]:
    """Check run.json against this run (refuse other arguments or a changed model); return the finished rows.

    Called under the report folder's lock. results.jsonl is repaired for appending (rag.common.runfolder):
    a torn last line is cut, damaged lines go to results.jsonl.damaged (their answers are made again).
    """
    run_path, results = report / RUN, report / RESULTS
    old = check_identity(report, RUN, config, what="results", option="--report", leftovers=(RESULTS,),
                         ignore=("models",), write=False)
    models = dict(fingerprints)
    if old is not None:
        before = old.get("models") if isinstance(old.get("models"), dict) else {}
        changed = [m for m, fp in fingerprints.items() if m in before and before[m] != fp]
        if changed:
            raise RagError(f"{', '.join(changed)} changed since its answers in {report} were made: "
                           "use another --report, or delete the report folder")
        models = {**before, **fingerprints}
    write_json_atomic(run_path, {**config, "models": models})
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
    from rag.generation.models import load_local_model

    if local:
        getattr(load_local_model, "cache_clear", lambda: None)()
    gc.collect()


def run_eval(source: Path, models: list[str], report: Path, *, split: str = DEFAULT_SPLIT, seed: int = 0,
             limit: int | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
             settings: list[str] | tuple[str, ...] = SETTINGS, model_name: str | None = None,
             batch_size: int = DEFAULT_BATCH, progress: bool = True,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Answer the held-out questions with every model in every setting; write the report folder; return the summary.

    One `raft eval` at a time per report folder (its .lock); the same arguments resume.
    """
    settings = list(settings)
    for s in settings:
        if s not in SETTINGS:
            raise RagError(f"unknown setting {s!r}: use {', '.join(SETTINGS)}")
    if not models:
        raise RagError("no model to evaluate: give --models bundled,PATH,...")
    if max_new_tokens < 1 or batch_size < 1:
        raise RagError(f"--max-new-tokens and --batch-size must be >= 1, got {max_new_tokens} and {batch_size}")
    records, info = load_questions(Path(source), split, seed, limit)
    if info.get("note") and log:
        log(f"note: {info['note']}")
    report = Path(report)
    config = {"source": str(Path(source).resolve()), "questions": _questions_key(records), "split": split,
              "seed": seed, "limit": limit, "max_new_tokens": max_new_tokens, "model_name": model_name}
    fingerprints = {m: model_fingerprint(m, model_name) for m in models}
    with FolderLock(report, f"another `raft eval` is writing {report}: wait for it to finish, or use another "
                    "--report", what="report folder", hint="fix its permissions or use another --report"):
        rows = _open_report(report, config, fingerprints, log)
        return _answer_and_report(records, info, rows, source=source, models=models, report=report,
                                  settings=settings, split=split, seed=seed, limit=limit,
                                  max_new_tokens=max_new_tokens, model_name=model_name, batch_size=batch_size,
                                  progress=progress)


def _answer_and_report(records: list[dict], info: dict[str, Any], rows: list[dict], *, source: Path,
                       models: list[str], report: Path, settings: list[str], split: str, seed: int,
                       limit: int | None, max_new_tokens: int, model_name: str | None, batch_size: int,
                       progress: bool) -> dict[str, Any]:
    """run_eval under the report folder's lock: answer what is not done yet, then write the summary files."""
    from tqdm import tqdm

    from rag.generation.base import GenerationParams
    from rag.generation.factory import get_generator

    done = {(r["model"], r["setting"], r["id"]) for r in rows}
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
    total = len(models) * len(settings) * len(records)
    todo_all = sum((m, s, r["id"]) not in done for m in models for s in settings for r in records)
    bar = tqdm(total=total, initial=total - todo_all, desc="raft eval", unit="answer", disable=not progress,
               dynamic_ncols=True)
    try:
        for m in models:
            todo = [(s, r) for s in settings for r in records if (m, s, r["id"]) not in done]
            if not todo:
                continue
            bar.set_postfix_str(m[-30:])
            generator = get_generator(m, model_name=model_name)
            try:
                for start in range(0, len(todo), batch_size):
                    batch = todo[start:start + batch_size]
                    shown = [setting_documents(r, s, seed) for s, r in batch]
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
            finally:
                local = generator.local
                del generator
                _free(local)
    finally:
        bar.close()
    wanted = {(m, s, r["id"]) for m in models for s in settings for r in records}
    latest: dict[tuple[str, str, str], dict] = {}
    for r in rows:
        key = (r["model"], r["setting"], r["id"])
        if key in wanted:
            latest[key] = r
    summary = {
        "source": str(source), "split_used": info["split"], "split": split if info["split"] != "file" else None,
        "note": info.get("note"), "seed": seed, "limit": limit, "questions": len(records),
        "available_questions": info["available"], "max_new_tokens": max_new_tokens, "models": list(models),
        "settings": settings, "quote_valid_definition": "fraction of quoting answers whose quotes are all found "
        "(exact or snapped) in the documents shown; null when no answer quotes and for closed book",
        "results": summarize(latest.values(), list(models), settings),
        "files": {k: str(report / v) for k, v in
                  (("results", RESULTS), ("summary_json", SUMMARY_JSON), ("summary_md", SUMMARY_MD), ("chart", CHART))},
    }
    write_json_atomic(report / SUMMARY_JSON, summary)
    write_text_atomic(report / SUMMARY_MD, format_markdown(summary))
    write_chart(summary, report / CHART)
    return summary


__all__ = ["SETTINGS", "load_questions", "setting_documents", "extract_final", "check_quotes", "score_prediction",
           "summarize", "format_markdown", "write_chart", "parse_list", "model_fingerprint", "run_eval"]
