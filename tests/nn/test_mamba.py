"""Tests for ssmrec.nn.scan (reference scans) and ssmrec.nn.mamba (Mamba / Mamba2 blocks)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ssmrec.nn.mamba as mamba_mod
from ssmrec.nn.mamba import Mamba, Mamba2, MambaConfig, build_mamba
from ssmrec.nn.scan import selective_scan_ref, ssd_chunked, ssd_scan_ref
from tests.conftest import require_fused

F64 = torch.float64


def nparams(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------- param counts / init

@pytest.mark.parametrize("ctor, expected", [
    (lambda: Mamba(256, 16, 4, 2), 437_760),
    (lambda: Mamba(64, d_state=32), 38_784),
    (lambda: Mamba(128, d_conv=16), 119_552),
    (lambda: Mamba2(256), 406_712),
    (lambda: build_mamba(MambaConfig(d_model=256, version=2)), 406_712),
    (lambda: build_mamba(MambaConfig(d_model=64, d_state=32)), 38_784),
])
def test_param_counts(ctor, expected):
    assert nparams(ctor()) == expected


def test_mamba2_layout():
    m = Mamba2(256)
    assert (m.nheads, m.headdim, m.conv_dim) == (8, 64, 544)
    assert m.in_proj.out_features == 1064 and m.in_proj.bias is None
    assert m.norm.weight.shape == (512,) and m.norm.eps == 1e-5


def test_mamba_init():
    torch.manual_seed(0)
    m = Mamba(64, d_state=8, dt_min=1e-3, dt_max=0.1)
    assert m.dt_rank == 4
    assert torch.allclose(m.A_log, torch.log(torch.arange(1, 9.0)).expand(128, 8))
    dt = F.softplus(m.dt_proj.bias.detach().double())
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert dt.max() / dt.min() > 5  # log-uniform spread, not a constant
    assert torch.equal(m.D, torch.ones(128))
    assert m.dt_proj.weight.abs().max() <= 4 ** -0.5
    assert m.in_proj.bias is None and m.out_proj.bias is None and m.conv1d.bias is not None


def test_mamba2_init():
    torch.manual_seed(0)
    m = Mamba2(128, headdim=16, dt_min=1e-3, dt_max=0.1)
    A = torch.exp(m.A_log.detach())
    assert A.shape == (16,) and A.min() >= 1 - 1e-5 and A.max() <= 16 + 1e-4 and A.std() > 1
    dt = F.softplus(m.dt_bias.detach().double())
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert torch.equal(m.D, torch.ones(16)) and torch.equal(m.norm.weight, torch.ones(256))


# ----------------------------------------------------------------------------- scans vs naive loops

def naive_selective_scan(u, delta, A, B, C, D, z, delta_bias):
    """Double loop over (batch, channel), then time, fp64; B, C: (b, n, L)."""
    b, d, L = u.shape
    n = A.shape[1]
    y = torch.zeros(b, d, L, dtype=F64)
    last = torch.zeros(b, d, n, dtype=F64)
    for i in range(b):
        for c in range(d):
            h = torch.zeros(n, dtype=F64)
            for t in range(L):
                dl = math.log1p(math.exp(float(delta[i, c, t] + delta_bias[c])))  # softplus
                h = torch.exp(dl * A[c]) * h + dl * B[i, :, t] * u[i, c, t]
                yt = float((C[i, :, t] * h).sum()) + float(D[c] * u[i, c, t])
                y[i, c, t] = yt * float(z[i, c, t]) / (1 + math.exp(-float(z[i, c, t])))
            last[i, c] = h
    return y, last


@pytest.mark.equivalence
def test_selective_scan_ref_vs_naive():
    torch.manual_seed(1)
    b, d, n, L = 2, 3, 4, 6
    u, delta, z = (torch.randn(b, d, L, dtype=F64) for _ in range(3))
    A = -torch.rand(d, n, dtype=F64) * 2
    B, C = torch.randn(b, n, L, dtype=F64), torch.randn(b, n, L, dtype=F64)
    D, bias = torch.randn(d, dtype=F64), torch.randn(d, dtype=F64) * 0.5
    y, last = selective_scan_ref(u, delta, A, B, C, D, z, bias, True, return_last_state=True)
    y0, last0 = naive_selective_scan(u, delta, A, B, C, D, z, bias)
    assert y.dtype == F64 and y.shape == (b, d, L) and last.shape == (b, d, n)
    torch.testing.assert_close(y, y0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last0, rtol=1e-10, atol=1e-10)
    # grouped B/C (b, g, n, L) with g=1 is the same as (b, n, L)
    y1 = selective_scan_ref(u, delta, A, B[:, None], C[:, None], D, z, bias, True)
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-10)
    # fp32 compute, output in the input dtype
    y32 = selective_scan_ref(u.float(), delta.float(), A.float(), B.float(), C.float(), D.float(),
                             z.float(), bias.float(), True)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y0, rtol=1e-4, atol=1e-5)


def naive_ssd(x, dt, A, B, C, D, S0):
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    y = torch.zeros(b, L, h, p, dtype=F64)
    last = torch.zeros(b, h, p, n, dtype=F64)
    for i in range(b):
        for k in range(h):
            gk = k // (h // g)
            S = S0[i, k].clone() if S0 is not None else torch.zeros(p, n, dtype=F64)
            for t in range(L):
                S = math.exp(float(dt[i, t, k] * A[k])) * S + dt[i, t, k] * torch.outer(x[i, t, k], B[i, t, gk])
                y[i, t, k] = S @ C[i, t, gk] + (D[k] * x[i, t, k] if D is not None else 0)
            last[i, k] = S
    return y, last


def ssd_inputs(b=2, L=7, h=4, p=3, g=2, n=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, h, p, dtype=F64, generator=gen)
    dt = F.softplus(torch.randn(b, L, h, dtype=F64, generator=gen))
    A = -torch.rand(h, dtype=F64, generator=gen) * 2 - 0.1
    B = torch.randn(b, L, g, n, dtype=F64, generator=gen)
    C = torch.randn(b, L, g, n, dtype=F64, generator=gen)
    D = torch.randn(h, dtype=F64, generator=gen)
    S0 = torch.randn(b, h, p, n, dtype=F64, generator=gen)
    return x, dt, A, B, C, D, S0


@pytest.mark.parametrize("with_s0", [False, True])
@pytest.mark.equivalence
def test_ssd_scan_ref_vs_naive(with_s0):
    x, dt, A, B, C, D, S0 = ssd_inputs()
    S0 = S0 if with_s0 else None
    y, last = ssd_scan_ref(x, dt, A, B, C, D, return_last_state=True, initial_state=S0)
    y0, last0 = naive_ssd(x, dt, A, B, C, D, S0)
    torch.testing.assert_close(y, y0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last0, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("L, chunk", [(1, 4), (1, 64), (5, 4), (8, 4), (13, 4), (13, 5), (16, 16), (17, 64), (33, 8)])
@pytest.mark.parametrize("g", [1, 2])
@pytest.mark.parametrize("with_s0_d", [False, True])
@pytest.mark.equivalence
def test_ssd_chunked_equals_ref(L, chunk, g, with_s0_d):
    x, dt, A, B, C, D, S0 = ssd_inputs(L=L, g=g, seed=L * 7 + g)
    if not with_s0_d:
        D = S0 = None
    y0, s0 = ssd_scan_ref(x, dt, A, B, C, D, return_last_state=True, initial_state=S0)
    y1, s1 = ssd_chunked(x, dt, A, B, C, D, chunk_size=chunk, return_last_state=True, initial_state=S0)
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s1, s0, rtol=1e-10, atol=1e-10)
    assert torch.equal(ssd_chunked(x, dt, A, B, C, D, chunk, initial_state=S0), y1)  # no-state variant


@pytest.mark.equivalence
def test_ssd_chunked_grads_equal_ref():
    inputs = [t.requires_grad_() for t in ssd_inputs(L=11, g=2, seed=3)]
    x, dt, A, B, C, D, S0 = inputs
    w = torch.randn(2, 11, 4, 3, dtype=F64)
    grads = []
    for fn in (ssd_scan_ref, lambda *a, **k: ssd_chunked(*a, chunk_size=4, **k)):
        y, last = fn(x, dt, A, B, C, D, return_last_state=True, initial_state=S0)
        grads.append(torch.autograd.grad((y * w).sum() + last.pow(2).sum(), inputs))
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g1, g0, rtol=1e-9, atol=1e-9)


def test_gradcheck_ssd_chunked():
    x, dt, A, B, C, D, S0 = ssd_inputs(b=1, L=5, h=2, p=2, g=1, n=2, seed=5)
    inputs = tuple(t.requires_grad_() for t in (x, dt, A, B, C, D, S0))

    def f(*a):
        y, last = ssd_chunked(*a[:6], chunk_size=2, return_last_state=True, initial_state=a[6])
        return y, last

    assert torch.autograd.gradcheck(f, inputs)


def test_gradcheck_selective_scan_ref():
    torch.manual_seed(2)
    b, d, n, L = 1, 2, 2, 4
    u, delta, z = (torch.randn(b, d, L, dtype=F64) for _ in range(3))
    A = -torch.rand(d, n, dtype=F64) - 0.1
    B, C = torch.randn(b, n, L, dtype=F64), torch.randn(b, n, L, dtype=F64)
    D, bias = torch.randn(d, dtype=F64), torch.randn(d, dtype=F64)
    inputs = tuple(t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias))
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan_ref(*a, delta_softplus=True, return_last_state=True), inputs)


# ----------------------------------------------------------------------------- blocks

def small_block(kind: str, scan_impl: str = "auto", seed: int = 0):
    torch.manual_seed(seed)
    if kind == "mamba":
        m = Mamba(16, d_state=4, d_conv=3, scan_impl=scan_impl)
    else:
        m = Mamba2(16, d_state=4, d_conv=3, headdim=8, ngroups=2, chunk_size=4, scan_impl=scan_impl)
    # make the Delta values large enough that the state dynamics matter in the tests
    with torch.no_grad():
        if kind == "mamba":
            m.dt_proj.bias.add_(2.0)
        else:
            m.dt_bias.add_(2.0)
    return m


BLOCKS = [("mamba", "ref"), ("mamba2", "ref"), ("mamba2", "chunked"), ("mamba", "fused"), ("mamba2", "fused")]


def block_for(kind: str, impl: str) -> torch.nn.Module:
    """small_block, and for impl "fused" the kernel must really be there: otherwise the block would
    fall back to a PyTorch scan with a warning and the "fused" case would test nothing."""
    if impl == "fused":
        require_fused()
    return small_block(kind, impl)


@pytest.mark.parametrize("kind, impl", BLOCKS)
@pytest.mark.equivalence
def test_step_equals_forward(kind, impl):
    m = block_for(kind, impl)
    x = torch.randn(3, 9, 16)
    with torch.no_grad():
        y = m(x)
        assert y.shape == (3, 9, 16)
        state = m.allocate_state(3)
        ys = []
        for t in range(9):
            yt, state = m.step(x[:, t], state)
            ys.append(yt)
        torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-5, atol=1e-5)
        # prefill then continue stepping (prefill shorter than K and longer than K)
        for split in (2, 5):
            y_pre, st = m.forward_with_state(x[:, :split])
            torch.testing.assert_close(y_pre, y[:, :split], rtol=1e-5, atol=1e-5)
            for t in range(split, 9):
                yt, st = m.step(x[:, t], st)
                torch.testing.assert_close(yt, y[:, t], rtol=1e-5, atol=1e-5)
        # state after the full prefill equals the stepped state
        _, st_full = m.forward_with_state(x)
        for a, b in zip(st_full, state):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_step_is_functional_and_mask_t_freezes_state(kind):
    m = small_block(kind)
    with torch.no_grad():
        _, st = m.forward_with_state(torch.randn(2, 5, 16))
        before = tuple(s.clone() for s in st)
        y, new = m.step(torch.randn(2, 16), st, mask_t=torch.tensor([True, False]))
        for a, b in zip(st, before):
            assert torch.equal(a, b)  # input state not mutated
        for a, b in zip(new, before):
            assert torch.equal(a[1], b[1])  # masked row unchanged
            assert not torch.equal(a[0], b[0])  # real row advanced
        assert torch.equal(y[1], torch.zeros(16))


@pytest.mark.parametrize("kind, impl", BLOCKS)
@pytest.mark.equivalence
def test_padding_invariance(kind, impl):
    m = block_for(kind, impl)
    lens = [9, 4, 1, 6]
    Lmax = max(lens)
    seqs = [torch.randn(n, 16) for n in lens]
    x = torch.zeros(len(lens), Lmax, 16)
    mask = torch.zeros(len(lens), Lmax, dtype=torch.bool)
    for i, s in enumerate(seqs):  # LEFT padding
        x[i, Lmax - len(s):] = s
        mask[i, Lmax - len(s):] = True
    with torch.no_grad():
        y, (conv, ssm) = m.forward_with_state(x, mask)
        x_noise = torch.where(mask[..., None], x, 5 * torch.randn_like(x))
        y_noise = m(x_noise, mask)
        assert not torch.allclose(m(x_noise), m(x), atol=1e-3)  # without mask, padding content leaks
        torch.testing.assert_close(y_noise[mask], y[mask], rtol=1e-6, atol=1e-6)
        nxt = torch.randn(len(lens), 16)
        y_next, _ = m.step(nxt, (conv, ssm))
        for i, s in enumerate(seqs):
            y_alone, st_alone = m.forward_with_state(s[None])
            torch.testing.assert_close(y[i, Lmax - len(s):], y_alone[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ssm[i], st_alone[1][0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(conv[i], st_alone[0][0], rtol=1e-5, atol=1e-5)
            y_next_alone, _ = m.step(nxt[i:i + 1], st_alone)
            torch.testing.assert_close(y_next[i], y_next_alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.equivalence
def test_right_padding_prefill_state(kind):
    """Right padding: causal outputs unaffected, and the prefill state equals the unpadded one."""
    m = small_block(kind)
    s = torch.randn(5, 16)
    x = torch.cat([s, torch.randn(3, 16)])[None]
    mask = torch.tensor([[True] * 5 + [False] * 3])
    with torch.no_grad():
        y, st = m.forward_with_state(x, mask)
        y0, st0 = m.forward_with_state(s[None])
    torch.testing.assert_close(y[:, :5], y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(st, st0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.equivalence
def test_mamba2_ref_equals_chunked():
    m_ref = small_block("mamba2", "ref", seed=4)
    m_chk = small_block("mamba2", "chunked", seed=4)
    m_chk.load_state_dict(m_ref.state_dict())
    x = torch.randn(3, 11, 16)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, :4] = False
    w = torch.randn(3, 11, 16)
    outs, grads = [], []
    for m in (m_ref, m_chk):
        y, st = m.forward_with_state(x, mask)
        loss = (y * w).sum() + st[1].sum()
        outs.append((y, st[1]))
        grads.append(torch.autograd.grad(loss, list(m.parameters())))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-5, atol=1e-5)
    for g0, g1, (name, _) in zip(grads[0], grads[1], m_ref.named_parameters()):
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5, msg=lambda s: f"{name}: {s}")


def test_scan_impl_selection(monkeypatch):
    require_fused()  # "auto" on CPU picks the fused kernel only where it is available
    calls = []
    for name in ("ssd_scan_ref", "ssd_chunked", "selective_scan_ref"):
        fn = getattr(mamba_mod, name)
        monkeypatch.setattr(mamba_mod, name, lambda *a, _fn=fn, _n=name, **k: (calls.append(_n), _fn(*a, **k))[1])
    fused_fn = mamba_mod.fused_scan.scan_channel_last
    monkeypatch.setattr(mamba_mod.fused_scan, "scan_channel_last",
                        lambda *a, **k: (calls.append("fused"), fused_fn(*a, **k))[1])
    x = torch.randn(1, 3, 16)
    monkeypatch.delenv("SSMREC_SCAN_IMPL", raising=False)
    small_block("mamba2")(x)
    small_block("mamba")(x)
    small_block("mamba2", "cuda")(x)  # CPU tensors -> the fused CPU kernel
    assert calls == ["fused", "fused", "fused"]
    calls.clear()
    monkeypatch.setenv("SSMREC_SCAN_IMPL", "ref")
    small_block("mamba2")(x)
    small_block("mamba2", "chunked")(x)  # explicit constructor choice wins over the env var
    small_block("mamba", "chunked")(x)  # Mamba-1 has no chunked scan -> ref
    assert calls == ["ssd_scan_ref", "ssd_chunked", "selective_scan_ref"]
    calls.clear()
    monkeypatch.setenv("SSMREC_SCAN_IMPL", "fused")
    small_block("mamba")(x)
    assert calls == ["fused"]
    monkeypatch.setenv("SSMREC_SCAN_IMPL", "bogus")
    with pytest.raises(ValueError):
        small_block("mamba2")(x)
    with pytest.raises(ValueError):
        Mamba(16, scan_impl="fast")


def test_fallback_when_fused_kernel_cannot_build_warns_once(monkeypatch):
    """No compiler / no ninja: pure-PyTorch scans, one warning that says why."""
    import warnings

    monkeypatch.delenv("SSMREC_SCAN_IMPL", raising=False)
    monkeypatch.setattr(mamba_mod.fused_scan, "fused_available", lambda: False)
    monkeypatch.setattr(mamba_mod.fused_scan, "fused_unavailable_reason", lambda: "RuntimeError: Ninja is required")
    monkeypatch.setattr(mamba_mod, "_warned", set())
    calls = []
    fn = mamba_mod.ssd_chunked
    monkeypatch.setattr(mamba_mod, "ssd_chunked", lambda *a, **k: (calls.append("chunked"), fn(*a, **k))[1])
    x = torch.randn(1, 3, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small_block("mamba2")(x)
        small_block("mamba2")(x)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert calls == ["chunked", "chunked"]
    assert len(msgs) == 1 and "Ninja is required" in msgs[0] and "chunked" in msgs[0]


# ----------------------------------------------------------------------------- kernel warm-up

@pytest.mark.parametrize("impl, device, expect_build", [
    ("auto", "cpu", True), ("fused", "cpu", True), ("ref", "cpu", False), ("chunked", "cpu", False),
    ("auto", "meta", False),
])
def test_prepare_kernels_builds_only_when_the_fused_scan_will_run(monkeypatch, impl, device, expect_build):
    monkeypatch.delenv("SSMREC_SCAN_IMPL", raising=False)  # "auto" as a user without the variable has it
    calls = []
    monkeypatch.setattr(mamba_mod.fused_scan, "load_extension", lambda: calls.append(1))
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), Mamba2(16, headdim=8, scan_impl=impl))
    mamba_mod.prepare_kernels(model, device)
    assert bool(calls) == expect_build
    calls.clear()
    mamba_mod.prepare_kernels(torch.nn.Linear(4, 4), "cpu")  # no Mamba block: nothing to build
    assert not calls
    monkeypatch.setenv("SSMREC_SCAN_IMPL", "ref")  # "auto" resolved by the env var to the PyTorch scan
    mamba_mod.prepare_kernels(torch.nn.Sequential(Mamba2(16, headdim=8)), "cpu")
    assert not calls


# ----------------------------------------------------------------------------- step() on CUDA (mamba_ssm)

def _state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """CPU stand-in for mamba_ssm.ops.triton.selective_state_update (same signature, shapes and
    in-place state update, with or without heads)."""
    heads = state.dim() == 4
    if not heads:
        state, x, dt, A, B, C = (state.unsqueeze(1), x.unsqueeze(1), dt.unsqueeze(1), A.unsqueeze(0),
                                 B.unsqueeze(1), C.unsqueeze(1))
        D = None if D is None else D.unsqueeze(0)
        z = None if z is None else z.unsqueeze(1)
        dt_bias = None if dt_bias is None else dt_bias.unsqueeze(0)
    h = state.shape[1]
    assert x.shape == dt.shape == state.shape[:3] and A.shape == state.shape[1:]
    assert B.shape == C.shape and B.shape[0] == state.shape[0] and h % B.shape[1] == 0
    dt = dt.float() + (0 if dt_bias is None else dt_bias.float())
    dt = F.softplus(dt) if dt_softplus else dt
    B, C = (M.repeat_interleave(h // M.shape[1], dim=1).float() for M in (B, C))
    state.copy_(state * torch.exp(dt[..., None] * A) + (dt * x)[..., None] * B[:, :, None, :])
    out = torch.einsum("bhdn,bhn->bhd", state.float(), C)
    if D is not None:
        out = out + x * D
    if z is not None:
        out = out * F.silu(z)
    out = out.to(x.dtype)
    return out if heads else out[:, 0]


class _FakeCuda:
    """Just enough of a tensor for _resolve_impl to take its CUDA branch."""
    is_cuda = True
    device = torch.device("cuda")


def test_resolve_impl_cuda_branch(monkeypatch):
    import warnings

    monkeypatch.delenv("SSMREC_SCAN_IMPL", raising=False)
    monkeypatch.setattr(mamba_mod, "_warned", set())
    monkeypatch.setattr(mamba_mod.fused_scan, "fused_available", lambda: pytest.fail("CUDA must not build"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for impl in ("auto", "cuda", "fused"):
            assert mamba_mod._resolve_impl(impl, _FakeCuda(), object(), "ref", "selective_state_update") == "cuda"
        assert mamba_mod._resolve_impl("ref", _FakeCuda(), object(), "ref") == "ref"
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    monkeypatch.setitem(mamba_mod._CUDA_IMPORT_ERRORS, "selective_state_update", "ModuleNotFoundError: triton")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            assert mamba_mod._resolve_impl("auto", _FakeCuda(), None, "chunked", "selective_state_update") == "chunked"
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "selective_state_update" in msgs[0] and "triton" in msgs[0] and "chunked" in msgs[0]


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.equivalence
def test_step_passes_the_state_update_kernel(monkeypatch, kind):
    """step() resolves with mamba_ssm's selective_state_update (not None, so no bogus warning on GPU)
    and, when that resolves to "cuda", calls it with the right shapes/semantics: equal to the
    PyTorch recurrence, without mutating the caller's state."""
    seen = []
    real = mamba_mod._resolve_impl

    def resolve(requested, x, cuda_fn, fallback, cuda_name=None):
        seen.append((cuda_fn, cuda_name))
        return "cuda" if cuda_fn is not None else real(requested, x, cuda_fn, fallback, cuda_name)

    m = small_block(kind, "ref")
    x = torch.randn(3, 6, 16)
    with torch.no_grad():
        _, st = m.forward_with_state(x[:, :4])
        want = [m.step(x[:, t], st) for t in (4, 5)]  # PyTorch recurrence
        monkeypatch.setattr(mamba_mod, "_cuda_state_update", _state_update_ref)
        monkeypatch.setattr(mamba_mod, "_resolve_impl", resolve)
        before = tuple(s.clone() for s in st)
        got = [m.step(x[:, t], st) for t in (4, 5)]
        y_masked, st_masked = m.step(x[:, 4], st, mask_t=torch.tensor([True, False, True]))
    assert seen and all(fn is _state_update_ref and name == "selective_state_update" for fn, name in seen)
    for a, b in zip(st, before):
        assert torch.equal(a, b)
    for (yw, sw), (yg, sg) in zip(want, got):
        torch.testing.assert_close(yg, yw, rtol=1e-5, atol=1e-5)
        for a, b in zip(sg, sw):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(y_masked[1], torch.zeros(16)) and torch.equal(st_masked[1][1], st[1][1])


def test_mamba_block_owns_its_dt_init():
    from ssmrec.nn.layers import fuxictr_init

    m = Mamba(32)
    w, b = m.dt_proj.weight.clone(), m.dt_proj.bias.clone()
    assert m.dt_proj._keep_init
    in_w = m.in_proj.weight.clone()
    fuxictr_init(torch.nn.Sequential(m))  # model-wide re-init, as the CTR models do
    assert not torch.equal(m.in_proj.weight, in_w)  # the rest was re-initialised
    torch.testing.assert_close(m.dt_proj.weight, w)
    torch.testing.assert_close(m.dt_proj.bias, b)
