"""mkdocs hook: the settings table of docs/reference/settings.md, generated from rag.config.Settings.

The page holds the marker `<!-- settings-table -->`; this hook replaces it with one row per field of
`Settings.model_fields` (name and `RAG_*` variable, type, default, allowed range, description), so the table
cannot drift from the code: a new setting appears in it at the next build. A field's description is its
pydantic `Field(description=...)`, else the line in `FALLBACK` below (for fields declared with a comment
only). Written by hand because mkdocstrings renders a pydantic model's fields without their environment
names or bounds, and no maintained mkdocs plugin renders a pydantic-settings model as such a table.
"""

from __future__ import annotations

import typing
from typing import Any

MARKER = "<!-- settings-table -->"

#: Descriptions of the settings declared without `Field(description=...)` (from their comments in rag/config.py).
FALLBACK = {
    "index_dir": "The index folder (created when missing).",
    "corpus_dir": "The course folder `scripts/run.sh` and the app index by default.",
    "embed_model": "The embedder: `bundled` (all-MiniLM-L6-v2, shipped) or a sentence-transformers folder.",
    "embed_dtype": "Embedding precision; `auto` = bfloat16 where the CPU has it, else float32.",
    "embed_batch_size": "Passages embedded per batch.",
    "chunk_tokens": "Passage size in embedder tokens, capped at the embedder window minus the heading path.",
    "chunk_overlap": "Tokens shared by consecutive passages of one section.",
    "merge_sections": "Pack small sections into one passage.",
    "embed_headings": "Prepend the heading path to what is embedded.",
    "child_tokens": "Embed child windows this long and return their passage (small-to-big); 0 = off.",
    "faiss_type": "FAISS index: exact `flat`, or approximate `hnsw` / `ivf` for very large courses.",
    "mode": "Retrieval: `dense` (embeddings), `bm25` (words) or `hybrid` (both, weighted reciprocal rank fusion).",
    "top_k": "Passages retrieved and given to the model.",
    "rrf_k": "The k of reciprocal rank fusion.",
    "dense_weight": "Hybrid: the dense ranking's weight; BM25 gets the rest.",
    "collapse_duplicates": "Drop passages near-identical to a better-ranked one.",
    "model": ("The model that answers: `auto` (the bundled model, with the RAFT adapter of the index's course "
              "when one is installed or shipped), `bundled-base`, `bundled-raft`, `teacher`, a model or LoRA "
              "adapter folder, a `.gguf`, or the URL of an OpenAI-compatible server."),
    "model_name": "The model to request from an OpenAI-compatible server.",
    "max_new_tokens": "Most tokens an answer may have.",
    "temperature": "0 = greedy; above 0 samples.",
    "top_p": "Nucleus sampling mass.",
    "top_k_sampling": "Sample from the k likeliest tokens (0 = off).",
    "repetition_penalty": "Above 1 discourages repeats.",
    "seed": "Seed for reproducible sampling.",
    "abstain_threshold": ("Abstain (without calling the model) when the best passage's cosine is below this "
                          "and the question's terms are not covered (`abstain_coverage`)."),
    "abstain_coverage": "Share of the question's IDF-weighted terms that must occur in the course to answer anyway.",
    "max_context_tokens": "Prompt budget: fewer tokens, faster prefill on a CPU.",
    "condense": "How a follow-up question is made standalone: `llm`, `concat`, `off`, or `auto`.",
    "answer_mode": ("`grounded`: quote the supporting sentence, then a short answer; `free`: the model writes "
                    "the answer; `auto`: grounded for in-process models, free for HTTP ones."),
    "quote_retriever_weight": "The retriever's share, against the model's, in choosing a grounded answer's quote.",
    "choice_retriever_weight": ("For a question that lists options: the options' support in the passages "
                                "against the model's scores."),
    "admin_secret": "Unlocks adding and removing documents in the app; unset, nobody can.",
    "ui_backend_urls": "OpenAI-compatible servers an app visitor may pick besides `model` (comma-separated).",
    "server_api_key": "`rag serve` requires `Authorization: Bearer <key>` when set.",
    "cors_origins": "Browser origins allowed to call `rag serve` (comma-separated).",
}


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(annotation))
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    text = text or str(annotation).replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "")
    return text.replace("|", "\\|")


def _bounds(field: Any) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    return ", ".join(parts)


def _default(name: str, field: Any) -> str:
    if field.default_factory is not None:
        return {"index_dir": "`data/index` in the project", "corpus_dir": "`corpus` in the project"}.get(name, "computed")
    value = field.default
    if value is None:
        return "unset"
    if value == []:
        return "none"
    return f"`{value}`"


def settings_table() -> str:
    """The markdown table of every setting.

    :returns: the table, one row per field of rag.config.Settings, in declaration order.
    """
    from rag.config import Settings

    prefix = Settings.model_config.get("env_prefix", "RAG_")
    rows = ["| setting and variable | type, default, range | what it does |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        text = (field.description or FALLBACK.get(name, "")).replace("\n", " ").replace("|", "\\|")
        bounds = _bounds(field)
        rows.append(f"| `{name}`<br>`{prefix}{name.upper()}` | {_type_name(field.annotation)}<br>"
                    f"default {_default(name, field)}{'<br>' + bounds if bounds else ''} | {text} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """mkdocs event: fill the settings marker of the page that holds it."""
    return markdown.replace(MARKER, settings_table()) if MARKER in markdown else markdown
