"""`ssmrec bench block`: runs end to end at toy sizes and writes consistent JSON + PNG."""

import json

import pytest
import torch

from ssmrec.bench import block as bench_block
from ssmrec.nn import fused_scan
from tests.conftest import require_fused, run_cli

# Tests that run the fused kernel use this fixture (tests/conftest.py require_fused: fail where it
# should build but did not, skip only without a compiler/ninja); it loads the kernel when the test
# runs, not at collection.
needs_fused = pytest.mark.usefixtures("_fused_kernel")


@pytest.fixture
def _fused_kernel():
    require_fused()


@needs_fused
@pytest.mark.slow
def test_bench_block_toy_run(tmp_path):
    out = tmp_path / "b"
    r = run_cli("bench", "block", "--lengths", "4,8", "--tokens", "32", "--repeats", "2", "--ref-repeats", "1",
                "--warmup", "0", "--d-model", "16", "--headdim", "8", "--d-state", "4", "--out", out,
                "--json", out / "x.json")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "x.json").read_text())
    recs = [x for x in res["records"] if x["mode"] != "step"]
    cases = {(x["impl"], x["L"], x["mode"]) for x in recs}
    assert cases == {(i, L, m) for i in bench_block.ALL_IMPLS for L in (4, 8) for m in ("fwd", "train")}
    for x in recs:
        assert x["ms_median"] >= x["ms_min"] > 0 and len(x["times_ms"]) == x["repeats"]
        assert x["batch"] == 32 // x["L"]
    steps = {x["impl"] for x in res["records"] if x["mode"] == "step"}
    assert steps == {"mamba1_fused", "mamba1_ref", "mamba2_fused", "mamba2_ref"}
    ratios = {(x["L"], x["mode"], x["block"]) for x in res["ratios"]}
    assert (8, "train", "mamba2") in ratios and (4, "fwd", "mamba1") in ratios
    assert (out / "block.png").stat().st_size > 1000
    assert "fused / GEMM floor" in r.stdout and "fused / GEMM only" in r.stdout and "x GEMM-only time" in r.stdout
    for x in recs:  # every impl does matmuls; only the scan-running ones get a scan estimate
        assert x["counted_gflop"] > 0 and x["gflops_per_s_median"] > 0
        assert (x["scan_gflop_est"] is not None) == x["impl"].endswith(bench_block.SCAN_KINDS)
    assert all(x["fused_over_gemm_only"] > 0 for x in res["ratios"])


def test_bench_block_rejects_unknown_impl(tmp_path):
    r = run_cli("bench", "block", "--impls", "mamba3_fast", "--out", tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "mamba3_fast" in r.stderr


@needs_fused
@pytest.mark.parametrize("impl", ["mamba1_floor", "mamba2_floor"])
def test_gemm_floor_keeps_every_projection_in_backward(impl):
    """The floor replaces only the scan: every weight still gets a gradient (no GEMM is skipped)."""
    block, ctx = bench_block.build_impl(impl, 16, 4, 2, 8)
    with ctx():
        y = block(torch.randn(2, 5, 16))
        y.square().mean().backward()
    missing = [n for n, p in block.named_parameters() if p.grad is None and n not in ("A_log", "D")]
    assert not missing, missing
    # and the real scan is restored afterwards
    assert fused_scan.scan_channel_last is not bench_block._identity_scan


def _args(**kw):
    import argparse

    return argparse.Namespace(**{"d_model": 16, "d_state": 4, "expand": 2, "headdim": 8, **kw})


@pytest.mark.parametrize("impl, names", [("mamba1_gemm", ["in_proj", "x_proj", "dt_proj", "out_proj"]),
                                         ("mamba2_gemm", ["in_proj", "out_proj"])])
def test_gemm_only_train_step_runs_every_linear_and_no_scan(impl, names, monkeypatch):
    """GEMM only = the block's Linear layers alone: each weight (and dt_proj's bias) gets a gradient
    and an Adam update, nothing else of the block is touched, and no scan runs."""
    from ssmrec.nn import mamba

    def boom(*a, **k):
        raise AssertionError("GEMM only must not run a scan")

    for mod, name in ((fused_scan, "scan_channel_last"), (fused_scan, "causal_conv1d_silu"),
                      (mamba, "selective_scan_ref"), (mamba, "ssd_chunked"), (mamba, "ssd_scan_ref")):
        monkeypatch.setattr(mod, name, boom)
    torch.manual_seed(0)
    block, _ = bench_block.build_impl(impl, 16, 4, 2, 8)
    with pytest.raises(AssertionError, match="must not run a scan"):  # the trap is armed for this block
        block(torch.randn(1, 3, 16))
    linears = bench_block.gemm_linears(block)
    assert linears == [getattr(block, n) for n in names]
    before = {n: p.detach().clone() for n, p in block.named_parameters()}
    grads = {}
    for lin in linears:  # the step zeroes the grads, so catch them as they are accumulated
        for p in lin.parameters():
            p.register_post_accumulate_grad_hook(lambda p: grads.__setitem__(id(p), p.grad.clone()))
    bench_block.make_gemm_runner(block, 5, 2, "train")()
    linear_params = {id(p) for lin in linears for p in lin.parameters()}
    assert set(grads) == linear_params and all(g.abs().sum() > 0 for g in grads.values())
    for n, p in block.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == (id(p) in linear_params), n
        assert p.grad is None, n  # zero_grad(set_to_none=True), as the other impls


def test_gemm_only_counted_flops_are_the_linears_matmuls():
    """fwd: 2 * tokens * in * out per Linear, exactly (bias adds are not matmul FLOPs); train: x3
    (forward, dX, dW), less in_proj's dX: the bench's block input needs no gradient."""
    args = _args()
    block, _ = bench_block.build_impl("mamba1_gemm", 16, 4, 2, 8)
    batch, L = 3, 7
    want = sum(2 * batch * L * lin.in_features * lin.out_features for lin in bench_block.gemm_linears(block))
    # hand-written shapes: a Linear dropped from gemm_linears would also drop out of the sum above
    d_inner, R = 32, 1
    assert want == 2 * batch * L * (16 * 2 * d_inner + d_inner * (R + 2 * 4) + R * d_inner + d_inner * 16)
    assert bench_block.count_flops(bench_block.make_runner("mamba1_gemm", L, batch, "fwd", args)) == want
    in_proj_dx = 2 * batch * L * 16 * 2 * d_inner
    assert bench_block.count_flops(bench_block.make_runner("mamba1_gemm", L, batch, "train", args)) \
        == 3 * want - in_proj_dx


@needs_fused
@pytest.mark.parametrize("version", ["mamba1", "mamba2"])
@pytest.mark.parametrize("mode", ["fwd", "train"])
def test_gemm_only_runs_the_same_matmuls_as_the_block(version, mode):
    """The fused block's conv and scan are C++ (not counted), so the counted FLOPs of its GEMM floor
    are exactly its matmuls: GEMM only must run those, no more and no fewer."""
    args = _args()
    floor = bench_block.count_flops(bench_block.make_runner(f"{version}_floor", 7, 3, mode, args))
    gemm = bench_block.count_flops(bench_block.make_runner(f"{version}_gemm", 7, 3, mode, args))
    assert gemm == floor > 0


def test_counted_flops_include_cpu_attention():
    """torch's counter has no formula for the CPU SDPA kernel; ours adds QK^T and AV (2 * 2 * B * L^2 * d)."""
    args = _args()
    batch, L, d = 2, 6, 16
    linear = 2 * batch * L * (d * 3 * d + d * d + d * d + d * d)  # in_proj (QKV), out_proj, FFN up, FFN down
    attention = 2 * 2 * batch * L * L * d
    got = bench_block.count_flops(bench_block.make_runner("transformer", L, batch, "fwd", args))
    assert got == linear + attention


def test_scan_gflop_est():
    args = _args()
    assert bench_block.scan_gflop_est("mamba1_fused", 10, 3, "fwd", args) == 30 * 32 * 4 * 7 / 1e9
    assert bench_block.scan_gflop_est("mamba2_chunked", 10, 3, "train", args) == 3 * 30 * 32 * 4 * 5 / 1e9
    assert bench_block.scan_gflop_est("mamba1_gemm", 10, 3, "fwd", args) is None
    assert bench_block.scan_gflop_est("mamba2_floor", 10, 3, "fwd", args) is None
    assert bench_block.scan_gflop_est("transformer", 10, 3, "fwd", args) is None


def test_summarize_gemm_only_ratio():
    recs = [{"impl": i, "L": 8, "mode": "fwd", "ms_median": ms}
            for i, ms in (("mamba1_fused", 6.0), ("mamba1_gemm", 2.0), ("mamba1_floor", 4.0), ("transformer", 3.0))]
    (row,) = bench_block.summarize(recs)
    assert row["fused_over_gemm_only"] == 3.0 and row["fused_over_gemm_floor"] == 1.5
    assert row["transformer_over_fused"] == 0.5


@needs_fused
@pytest.mark.slow
def test_bench_block_ctr_throughput(tmp_path, tiny_world):
    out = tmp_path / "c"
    r = run_cli("bench", "block", "--lengths", "4", "--tokens", "8", "--repeats", "1", "--ref-repeats", "1",
                "--warmup", "0", "--d-model", "16", "--headdim", "8", "--d-state", "4", "--impls", "mamba2_fused",
                "--no-step", "--ctr-data", tiny_world, "--ctr-config", "mmctr_synth/mambactr_tiny",
                "--ctr-steps", "2", "--ctr-repeats", "1", "--out", out)
    assert r.returncode == 0, r.stderr
    ctr = json.loads((out / "block.json").read_text())["ctr_throughput"]
    for key in ("mambactr", "mambactr_transformer_twin"):
        assert ctr[key]["samples_per_s_median"] > 0 and ctr[key]["params"] > 0
    assert ctr["mambactr"]["params"] != ctr["mambactr_transformer_twin"]["params"]
    assert "samples/s vs Transformer twin" in r.stdout
