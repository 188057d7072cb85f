"""Attention blocks shared by the CTR models, each written once.

* ``DINAttention``: DIN's activation unit (MLP over ``[t ; h ; t - h ; t * h]``), raw or softmax weights.
* ``TargetAttention``: single-head scaled dot-product attention of the target over the history, with
  ReLU (QIN's ASTA: unnormalised, sparse) or masked-softmax weights, optional output projection +
  residual to the query. Keys/values are projected by ``project_kv`` and consumed by ``attend``, so a
  caller can project a history once and add per-candidate terms (DMF's decoupled target attention).
* ``MaskedTransformerEncoder``: post-LN PyTorch encoder driven by a validity mask, with the reference
  code's inverted key-padding mask and a causal mask (SASRec) as switches.
* ``similarity_buckets`` / ``similarity_histogram``: equal-width discretisation of cosine similarities
  (DMF's target-aware bucket ids and SimTier-style histogram).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor
import torch.nn.functional as F

from ssmrec.nn.layers import MLP, Dropout, masked_softmax


class DINAttention(nn.Module):
    """FuxiCTR ``DIN_Attention``: ``g_l = MLP([t ; h_l ; t - h_l ; t * h_l])`` (hidden layers with
    ``act`` and dropout, no BN, linear 1-unit output), ``a_l = g_l * m_l``; with ``softmax`` the masked
    weights are normalised. Returns ``sum_l a_l h_l``.

    ``impl="factored"`` (default) computes the same function with less arithmetic. The first layer is
    linear in the concatenation, so with ``W = [W_t | W_h | W_d | W_p]``
    ``W [t ; h ; t - h ; t * h] = (W_t + W_d) t + [W_h - W_d | W_p] [h ; t * h]``: the target term is
    computed once per row, not once per slot, and the per-slot input is ``2d`` wide instead of ``4d``.
    Padded slots get weight 0 in both normalisations, so they are skipped (only the valid slots are
    gathered) unless the activation is Dice, whose BatchNorm statistics count every slot. With the
    reference sizes (d 256, hidden [512, 256]) a valid slot costs 393k multiply-adds instead of 655k,
    and a padded one nothing.
    ``impl="concat"`` is the literal form (FuxiCTR's arithmetic), kept for comparison and tests.
    """

    def __init__(self, dim, hidden=(512, 256), act="relu", dropout=0.0, softmax=False, impl="factored"):
        super().__init__()
        if impl not in ("factored", "concat"):
            raise ValueError(f"DIN attention impl must be factored or concat, got {impl!r}")
        self.mlp = MLP(4 * dim, list(hidden), 1, act=act, dropout=dropout)
        self.softmax, self.impl, self.dim = softmax, impl, dim
        self.pack_valid = act != "dice"  # Dice's BatchNorm normalises over padded slots too

    def forward(self, target, history, mask):
        scores = self._scores_factored(target, history, mask) if self.impl == "factored" else \
            self._scores_concat(target, history)
        weights = masked_softmax(scores, mask) if self.softmax else scores * mask.to(scores.dtype)
        return torch.einsum("bl,bld->bd", weights, history)

    def _scores_concat(self, target, history):
        b, length, d = history.shape
        t = target.unsqueeze(1).expand(-1, length, -1)
        feats = torch.cat([t, history, t - history, t * history], dim=-1)
        # Flattened to (B*L, 4D): BatchNorm inside Dice normalises over every slot, as FuxiCTR does.
        return self.mlp(feats.reshape(b * length, 4 * d)).view(b, length)

    def _scores_factored(self, target, history, mask):
        b, length, d = history.shape
        first, rest = self.mlp.net[0], self.mlp.net[1:]
        w_t, w_h, w_d, w_p = first.weight.split(d, dim=1)
        per_row = F.linear(target, w_t + w_d, first.bias)  # (B, H1)
        w_hist = w_h - w_d
        if not self.pack_valid:
            z = (history @ w_hist.t() + (target.unsqueeze(1) * history) @ w_p.t() + per_row.unsqueeze(1))
            return rest(z.reshape(b * length, -1)).view(b, length)
        slots = mask.reshape(-1).nonzero().squeeze(1)
        rows = torch.div(slots, length, rounding_mode="floor")
        h = history.reshape(b * length, d).index_select(0, slots)
        # One (N_valid, H1) buffer: the row term gathered, both slot GEMMs accumulated into it, then
        # ReLU in place. Activations at batch 8,192 run to gigabytes, and each fresh one is paid again
        # in page faults, so no concatenated input or separate sum is materialised.
        z = per_row.index_select(0, rows)
        z.addmm_(h, w_hist.t()).addmm_(target.index_select(0, rows) * h, w_p.t())
        if isinstance(rest[0], nn.ReLU):
            z, rest = F.relu_(z), rest[1:]
        valid = rest(z).squeeze(1)
        return valid.new_zeros(b * length).index_copy(0, slots, valid).view(b, length)


class TargetAttention(nn.Module):
    """One query per row attending over a masked sequence (single head, width ``d_att``).

    ``score_l = (W_q q) . k_l / sqrt(d_att)``; weights ``ReLU(score * m)`` (``norm="relu"``, QIN) or a
    masked softmax (``norm="softmax"``); optional dropout on the weights; ``out = sum_l w_l v_l``,
    then ``W_o out + q`` when ``d_out`` is given (``residual``). All leading dimensions of the query
    broadcast against the keys, so ``query (B, C, dq)`` with keys ``(B, 1 or C, L, d_att)`` scores C
    candidates at once.
    """

    def __init__(self, d_query, d_key, d_att, d_out=None, norm="relu", dropout=0.0, bias=False,
                 residual=True):
        super().__init__()
        if norm not in ("relu", "softmax"):
            raise ValueError(f"attention norm must be relu or softmax, got {norm!r}")
        self.norm, self.d_att, self.residual = norm, d_att, residual
        self.q_proj = nn.Linear(d_query, d_att, bias=bias)
        self.k_proj = nn.Linear(d_key, d_att, bias=bias)
        self.v_proj = nn.Linear(d_key, d_att, bias=bias)
        self.out_proj = nn.Linear(d_att, d_out, bias=False) if d_out is not None else None
        self.dropout = Dropout(dropout)

    def project_kv(self, seq):
        return self.k_proj(seq), self.v_proj(seq)

    def attend(self, query, k, v, mask):
        """query (..., dq), k/v (..., L, d_att), mask (..., L) bool -> (..., d_out or d_att)."""
        q = self.q_proj(query)
        scores = (q.unsqueeze(-2) @ k.transpose(-1, -2)).squeeze(-2) / math.sqrt(self.d_att)
        if self.norm == "relu":
            weights = F.relu(scores * mask.to(scores.dtype))
        else:
            weights = masked_softmax(scores, mask)
        out = (self.dropout(weights).unsqueeze(-2) @ v).squeeze(-2)
        if self.out_proj is None:
            return out
        out = self.out_proj(out)
        return out + query if self.residual else out

    def forward(self, query, seq, mask):
        """One query per sequence, ``query (..., dq)`` over ``seq (..., L, dk)``. Keys and values are
        linear in the items, so the projections are moved to the query side and the pooled item
        (associativity): ``q . (W_k h_l + b_k) = (W_k^T q) . h_l + q . b_k`` and
        ``sum_l w_l (W_v h_l + b_v) = W_v (sum_l w_l h_l) + (sum_l w_l) b_v``. A slot then costs
        ``2 dk`` multiply-adds instead of ``2 dk d_att`` (QIN at its reference size: 768 instead of
        589,824), and no ``(B, L, d_att)`` key or value tensor is held for backward. Same function as
        :meth:`attend` on :meth:`project_kv` (tested to the gradients)."""
        if query.dim() != seq.dim() - 1:  # several queries per sequence: keys projected once
            return self.attend(query, *self.project_kv(seq), mask)
        q = self.q_proj(query)
        q_key = q @ self.k_proj.weight  # (..., dk)
        scores = (seq @ q_key.unsqueeze(-1)).squeeze(-1)
        if self.k_proj.bias is not None:
            scores = scores + (q * self.k_proj.bias).sum(-1, keepdim=True)
        scores = scores / math.sqrt(self.d_att)
        if self.norm == "relu":
            weights = F.relu(scores * mask.to(scores.dtype))
        else:
            weights = masked_softmax(scores, mask)
        weights = self.dropout(weights)
        out = F.linear((weights.unsqueeze(-2) @ seq).squeeze(-2), self.v_proj.weight)
        if self.v_proj.bias is not None:
            out = out + weights.sum(-1, keepdim=True) * self.v_proj.bias
        if self.out_proj is None:
            return out
        out = self.out_proj(out)
        return out + query if self.residual else out


class MaskedTransformerEncoder(nn.TransformerEncoder):
    """``num_layers`` post-LN ``TransformerEncoderLayer``s (batch-first, no positional encoding) driven
    by a validity mask (True = real item).

    ``inverted_padding_mask`` reproduces the reference code (momo's Transformer-DCN and the MambaCTR
    Transformer variant): the validity mask is passed where PyTorch expects True = *ignore*. In both
    modes a row whose every key is ignored gets its last key back (the reference helper), which in the
    inverted mode fires on full windows. ``key_padding`` returns the ignore mask actually used.
    ``causal`` adds a causal attention mask (SASRec: position t sees positions <= t); ``activation``
    and ``layer_norm_eps`` cover RecBole's SASRec (GELU, 1e-12). Subclassing keeps the state-dict
    layout of a plain ``nn.TransformerEncoder``.
    """

    def __init__(self, d_model, num_heads=1, dim_feedforward=256, dropout=0.2, num_layers=2,
                 inverted_padding_mask=False, causal=False, activation="relu", layer_norm_eps=1e-5):
        layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward, dropout, activation=activation,
                                           layer_norm_eps=layer_norm_eps, batch_first=True)
        super().__init__(layer, num_layers, enable_nested_tensor=False)
        for lay in self.layers:  # the layers' own dropouts (not the attention weights': inside MHA)
            lay.dropout, lay.dropout1, lay.dropout2 = Dropout(dropout), Dropout(dropout), Dropout(dropout)
        self.inverted_padding_mask = inverted_padding_mask
        self.causal = causal

    def key_padding(self, mask):
        ignore = (mask if self.inverted_padding_mask else ~mask).clone()
        ignore[ignore.all(dim=1), -1] = False  # a row with every key ignored would give NaN
        return ignore

    def forward(self, x, mask):
        if not self.causal:
            return super().forward(x, src_key_padding_mask=self.key_padding(mask))
        # Right-padded sequences (real items first): under the causal mask a real position only sees
        # earlier real positions, so no key-padding mask is needed (padded rows are never read).
        L = x.shape[1]
        causal = torch.triu(torch.full((L, L), float("-inf"), device=x.device, dtype=x.dtype), diagonal=1)
        return super().forward(x, mask=causal, is_causal=True)

    # -- incremental (causal, post-LN) inference: a key/value cache per layer ----------------------
    def _check_incremental(self) -> None:
        if not self.causal or any(layer.norm_first for layer in self.layers):
            raise ValueError("the key/value cache implements causal post-LN encoders only")

    def keys_values(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """Layer ``i``'s keys and values of its input ``x (..., d)``."""
        attn, d = self.layers[i].self_attn, x.shape[-1]
        kv = F.linear(x, attn.in_proj_weight[d:], attn.in_proj_bias[d:])
        return kv[..., :d], kv[..., d:]

    def prefill(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """One causal pass over ``x (B, L, d)``: the outputs and each layer's keys and values."""
        self._check_incremental()
        L = x.shape[1]
        causal = torch.triu(torch.full((L, L), float("-inf"), device=x.device, dtype=x.dtype), diagonal=1)
        kvs = []
        for i, layer in enumerate(self.layers):
            kvs.append(self.keys_values(i, x))
            x = layer(x, src_mask=causal, is_causal=True)
        return x, kvs

    def step_layer(self, i: int, x: Tensor, keys: Tensor, values: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Layer ``i`` on one new position per row ``x (B, d)`` attending to the cached ``keys`` /
        ``values`` ``(B, n, d)`` where ``keep (B, n)`` and to itself; returns (output, its key, its value)."""
        layer = self.layers[i]
        attn = layer.self_attn
        H, d = attn.num_heads, x.shape[-1]
        q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        K, V = torch.cat([keys, k[:, None]], dim=1), torch.cat([values, v[:, None]], dim=1)
        keep = torch.cat([keep, torch.ones(len(keep), 1, dtype=torch.bool, device=keep.device)], dim=1)
        B, n1 = K.shape[:2]
        qh = q.view(B, H, 1, d // H)
        Kh, Vh = K.view(B, n1, H, d // H).transpose(1, 2), V.view(B, n1, H, d // H).transpose(1, 2)
        s = (qh @ Kh.transpose(-1, -2)) / math.sqrt(d // H)
        s = s.masked_fill(~keep[:, None, None, :], float("-inf"))
        o = (torch.softmax(s, dim=-1) @ Vh).reshape(B, d)
        x = layer.norm1(x + layer.dropout1(attn.out_proj(o)))
        ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(x))))
        return layer.norm2(x + layer.dropout2(ff)), k, v


def similarity_buckets(cos: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Equal-width bucket ids ``0..n_buckets-1`` of cosine similarities on [-1, 1] (clamped)."""
    idx = torch.floor((cos.clamp(-1.0, 1.0) + 1.0) * (n_buckets / 2.0)).long()
    return idx.clamp_(0, n_buckets - 1)


def similarity_histogram(cos: torch.Tensor, mask: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Count of valid history items per equal-width similarity bin on [-1, 1] (SimTier):
    ``cos (..., L)``, ``mask`` broadcastable to it -> ``(..., n_bins)`` float counts."""
    onehot = F.one_hot(similarity_buckets(cos, n_bins), n_bins).to(cos.dtype)
    return (onehot * mask.unsqueeze(-1).to(cos.dtype)).sum(-2)
