"""Checkpoints of a `raft train` run: safetensors + JSON, atomic, the newest two kept."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, TypedDict

from raft.train.config import CHECKPOINTS, KEEP_CHECKPOINTS
from rag.common.atomic import fsync_dir, fsync_path, write_json_atomic
from rag.errors import RagError

# --------------------------------------------------------------------------------------- checkpoints


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the finished folder `tmp` at `final` (an old `final` is moved aside first, then removed)."""
    for f in tmp.iterdir():
        if f.is_file():
            fsync_path(f)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(out: Path, step: int, model: Any, optimizer: Any, state: dict[str, Any]) -> Path:
    """OUT/checkpoints/step-N: LoRA weights + AdamW state as safetensors, the rest as JSON; atomic."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".step-{step:06d}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file({k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()},
                  str(tmp / "adapter.safetensors"))
        opt = optimizer.state_dict()
        tensors = {f"{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous()
                   for i, s in opt["state"].items() for k, v in s.items()}
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json_atomic(tmp / "state.json", {**state, "step": step, "param_groups": opt["param_groups"]})
        replace_dir(tmp, root / f"step-{step:06d}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in sorted(root.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return root / f"step-{step:06d}"


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint folder of OUT, if any."""
    done = [p for p in sorted((out / CHECKPOINTS).glob("step-*")) if (p / "state.json").is_file()]
    return done[-1] if done else None


class CheckpointState(TypedDict):
    """A checkpoint's state.json (a TypedDict: the file is written and read as plain JSON, unchanged)."""

    seconds: float  # training wall-clock time up to this checkpoint, summed over resumed runs
    step: int  # optimizer steps done (the folder's step-N)
    param_groups: list[dict[str, Any]]  # AdamW's param_groups (torch Optimizer.state_dict()), lr etc.


def load_checkpoint(path: Path, model: Any, optimizer: Any) -> CheckpointState:
    """Restore LoRA weights and optimizer state from a checkpoint folder; return its state.json.

    :raises RagError: when a file of the checkpoint is missing or damaged (saying to delete it or use --no-resume).
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        state: CheckpointState = json.loads((path / "state.json").read_text(encoding="utf-8"))
        set_peft_model_state_dict(model, load_file(str(path / "adapter.safetensors")))
        opt_state: dict[int, dict[str, Any]] = {}
        for key, value in load_file(str(path / "optimizer.safetensors")).items():
            i, name = key.split(".", 1)
            opt_state.setdefault(int(i), {})[name] = value
        optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint: say which
        raise RagError(f"the checkpoint {path} is damaged ({type(e).__name__}: {e}): delete it to resume "
                       "from the one before, or use --no-resume") from None
    return state
