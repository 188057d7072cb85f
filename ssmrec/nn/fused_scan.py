"""Fused CPU selective scans (C++), compiled on first use and cached.

Why C++ through ``torch.utils.cpp_extension`` (and not numba or pure PyTorch): every pure-PyTorch
formulation of the scan materialises ``(B, L, d_inner, d_state)`` tensors, so it is bound by memory
traffic; a fused loop keeps each channel block's state in L1 and reads each input once. The C++
kernel links against the installed torch (no extra runtime dependency), uses ATen's thread pool
(``torch.set_num_threads`` applies), takes strided views without copies, and supports float64 for
gradcheck. It needs a C++ compiler and ``ninja`` (a dependency of ssmrec) at first use; the build
(~30-60 s) is cached in ``$SSMREC_EXT_DIR`` (default ``~/.cache/ssmrec/ext``), one folder per digest
of source, flags, Python ABI, torch and CPU (no path), so every install of the same source shares it.
A cached ``.so`` is imported directly (no ninja); a missing one is built by one process at a time
(``flock`` on ``build.lock``; others print one line and wait) in a private temporary folder and moved
into place atomically. When the build is not possible the blocks fall back to the pure-PyTorch scans
with one warning (see ``fused_available``).

Public functions mirror the reference signatures in :mod:`ssmrec.nn.scan`:

* :func:`selective_scan_fused` -- Mamba-1, ``mamba_ssm`` layout ``u, delta (b, d, L)``.
* :func:`ssd_scan_fused` -- Mamba-2 / SSD, ``x (b, L, h, p)``, ``dt (b, L, h)``, scalar ``A (h,)``.
* :func:`scan_channel_last` -- the kernel's native layout ``(b, L, channels)`` used by the blocks.
* :func:`causal_conv1d_silu` -- the blocks' causal depthwise conv + SiLU, channel-last, fwd + bwd
  (saves the transposed copies and the slow depthwise-conv backward of ``nn.Conv1d`` on CPU).
* :func:`gated_rmsnorm` -- Mamba-2's ``RMSNorm(x * silu(z)) * w`` per group, fwd + bwd.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import torch
from torch import Tensor

from .scan import _compute_dtype

__all__ = ["causal_conv1d_silu", "gated_rmsnorm", "fused_available", "fused_unavailable_reason", "load_extension",
           "ninja_on_path", "scan_channel_last", "selective_scan_fused", "ssd_scan_fused"]

_SRC = Path(__file__).resolve().parent / "csrc" / "selective_scan_cpu.cpp"
_EXT_NAME = "ssmrec_selective_scan_cpu"
_lock = threading.Lock()
_ext = None
_error: str | None = None


# -fopenmp: ATen's at::parallel_for is inlined into the extension and is OpenMP code in torch's CPU
# wheels; compiled without it, every kernel ran on one thread whatever torch.set_num_threads said.
# The link records only the soname libgomp.so.1, which resolves to the copy torch has already
# loaded, so one OpenMP runtime (and torch's thread setting) serves both.
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"]
_LDFLAGS = ["-fopenmp"]
# A compiler without OpenMP (e.g. Apple clang without libomp) still gets the kernels, on one thread.
_CFLAGS_SERIAL = [f if f != "-fopenmp" else "-fopenmp-simd" for f in _CFLAGS]


def _cpu_signature() -> str:
    """-march=native binaries must not be reused on a CPU with fewer instruction sets (shared homes)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + platform.processor() + flags


def _digest() -> str:
    """Everything the binary depends on, and no path: every install (clone, venv) of the same source
    with the same Python ABI, torch build and CPU shares one cached ``.so``."""
    import hashlib
    import sysconfig

    abi = "|".join(str(v) for v in (sys.implementation.cache_tag, sysconfig.get_config_var("EXT_SUFFIX"),
                                    getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", "")))
    key = (_SRC.read_bytes() + " ".join(_CFLAGS + _LDFLAGS).encode() + torch.__version__.encode() + abi.encode()
           + _cpu_signature().encode())
    return hashlib.sha1(key).hexdigest()[:16]


def _build_dir() -> Path:
    """One folder per digest (see ``_digest``) under ``$SSMREC_EXT_DIR``: an edited kernel gets a new
    folder, and installs of the same version find the same ``.so``. Not created here."""
    root = Path(os.environ.get("SSMREC_EXT_DIR", Path.home() / ".cache" / "ssmrec" / "ext"))
    return root / f"{_EXT_NAME}-{_digest()}"


def _load_so(path: Path):
    """Import the compiled module from ``path`` (torch is imported: the .so links against libtorch)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(_EXT_NAME, str(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ninja_on_path() -> str | None:
    """The ``ninja`` executable cpp_extension will run, or None. The ``ninja`` package ssmrec depends on
    installs its binary next to the venv's python, which is not on PATH unless the venv is activated
    (``.venv/bin/ssmrec`` or ``.venv/bin/python -m pytest``): its folder is then put on PATH."""
    import shutil

    found = shutil.which("ninja")
    if found:
        return found
    try:
        import ninja
    except ImportError:
        return None
    bin_dir = getattr(ninja, "BIN_DIR", None)
    if bin_dir and shutil.which("ninja", path=bin_dir):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
        return shutil.which("ninja")
    return None


def _build_into(final: Path):
    """Compile in a private temporary folder (a copy of the source, so no build file ever names the
    install's path, and no two processes share a build.ninja), then atomically move the .so to ``final``.
    The caller holds the build lock."""
    import shutil
    import tempfile

    from torch.utils import cpp_extension

    ninja_on_path()

    for stale in final.parent.glob("build-*"):  # left by a killed build (we hold the lock: nobody else builds)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix="build-", dir=final.parent))

    def compile_in(folder: Path, cflags: list, ldflags: list):
        folder.mkdir()
        src = folder / _SRC.name
        shutil.copyfile(_SRC, src)
        # a second build in this process (another cache folder) would otherwise be renamed *_v1,
        # whose PyInit symbol no other process could import under the cached name
        getattr(getattr(cpp_extension, "JIT_EXTENSION_VERSIONER", None), "entries", {}).pop(_EXT_NAME, None)
        # -march=native: the digest includes the CPU's flags
        return cpp_extension.load(name=_EXT_NAME, sources=[str(src)], build_directory=str(folder),
                                  extra_cflags=cflags, extra_ldflags=ldflags, verbose=False)

    try:
        try:
            mod = compile_in(tmp / "openmp", _CFLAGS, _LDFLAGS)
        except Exception:
            print("ssmrec: the fused kernel did not build with OpenMP (-fopenmp); building it without, so "
                  "its kernels run on one thread", file=sys.stderr, flush=True)
            mod = compile_in(tmp / "serial", _CFLAGS_SERIAL, [])
        if Path(mod.__file__).name != final.name:
            raise RuntimeError(f"cpp_extension built {mod.__file__}, expected {final.name}")
        os.replace(mod.__file__, final)  # same filesystem: atomic; the loaded mapping stays valid
        mod.__file__ = str(final)
        if getattr(mod, "__spec__", None) is not None:
            mod.__spec__.origin = str(final)
        return mod
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_or_build():
    build_dir = _build_dir()
    final = build_dir / f"{_EXT_NAME}.so"
    if final.exists():  # cached: no ninja, no cpp_extension, nothing rewritten
        return _load_so(final)
    build_dir.mkdir(parents=True, exist_ok=True)
    lock_path = build_dir / "build.lock"
    with open(lock_path, "a+") as lock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no inter-process lock
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"ssmrec: waiting for the fused CPU kernel build by another process (lock {lock_path})",
                      file=sys.stderr, flush=True)
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if final.exists():  # built by the process we waited for
                return _load_so(final)
            print(f"ssmrec: building the fused CPU scan kernel (first use, ~1 min; cached in {build_dir})",
                  file=sys.stderr, flush=True)
            return _build_into(final)
        finally:
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def load_extension():
    """Load the cached kernel, or compile it (first use; one process at a time per cache folder).
    Returns the module, or None when that is impossible (see :func:`fused_unavailable_reason`)."""
    global _ext, _error
    if _ext is not None or _error is not None:
        return _ext
    with _lock:
        if _ext is not None or _error is not None:
            return _ext
        try:
            _ext = _load_or_build()
        except Exception as e:  # no compiler / ninja / headers: fall back, say why once
            _error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            _ext = None
    return _ext


def fused_available() -> bool:
    return load_extension() is not None


def fused_unavailable_reason() -> str | None:
    load_extension()
    return _error


def _unit_last(t: Tensor | None, dims: int = 1) -> Tensor | None:
    """Copy unless the last ``dims`` dims are packed (checked on strides: PyTorch's contiguity test
    ignores size-1 dims, whose strides may be anything)."""
    if t is None:
        return t
    expect = 1
    for k in range(1, dims + 1):
        if t.stride(-k) != expect:
            return t.new_empty(t.shape).copy_(t)
        expect *= t.shape[-k]
    return t


class _ScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, init, softplus: bool, head: int, need_last: bool):
        ext = load_extension()
        # ckpt: the states entering each chunk of time steps, so backward recomputes chunk by chunk
        out, last, ckpt = ext.scan_fwd(u, delta, A, B, C, D, z, delta_bias, init, softplus, head, True, need_last)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, init, ckpt)
        ctx.softplus, ctx.head = softplus, head
        ctx.mark_non_differentiable(last)
        return out, last

    @staticmethod
    def backward(ctx, dout, _dlast):
        u, delta, A, B, C, D, z, delta_bias, init, ckpt = ctx.saved_tensors
        head = ctx.head
        du, ddelta, dz, dB, dC, dA, dD, dbias, dinit = load_extension().scan_bwd(
            dout.contiguous(), ckpt, u, delta, A, B, C, D, z, delta_bias, init, ctx.softplus, head)
        if head > 1:  # delta, A, D, bias are per head: sum the per-channel gradients of each head
            b, L, d = du.shape
            ddelta = ddelta.view(b, L, d // head, head).sum(-1)
            dD, dbias = dD.view(-1, head).sum(-1), dbias.view(-1, head).sum(-1)
            if A.dim() == 1:
                dA = dA.view(-1, head).sum(-1)
        return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz if z is not None else None,
                dbias if delta_bias is not None else None, dinit if init is not None else None, None, None, None)


def scan_channel_last(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                      z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                      initial_state: Tensor | None = None, head: int = 1,
                      need_last: bool = True) -> tuple[Tensor, Tensor | None]:
    """Fused scan in the kernel's layout. u, z: (b, L, d); delta: (b, L, d/head); A: (d, n) or
    (d/head,); B, C: (b, L, g, n); D, delta_bias: (d/head,); initial_state: (b, d, n).

    Returns ``(y (b, L, d), last_state (b, d, n))`` (the state is not differentiable; None unless
    ``need_last``: training skips writing it). Computes in
    float32 (float64 if any input is float64) and returns y in u's dtype.
    """
    dtype_in = u.dtype
    cd = _compute_dtype(u, delta, A, B, C)
    cast = lambda t: None if t is None else _unit_last(t.to(cd))  # noqa: E731
    u, delta, z = cast(u), cast(delta), cast(z)
    B, C = _unit_last(B.to(cd), 2), _unit_last(C.to(cd), 2)
    if B.stride() != C.stride():
        B, C = _unit_last(B, 4), _unit_last(C, 4)
    A = _unit_last(A.to(cd), A.dim())
    D = None if D is None else _unit_last(D.to(cd))
    delta_bias = None if delta_bias is None else _unit_last(delta_bias.to(cd))
    initial_state = None if initial_state is None else _unit_last(initial_state.to(cd), 3)
    args = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        y, last = _ScanFn.apply(*args, bool(delta_softplus), int(head), bool(need_last))
    else:  # inference / step(): skip the autograd.Function machinery (~tens of us per call)
        y, last, _ = load_extension().scan_fwd(*args, bool(delta_softplus), int(head), False, bool(need_last))
    return y.to(dtype_in), (last if need_last else None)


def selective_scan_fused(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                         z: Tensor | None = None, delta_bias: Tensor | None = None,
                         delta_softplus: bool = False, return_last_state: bool = False,
                         initial_state: Tensor | None = None):
    """Drop-in for :func:`ssmrec.nn.scan.selective_scan_ref` (``mamba_ssm`` layout): u, delta, z
    (b, d, L); A (d, n); B, C (b, n, L) or (b, g, n, L); D, delta_bias (d,); initial_state (b, d, n)."""
    if B.dim() == 2 or C.dim() == 2:  # time-invariant B/C (S4-style): the kernel is for selective B/C
        from .scan import selective_scan_ref

        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                  initial_state)
    to_bl = lambda M: M.unsqueeze(1).permute(0, 3, 1, 2) if M.dim() == 3 else M.permute(0, 3, 1, 2)  # noqa: E731
    y, last = scan_channel_last(u.transpose(1, 2), delta.transpose(1, 2), A, to_bl(B), to_bl(C), D,
                                None if z is None else z.transpose(1, 2), delta_bias, delta_softplus,
                                initial_state)
    y = y.transpose(1, 2)
    return (y, last) if return_last_state else y


def ssd_scan_fused(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   return_last_state: bool = False, initial_state: Tensor | None = None):
    """Drop-in for :func:`ssmrec.nn.scan.ssd_scan_ref`: x (b, L, h, p); dt (b, L, h) (biased,
    softplus'ed); A, D (h,); B, C (b, L, g, n); initial_state (b, h, p, n)."""
    b, L, h, p = x.shape
    init = None if initial_state is None else initial_state.reshape(b, h * p, -1)
    y, last = scan_channel_last(x.reshape(b, L, h * p), dt, A, B, C, D, None, None, False, init, head=p)
    y = y.view(b, L, h, p)
    return (y, last.view(b, h, p, -1)) if return_last_state else y


class _ConvSiluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight, bias)
        return load_extension().conv_silu_fwd(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = load_extension().conv_silu_bwd(dy.contiguous(), x, weight, bias)
        return dx, dw, (db if bias is not None else None)


def causal_conv1d_silu(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``silu(causal depthwise conv1d)`` in channel-last layout: x (b, L, C) (batch/time strides
    free), weight (C, K) or ``nn.Conv1d``'s (C, 1, K), bias (C,). Equals
    ``F.silu(F.conv1d(x.transpose(1, 2), weight, bias, padding=K-1, groups=C)[..., :L]).transpose(1, 2)``."""
    dtype_in = x.dtype
    cd = _compute_dtype(x, weight)
    x = _unit_last(x.to(cd))
    weight = _unit_last(weight.reshape(weight.shape[0], -1).to(cd), 2)
    bias = None if bias is None else _unit_last(bias.to(cd))
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        y = _ConvSiluFn.apply(x, weight, bias)
    else:
        y = load_extension().conv_silu_fwd(x, weight, bias)
    return y.to(dtype_in)


class _GatedRMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, z, weight, group: int, eps: float):
        ctx.save_for_backward(x, z, weight)
        ctx.group, ctx.eps = group, eps
        return load_extension().gated_rmsnorm_fwd(x, z, weight, group, eps)

    @staticmethod
    def backward(ctx, dy):
        x, z, weight = ctx.saved_tensors
        dx, dz, dw = load_extension().gated_rmsnorm_bwd(dy.contiguous(), x, z, weight, ctx.group, ctx.eps)
        return dx, dz, dw, None, None


def gated_rmsnorm(x: Tensor, z: Tensor, weight: Tensor, group_size: int, eps: float = 1e-5) -> Tensor:
    """``RMSNorm(x * silu(z)) * weight`` normalised per group of ``group_size`` channels (last dim),
    computed in float32 (float64 for float64 inputs) and returned in x's dtype."""
    dtype_in = x.dtype
    cd = _compute_dtype(x, z)
    x, z, weight = (t.to(cd).contiguous() for t in (x, z, weight))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, z, weight)):
        y = _GatedRMSNormFn.apply(x, z, weight, int(group_size), float(eps))
    else:
        y = load_extension().gated_rmsnorm_fwd(x, z, weight, int(group_size), float(eps))
    return y.to(dtype_in)
