"""Recurrent Mamba stacks for training and for serving, written once.

``MambaLayer`` is one Mamba / Mamba-2 block with its wiring, parameterised:

* ``wiring="plain"``: ``y = block(h)`` (MambaCTR's reference code; Mamba4Rec's "block only" ablation);
* ``wiring="pre"``: ``y = h + block(LN(h))`` (the MambaCTR paper's stacking);
* ``wiring="post"``: ``y = LN(Dropout(block(h)) [+ h])`` then an optional position-wise FFN (Mamba4Rec §3);
  with a ``lowpass`` branch (:class:`ssmrec.nn.lowpass.CausalLowPass`, BSARec's filter made causal)
  ``y = alpha · lowpass(h) + (1 - alpha) · LN(...)`` before the FFN, as BSARec mixes it with attention.

``RecurrentStack`` is a ``ModuleList`` of such layers that threads one state per layer through the
stack, the way ``mamba_ssm`` threads its inference cache: ``forward`` (a whole sequence, training),
``prefill`` (a whole sequence -> outputs and the state after its last real step), ``step`` (one event
per row -> output and the new state, O(1) in the history length) and ``allocate_state``. Every
wiring is position-wise around the block, so ``step`` over a sequence equals ``forward`` on it.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from torch import Tensor

from ssmrec.nn.layers import Dropout
from ssmrec.nn.lowpass import CausalLowPass

# (conv state, ssm state) of one block, then the low-pass branch's state when the layer has one
LayerState = tuple[Tensor, ...]


class MambaLayer(nn.Module):
    def __init__(self, block: nn.Module, wiring: Literal["plain", "pre", "post"] = "plain",
                 norm: nn.Module | None = None, residual: bool = False, dropout: float = 0.0,
                 ffn: nn.Module | None = None, lowpass: CausalLowPass | None = None, alpha: float = 0.0):
        super().__init__()
        if wiring not in ("plain", "pre", "post"):
            raise ValueError(f"wiring must be plain, pre or post, got {wiring!r}")
        if lowpass is not None and wiring != "post":
            raise ValueError("a lowpass branch needs wiring='post'")
        # Attribute names and registration order keep the state-dict layout (and init RNG order)
        # of the layers this class replaced.
        self.mamba = block
        self.dropout = Dropout(dropout)
        self.norm = norm if norm is not None else nn.Identity()
        self.ffn = ffn
        self.wiring, self.residual = wiring, residual
        self.lowpass, self.alpha = lowpass, float(alpha)  # registered last: other layouts unchanged

    def _block_input(self, h: Tensor) -> Tensor:
        return self.norm(h) if self.wiring == "pre" else h

    def _after(self, h: Tensor, m: Tensor, low: Tensor | None = None) -> Tensor:
        if self.wiring == "plain":
            return m
        if self.wiring == "pre":
            return h + m
        h = self.norm(self.dropout(m) + h) if self.residual else self.norm(self.dropout(m))
        if low is not None:
            h = self.alpha * low + (1.0 - self.alpha) * h
        return self.ffn(h) if self.ffn is not None else h

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        low = self.lowpass(h, mask) if self.lowpass is not None else None
        return self._after(h, self.mamba(self._block_input(h), mask=mask), low)

    def prefill(self, h: Tensor, mask: Tensor | None = None) -> tuple[Tensor, LayerState]:
        m, state = self.mamba.forward_with_state(self._block_input(h), mask=mask)
        low = None
        if self.lowpass is not None:
            low, low_state = self.lowpass.forward_with_state(h, mask)
            state = (*state, low_state)
        return self._after(h, m, low), state

    def step(self, x_t: Tensor, state: LayerState, mask_t: Tensor | None = None) -> tuple[Tensor, LayerState]:
        m, new = self.mamba.step(self._block_input(x_t), state[:2], mask_t)
        low = None
        if self.lowpass is not None:
            low, low_state = self.lowpass.step(x_t, state[2], mask_t)
            new = (*new, low_state)
        return self._after(x_t, m, low), new

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> LayerState:
        state = self.mamba.allocate_state(batch_size, device, dtype)
        if self.lowpass is not None:
            state = (*state, self.lowpass.allocate_state(batch_size, device, dtype))
        return state


class RecurrentStack(nn.ModuleList):
    """Layers applied in order; states are lists with one ``(conv, ssm[, lowpass])`` tuple per layer."""

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        for layer in self:
            h = layer(h, mask)
        return h

    def prefill(self, h: Tensor, mask: Tensor | None = None) -> tuple[Tensor, list[LayerState]]:
        states = []
        for layer in self:
            h, s = layer.prefill(h, mask)
            states.append(s)
        return h, states

    def step(self, x_t: Tensor, states: list[LayerState], mask_t: Tensor | None = None
             ) -> tuple[Tensor, list[LayerState]]:
        """One event per row ``(B, d)``; rows with ``mask_t`` False keep their state (output undefined)."""
        new = []
        for layer, s in zip(self, states):
            x_t, s = layer.step(x_t, s, mask_t)
            new.append(s)
        return x_t, new

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> list[LayerState]:
        return [layer.allocate_state(batch_size, device, dtype) for layer in self]


def named_states(states: list[LayerState]) -> dict[str, Tensor]:
    """A stack's per-layer states as named tensors ``conv{i}`` / ``ssm{i}`` [/ ``lowpass{i}``] (a model's
    serving state)."""
    out = {}
    for i, state in enumerate(states):
        for name, t in zip(("conv", "ssm", "lowpass"), state):
            out[f"{name}{i}"] = t
    return out


def layer_states(named: dict[str, Tensor], n_layers: int) -> list[LayerState]:
    """The inverse of :func:`named_states`."""
    return [tuple(named[f"{name}{i}"] for name in ("conv", "ssm", "lowpass") if f"{name}{i}" in named)
            for i in range(n_layers)]
