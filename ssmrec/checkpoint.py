"""Checkpoints: plain dicts of tensors and Python scalars, written atomically (:mod:`ssmrec.io`) and
read with ``weights_only=True`` (loading never runs code).

A checkpoint is self-contained: weights, the resolved run config, the task's feature map and the
``artifacts`` (item tables) the model needs, so a model is rebuilt without its training data. This is
the one loader below both training and serving: :func:`load_model` (checkpoint -> model) and
:func:`load_for_serving` (checkpoint -> model + its typed :class:`~ssmrec.data.schema.ServingSchema`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssmrec.errors import SsmrecError, one_line
from ssmrec.io import save_torch_atomic

FORMAT = "ssmrec-checkpoint"
VERSION = 2
REQUIRED = ("model", "config", "feature_map")


def save_atomic(obj: dict, path) -> None:
    save_torch_atomic({"format": FORMAT, "version": VERSION, **obj}, path)


def load(path, require: tuple[str, ...] = ()) -> dict:
    """Load a checkpoint safely; every failure is one line naming the file."""
    path = Path(path)
    if path.is_dir():
        raise SsmrecError(f"{path}: is a directory, expected a checkpoint file (e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise SsmrecError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise SsmrecError(f"{path}: checkpoint is empty (0 bytes; a copy or a write that did not finish)")
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or would need code execution
        msg = str(e)
        if "Unsupported global" in msg or "GLOBAL" in msg:
            raise SsmrecError(f"{path}: refused: the file needs arbitrary code to load (not an ssmrec "
                              f"checkpoint; ssmrec never loads with weights_only=False)") from None
        why = msg.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0].split(". This is")[0]
        raise SsmrecError(f"{path}: cannot load checkpoint (not a complete torch checkpoint file: "
                          f"{one_line(why, 120)})") from None
    if not isinstance(ck, dict):
        raise SsmrecError(f"{path}: not an ssmrec checkpoint (holds a {type(ck).__name__}, not a dict)")
    for key in REQUIRED + tuple(require):
        if key not in ck:
            hint = " (best.pt holds weights only; --resume needs last.pt)" if key == "optimizer" else ""
            raise SsmrecError(f"{path}: not a {'resumable' if require else 'ssmrec'} checkpoint "
                              f"(missing '{key}'){hint}")
    if not isinstance(ck["config"], dict) or not isinstance(ck["feature_map"], dict):
        raise SsmrecError(f"{path}: not an ssmrec checkpoint (malformed 'config' / 'feature_map')")
    return ck


def load_model(ckpt_path, device="cpu"):
    """Rebuild a trained model from its checkpoint alone (weights, config, feature map, item tables).
    Returns ``(model, cfg, task, checkpoint dict)``; the task has no data loaded yet (call
    ``task.setup(splits)``)."""
    from ssmrec.config import from_dict
    from ssmrec.nn.mamba import prepare_kernels
    from ssmrec.tasks import task_class

    ck = load(ckpt_path)
    cfg = from_dict(ck["config"], source=str(ckpt_path))
    task = task_class(cfg.task)(cfg)
    artifacts = ck.get("artifacts")
    if artifacts is None:  # checkpoints written before they were self-contained: read the data folder
        task.setup(("valid",))
        model = task.build_model()
    else:
        model = task.build_model(artifacts, ck["feature_map"])
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:  # weights from another ssmrec version or an edited config
        raise SsmrecError(f"{ckpt_path}: weights do not match the model in its config "
                          f"({one_line(str(e).splitlines()[-1].strip(), 200)})") from None
    model.to(device).eval()
    prepare_kernels(model, device)  # a kernel build is never timed as inference
    return model, cfg, task, ck


def load_for_serving(ckpt_path, device="cpu"):
    """``(model, schema, checkpoint dict)``: the model and what a request may carry (item ids, the
    training window, named candidate features with their ranges and per-item defaults)."""
    model, cfg, task, ck = load_model(ckpt_path, device)
    return model, task.serving_schema(ck["feature_map"], ck.get("artifacts") or {}, cfg.model), ck
