"""Checkpoints: plain dicts of tensors and Python scalars, written atomically (temp file + fsync +
rename, so a crash never leaves a half-written file) and read with ``weights_only=True`` (loading
never runs code)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ssmrec.errors import SsmrecError


def save_atomic(obj: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SsmrecError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or would need code execution
        raise SsmrecError(f"{path}: cannot load checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
