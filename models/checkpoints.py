"""Checkpoints of the torch training loop: their layout, atomic writing and safe reading.

A checkpoint is a dict of tensors and plain values (:data:`CHECKPOINT_KEYS` plus the caller's
extras), written atomically (temporary name, then ``os.replace``) and read with
``torch.load(weights_only=True)``, so loading one runs no code. Version 1 files (before model
selection by score) still load. :class:`s2agri.models.training.Trainer` writes ``last.pt`` and
``best.pt``; :func:`build_model_from_checkpoint` rebuilds the model through the registry.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .registry import create_model

PathLike = str | os.PathLike[str]

#: Version of the checkpoint layout, stored under ``"checkpoint_version"``.
CHECKPOINT_VERSION = 2
#: Keys every checkpoint holds; the caller's ``checkpoint_extra`` keys come on top.
CHECKPOINT_KEYS: tuple[str, ...] = (
    "checkpoint_version",
    "model_name",
    "model_kwargs",
    "model_state",
    "optimizer_state",
    "epoch",
    "best_val_loss",
    "best_score",
    "best_threshold",
    "best_epoch",
    "epochs_without_improvement",
    "trainer_config",
    "history",
    "rng_state",
    "extra_keys",
)
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"


def load_checkpoint(path: PathLike) -> dict[str, Any]:
    """A checkpoint written by :class:`Trainer`, loaded on the CPU with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors come in many types
        raise ValueError(f"cannot load checkpoint {path}: {error}") from error
    if isinstance(ckpt, dict) and ckpt.get("checkpoint_version") == 1:  # before model selection by score
        ckpt.setdefault("best_score", -float(ckpt.get("best_val_loss", math.inf)))
        ckpt.setdefault("best_threshold", None)
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise ValueError(f"{path} is not an s2agri training checkpoint: missing {', '.join(missing)}")
    return ckpt


def build_model_from_checkpoint(ckpt: Mapping[str, Any] | PathLike) -> nn.Module:
    """The checkpoint's model, rebuilt through the registry with its weights, in eval mode."""
    if not isinstance(ckpt, Mapping):
        ckpt = load_checkpoint(ckpt)
    model = create_model(ckpt["model_name"], **ckpt["model_kwargs"])
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {ckpt['model_name']!r} is not a torch nn.Module")
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    return model


def check_plain(value: Any, where: str) -> None:
    """``ValueError`` unless ``value`` is made of what ``torch.load(weights_only=True)`` reads back."""
    if isinstance(value, (np.generic, np.ndarray)):  # before the float check: np.float64 is a float
        raise ValueError(f"{where} is a numpy {type(value).__name__}: convert it (.item(), .tolist())")
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise ValueError(f"{where} has a key of type {type(key).__name__}: use str keys")
            check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    raise ValueError(
        f"{where} is a {type(value).__name__}: checkpoints hold only tensors, dicts, lists, str, int, "
        "float, bool and None"
    )


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name next to ``path``, then ``os.replace`` into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
