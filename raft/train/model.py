"""The base model of `raft train`, its LoRA adapter and the learning-rate schedule."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from raft.train.config import TARGET_MODULES, WARMUP_FRACTION, TrainConfig
from rag.errors import RagError

# --------------------------------------------------------------------------------------------- model


def resolve_base(base: str, cache_dir: Path | None = None) -> tuple[Path, str]:
    """(transformers model folder, model id) of --base, parsed by the one model factory like every command's spec.

    :param base: bundled, teacher, a transformers model folder, a .gguf file or a `raft train` OUT folder
        (its merged/ model); GGUF models are converted once into the model cache.
    :param cache_dir: the model cache (the setting cache_dir; None = rag.generation.models.default_cache_dir()).
    :returns: the folder to load and the id recorded as the run's base_model.
    :raises GeneratorError: (a RagError) for an unknown spec (listing the accepted forms), a server URL,
        or a model that cannot be found or converted.
    """
    from rag.generation.factory import resolve_model

    spec = resolve_model(base)
    return spec.local_dir(cache_dir), spec.model_id


def load_base(model_dir: Path) -> tuple[Any, Any]:
    """A fresh float32 copy of the base model (never the shared inference cache: peft edits it) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise RagError(f"cannot load the base model in {model_dir}: {type(e).__name__}: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise RagError(f"the base model in {model_dir} has no chat template: use an instruct/chat model as --base")
    return model, tokenizer


def add_lora(model: Any, config: TrainConfig) -> tuple[Any, list[str]]:
    """Wrap `model` with LoRA on its attention + MLP projections (peft's default targets for other architectures)."""
    import torch
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in TARGET_MODULES if t in names] or None
    torch.manual_seed(config.seed)  # LoRA A initialisation (B starts at zero)
    try:
        with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, LoraConfig(
                r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                target_modules=targets, bias="none", task_type="CAUSAL_LM"))
    except ValueError as e:
        raise RagError(f"cannot add LoRA to this base model: {e}") from None
    used = sorted(peft_model.peft_config["default"].target_modules)
    return peft_model, used


def lr_at(step: int, total: int, lr: float) -> float:
    """Linear warm-up over the first 10% of steps (at least one), then linear decay (last step > 0)."""
    warm = max(1, math.ceil(WARMUP_FRACTION * total))
    if step <= warm:
        return lr * step / warm
    return lr * (total - step + 1) / (total - warm + 1)
