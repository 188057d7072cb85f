"""MambaCTR (reference doc §5): Stage I sequence encoder -> Stage II target-aware GRU -> head.

Default = what the reference code (``ours-mamba_version``) does, which produced the published numbers:
one Mamba-2 block over the history, the last 16 outputs scored against the target by a bilinear
masked softmax that drives an AUGRU, interest ``[u_K ; Linear(maxpool u)]``, a 3-layer 2-row
quadratic head, BCE + 0.01 x positive next-item auxiliary loss.

Named switches (see ``MambaCTRConfig``):
* ``variant="paper"`` preset: stacked Mamba-1 with pre-LN residual, cosine-weighted plain GRU over
  the whole history, residual GELU head (what the paper's prose describes);
* ``stage1="transformer"``: the "ablated" Transformer twin (2 post-LN encoder layers, 1 head);
* ``use_mm_emb``: with/without ``item_emb_d128`` (paper Table 5);
* reference quirks, off by default: ``drop_newest_on_full`` (the newest item of full windows is
  masked), ``inverted_padding_mask`` (Transformer key-padding mask with the wrong polarity),
  ``padding_noop=False`` (padded steps still update the SSM state through conv bias and dt).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmrec.data.mmctr import CTRBatch
from ssmrec.models.ctr.base import CTRModel
from ssmrec.models.incremental import ModelState, split_rows
from ssmrec.data.schema import ITEM_EMB_DIM
from ssmrec.nn.attention import MaskedTransformerEncoder
from ssmrec.nn.embedding import MMCTRFeatureEmbedding
from ssmrec.nn.layers import (AttentionalGRU, QuadraticNet, ResidualGELUHead, fuxictr_init, masked_max,
                              masked_softmax)
from ssmrec.nn.mamba import SCAN_IMPLS, Mamba, Mamba2
from ssmrec.nn.recurrent import MambaLayer, RecurrentStack, layer_states, named_states
from ssmrec.params import Bool, NonNegFloat, PosInt, Rate, config_dataclass
from ssmrec.registry import register


_PAPER_PRESET = {"stage1": "mamba1", "stage1_prenorm_residual": True, "stage2": "cosine_gru",
                 "head": "residual_gelu"}


@config_dataclass
class MambaCTRConfig:
    embedding_dim: PosInt = 64
    use_mm_emb: Bool = True
    # Stage I
    stage1: Literal["mamba2", "mamba1", "transformer"] = "mamba2"
    stage1_layers: PosInt = 1
    stage1_prenorm_residual: Bool = False  # h = h + SSM(LN(h)), the paper's stacking
    d_state: PosInt = 16
    d_conv: PosInt = 4
    expand: PosInt = 2
    headdim: PosInt = 64
    scan_impl: Literal[SCAN_IMPLS] = "auto"  # type: ignore[valid-type]
    transformer_heads: PosInt = 1
    transformer_ffn: PosInt = 256
    transformer_dropout: Rate = 0.2
    # Stage II
    stage2: Literal["augru", "cosine_gru"] = "augru"  # augru (code) | cosine_gru (paper)
    window: PosInt = 16  # last-K Stage-I outputs fed to Stage II (augru only; cosine_gru uses all)
    # Head
    head: Literal["qnn", "residual_gelu"] = "qnn"  # qnn (code) | residual_gelu (paper)
    qnn_layers: PosInt = 3
    qnn_rows: PosInt = 2
    net_dropout: Rate = 0.2
    batch_norm: Bool = True
    aux_loss_weight: NonNegFloat = 0.01
    # Reference quirks / deviations
    padding_noop: Bool = True
    drop_newest_on_full: Bool = False
    inverted_padding_mask: Bool = False
    level_zero_is_padding: Bool = False
    variant: Literal["code", "paper"] = "code"  # paper: the preset _PAPER_PRESET (stage1/stage2/head)

    def __post_init__(self):
        if self.variant == "paper":
            clash = [k for k, v in _PAPER_PRESET.items()
                     if getattr(self, k) != v and getattr(self, k) != _CODE_DEFAULTS[k]]
            if clash:
                raise ValueError(f"model_params.variant 'paper' sets {', '.join(_PAPER_PRESET)}; it conflicts with "
                                 f"{clash[0]}={getattr(self, clash[0])!r} (remove it, or use variant: code)")
            for k, v in _PAPER_PRESET.items():
                object.__setattr__(self, k, v)
            self.stage1_layers = max(self.stage1_layers, 2)
        d = self.item_dim
        if self.stage1 == "mamba2" and (self.expand * d) % self.headdim:
            raise ValueError(f"model_params.headdim ({self.headdim}) must divide the Mamba-2 inner width "
                             f"expand x item width = {self.expand} x {d} = {self.expand * d}")
        if self.stage1 == "transformer" and d % self.transformer_heads:
            raise ValueError(f"model_params.transformer_heads ({self.transformer_heads}) must divide the item "
                             f"width {d}")

    @property
    def item_dim(self) -> int:
        return 2 * self.embedding_dim + (ITEM_EMB_DIM if self.use_mm_emb else 0)


_CODE_DEFAULTS = {"stage1": "mamba2", "stage1_prenorm_residual": False, "stage2": "augru", "head": "qnn"}


class SequenceEncoder(nn.Module):
    """Stage I: a :class:`RecurrentStack` of Mamba-1 / Mamba-2 layers (plain, or pre-LN residual) or
    Transformer encoder layers, mask-aware. The Mamba stack also serves one event at a time
    (``stack.step``, the model's incremental contract: :mod:`ssmrec.models.incremental`)."""

    def __init__(self, cfg: MambaCTRConfig, d_model: int):
        super().__init__()
        self.cfg = cfg
        if cfg.stage1 == "transformer":
            self.layers = MaskedTransformerEncoder(d_model, cfg.transformer_heads, cfg.transformer_ffn,
                                                   cfg.transformer_dropout, cfg.stage1_layers,
                                                   cfg.inverted_padding_mask)
        else:
            block = Mamba2 if cfg.stage1 == "mamba2" else Mamba
            kw = dict(d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, scan_impl=cfg.scan_impl)
            if cfg.stage1 == "mamba2":
                kw["headdim"] = cfg.headdim
            pre = cfg.stage1_prenorm_residual
            self.layers = RecurrentStack(
                MambaLayer(block(d_model, **kw), "pre" if pre else "plain", nn.LayerNorm(d_model) if pre else None)
                for _ in range(cfg.stage1_layers))
        self._register_load_state_dict_pre_hook(_upgrade_stage1_keys)

    @property
    def recurrent(self) -> bool:
        return self.cfg.stage1 != "transformer"

    def forward(self, x, mask):
        if not self.recurrent:
            return self.layers(x, mask)
        return self.layers(x, mask if self.cfg.padding_noop else None)


def _upgrade_stage1_keys(state_dict, prefix, *args):
    """Checkpoints written before Stage I became a RecurrentStack stored ``layers.{i}.<block>`` and
    ``norms.{i}``; rename them to ``layers.{i}.mamba.<block>`` / ``layers.{i}.norm``. The old layout is
    recognised by Mamba block keys directly under ``layers.{i}``."""
    keys = [k for k in state_dict if k.startswith(prefix)]
    old = any(k[len(prefix):].split(".")[2:3] == ["in_proj"] for k in keys if k[len(prefix):].startswith("layers."))
    if not old:
        return
    for key in keys:
        parts = key[len(prefix):].split(".")
        if parts[0] == "norms":
            state_dict[f"{prefix}layers.{parts[1]}.norm.{'.'.join(parts[2:])}"] = state_dict.pop(key)
        elif parts[0] == "layers":
            state_dict[f"{prefix}layers.{parts[1]}.mamba.{'.'.join(parts[2:])}"] = state_dict.pop(key)


@register("ctr", "mambactr", MambaCTRConfig)
class MambaCTR(nn.Module, CTRModel):
    """Serving state (:mod:`ssmrec.models.incremental`): the Stage-I Mamba stack's per-layer (conv, ssm)
    states and the newest Stage-I outputs Stage II reads (``out``, ``out_mask``: the last ``window``
    for the AUGRU; the whole training window for the paper's cosine GRU), fixed size. With the
    Transformer twin (not causal) every event re-encodes the window."""

    state_layout = "stage1+outputs"

    def __init__(self, cfg: MambaCTRConfig, item_tags, item_emb, n_tags):
        super().__init__()
        self.cfg = cfg
        self.advances = cfg.stage1 != "transformer"
        self.embedding = MMCTRFeatureEmbedding(item_tags, item_emb, n_tags, cfg.embedding_dim, cfg.use_mm_emb,
                                               cfg.level_zero_is_padding)
        d = self.embedding.item_dim
        self.encoder = SequenceEncoder(cfg, d)
        if cfg.stage2 == "augru":  # bilinear Stage-II score (W_a e_t) . h_l (unused by cosine_gru: not built)
            self.query = nn.Linear(d, d, bias=False)
        self.gru = AttentionalGRU(d, d)
        self.pool_proj = nn.Linear(d, d)
        head_dim = self.embedding.side_dim + d + 2 * d
        if cfg.head == "qnn":
            self.head = QuadraticNet(head_dim, cfg.qnn_layers, cfg.qnn_rows, cfg.net_dropout, cfg.batch_norm)
        else:
            self.head = ResidualGELUHead(head_dim, 2, cfg.net_dropout)
        self.out = nn.Linear(head_dim, 1)
        fuxictr_init(self)

    def forward(self, batch: CTRBatch) -> dict:
        cfg = self.cfg
        target, history, side = self.embedding(batch)
        mask = batch.mask
        h = self.encoder(history, mask)
        if cfg.drop_newest_on_full:  # reference quirk inherited from momo's inverted mask helper
            mask = mask.clone()
            mask[mask.all(dim=1), -1] = False
        h = h * mask.unsqueeze(-1).to(h.dtype)
        if cfg.stage2 == "augru":
            hk, mk, ek = h[:, -cfg.window:], mask[:, -cfg.window:], history[:, -cfg.window:]
        else:  # the paper's cosine-weighted GRU reads the whole history
            hk, mk, ek = h, mask, history
        out = {"logit": self.score_window(hk, mk, target, side)}
        if self.training and cfg.aux_loss_weight > 0:
            out["aux_loss"] = cfg.aux_loss_weight * self.next_item_loss(hk, ek, mk)
        return out

    def score_window(self, hk, mk, target, side, gru_x=None):
        """Stage II + head: logits (R,) from Stage-I outputs ``hk (R, K, D)`` (zero where ``mk`` (R, K) is
        False), the target vectors ``(R, D)`` and side features ``(R, 2d)``. ``gru_x`` is the GRU's input
        projection of ``hk`` when the caller computed it once for many candidates (serving)."""
        if self.cfg.stage2 == "augru":
            att = masked_softmax(torch.einsum("bld,bd->bl", hk, self.query(target)), mk)
            u = self.gru(hk, att, x_proj=gru_x)
        else:  # paper: cosine-weighted inputs to a plain GRU
            cos = F.cosine_similarity(hk, target.unsqueeze(1), dim=-1)
            u = self.gru(hk * cos.unsqueeze(-1), mk.to(hk.dtype))
        interest = torch.cat([u[:, -1], self.pool_proj(masked_max(u, mk, dim=1, fill=0.0))], dim=-1)
        z = self.head(torch.cat([side, target, interest], dim=-1))
        return self.out(z).squeeze(-1)

    # -- incremental inference ----------------------------------------------------------------
    def serving_refusal(self):
        cfg = self.cfg
        if not cfg.padding_noop and cfg.stage1 != "transformer":
            return "serving needs model_params.padding_noop: true (padded steps must not move the state)"
        if cfg.drop_newest_on_full or cfg.inverted_padding_mask:
            return "serving does not reproduce the reference quirks drop_newest_on_full / inverted_padding_mask"
        return None

    @property
    def output_slots(self) -> int:
        """Stage-I outputs Stage II reads: the AUGRU's last ``window`` of the training window (as many slots
        as the forward's ``h[:, -window:]``: its max-pool counts padded slots as zeros); the cosine GRU's
        whole training window."""
        return min(self.cfg.window, self.serving_window) if self.cfg.stage2 == "augru" else self.serving_window

    def encode_window(self, window):
        return self.encode_windows(window[None])[0]

    def encode_windows(self, windows):
        K, D = self.output_slots, self.embedding.item_dim
        B, n = windows.shape
        x = self.embedding.items(windows)
        if not self.encoder.recurrent:
            h, states = (self.encoder(x, torch.ones(B, n, dtype=torch.bool)) if n else x), None
        elif n:
            h, states = self.encoder.layers.prefill(x)
        else:
            h, states = x, self.encoder.layers.allocate_state(B)
        m = min(n, K)
        out, mask = torch.zeros(B, K, D), torch.zeros(B, K, dtype=torch.bool)
        if m:
            out[:, K - m:], mask[:, K - m:] = h[:, n - m:], True
        return split_rows({**(named_states(states) if states else {}), "out": out, "out_mask": mask}, B)

    def step_tensors(self, tensors, items, positions):
        states = layer_states(tensors, len(self.encoder.layers))
        y, states = self.encoder.layers.step(self.embedding.items(items), states)
        return {**named_states(states), "out": torch.cat([tensors["out"][:, 1:], y[:, None]], dim=1),
                "out_mask": torch.cat([tensors["out_mask"][:, 1:], torch.ones_like(tensors["out_mask"][:, :1])], 1)}

    @torch.inference_mode()
    def score(self, states: list[ModelState], candidates, features=None):
        # One user at a time: the per-candidate Stage II + head is FLOP-bound, so batching users buys
        # nothing, while gathering every candidate's copy of its user's window cost ~20 % (measured).
        out = []
        for i, (st, cand) in enumerate(zip(states, candidates)):
            likes, views = self.candidate_side(None if features is None else features[i], len(cand))
            out.append(torch.sigmoid(self.score_outputs(st.tensors["out"], st.tensors["out_mask"], cand,
                                                        likes, views)))
        return out

    def score_outputs(self, out, out_mask, candidates, likes, views):
        """Logits of ``C`` candidates against one user's Stage-I outputs ``(1, K, D)``: the GRU's input
        projection runs once, the outputs are broadcast over the candidates without copies."""
        R = candidates.shape[0]  # not len(): keeps the candidate count dynamic under torch.export
        gru_x = self.gru.in_proj(out) if self.cfg.stage2 == "augru" else None
        return self.score_window(out.expand(R, -1, -1), out_mask.expand(R, -1), self.embedding.items(candidates),
                                 self.embedding.side(likes, views), gru_x)

    @staticmethod
    def next_item_loss(h, e, mask):
        """Positive-only DIEN-style auxiliary loss on the window: state h_t should score the next
        real item e_{t+1} high (reference §5.1 step 8). A pair counts only when both slots are real
        (the slot before the first real item is padding, its state carries no history)."""
        logits = (h[:, :-1] * e[:, 1:]).sum(-1)
        pair = (mask[:, :-1] & mask[:, 1:]).to(h.dtype)
        return -(F.logsigmoid(logits) * pair).sum(1).mean()
