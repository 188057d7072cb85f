"""Checkpoints of freshly initialised models at a chosen catalogue size, in the exact format training
writes. ``ssmrec bench serve`` measures serving cost, which depends on the architecture and sizes, not
on the weights' values, so it serves these; the serving tests use small ones. Item side tables of CTR
checkpoints are random (tags) and unit Gaussian (multimodal vectors)."""

from __future__ import annotations

from pathlib import Path

import torch

from ssmrec.config import from_dict
from ssmrec import checkpoint


def spread_weights(model: torch.nn.Module, std: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Redraw every weight matrix and embedding table as N(0, std²) (SSM parameters, biases and norms
    keep their init). Freshly initialised recommenders give near-constant outputs (embeddings at
    1e-4 or 0.02), under which a wrong state could pass an equality test; tests spread them first."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "conv1d" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def write_untrained_checkpoint(path, task: str, model: str, model_params: dict | None = None,
                               n_items: int = 12_102, max_len: int = 64, seed: int = 0,
                               item_raw: list[str] | None = None, spread: float | None = None,
                               data_params: dict | None = None) -> Path:
    """``item_raw``: next-item only, the dataset ids by index (what the service then speaks);
    ``spread``: :func:`spread_weights` with this std before saving (tests); ``data_params``: extra
    ``data`` keys (e.g. ``empty_history``)."""
    from ssmrec.tasks import task_class

    data = {"dir": "untrained", "max_len": max_len} if task == "ctr" else {"source": "untrained", "max_len": max_len}
    data.update(data_params or {})
    cfg = from_dict({"task": task, "model": model, "model_params": dict(model_params or {}), "data": data,
                     "train": {"progress": False}}, source=f"untrained {model}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if task == "ctr":
        n_tags = 100
        tags = torch.randint(1, n_tags, (n_items, 5), generator=g)
        tags[0] = 0
        arts = {"item_tags": tags, "item_emb": torch.randn(n_items, 128, generator=g),
                "item_likes_level": torch.randint(0, 10, (n_items,), generator=g),
                "item_views_level": torch.randint(0, 10, (n_items,), generator=g)}
        fm = {"n_items": n_items, "n_tags": n_tags, "max_len": max_len, "item_emb_dim": 128, "data_dir": "untrained"}
    else:
        arts = {}
        fm = {"n_items": n_items, "n_users": 0, "max_len": max_len, "dataset": "untrained"}
        if item_raw is not None:
            fm["item_raw"] = list(item_raw)
    net = task_class(task)(cfg).build_model(arts, fm)
    if spread is not None:
        spread_weights(net, spread, seed)
    checkpoint.save_atomic({"task": task, "model": net.state_dict(), "config": cfg.resolved(),
                            "feature_map": fm, "artifacts": arts, "state": {}, "history": []}, path)
    return Path(path)
