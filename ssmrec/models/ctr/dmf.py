"""DMF, Decoupled Multimodal Fusion (reference doc §9; arXiv 2510.11066, no official code).

Per (user, candidate) row, with ``c_l = cos(mm(target), mm(h_l))`` over the valid history:

* modality-centric path: ``r_mc = MLP_mc(histogram of c over n_tiers equal bins on [-1, 1])``;
* modality-enriched path (Decoupled Target Attention): ``b_l = bucket(c_l)``,
  ``K_l = W_k e_id(h_l) + E_K[b_l]``, ``V_l = W_v e_id(h_l) + E_V[b_l]``, ``Q = W_q e_id(target)``,
  ``r_me = MLP_me(sum_l softmax_l(Q.K_l / sqrt(d_a)) V_l)`` (masked softmax);
* ``r_u = alpha r_me + (1 - alpha) r_mc`` (alpha fixed, or learnable as ``sigmoid(w)``);
* ``logit = MLP([s ; e_t ; r_u])``.

Decoupled inference (``encode_user`` + ``score_candidates``): ``W_k e_id(h)`` and ``W_v e_id(h)`` do not
depend on the candidate, so they are computed once per user; per candidate only the L similarities,
two bucket lookups + adds, the attention and the MLPs run. ``forward`` is the coupled form (one row =
one user-candidate pair, everything recomputed), which is what training uses.

Defaults and their source:
* paper (§9): the two paths, ID-only query/keys/values, bucket embeddings added to K and V, softmax
  target attention, convex combination;
* MMCTR-Bench re-implementation: ``n_tiers 10``, ``n_buckets 35``, ``attention_dim 128``, ``alpha 0.5``
  fixed;
* ours: similarity from the frozen ``item_emb_d128`` (``similarity_source: raw``; ``projected`` uses the
  learnt ``W_mm`` projection), padding masked in the attention and the histogram (MMCTR-Bench does
  not mask), bias-free ``W_q/W_k/W_v`` (a bias on K/V would duplicate the bucket tables), path MLPs
  [256, 128], head MLP [1024, 512, 256] with BN and dropout 0.1 as DIN, embedding_dim 64.
"""

from __future__ import annotations

from dataclasses import field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmrec.data.mmctr import CTRBatch
from ssmrec.models.ctr.base import CTRModel
from ssmrec.nn.attention import TargetAttention, similarity_buckets, similarity_histogram
from ssmrec.nn.embedding import MMCTRFeatureEmbedding
from ssmrec.nn.layers import MLP, fuxictr_init
from ssmrec.params import Bool, PosInt, Rate, UnitFloat, Widths, config_dataclass
from ssmrec.registry import register


@config_dataclass
class DMFConfig:
    embedding_dim: PosInt = 64
    use_mm_emb: Bool = True  # item_emb_d128 inside the item vector e_t used by the head
    similarity_source: Literal["raw", "projected"] = "raw"  # raw item_emb_d128 | projected (W_mm item_emb_d128)
    n_tiers: PosInt = 10
    n_buckets: PosInt = 35
    attention_dim: PosInt = 128
    attention_dropout: Rate = 0.0
    path_hidden: Widths = field(default_factory=lambda: [256, 128])
    alpha: UnitFloat = 0.5
    learn_alpha: Bool = False
    dnn_hidden: Widths = field(default_factory=lambda: [1024, 512, 256])
    net_dropout: Rate = 0.1
    batch_norm: Bool = True
    level_zero_is_padding: Bool = False

    def __post_init__(self):
        if self.learn_alpha and not 0 < self.alpha < 1:
            raise ValueError(f"model_params.alpha must be in (0, 1) when learn_alpha is true, got {self.alpha!r}")
        if self.similarity_source == "projected" and not self.use_mm_emb:
            raise ValueError("model_params.similarity_source 'projected' needs use_mm_emb: true")


@register("ctr", "dmf", DMFConfig)
class DMF(nn.Module, CTRModel):
    """Serving state: the window's ID keys / values and multimodal unit vectors, one entry per event
    with no recurrence, so the oldest entry is dropped when the window slides (O(1) at any length)."""

    state_layout = "id-kv+mm"
    advances = slides = True
    def __init__(self, cfg: DMFConfig, item_tags, item_emb, n_tags):
        super().__init__()
        self.cfg = cfg
        if item_emb is None:
            raise ValueError("DMF needs item_info's item_emb_d128 for its similarities")
        self.embedding = MMCTRFeatureEmbedding(item_tags, item_emb, n_tags, cfg.embedding_dim, cfg.use_mm_emb,
                                               cfg.level_zero_is_padding)
        if not cfg.use_mm_emb:  # the similarity still needs the frozen multimodal table
            self.register_buffer("item_emb", item_emb.float(), persistent=False)
        d_id = cfg.embedding_dim
        self.dta = TargetAttention(d_id, d_id, cfg.attention_dim, norm="softmax", dropout=cfg.attention_dropout,
                                   bias=False)
        self.bucket_k = nn.Embedding(cfg.n_buckets, cfg.attention_dim)
        self.bucket_v = nn.Embedding(cfg.n_buckets, cfg.attention_dim)
        self.me_mlp = MLP(cfg.attention_dim, cfg.path_hidden, act="relu", dropout=cfg.net_dropout,
                          batch_norm=cfg.batch_norm)
        self.mc_mlp = MLP(cfg.n_tiers, cfg.path_hidden, act="relu", dropout=cfg.net_dropout,
                          batch_norm=cfg.batch_norm)
        if cfg.learn_alpha:
            a = torch.tensor(float(cfg.alpha))
            self.alpha_logit = nn.Parameter(torch.log(a) - torch.log1p(-a))
        self.dnn = MLP(self.embedding.side_dim + self.embedding.item_dim + self.me_mlp.d_out, cfg.dnn_hidden, 1,
                       act="relu", dropout=cfg.net_dropout, batch_norm=cfg.batch_norm)
        fuxictr_init(self)

    # -- pieces shared by the coupled and the decoupled path ------------------------------------
    def mm_unit(self, ids):
        """Unit-norm multimodal vectors used for the similarities, any id shape -> (*, 128)."""
        if self.cfg.similarity_source == "projected":
            mm = self.embedding.mm_proj(self.embedding.item_emb[ids])
        else:
            mm = (self.embedding.item_emb if self.cfg.use_mm_emb else self.item_emb)[ids]
        return F.normalize(mm, dim=-1, eps=1e-8)

    @property
    def alpha(self):
        return torch.sigmoid(self.alpha_logit) if self.cfg.learn_alpha else self.cfg.alpha

    def _score(self, cos, mask, q_id, k_id, v_id, side, target):
        """cos (..., L), mask broadcastable to it, q_id (..., d), k_id/v_id (..., L, d_a) broadcastable,
        side (..., 2d), target (..., D_item) -> logits (...)."""
        lead = cos.shape[:-1]
        b = similarity_buckets(cos, self.cfg.n_buckets)
        r_me = self.dta.attend(q_id, k_id + self.bucket_k(b), v_id + self.bucket_v(b), mask)
        hist = similarity_histogram(cos, mask, self.cfg.n_tiers)
        # MLPs (BatchNorm) want a 2-D batch: flatten the leading (user, candidate) dimensions.
        r_me = self.me_mlp(r_me.reshape(-1, r_me.shape[-1]))
        r_mc = self.mc_mlp(hist.reshape(-1, hist.shape[-1]))
        r_u = self.alpha * r_me + (1 - self.alpha) * r_mc
        x = torch.cat([side.reshape(-1, side.shape[-1]), target.reshape(-1, target.shape[-1]), r_u], dim=-1)
        return self.dnn(x).view(lead)

    # -- coupled (training) form: one row = one (user, candidate) pair ---------------------------
    def forward(self, batch: CTRBatch) -> dict:
        target, history, side = self.embedding(batch)
        mask = batch.mask
        d = self.cfg.embedding_dim
        cos = (self.mm_unit(batch.item_seq) * self.mm_unit(batch.item_id).unsqueeze(1)).sum(-1)
        k_id, v_id = self.dta.project_kv(history[..., :d])  # item vector layout: [id ; tags ; mm]
        return {"logit": self._score(cos, mask, target[:, :d], k_id, v_id, side, target)}

    # -- decoupled inference: per user once, per candidate lookups -------------------------------
    @torch.no_grad()
    def encode_user(self, batch: CTRBatch) -> dict:
        """Candidate-independent state of each user: ID keys/values (B, L, d_a), history multimodal
        unit vectors (B, L, 128) and the mask. Only ``item_seq`` and ``mask`` are read."""
        seq, mask = batch.item_seq, batch.mask
        hist_id = self.embedding.id_table(seq) * mask.unsqueeze(-1).to(self.embedding.id_table.weight.dtype)
        k_id, v_id = self.dta.project_kv(hist_id)
        return {"k_id": k_id, "v_id": v_id, "hist_mm": self.mm_unit(seq), "mask": mask}

    @torch.no_grad()
    def score_candidates(self, user: dict, item_id, likes_level, views_level) -> torch.Tensor:
        """Logits (B, C) of C candidates per user; ``item_id``/levels are (B, C)."""
        d = self.cfg.embedding_dim
        target = self.embedding.items(item_id)  # (B, C, D_item)
        side = self.embedding.side(likes_level, views_level)
        cos = torch.einsum("bcm,blm->bcl", self.mm_unit(item_id), user["hist_mm"])
        return self._score(cos, user["mask"].unsqueeze(1), target[..., :d], user["k_id"].unsqueeze(1),
                           user["v_id"].unsqueeze(1), side, target)

    # -- incremental inference: the decoupled user side, one event at a time ---------------------
    def encode_window(self, window):
        k, v = self.dta.project_kv(self.embedding.id_table(window))
        return {"k_id": k[None].clone(), "v_id": v[None].clone(), "hist_mm": self.mm_unit(window)[None].clone()}

    def advance(self, tensors, events, n_before):
        new = self.encode_window(torch.cat(events))  # one matmul for every user's events
        out, a = [], 0
        for t, e in zip(tensors, events):
            b = a + len(e)
            out.append({k: torch.cat([t[k], new[k][:, a:b]], dim=1) for k in t})
            a = b
        return out

    @torch.inference_mode()
    def score(self, states, candidates, features=None):
        out = []
        for i, (st, c) in enumerate(zip(states, candidates)):
            likes, views = self.candidate_side(None if features is None else features[i], len(c))
            t = st.tensors
            n = t["k_id"].shape[1]
            if n:
                user = {**t, "mask": torch.ones(1, n, dtype=torch.bool)}
            else:  # no history: one masked slot, as a padded row
                user = {k: x.new_zeros(1, 1, x.shape[-1]) for k, x in t.items()}
                user["mask"] = torch.zeros(1, 1, dtype=torch.bool)
            out.append(torch.sigmoid(self.score_candidates(user, c[None], likes[None], views[None])[0]))
        return out
