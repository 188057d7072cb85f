"""A causal low-pass branch with an O(1) recurrent step: BSARec's frequency layer made causal.

BSARec (Shin et al., "An Attentive Inductive Bias for Sequential Recommendation beyond the
Self-Attention", AAAI'24, §4.2) mixes a fixed filter beside self-attention: an FFT of the window, the
lowest ``c // 2 + 1`` frequency bins kept (``low``), ``low + beta² (x - low)`` (a learned per-channel
gain on the high frequencies), dropout, a residual and LayerNorm. Its FFT spans the whole window, so
every position sees later ones; only the last position is scored, where the filter reduces to a causal
kernel over the items before it:

    low[t] = Σ_{m<=t} x[m] · (1/N) (1 + 2 Σ_{f=1}^{F-1} cos(2π f (t - m) / N)),   N = ``period``

Here that kernel is applied causally at every position, which is exactly BSARec's filter at the scored
position and makes the branch a sum of F undamped rotations (complex diagonal states ``e^{iω_f}``):
training computes it with cumulative sums of ``x · cos(ω t)`` and ``x · sin(ω t)`` (O(L·F·d)), serving
keeps ``Σ x[m] e^{iω_f (t-m)}`` per frequency and advances it in O(F·d) per event. A served window never
exceeds the training window (the model contract rebuilds a state that slid), where the two agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from ssmrec.nn.layers import Dropout

LowPassState = Tensor  # (B, 2, F, d): real and imaginary parts of Σ x[m] e^{iω_f (t - m)}


class CausalLowPass(nn.Module):
    TOEPLITZ_MAX_LEN = 64  # windows up to this length use the (L, L) kernel matrix, longer ones cumsums

    def __init__(self, d: int, period: int = 50, c: int = 5, dropout: float = 0.0, eps: float = 1e-12):
        super().__init__()
        n_freq = c // 2 + 1
        if period < 2 or n_freq > period // 2:
            raise ValueError(f"lowpass: keeping c // 2 + 1 = {n_freq} frequency bins needs period >= "
                             f"{2 * n_freq} (got period {period})")
        self.period, self.n_freq = period, n_freq
        # BSARec's sqrt_beta: N(0, 1) per channel, used squared (the high-frequency gain stays >= 0)
        self.beta = nn.Parameter(torch.randn(d))
        self.beta._no_weight_decay = True
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(d, eps=eps)

    def _frequencies(self, dtype, device) -> tuple[Tensor, Tensor]:
        """Angular frequencies ``2π f / N`` (float64: phases are formed there, then cast) and the bins'
        weights ``1/N`` (DC) and ``2/N`` (each other bin counts with its mirror bin)."""
        omega = 2 * math.pi * torch.arange(self.n_freq, dtype=torch.float64, device=device) / self.period
        weight = torch.full((self.n_freq,), 2.0 / self.period, dtype=torch.float64, device=device)
        weight[0] = 1.0 / self.period
        return omega, weight.to(dtype)

    def _output(self, x: Tensor, low: Tensor) -> Tensor:
        return self.norm(self.dropout(low + self.beta.square() * (x - low)) + x)

    def forward_with_state(self, x: Tensor, mask: Tensor | None = None, want_state: bool = True
                           ) -> tuple[Tensor, LowPassState | None]:
        """``x (B, L, d)`` -> outputs at every position and the state after position L - 1. Masked
        (left-padding) steps contribute nothing; distances between real events are unchanged."""
        L = x.shape[1]
        xin = x if mask is None else x * mask[..., None].to(x.dtype)
        omega, weight = self._frequencies(x.dtype, x.device)
        y = self._output(x, self._low(xin, omega, weight))
        if not want_state:
            return y, None
        # Σ_m x[m] e^{iω (T - m)}, T = L - 1
        back = (L - 1 - torch.arange(L, device=x.device, dtype=torch.float64))[None, :] * omega[:, None]  # (F, L)
        re = torch.matmul(back.cos().to(x.dtype), xin)
        im = torch.matmul(back.sin().to(x.dtype), xin)
        return y, torch.stack([re, im], dim=1)

    def _low(self, x: Tensor, omega: Tensor, weight: Tensor) -> Tensor:
        """The causal low-pass of ``x (B, L, d)`` at every position."""
        L = x.shape[1]
        t = torch.arange(L, device=x.device, dtype=torch.float64)
        if L <= self.TOEPLITZ_MAX_LEN:
            # the kernel is the same for every channel: one (L, L) lower-triangular matrix, one GEMM.
            # B·L²·d multiply-adds, but one pass: at Beauty's prefix lengths the branch's share of a
            # 2-layer Mamba4Rec training step fell from +31 % (cumulative sums) to +12 % (README)
            lag = t[:, None] - t[None, :]  # t - m
            kernel = (torch.cos(lag[..., None] * omega) * weight.double()).sum(-1)
            return torch.matmul(kernel.masked_fill(lag < 0, 0.0).to(x.dtype), x)
        # long windows: O(L·F·d) cumulative sums, as cos(ω(t-m)) = cos ωt cos ωm + sin ωt sin ωm
        phase = t[:, None] * omega  # (L, F)
        cos, sin = phase.cos().to(x.dtype), phase.sin().to(x.dtype)
        xe = x.unsqueeze(2)  # (B, L, 1, d)
        C = torch.cumsum(xe * cos[:, :, None], dim=1)  # Σ_{m<=t} x[m] cos(ω m): (B, L, F, d)
        S = torch.cumsum(xe * sin[:, :, None], dim=1)
        return torch.einsum("blfd,lf->bld", C, cos * weight) + torch.einsum("blfd,lf->bld", S, sin * weight)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_with_state(x, mask, want_state=False)[0]

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> LowPassState:
        return torch.zeros(batch_size, 2, self.n_freq, self.beta.shape[0], device=device or self.beta.device,
                           dtype=dtype or self.beta.dtype)

    def step(self, x_t: Tensor, state: LowPassState, mask_t: Tensor | None = None
             ) -> tuple[Tensor, LowPassState]:
        """One event per row ``(B, d)``: rotate every frequency's sum by ``e^{iω}``, add the event.
        Rows with ``mask_t`` False keep their state. Does not mutate ``state``."""
        omega, weight = self._frequencies(x_t.dtype, x_t.device)
        c, s = omega.cos()[:, None].to(x_t.dtype), omega.sin()[:, None].to(x_t.dtype)
        re, im = state[:, 0], state[:, 1]
        re_new = c * re - s * im + x_t[:, None]
        im_new = s * re + c * im
        y = self._output(x_t, torch.einsum("bfd,f->bd", re_new, weight))
        new = torch.stack([re_new, im_new], dim=1)
        if mask_t is not None:
            new = torch.where(mask_t.view(-1, 1, 1, 1), new, state)
        return y, new
