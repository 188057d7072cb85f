"""Parameter groups, optimisers and the L2 regulariser — one place that honours the blocks' marks.

A parameter gets no weight decay (and no FuxiCTR L2 term) when it is a vector (biases, LayerNorm /
BatchNorm / RMSNorm scales) or when its block marks it ``_no_weight_decay = True`` (Mamba's
``A_log``, ``D``, ``dt_bias``), the convention of nanoGPT and mamba_ssm: decay only matrices.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def decays(param: torch.Tensor) -> bool:
    return param.ndim >= 2 and not getattr(param, "_no_weight_decay", False)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, keep = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if decays(p) else keep).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, train_cfg) -> torch.optim.Optimizer:
    groups = param_groups(model, train_cfg.weight_decay)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[train_cfg.optimizer]
    # The fused kernel updates every tensor in one pass per group: on CPU a dense Adam step over
    # MM-CTR's 91,718 x 64 item table takes 8 ms instead of 44 ms (the for-loop default).
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return cls(groups, lr=train_cfg.lr, eps=train_cfg.adam_eps, fused=fused or None)


def l2_regularization(model: nn.Module, emb_lambda: float, net_lambda: float):
    """FuxiCTR's regulariser: (lambda_e/2)||theta||^2 over the ``embedding`` module's parameters and
    (lambda_n/2)||theta||^2 over every other parameter — both only over parameters that decay."""
    if emb_lambda == 0 and net_lambda == 0:
        return 0.0
    reg = 0.0
    for name, p in model.named_parameters():
        if not p.requires_grad or not decays(p):
            continue
        lam = emb_lambda if name.startswith("embedding.") else net_lambda
        if lam > 0:
            reg = reg + (lam / 2) * p.pow(2).sum()
    return reg
