"""Mean-pooling sentence encoder on plain transformers, for the sentence-transformers models that are just that.

Why by hand: a fresh `rag ask` imports sentence-transformers only to embed the question and the quote
candidates, and that import alone (scikit-learn and SciPy come with it) was a sixth of the time to the first answer
byte (`python -X importtime`, transformers and torch already imported).
all-MiniLM-L6-v2, the bundled embedder, and most sentence-transformers checkpoints are a transformer, mean
pooling over the attention mask and L2 normalisation (modules.json); that is ~20 lines over the
`transformers.AutoModel` the generator already imports. `plain_mean_pooling` accepts a folder only when its
sentence-transformers configuration says exactly that (no Dense layer, no other pooling, no prompts, no
lower-casing); anything else goes through sentence-transformers as before (rag/index/embeddings.py).

The computation follows sentence-transformers 6.x (`Transformer.preprocess` + `Pooling` "mean" +
`Normalize`): truncation to `max_seq_length`, padding per batch, batches sorted by length, the masked sum
accumulated in float32 for bf16 models; tests/rag/index/test_pooling.py checks the vectors against
sentence-transformers' own on the course's chunks and on edge cases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: modules.json of a transformer + mean pooling + normalisation model, as sentence-transformers saves it
_PLAIN_MODULES = ("sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                  "sentence_transformers.models.Normalize")
_OTHER_POOLING = ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                  "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def _json(path: Path) -> dict[str, Any] | list[Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def plain_mean_pooling(folder: str | Path) -> int | None:
    """The `max_seq_length` of a local sentence-transformers folder that is a transformer + mean pooling +
    normalisation and nothing else; None for any other model (or a hub id), which then needs
    sentence-transformers.

    :param folder: a model folder (modules.json, 1_Pooling/config.json, sentence_bert_config.json).
    :returns: the window in word pieces (special tokens included), or None.
    """
    root = Path(folder)
    modules = _json(root / "modules.json")
    if not isinstance(modules, list) or len(modules) != 3:
        return None
    if tuple(m.get("type") for m in modules) != _PLAIN_MODULES or modules[0].get("path") not in ("", None):
        return None
    pooling = _json(root / str(modules[1].get("path", "")) / "config.json")
    if not isinstance(pooling, dict) or pooling.get("pooling_mode_mean_tokens") is not True:
        return None
    if any(pooling.get(k) for k in _OTHER_POOLING) or pooling.get("include_prompt", True) is not True:
        return None
    st_config = _json(root / "config_sentence_transformers.json") or {}
    if not isinstance(st_config, dict) or any(st_config.get("prompts", {}).values()) \
            or st_config.get("default_prompt_name"):
        return None
    bert = _json(root / "sentence_bert_config.json")
    if not isinstance(bert, dict) or bert.get("do_lower_case") or not isinstance(bert.get("max_seq_length"), int):
        return None
    return int(bert["max_seq_length"])


class MeanPoolingEncoder:
    """Texts to L2-normalised mean-pooled vectors with a transformers encoder (sentence-transformers'
    Transformer + Pooling(mean) + Normalize), exposing the part of `SentenceTransformer` rag uses:
    `encode`, `tokenizer`, `max_seq_length`, `get_sentence_embedding_dimension`.
    """

    def __init__(self, folder: str | Path, max_seq_length: int, dtype: Any = None) -> None:
        """Load the encoder and tokenizer from `folder` (local files only).

        :param max_seq_length: truncation length in word pieces (sentence_bert_config.json).
        :param dtype: torch dtype of the weights (None = as stored, float32 here).
        :raises OSError, ValueError: from transformers when the folder is not a loadable model.
        """
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True,
                                               **({"dtype": dtype} if dtype is not None else {}))
        self.model.eval()
        self.max_seq_length = max_seq_length

    def get_sentence_embedding_dimension(self) -> int:
        """The vector size (the encoder's hidden size)."""
        return int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], batch_size: int = 32, show_progress_bar: bool = False,
               **_: Any) -> np.ndarray:
        """Embed `texts` as an (n, dim) float32 array of unit vectors (input order kept).

        :param batch_size: texts per forward pass (longest first, as sentence-transformers batches them).
        :param show_progress_bar: a tqdm bar over batches.
        """
        import torch

        order = np.argsort([-len(t) for t in texts])  # the order (and batches) sentence-transformers uses
        out = np.zeros((len(texts), self.get_sentence_embedding_dimension()), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        if show_progress_bar:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="Batches")
        with torch.inference_mode():
            for start in starts:
                rows = order[start: start + batch_size]
                enc = self.tokenizer([texts[i] for i in rows], padding=True, truncation="longest_first",
                                     max_length=self.max_seq_length, return_tensors="pt")
                tokens = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                accumulate = torch.float32 if tokens.dtype in (torch.float16, torch.bfloat16) else tokens.dtype
                mean = (tokens * mask).sum(dim=1, dtype=accumulate) / torch.clamp(
                    mask.sum(dim=1, dtype=accumulate), min=1e-9)
                vecs = torch.nn.functional.normalize(mean.to(tokens.dtype), p=2, dim=-1)
                # encode(normalize_embeddings=True) normalises once more, in the model's dtype (bf16 roundings)
                vecs = torch.nn.functional.normalize(vecs, p=2, dim=-1)
                out[rows] = vecs.float().numpy()
        return out
