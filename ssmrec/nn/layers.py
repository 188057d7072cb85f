"""Reusable blocks, each written once: MLP, Dice, quadratic network (QNN), DCN-V2 cross network,
attentional GRU, residual GELU head, position-wise feed-forward, masked pooling/softmax, and the
FuxiCTR and RecBole initialisations."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` restricted to ``mask`` (True = valid). Rows with no valid entry get all
    zeros instead of NaN (a user with an empty window simply contributes nothing)."""
    scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.softmax(scores, dim=dim)
    return torch.nan_to_num(out, nan=0.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor, dim: int = 1, fill: float = 0.0) -> torch.Tensor:
    """Max over ``dim`` of ``x`` with invalid positions replaced by ``fill`` first."""
    return x.masked_fill(~mask.unsqueeze(-1), fill).amax(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1e-12)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout, same distribution as ``F.dropout``. On CPU the keep mask comes from 32-bit
    random integers compared to ``p * 2^31`` (P(keep) = 1 - p up to 2^-31): ``F.dropout``'s CPU
    Bernoulli sampler costs 2.3x more (forward + backward), and with dropout 0.5 on every sequence
    layer it was 15-25 % of a Mamba4Rec / SASRec training step. Other devices use ``F.dropout``."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training)
    bits = torch.empty(x.shape, dtype=torch.int32).random_()  # uniform on [0, 2^31)
    keep = (bits >= int(p * 2 ** 31)).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * keep


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same state dict, same ``p``) drawing its mask with :func:`dropout`."""

    def forward(self, x):
        return dropout(x, self.p, self.training)


ACTIVATIONS = ("relu", "gelu", "prelu", "silu", "tanh", "dice")


def activation(name: str, dim: int | None = None) -> nn.Module:
    """Activation by name; ``dice`` is per-unit and needs the layer width ``dim``."""
    if name == "dice":
        if dim is None:
            raise ValueError("the dice activation needs the layer width")
        return Dice(dim)
    return {"relu": nn.ReLU, "gelu": nn.GELU, "prelu": nn.PReLU, "silu": nn.SiLU, "tanh": nn.Tanh}[name]()


class Dice(nn.Module):
    """DIN's data-adaptive activation (FuxiCTR ``Dice``): ``p = sigmoid(BN(x))`` with a non-affine
    BatchNorm (eps 1e-9, momentum 0.01), output ``p * x + alpha * (1 - p) * x``, one alpha per unit
    initialised to 0. Expects ``(N, dim)`` input."""

    def __init__(self, dim: int, eps: float = 1e-9):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=eps, momentum=0.01)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        p = torch.sigmoid(self.bn(x))
        return p * x + (1 - p) * self.alpha * x


class MLP(nn.Module):
    """Linear -> [BatchNorm] -> activation -> [Dropout] per hidden layer; optional output layer.
    Input ``(N, d_in)`` (BatchNorm and Dice need a 2-D batch: flatten sequences first)."""

    def __init__(self, d_in, hidden, d_out=None, act="relu", dropout=0.0, batch_norm=False):
        super().__init__()
        layers, d = [], d_in
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation(act, h))
            if dropout > 0:
                layers.append(Dropout(dropout))
            d = h
        if d_out is not None:
            layers.append(nn.Linear(d, d_out))
            d = d_out
        self.net = nn.Sequential(*layers)
        self.d_out = d

    def forward(self, x):
        return self.net(x)


class QuadraticNet(nn.Module):
    """QIN's quadratic neural network (reference doc §4.2), width-preserving.

    Per layer: ``H = Dropout(W x + b)`` viewed as R rows of width D; ``q = x * sum_r H_r`` (the
    Khatri-Rao step); ``q = Dropout(act(BN(q)))``; ``x = x + q``.
    """

    def __init__(self, dim, num_layers=3, num_row=2, dropout=0.2, batch_norm=True, act="prelu"):
        super().__init__()
        self.num_row = num_row
        self.proj = nn.ModuleList(nn.Linear(dim, dim * num_row) for _ in range(num_layers))
        self.norm = nn.ModuleList(nn.BatchNorm1d(dim) if batch_norm else nn.Identity() for _ in range(num_layers))
        self.act = nn.ModuleList(activation(act) for _ in range(num_layers))
        self.dropout = Dropout(dropout)

    def forward(self, x):
        for i, (proj, norm, act) in enumerate(zip(self.proj, self.norm, self.act)):
            if self.training or torch.is_grad_enabled():
                h = self.dropout(proj(x)).view(x.shape[0], self.num_row, -1).sum(1)
            else:  # inference, no dropout: sum_r (W_r x + b_r) = (sum_r W_r) x + sum_r b_r, half the FLOPs
                h = F.linear(x, *self._folded(i, proj))
            x = x + self.dropout(act(norm(x * h)))
        return x

    def _folded(self, i: int, proj: nn.Linear):
        """Row-summed weight and bias of layer ``i``, recomputed only when the weights changed."""
        w, b = proj.weight, proj.bias
        key = (w._version, w.data_ptr(), b._version, b.data_ptr())
        cache = self.__dict__.setdefault("_fold_cache", {})
        if cache.get(i, (None,))[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable outside inference mode
                cache[i] = (key, w.view(self.num_row, -1, w.shape[1]).sum(0), b.view(self.num_row, -1).sum(0))
        return cache[i][1], cache[i][2]


class CrossNetV2(nn.Module):
    """DCN-V2's cross network: ``x_{k+1} = x_k + x_0 * (W_k x_k + b_k)`` with full ``dim x dim``
    matrices, width-preserving."""

    def __init__(self, dim, num_layers=3):
        super().__init__()
        self.cross = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))

    def forward(self, x0):
        x = x0
        for lin in self.cross:
            x = x + x0 * lin(x)
        return x


class ResidualGELUHead(nn.Module):
    """The MambaCTR paper's head: residual blocks ``x + Dropout(GELU(Linear(x)))``."""

    def __init__(self, dim, num_blocks=2, dropout=0.2):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_blocks))
        self.dropout = Dropout(dropout)

    def forward(self, x):
        for lin in self.blocks:
            x = x + self.dropout(F.gelu(lin(x)))
        return x


class AttentionalGRU(nn.Module):
    """GRU whose update gate is scaled by a per-step weight ``a_t`` (DIEN's AUGRU).

    ``u_t = (1 - a_t g_t) * u_{t-1} + a_t g_t * c_t``. With ``a_t = 1`` on valid steps this is a plain
    GRU; ``a_t = 0`` leaves the state untouched, which is how padded steps are skipped. The input
    half of every gate is computed for all steps in one matmul; only the recurrent half loops.
    Parameter count equals three ``Linear(d_in + d_hidden -> d_hidden)`` maps.
    """

    def __init__(self, d_in, d_hidden):
        super().__init__()
        self.d_hidden = d_hidden
        self.in_proj = nn.Linear(d_in, 3 * d_hidden)  # [r | g | c] input parts, with biases
        self.hidden_rg = nn.Linear(d_hidden, 2 * d_hidden, bias=False)
        self.hidden_c = nn.Linear(d_hidden, d_hidden, bias=False)

    def forward(self, x, att, u0=None, x_proj=None):
        """x: (B, T, d_in); att: (B, T) update weights. Returns all states (B, T, d_hidden).
        ``x_proj``: ``in_proj(x)`` when already computed (it may broadcast over B: many candidates
        sharing one history compute it once)."""
        xr, xg, xc = (self.in_proj(x) if x_proj is None else x_proj.expand(x.shape[0], -1, -1)).chunk(3, dim=-1)
        u = x.new_zeros(x.shape[0], self.d_hidden) if u0 is None else u0
        outs = []
        for xr_t, xg_t, xc_t, a_t in zip(xr.unbind(1), xg.unbind(1), xc.unbind(1), att.unbind(1)):
            u = self.step(u, xr_t, xg_t, xc_t, a_t)
            outs.append(u)
        return torch.stack(outs, dim=1)

    def step(self, u, xr_t, xg_t, xc_t, a_t):
        hr, hg = self.hidden_rg(u).chunk(2, dim=-1)
        r = torch.sigmoid(xr_t + hr)
        g = torch.sigmoid(xg_t + hg) * a_t.unsqueeze(-1)
        c = torch.tanh(xc_t + self.hidden_c(r * u))
        return (1 - g) * u + g * c


def fuxictr_init(module: nn.Module, embedding_std: float = 1e-4) -> None:
    """FuxiCTR's reset_parameters (reference doc §1.5): Xavier-normal weights and zero bias for every
    Linear and Conv1d, N(0, std^2) for embedding tables (padding row kept at zero). Modules flagged
    ``_keep_init = True`` (Mamba's dt projection, whose special init matters) are left alone."""
    for m in module.modules():
        if getattr(m, "_keep_init", False):
            continue
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=embedding_std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()


class PositionwiseFeedForward(nn.Module):
    """``LN(x + Dropout(W2 Dropout(act(W1 x))))`` (Transformer / Mamba4Rec FFN; ``layer_norm=False``
    drops the LayerNorm, ``residual`` is always on as in Mamba4Rec)."""

    def __init__(self, d_model: int, inner: int, dropout: float = 0.0, act: str = "gelu",
                 layer_norm: bool = True, eps: float = 1e-12):
        super().__init__()
        self.w1, self.w2 = nn.Linear(d_model, inner), nn.Linear(inner, d_model)
        self.act = activation(act, inner)
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(d_model, eps=eps) if layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.w2(self.dropout(self.act(self.w1(x))))))


def recbole_init(module: nn.Module, std: float = 0.02) -> None:
    """RecBole's ``_init_weights``: every Linear and Embedding weight N(0, std^2) (including the
    embedding's padding row and the Linear layers *inside* Mamba blocks, so ``dt_proj.bias`` becomes
    0 and the special dt init is lost — the reference behaviour of Mamba4Rec, reference doc §7.1),
    Linear biases 0, LayerNorm (1, 0). ``A_log``, ``D`` and the conv keep their own init."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
