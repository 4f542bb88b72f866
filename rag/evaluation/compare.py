"""Retrieval pipelines side by side on one evaluation set: the product (any settings, any mode) against the
plainest pipeline a user could write — LangChain's RecursiveCharacterTextSplitter(1000, 200) + a flat
FAISS index over the same MiniLM embedder (and BM25 over the same chunks) — scored the same way.

Scores per pipeline: recall@1/5/10 and MRR@10 (a hit = a passage holding an evidence quote), what the
top-5 passages cost in prompt tokens (each passage as the prompt shows it: its "[n] (file > heading)"
header and text, counted with the generator's tokenizer), and recall within a fixed passage budget
(1,024 tokens by default: passages are taken best first while they fit, as the answering pipeline fills
its context), so that bigger passages cannot win by showing more text.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rag.answering.prompts import passage_header
from rag.evaluation.retrieval import contains_evidence, score_ranks
from rag.evaluation.sets import EvalSet
from rag.index.embeddings import Embedder
from rag.ingest.chunking import Chunk, chunk_id
from rag.ingest.loaders import load_documents
from rag.retrieval.retriever import Hit

DEPTH = 10
BUDGET = 1024
TOKENS_AT = 5

TokenCounter = Callable[[str], int]


class Searcher(Protocol):
    """Anything with `search(query, k) -> list[Hit]` (best first)."""

    def search(self, query: str, k: int) -> list[Hit]: ...


@dataclass
class Built:
    """A pipeline built over one evaluation corpus: its searcher and what building it cost."""

    searcher: Searcher
    seconds: float
    chunk_chars: list[int] = field(default_factory=list)


def generator_token_counter(cache_dir: Path | None = None) -> TokenCounter:
    """Token count in the bundled generator's tokenizer (SmolLM2), the model that reads the passages.

    Converts the bundled GGUF once into the model cache if it is not there yet.

    :param cache_dir: the model cache (the setting cache_dir; None = rag.generation.models.default_cache_dir()).
    :returns: a function text -> number of tokens (no special tokens).
    :raises GeneratorError: when the bundled model is not installed.
    """
    from transformers import AutoTokenizer

    from rag.generation.models import bundled_gguf_path, convert_gguf

    tok = AutoTokenizer.from_pretrained(str(convert_gguf(bundled_gguf_path(), cache_dir)))
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def passage_tokens(hits: Sequence[Hit], count: TokenCounter) -> list[int]:
    """Prompt tokens of each passage as `rag.answering.prompts.format_passages` shows it (header, text, gap)."""
    return [count(f"{passage_header(i, h)}\n{h.chunk.text.strip()}") + 2 for i, h in enumerate(hits, start=1)]


def within_budget(tokens: Sequence[int], budget: int) -> int:
    """How many passages, best first, fit in `budget` tokens (the first that does not fit ends the list)."""
    used = n = 0
    for t in tokens:
        if used + t > budget:
            break
        used += t
        n += 1
    return n


def score(searcher: Searcher, evalset: EvalSet, count: TokenCounter, budget: int = BUDGET,
          depth: int = DEPTH) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score one built pipeline on an evaluation set.

    :param searcher: the pipeline.
    :param evalset: questions with evidence quotes.
    :param count: prompt-token counter (see `generator_token_counter`).
    :param budget: passage budget in prompt tokens for `recall@budget`.
    :param depth: how many passages to retrieve (MRR is @10).
    :returns: summary {"n", "recall@1", "recall@5", "recall@10", "mrr@10", "tokens@5", "recall@budget",
        "passages@budget", "search_ms_p50"} and one row per question (rank of the first hit or None).
    """
    ranks, tok5, in_budget, n_budget, rows, times = [], [], [], [], [], []
    for q in evalset.questions:
        t0 = time.perf_counter()
        hits = searcher.search(q["question"], depth)
        times.append((time.perf_counter() - t0) * 1000)
        relevant = [contains_evidence(h.chunk.text, q["evidence"]) for h in hits]
        rank = next((i for i, r in enumerate(relevant, start=1) if r), None)
        tokens = passage_tokens(hits, count)
        fit = within_budget(tokens, budget)
        ranks.append(rank)
        tok5.append(sum(tokens[:TOKENS_AT]))
        in_budget.append(any(relevant[:fit]))
        n_budget.append(fit)
        rows.append({"id": q["id"], "rank": rank, "in_budget": any(relevant[:fit]), "fit": fit,
                     "top": [f"{h.chunk.source} > {h.chunk.section}" for h in hits[:3]]})
    s = score_ranks(ranks).to_dict()
    s.update({"tokens@5": statistics.mean(tok5), "recall@budget": sum(in_budget) / len(in_budget),
              "passages@budget": statistics.mean(n_budget), "search_ms_p50": statistics.median(times)})
    return s, rows


# ------------------------------------------------------------------------------------------ pipelines


class ProductSearcher:
    """The product's own Retriever over an index built by `rag.index.build.build_index`."""

    def __init__(self, retriever: Any, mode: str):
        self.retriever = retriever
        self.mode = mode

    def search(self, query: str, k: int) -> list[Hit]:
        return self.retriever.search(query, k=k, mode=self.mode)


def build_product(corpus: Path, embedder: Embedder, settings_overrides: dict[str, Any],
                  workdir: Path) -> tuple[Any, float, list[int]]:
    """Index `corpus` with the product's own build and the given settings, from scratch.

    :param corpus: the evaluation corpus folder.
    :param embedder: the embedder (shared by every pipeline of a run).
    :param settings_overrides: `rag.config.Settings` fields (chunk_tokens, child_tokens, dense_weight, ...);
        the mode is chosen per search.
    :param workdir: folder for the index (a fresh sub-folder is made).
    :returns: (Retriever over the new index, build seconds, character length of each passage).
    """
    from rag.api import make_chunker
    from rag.config import Settings
    from rag.index.build import build_index
    from rag.retrieval.retriever import Retriever

    index_dir = Path(tempfile.mkdtemp(prefix="index-", dir=workdir))
    settings = Settings(index_dir=index_dir, corpus_dir=corpus, **settings_overrides)
    t0 = time.perf_counter()
    build_index(corpus, index_dir, embedder, make_chunker(embedder, settings), faiss_type=settings.faiss_type,
                rebuild=True)
    seconds = time.perf_counter() - t0
    retriever = Retriever(index_dir, embedder, settings.mode, settings.top_k, settings.rrf_k, auto_reload=False,
                          dense_weight=settings.dense_weight, collapse_duplicates=settings.collapse_duplicates)
    return retriever, seconds, [len(c.text) for c in retriever.passages().passages]


class LangChainBaseline:
    """RecursiveCharacterTextSplitter(chunk_size, overlap) over each file, MiniLM vectors in faiss.IndexFlatIP,
    and BM25 (the product's bm25s tokenisation) over the same chunks: what a user would write in ten lines.
    """

    def __init__(self, corpus: Path, embedder: Embedder, chunk_size: int = 1000, chunk_overlap: int = 200):
        """
        :param corpus: the evaluation corpus folder (read with the product's loaders, so the text is the same).
        :param embedder: the same MiniLM the product uses.
        :param chunk_size: characters per chunk (LangChain's length function is `len`).
        :param chunk_overlap: characters of overlap.
        """
        import faiss
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        from rag.index.bm25 import BM25Index

        t0 = time.perf_counter()
        docs, _ = load_documents(corpus)
        splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
        self.chunks: list[Chunk] = []
        for d in docs:
            for i, piece in enumerate(splitter.split_text(d.text)):
                at = max(d.text.find(piece), 0)
                self.chunks.append(Chunk(chunk_id(d.source, "", piece, i), piece, d.source, "", (at, at + len(piece))))
        self.embedder = embedder
        vectors = embedder.encode([c.text for c in self.chunks])
        self.faiss = faiss.IndexFlatIP(vectors.shape[1])
        self.faiss.add(vectors)
        self.bm25 = BM25Index.build([c.text for c in self.chunks])
        self.seconds = time.perf_counter() - t0

    def searcher(self, mode: str) -> Searcher:
        """A searcher in `mode` ("dense" or "bm25") over the baseline's chunks."""
        base = self

        class _S:
            def search(self, query: str, k: int) -> list[Hit]:
                if mode == "dense":
                    qv = base.embedder.encode_query(query).reshape(1, -1).astype(np.float32)
                    scores, ids = base.faiss.search(qv, min(k, len(base.chunks)))
                    ranked = [(int(i), float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0]
                else:
                    ranked = base.bm25.search(query, k)
                return [Hit(base.chunks[p], s, r) for r, (p, s) in enumerate(ranked, start=1)]

        return _S()


def markdown_table(rows: list[dict[str, Any]], budget: int = BUDGET) -> str:
    """One markdown table: pipeline rows with the scores of `score` plus build time and chunk sizes."""
    head = ("| pipeline | n | recall@1 | recall@5 | recall@10 | MRR@10 | tokens@5 | "
            f"recall@{budget}tok | passages@{budget}tok | chunks | median chars | build s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['pipeline']} | {r['n']} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | "
                     f"{r['recall@10']:.3f} | {r['mrr@10']:.3f} | {r['tokens@5']:.0f} | {r['recall@budget']:.3f} | "
                     f"{r['passages@budget']:.1f} | {r['chunks']} | {r['median_chars']:.0f} | {r['build_s']:.1f} |")
    return "\n".join(lines)
