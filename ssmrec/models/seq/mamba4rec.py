"""Mamba4Rec (reference doc §7.1; Liu et al., "Mamba4Rec", §3): item embedding -> dropout ->
LayerNorm -> Mamba layers (Mamba block, dropout, LayerNorm, residual only when stacked, then a
position-wise FFN with residual) -> the state at each position; scores against the item table.

Defaults are the reference code (which produced the published numbers), including its init quirks:
RecBole's N(0, 0.02²) init reaches the Linear layers inside the Mamba block, so ``dt_proj.bias`` is
zeroed and the special dt init is lost, and the embedding's padding row is randomised (it then stays
fixed). The paper's ablations are switches: ``block_only`` (Mamba block only: no dropout / LayerNorm /
FFN), ``num_layers: 2``, ``position_embedding``, ``ffn: false``, ``layer_norm: false``; ``block:
mamba2`` swaps in a Mamba-2 block (ours), ``init: mamba`` keeps the blocks' own init.

``lowpass: true`` (ours) adds BSARec's frequency branch beside each Mamba block, made causal so that
serving stays O(1) per event (:mod:`ssmrec.nn.lowpass`): ``alpha · LN(Dropout(low + beta² (h - low)) + h)
+ (1 - alpha) · (Mamba path)`` before the FFN, with BSARec's Beauty values ``c = 5`` (3 frequency bins),
``alpha = 0.7`` and the period = its window, 50.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from ssmrec.models.incremental import split_rows
from ssmrec.models.seq.base import SeqRecModel
from ssmrec.nn.layers import Dropout, PositionwiseFeedForward, recbole_init
from ssmrec.nn.lowpass import CausalLowPass
from ssmrec.nn.mamba import SCAN_IMPLS, Mamba, Mamba2
from ssmrec.nn.recurrent import MambaLayer, RecurrentStack, layer_states, named_states
from ssmrec.params import Bool, PosInt, Rate, config_dataclass
from ssmrec.registry import register

LN_EPS = 1e-12


@config_dataclass
class Mamba4RecConfig:
    hidden_size: PosInt = 64
    num_layers: PosInt = 1
    dropout: Rate = 0.2  # 0.2 MovieLens, 0.4 Amazon (paper §4.1)
    d_state: PosInt = 32
    d_conv: PosInt = 4
    expand: PosInt = 2
    block: Literal["mamba1", "mamba2"] = "mamba1"
    headdim: PosInt = 32  # mamba2 only
    scan_impl: Literal[SCAN_IMPLS] = "auto"  # type: ignore[valid-type]
    ffn: Bool = True
    layer_norm: Bool = True
    position_embedding: Bool = False  # the paper found PE hurts
    block_only: Bool = False  # ablation "Mamba block only"
    max_len: PosInt = 200  # size of the position table (position_embedding only)
    init: Literal["recbole", "mamba"] = "recbole"
    lowpass: Bool = False  # causal BSARec frequency branch beside every Mamba block
    lowpass_c: PosInt = 5  # BSARec's c: the lowest c // 2 + 1 frequency bins pass
    lowpass_alpha: Rate = 0.7  # weight of the low-pass branch against the Mamba path
    lowpass_period: PosInt = 50  # N of the frequencies 2πf/N (BSARec: its window, max_len)

    def __post_init__(self):
        if self.lowpass and self.block_only:
            raise ValueError("model_params.lowpass needs the full Mamba4Rec layer (block_only: false)")
        if self.lowpass and self.lowpass_c // 2 + 1 > self.lowpass_period // 2:
            raise ValueError(f"model_params.lowpass_c ({self.lowpass_c}) keeps {self.lowpass_c // 2 + 1} frequency "
                             f"bins; lowpass_period ({self.lowpass_period}) must be >= {2 * (self.lowpass_c // 2 + 1)}")
        if self.block == "mamba2" and (self.expand * self.hidden_size) % self.headdim:
            raise ValueError(f"model_params.headdim ({self.headdim}) must divide the Mamba-2 inner width "
                             f"{self.expand * self.hidden_size}")


def mamba4rec_layer(cfg: Mamba4RecConfig, residual: bool) -> MambaLayer:
    """Mamba block -> dropout -> LayerNorm (residual only when stacked) -> FFN; "block only": the block."""
    d = cfg.hidden_size
    kw = dict(d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, scan_impl=cfg.scan_impl)
    block = Mamba2(d, headdim=cfg.headdim, **kw) if cfg.block == "mamba2" else Mamba(d, **kw)
    norm = nn.LayerNorm(d, eps=LN_EPS) if cfg.layer_norm else nn.Identity()
    ffn = (PositionwiseFeedForward(d, 4 * d, cfg.dropout, "gelu", cfg.layer_norm, LN_EPS)
           if cfg.ffn and not cfg.block_only else None)
    lowpass = (CausalLowPass(d, cfg.lowpass_period, cfg.lowpass_c, cfg.dropout, LN_EPS) if cfg.lowpass else None)
    return MambaLayer(block, "plain" if cfg.block_only else "post", norm, residual, cfg.dropout, ffn,
                      lowpass, cfg.lowpass_alpha)


@register("next_item", "mamba4rec", Mamba4RecConfig)
class Mamba4Rec(SeqRecModel):
    """Serving state: the stack's per-layer (conv, ssm) states and the newest output ``h``; O(1) per
    event within the window."""

    state_layout = "mamba-states+h"
    advances = True
    def __init__(self, cfg: Mamba4RecConfig, n_items: int):
        super().__init__(n_items, cfg.hidden_size)
        self.cfg = cfg
        if cfg.lowpass:
            self.state_layout = "mamba-states+lowpass+h"
        d = cfg.hidden_size
        self.position_table = nn.Embedding(cfg.max_len, d) if cfg.position_embedding else None
        self.dropout = Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(d, eps=LN_EPS) if cfg.layer_norm and not cfg.block_only else nn.Identity()
        self.layers = RecurrentStack(mamba4rec_layer(cfg, residual=cfg.num_layers > 1) for _ in range(cfg.num_layers))
        if cfg.init == "recbole":
            recbole_init(self)

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Layer input of items ``ids`` at 0-based ``positions`` (same shape, or broadcastable)."""
        h = self.item_vectors(ids)
        if self.position_table is not None:
            h = h + self.position_table(positions.clamp_max(self.cfg.max_len - 1))
        return h if self.cfg.block_only else self.norm(self.dropout(h))

    def encode(self, batch) -> torch.Tensor:
        return self.layers(self.embed(batch.item_seq, torch.arange(batch.item_seq.shape[1],
                                                                   device=batch.item_seq.device)))

    # -- incremental inference ----------------------------------------------------------------
    def encode_window(self, window):
        return self.encode_windows(window[None])[0]

    def encode_windows(self, windows):
        B, n = windows.shape
        if not n:
            return split_rows({**named_states(self.layers.allocate_state(B)),
                               "h": torch.zeros(B, self.cfg.hidden_size)}, B)
        h, states = self.layers.prefill(self.embed(windows, torch.arange(n)))
        return split_rows({**named_states(states), "h": h[:, -1]}, B)

    def step_tensors(self, tensors, items, positions):
        y, states = self.layers.step(self.embed(items, positions), layer_states(tensors, len(self.layers)))
        return {**named_states(states), "h": y}
