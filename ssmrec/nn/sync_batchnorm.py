"""BatchNorm with statistics over the global batch under DDP, on CPU (gloo) as well as GPU.

torch's ``nn.SyncBatchNorm`` only runs on accelerators (on CPU it raises "expected input tensor to be
on GPU"). :class:`GlooSyncBatchNorm` computes the batch statistics from an all-reduced
``[sum, count]`` and then of the centred sum of squares (two small differentiable all-reduces per
layer and step, through
``torch.distributed.nn.functional.all_reduce``, whose backward all-reduces the gradients), so a run
split over N ranks normalises exactly as one process on the whole batch. :func:`convert_sync_batchnorm`
picks torch's on CUDA and this one elsewhere.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


class GlooSyncBatchNorm(nn.BatchNorm1d):
    """Drop-in for ``BatchNorm1d`` (inputs ``(N, C)`` or ``(N, C, L)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0] + list(range(2, x.dim()))
        c = x.shape[1]
        shape = [1, c] + [1] * (x.dim() - 2)
        # Two passes (mean, then centred squares) keep fp32 variance as exact as BatchNorm's own.
        first = all_reduce(torch.cat([x.sum(dims), x.new_tensor([x.numel() / c])]))
        n = first[-1]
        mean = first[:c] / n
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n  # biased, as BatchNorm normalises
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * unbiased.detach())
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every ``BatchNorm1d`` of ``module`` -> a synchronised one (torch's on CUDA, ours elsewhere)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.BatchNorm1d) and not isinstance(module, GlooSyncBatchNorm):
        out = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
        return out
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child, device))
    return module
