"""Reference selective scans in pure PyTorch (Mamba-1 and Mamba-2 / SSD).

These are written for clarity and exactness; fused kernels are tested against them.

* :func:`selective_scan_ref` -- Mamba-1 scan, ``mamba_ssm`` layout ``(batch, channels, length)``.
* :func:`ssd_scan_ref` -- Mamba-2 scan (scalar ``A`` per head), sequential.
* :func:`ssd_chunked` -- same maths as :func:`ssd_scan_ref` via the SSD block decomposition
  (quadratic form inside chunks, state passing between chunks); matmul-heavy, fast on CPU.

All compute in at least fp32 (fp64 inputs stay fp64) and return outputs in the input dtype.
The sequential loops iterate with ``torch.unbind`` over precomputed per-step tensors and stack
once at the end (per-step slicing inside autograd is ~10x slower in backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["selective_scan_ref", "ssd_scan_ref", "ssd_chunked", "segsum"]


def _compute_dtype(*ts: Tensor | None) -> torch.dtype:
    dt = torch.float32
    for t in ts:
        if t is not None:
            dt = torch.promote_types(dt, t.dtype)
    return dt


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Tensor | None = None, z: Tensor | None = None,
                       delta_bias: Tensor | None = None, delta_softplus: bool = False,
                       return_last_state: bool = False, initial_state: Tensor | None = None):
    """Mamba-1 selective scan (reference).

    u, delta: (b, d, L); A: (d, n); B, C: (b, n, L) (shared by all channels), or (b, g, n, L)
    (``d % g == 0``, channel c uses group ``c // (d/g)``), or (d, n) (time-invariant);
    D: (d,); z: (b, d, L); delta_bias: (d,); initial_state: (b, d, n) (extension, default 0).

    ``h_t = exp(delta_t*A) h_{t-1} + delta_t B_t u_t``; ``y_t = <C_t, h_t> + D u_t``; ``y *= silu(z)``.
    Returns y (b, d, L) in u's dtype [, last state (b, d, n) in the compute dtype].
    """
    dtype_in = u.dtype
    cd = _compute_dtype(u, delta, A, B, C)
    u, delta, A, B, C = (t.to(cd) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(cd)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, L = u.shape

    def per_channel(M: Tensor) -> Tensor:  # -> (b, d, n, L) view / broadcastable
        if M.dim() == 3:  # (b, n, L)
            return M[:, None]
        g = M.shape[1]  # (b, g, n, L)
        return M.repeat_interleave(d // g, dim=1)

    # Precompute all per-step quantities with time leading: (L, b, d, n).
    dA = torch.exp(torch.einsum("bdl,dn->lbdn", delta, A))
    if B.dim() == 2:
        dBu = torch.einsum("bdl,dn->lbdn", delta * u, B)
    else:
        dBu = torch.einsum("bdl,bdnl->lbdn", delta * u, per_channel(B))

    h = (torch.zeros(b, d, A.shape[1], dtype=cd, device=u.device) if initial_state is None
         else initial_state.to(cd))
    hs = []
    for dA_t, dBu_t in zip(torch.unbind(dA, 0), torch.unbind(dBu, 0)):
        h = dA_t * h + dBu_t
        hs.append(h)
    H = torch.stack(hs, dim=0)  # (L, b, d, n)
    if C.dim() == 2:
        y = torch.einsum("lbdn,dn->bdl", H, C)
    else:
        y = torch.einsum("lbdn,bdnl->bdl", H, per_channel(C))
    if D is not None:
        y = y + u * D.to(cd)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cd))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y


def _heads(M: Tensor, h: int) -> Tensor:
    """(b, L, g, n) -> (b, L, h, n): head i uses group i // (h/g) (mamba_ssm convention)."""
    g = M.shape[2]
    assert h % g == 0, f"nheads {h} must be a multiple of ngroups {g}"
    return M if g == h else M.repeat_interleave(h // g, dim=2)


def ssd_scan_ref(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                 return_last_state: bool = False, initial_state: Tensor | None = None):
    """Mamba-2 (SSD) scan, sequential reference.

    x: (b, L, h, p); dt: (b, L, h) (already biased and softplus'ed); A: (h,);
    B, C: (b, L, g, n) with h % g == 0; D: (h,); initial_state: (b, h, p, n).
    ``S_t = exp(dt_t A_h) S_{t-1} + dt_t x_t B_t^T``; ``y_t = S_t C_t + D_h x_t``.
    Returns y (b, L, h, p) in x's dtype [, last state (b, h, p, n) in the compute dtype].
    """
    dtype_in = x.dtype
    cd = _compute_dtype(x, dt, A, B, C)
    x, dt, A, B, C = (t.to(cd) for t in (x, dt, A, B, C))
    b, L, h, p = x.shape
    Bh, Ch = _heads(B, h), _heads(C, h)
    dA = torch.exp(dt * A).permute(1, 0, 2)[..., None, None]  # (L, b, h, 1, 1)
    dBx = torch.einsum("blh,blhp,blhn->lbhpn", dt, x, Bh)
    S = (torch.zeros(b, h, p, B.shape[-1], dtype=cd, device=x.device) if initial_state is None
         else initial_state.to(cd))
    Ss = []
    for dA_t, dBx_t in zip(torch.unbind(dA, 0), torch.unbind(dBx, 0)):
        S = dA_t * S + dBx_t
        Ss.append(S)
    y = torch.einsum("lbhpn,blhn->blhp", torch.stack(Ss, 0), Ch)
    if D is not None:
        y = y + x * D.to(cd)[:, None]
    y = y.to(dtype_in)
    return (y, S) if return_last_state else y


def segsum(a: Tensor) -> Tensor:
    """Stable segment sum: (..., T) -> (..., T, T) with out[i, j] = sum_{k=j+1..i} a_k (i >= j), -inf above."""
    T = a.size(-1)
    a = a[..., None].expand(*a.shape, T)  # a[..., i, j] = a_i
    strict = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    a = a.masked_fill(~strict, 0)
    out = torch.cumsum(a, dim=-2)
    return out.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=a.device).tril(0), -torch.inf)


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                chunk_size: int = 64, return_last_state: bool = False,
                initial_state: Tensor | None = None):
    """Mamba-2 scan via the SSD block decomposition; same signature/maths as :func:`ssd_scan_ref`.

    The effective chunk is ``min(chunk_size, L)``; L is zero-padded to a multiple of it (dt = 0 on
    padding makes those steps exact no-ops, so the final state is unaffected).
    """
    dtype_in = x.dtype
    cd = _compute_dtype(x, dt, A, B, C)
    x, dt, A, B, C = (t.to(cd) for t in (x, dt, A, B, C))
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    assert h % g == 0, f"nheads {h} must be a multiple of ngroups {g}"
    r = h // g
    T = max(1, min(chunk_size, L))
    pad = (-L) % T
    X = x * dt[..., None]
    Adt = dt * A  # (b, L, h)
    if pad:
        X, Adt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (X, Adt, B, C))
    c = X.shape[1] // T
    X = X.view(b, c, T, g, r, p)
    B = B.reshape(b, c, T, g, n)
    C = C.reshape(b, c, T, g, n)
    Adt = Adt.view(b, c, T, g, r).permute(0, 3, 4, 1, 2)  # (b, g, r, c, T)
    A_cs = torch.cumsum(Adt, dim=-1)

    # 1. within-chunk (quadratic / attention-like) term
    decay = torch.exp(segsum(Adt))  # (b, g, r, c, T, T)  [l, s]
    CB = torch.einsum("bclgn,bcsgn->bgcls", C, B)  # per group, shared by its r heads
    Y = torch.einsum("bgcls,bgrcls,bcsgrp->bclgrp", CB, decay, X)

    # 2. state contributed by each chunk at its end
    decay_states = torch.exp(A_cs[..., -1:] - A_cs)  # (b, g, r, c, T)
    states = torch.einsum("bclgn,bgrcl,bclgrp->bcgrpn", B, decay_states, X)

    # 3. pass states between chunks
    if initial_state is None:
        init = torch.zeros_like(states[:, :1])
    else:
        init = initial_state.to(cd).view(b, 1, g, r, p, n)
    states = torch.cat([init, states], dim=1)  # (b, c+1, g, r, p, n)
    decay_chunk = torch.exp(segsum(F.pad(A_cs[..., -1], (1, 0))))  # (b, g, r, c+1, c+1)
    states = torch.einsum("bgrzc,bcgrpn->bzgrpn", decay_chunk, states)
    prev_states, last = states[:, :-1], states[:, -1]

    # 4. contribution of the incoming state to each position
    Y = Y + torch.einsum("bclgn,bcgrpn,bgrcl->bclgrp", C, prev_states, torch.exp(A_cs))

    y = Y.reshape(b, c * T, h, p)[:, :L]
    if D is not None:
        y = y + x * D.to(cd)[:, None]
    y = y.to(dtype_in)
    return (y, last.reshape(b, h, p, n)) if return_last_state else y
