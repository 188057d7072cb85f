"""Mamba-1 and Mamba-2 blocks (pure PyTorch, optional ``mamba_ssm`` CUDA kernels).

Parameterisation, init, forward and recurrent step follow ``mamba_ssm.Mamba`` / ``Mamba2``
(docs/reference-architectures.md §6). Extras over the reference:

* ``mask`` (B, L), True = real token: padded steps are exact no-ops for the recurrence (pre-conv
  input zeroed, Delta forced to 0), so with LEFT padding real-position outputs equal the unpadded
  run and do not depend on the padded rows' content.
* ``allocate_state`` / ``step`` (functional one-token inference) / ``forward_with_state`` (prefill).
* ``scan_impl``: "auto" | "fused" (C++ CPU kernel, :mod:`ssmrec.nn.fused_scan`) | "cuda"
  (``mamba_ssm``) | "ref" (sequential PyTorch) | "chunked" (Mamba2 SSD in PyTorch). An explicit
  constructor value wins; with "auto" the env var ``SSMREC_SCAN_IMPL`` (if set) is used, else
  ``mamba_ssm`` kernels when importable and the input is on CUDA, else the fused CPU kernel when it
  builds, else the best pure-PyTorch scan ("ref" for Mamba, "chunked" for Mamba2) with one warning
  saying why. Requests that cannot be honoured fall back the same way ("cuda" on CPU tensors ->
  fused; "chunked" on Mamba-1 -> "ref"; "fused" on GPU tensors -> cuda or PyTorch).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import fused_scan
from .scan import selective_scan_ref, ssd_chunked, ssd_scan_ref

_CUDA_IMPORT_ERRORS: dict[str, str] = {}  # kernel name -> why it is not importable (for the warning)


def _import_cuda(module: str, name: str):
    """``module.name`` from the optional mamba_ssm (CUDA only), or None with the reason recorded."""
    try:
        import importlib

        return getattr(importlib.import_module(module), name)
    except Exception as e:  # pragma: no cover - depends on the environment
        _CUDA_IMPORT_ERRORS[name] = f"{type(e).__name__}: {e}".strip().splitlines()[0]
        return None


# forward scans, and the one-token state update used by step() (mamba_ssm's own step kernel)
_cuda_selective_scan = _import_cuda("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")
_cuda_ssd = _import_cuda("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined")
_cuda_state_update = _import_cuda("mamba_ssm.ops.triton.selective_state_update", "selective_state_update")

__all__ = ["MambaConfig", "Mamba", "Mamba2", "RMSNormGated", "build_mamba", "prepare_kernels", "SCAN_IMPLS"]

SCAN_IMPLS = ("auto", "fused", "ref", "chunked", "cuda")
State = tuple[Tensor, Tensor]


@dataclass
class MambaConfig:
    d_model: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"  # Mamba-1 only
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0  # Mamba-1 only
    conv_bias: bool = True
    bias: bool = False
    headdim: int = 64  # Mamba-2 only
    ngroups: int = 1  # Mamba-2 only
    version: int = 1  # 1 = Mamba, 2 = Mamba2
    rmsnorm_eps: float = 1e-5  # Mamba-2 only
    chunk_size: int = 64  # Mamba-2 only
    scan_impl: str = "auto"


def build_mamba(cfg: MambaConfig) -> "Mamba | Mamba2":
    common = dict(d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, dt_min=cfg.dt_min,
                  dt_max=cfg.dt_max, dt_init_floor=cfg.dt_init_floor, conv_bias=cfg.conv_bias,
                  bias=cfg.bias, scan_impl=cfg.scan_impl)
    if cfg.version == 1:
        return Mamba(cfg.d_model, dt_rank=cfg.dt_rank, dt_scale=cfg.dt_scale, **common)
    if cfg.version == 2:
        return Mamba2(cfg.d_model, headdim=cfg.headdim, ngroups=cfg.ngroups,
                      rmsnorm_eps=cfg.rmsnorm_eps, chunk_size=cfg.chunk_size, **common)
    raise ValueError(f"MambaConfig.version must be 1 or 2, got {cfg.version}")


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _requested_impl(requested: str) -> str:
    """The constructor's scan_impl, with "auto" replaced by $SSMREC_SCAN_IMPL when that is set."""
    if requested != "auto":
        return requested
    impl = os.environ.get("SSMREC_SCAN_IMPL", "").strip().lower() or "auto"
    if impl not in SCAN_IMPLS:
        raise ValueError(f"SSMREC_SCAN_IMPL={impl!r}; expected one of {SCAN_IMPLS}")
    return impl


def _resolve_impl(requested: str, x: Tensor, cuda_fn, fallback: str, cuda_name: str | None = None) -> str:
    """Pick the scan for this call; see the module docstring for the rules. ``cuda_fn`` is the mamba_ssm
    kernel this call would use on CUDA tensors (None: not importable; ``cuda_name`` names it in the warning)."""
    impl = _requested_impl(requested)
    if impl == "chunked" and fallback == "ref":  # Mamba-1 has no chunked scan
        impl = "ref"
    if impl in ("ref", "chunked"):
        return impl
    if x.is_cuda:
        if cuda_fn is not None:
            return "cuda"
        why = _CUDA_IMPORT_ERRORS.get(cuda_name or "", "")
        what = f"mamba_ssm's {cuda_name} is" if cuda_name else "mamba_ssm CUDA kernels are"
        _warn_once(f"ssmrec: {what} not importable{f' ({why})' if why else ''}; "
                   f"using the pure-PyTorch '{fallback}' scan")
        return fallback
    if x.device.type == "cpu" and fused_scan.fused_available():
        return "fused"
    why = (fused_scan.fused_unavailable_reason() if x.device.type == "cpu"
           else f"tensors on {x.device.type}")
    _warn_once(f"ssmrec: fused CPU scan unavailable ({why}); using the pure-PyTorch '{fallback}' scan")
    return fallback


def prepare_kernels(model: nn.Module, device: torch.device | str = "cpu") -> None:
    """Build/load the fused CPU kernel now if ``model`` will use it, so the one-off compile (~1 min
    on first use) never lands inside a timed training epoch or benchmark."""
    if torch.device(device).type != "cpu":
        return
    if any(isinstance(m, (Mamba, Mamba2)) and _requested_impl(m.scan_impl) in ("auto", "fused", "cuda")
           for m in model.modules()):
        fused_scan.load_extension()


def _check_impl(scan_impl: str) -> str:
    if scan_impl not in SCAN_IMPLS:
        raise ValueError(f"scan_impl must be one of {SCAN_IMPLS}, got {scan_impl!r}")
    return scan_impl


def _dt_bias_init(n: int, dt_min: float, dt_max: float, floor: float) -> Tensor:
    """softplus^-1(dt0), dt0 = exp(U(log dt_min, log dt_max)) clamped >= floor."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def _conv_state_from(xc: Tensor, K: int, mask: Tensor | None) -> Tensor:
    """Last K pre-conv inputs (B, C, K) of xc (B, C, L), zero-left-padded; with a mask, the last K
    *real* inputs (what step() would hold after feeding the sequence with mask_t)."""
    if mask is None:
        return F.pad(xc, (max(0, K - xc.shape[-1]), 0))[..., -K:]
    m = mask.to(torch.long)
    rank = m.cumsum(-1)  # 1-based rank of each real token
    want = rank[:, -1:, None] - torch.arange(K - 1, -1, -1, device=xc.device)[None, None, :]
    sel = (m[:, :, None] == 1) & (rank[:, :, None] == want)  # (B, L, K)
    return torch.einsum("bcl,blk->bck", xc, sel.to(xc.dtype))


def _hold_masked(mask_t: Tensor | None, y: Tensor, new: State, old: State) -> tuple[Tensor, State]:
    """step() for rows with mask_t = 0: keep the old state and output zeros."""
    if mask_t is None:
        return y, new
    m = mask_t.bool()
    held = tuple(torch.where(m.view(-1, *([1] * (n.dim() - 1))), n, o) for n, o in zip(new, old))
    return y * m[:, None].to(y.dtype), held


class Mamba(nn.Module):
    """Mamba-1 block (mamba_ssm.Mamba), §6.2/§6.3. Input/output (B, L, d_model)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, scan_impl: str = "auto"):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = d_inner = expand * d_model
        self.dt_rank = R = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_impl = _check_impl(scan_impl)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, R + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(R, d_inner, bias=True)
        std = R ** -0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, std)
            elif dt_init == "random":
                nn.init.uniform_(self.dt_proj.weight, -std, std)
            else:
                raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
            self.dt_proj.bias.copy_(_dt_bias_init(d_inner, dt_min, dt_max, dt_init_floor))
        self.dt_proj.bias._no_reinit = True
        self.dt_proj._keep_init = True  # model-wide re-inits (layers.fuxictr_init) must keep this dt init
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # (d_inner, N), S4D-real
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def _ssm_inputs(self, xc: Tensor, mask: Tensor | None):
        """xc: post-conv (B, L, d_inner) -> delta (B, L, d_inner) (softplus'ed, masked), B, C (B, L, N)."""
        dt, Bm, Cm = self.x_proj(xc).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        if mask is not None:
            delta = delta * mask[..., None].to(delta.dtype)
        return delta, Bm, Cm

    def forward_with_state(self, u: Tensor, mask: Tensor | None = None) -> tuple[Tensor, State]:
        return self._forward(u, mask, want_state=True)

    def forward(self, u: Tensor, mask: Tensor | None = None) -> Tensor:
        return self._forward(u, mask, want_state=False)[0]

    def _forward(self, u: Tensor, mask: Tensor | None, want_state: bool):
        L = u.shape[1]
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (B, L, d_inner) each; one matmul
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)  # padded steps: zero pre-conv input
        impl = _resolve_impl(self.scan_impl, u, _cuda_selective_scan, "ref", "selective_scan_fn")
        if impl == "fused":  # channel-last conv + scan kernels: no transposed copies
            xc = fused_scan.causal_conv1d_silu(x, self.conv1d.weight, self.conv1d.bias)
            delta, Bm, Cm = self._ssm_inputs(xc, mask)
            y, last = fused_scan.scan_channel_last(xc, delta, -torch.exp(self.A_log.float()), Bm.unsqueeze(2),
                                                   Cm.unsqueeze(2), self.D.float(), z, need_last=want_state)
            state = (_conv_state_from(x.transpose(1, 2), self.d_conv, mask), last) if want_state else None
            return self.out_proj(y), state
        x = x.transpose(1, 2)  # (B, d_inner, L)
        xc = F.silu(self.conv1d(x)[..., :L])
        delta, Bm, Cm = self._ssm_inputs(xc.transpose(1, 2), mask)
        A = -torch.exp(self.A_log.float())
        scan = _cuda_selective_scan if impl == "cuda" else selective_scan_ref
        args = (xc, delta.transpose(1, 2), A, Bm.transpose(1, 2), Cm.transpose(1, 2))
        if impl == "cuda":
            args = tuple(a.contiguous() for a in args)
        out = scan(*args, self.D.float(), z.transpose(1, 2).contiguous(), None, False, want_state)
        y, last = out if want_state else (out, None)
        y = self.out_proj(y.transpose(1, 2))
        state = (_conv_state_from(x, self.d_conv, mask), last) if want_state else None
        return y, state

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> State:
        device = device if device is not None else self.A_log.device
        dtype = dtype if dtype is not None else self.in_proj.weight.dtype
        return (torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype),
                torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype))

    def step(self, x_t: Tensor, state: State, mask_t: Tensor | None = None) -> tuple[Tensor, State]:
        """One token (B, d_model) -> (y_t (B, d_model), new_state); §6.5. Does not mutate ``state``."""
        conv_state, ssm_state = state
        x, z = self.in_proj(x_t).chunk(2, dim=-1)
        conv = torch.cat([conv_state[..., 1:], x[..., None].to(conv_state.dtype)], dim=-1)
        xc = (conv * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            xc = xc + self.conv1d.bias
        xc = F.silu(xc)
        delta, Bm, Cm = self._ssm_inputs(xc, None)
        A = -torch.exp(self.A_log.float())
        impl = _resolve_impl(self.scan_impl, x_t, _cuda_state_update, "ref", "selective_state_update")
        if impl == "fused":  # one kernel call, L = 1
            y, ssm = fused_scan.scan_channel_last(xc[:, None], delta[:, None], A, Bm[:, None, None],
                                                  Cm[:, None, None], self.D.float(), z[:, None],
                                                  initial_state=ssm_state)
            y = y[:, 0]
        elif impl == "cuda":  # mamba_ssm's step kernel; it advances the state in place, so on a copy
            ssm = ssm_state.clone()
            y = _cuda_state_update(ssm, xc, delta, A, Bm, Cm, self.D.float(), z=z, dt_softplus=False)
        else:
            ssm = ssm_state * torch.exp(delta[..., None] * A) + (delta * xc)[..., None] * Bm[:, None, :]
            y = (torch.einsum("bdn,bn->bd", ssm, Cm) + self.D * xc) * F.silu(z)
        y = self.out_proj(y)
        ssm = ssm.to(ssm_state.dtype)
        return _hold_masked(mask_t, y, (conv, ssm), state)


class RMSNormGated(nn.Module):
    """``RMSNorm(x * silu(z))`` (mamba_ssm ``norm_before_gate=False``), normalised per group."""

    def __init__(self, d: int, eps: float = 1e-5, group_size: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps, self.group_size = eps, group_size or d

    def forward(self, x: Tensor, z: Tensor | None = None, fused: bool = False) -> Tensor:
        if fused and z is not None and x.device.type == "cpu":  # one C++ pass (ssmrec.nn.fused_scan)
            return fused_scan.gated_rmsnorm(x, z, self.weight, self.group_size, self.eps)
        dtype = x.dtype
        x = x.float()
        if z is not None:
            x = x * F.silu(z.float())
        xg = x.unflatten(-1, (-1, self.group_size))
        xg = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xg.flatten(-2) * self.weight.float()).to(dtype)


class Mamba2(nn.Module):
    """Mamba-2 block (mamba_ssm.Mamba2 with ngroups, gated RMSNorm), §6.6. Input/output (B, L, d_model)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 headdim: int = 64, ngroups: int = 1, A_init_range: tuple[float, float] = (1, 16),
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, rmsnorm_eps: float = 1e-5,
                 chunk_size: int = 64, scan_impl: str = "auto"):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = d_inner = expand * d_model
        assert d_inner % headdim == 0, "d_inner must be a multiple of headdim"
        self.headdim, self.nheads, self.ngroups = headdim, d_inner // headdim, ngroups
        assert self.nheads % ngroups == 0, "nheads must be a multiple of ngroups"
        self.chunk_size = chunk_size
        self.scan_impl = _check_impl(scan_impl)
        self.conv_dim = d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, d_inner + self.conv_dim + self.nheads, bias=bias)  # [z | xBC | dt]
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias)
        self.dt_bias = nn.Parameter(_dt_bias_init(self.nheads, dt_min, dt_max, dt_init_floor))
        self.dt_bias._no_weight_decay = True
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(*A_init_range)))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.D._no_weight_decay = True
        self.norm = RMSNormGated(d_inner, eps=rmsnorm_eps, group_size=d_inner // ngroups)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def _split_xbc(self, xBC: Tensor):
        g, N = self.ngroups, self.d_state
        x, Bm, Cm = xBC.split([self.d_inner, g * N, g * N], dim=-1)
        return (x.unflatten(-1, (self.nheads, self.headdim)), Bm.unflatten(-1, (g, N)), Cm.unflatten(-1, (g, N)))

    def forward_with_state(self, u: Tensor, mask: Tensor | None = None) -> tuple[Tensor, State]:
        return self._forward(u, mask, want_state=True)

    def forward(self, u: Tensor, mask: Tensor | None = None) -> Tensor:
        return self._forward(u, mask, want_state=False)[0]

    def _forward(self, u: Tensor, mask: Tensor | None, want_state: bool):
        Bsz, L, _ = u.shape
        z, xBC, dt = self.in_proj(u).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if mask is not None:
            xBC = xBC * mask[..., None].to(xBC.dtype)  # padded steps: zero pre-conv input
        xBC_t = xBC.transpose(1, 2)  # (B, conv_dim, L)
        dt = F.softplus(dt.float() + self.dt_bias.float())  # (B, L, nheads)
        if mask is not None:
            dt = dt * mask[..., None].to(dt.dtype)  # padded steps: Delta = 0 -> exact no-op
        A = -torch.exp(self.A_log.float())
        impl = _resolve_impl(self.scan_impl, u, _cuda_ssd, "chunked", "mamba_chunk_scan_combined")
        if impl == "fused":  # channel-last conv kernel; x, B, C are views of its output
            xBC_cl = fused_scan.causal_conv1d_silu(xBC, self.conv1d.weight, self.conv1d.bias)
        else:
            xBC_cl = F.silu(self.conv1d(xBC_t)[..., :L]).transpose(1, 2)
        x, Bm, Cm = self._split_xbc(xBC_cl)
        if impl == "fused":
            y, last = fused_scan.scan_channel_last(x.flatten(-2), dt, A, Bm, Cm, self.D.float(), head=self.headdim,
                                                   need_last=want_state)
            y = self.out_proj(self.norm(y, z, fused=True))
            state = (_conv_state_from(xBC_t, self.d_conv, mask), last.view(Bsz, self.nheads, self.headdim, -1)) \
                if want_state else None
            return y, state
        if impl == "cuda":
            out = _cuda_ssd(x.contiguous(), dt.contiguous(), A, Bm.contiguous(), Cm.contiguous(),
                            self.chunk_size, D=self.D.float(), return_final_states=want_state)
        elif impl == "chunked":
            out = ssd_chunked(x, dt, A, Bm, Cm, self.D, self.chunk_size, want_state)
        else:
            out = ssd_scan_ref(x, dt, A, Bm, Cm, self.D, want_state)
        y, last = out if want_state else (out, None)
        y = self.out_proj(self.norm(y.flatten(-2), z))
        state = (_conv_state_from(xBC_t, self.d_conv, mask), last) if want_state else None
        return y, state

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> State:
        device = device if device is not None else self.A_log.device
        dtype = dtype if dtype is not None else self.in_proj.weight.dtype
        return (torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device, dtype=dtype),
                torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=dtype))

    def step(self, x_t: Tensor, state: State, mask_t: Tensor | None = None) -> tuple[Tensor, State]:
        """One token (B, d_model) -> (y_t (B, d_model), new_state). Does not mutate ``state``."""
        conv_state, ssm_state = state
        z, xBC, dt = self.in_proj(x_t).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        conv = torch.cat([conv_state[..., 1:], xBC[..., None].to(conv_state.dtype)], dim=-1)
        xBC = (conv * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            xBC = xBC + self.conv1d.bias
        x, Bm, Cm = self._split_xbc(F.silu(xBC))  # (B, h, p), (B, g, N), (B, g, N)
        dt_raw, dt = dt, F.softplus(dt.float() + self.dt_bias.float())  # (B, h)
        A = -torch.exp(self.A_log.float())
        impl = _resolve_impl(self.scan_impl, x_t, _cuda_state_update, "chunked", "selective_state_update")
        if impl == "cuda":  # mamba_ssm's step kernel, called as mamba_ssm.Mamba2.step does (stride-0
            # per-head dt/A/D/dt_bias select its tied-headdim path); it updates the state in place
            p, n = self.headdim, self.d_state
            ssm = ssm_state.clone()
            y = _cuda_state_update(ssm, x, dt_raw[..., None].expand(-1, -1, p), A[:, None, None].expand(-1, p, n),
                                   Bm, Cm, self.D[:, None].expand(-1, p), z=None,
                                   dt_bias=self.dt_bias[:, None].expand(-1, p), dt_softplus=True)
            y = y.flatten(-2)
        elif impl == "fused":  # one kernel call, L = 1
            Bsz = x.shape[0]
            y, ssm = fused_scan.scan_channel_last(
                x.reshape(Bsz, 1, -1), dt[:, None], A, Bm[:, None], Cm[:, None], self.D.float(),
                initial_state=ssm_state.reshape(Bsz, self.d_inner, -1), head=self.headdim)
            y, ssm = y[:, 0], ssm.view_as(ssm_state)
        else:
            r = self.nheads // self.ngroups
            Bm, Cm = Bm.repeat_interleave(r, dim=1), Cm.repeat_interleave(r, dim=1)  # (B, h, N)
            ssm = ssm_state * torch.exp(dt * A)[..., None, None] + (dt[..., None] * x)[..., None] * Bm[:, :, None, :]
            y = (torch.einsum("bhpn,bhn->bhp", ssm, Cm) + self.D[:, None] * x).flatten(-2)
        y = self.out_proj(self.norm(y.to(z.dtype), z))
        ssm = ssm.to(ssm_state.dtype)
        return _hold_masked(mask_t, y, (conv, ssm), state)
