"""Training checkpoints: one dict of JSON-able config plus state dicts, written atomically
every epoch, loaded with `weights_only=True` (no arbitrary pickles)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_checkpoint", "save_checkpoint"]

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Writes `state` to directory/checkpoint.pt via a temporary file and an atomic rename."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT
    tmp = directory / f".{CHECKPOINT}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / CHECKPOINT
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
