"""`ssmrec bench block`: runs end to end at toy sizes and writes consistent JSON + PNG."""

import json

import pytest
import torch

from ssmrec.bench import block as bench_block
from ssmrec.nn import fused_scan
from tests.conftest import run_cli

needs_fused = pytest.mark.skipif(not fused_scan.fused_available(),
                                 reason=f"fused CPU kernel did not build: {fused_scan.fused_unavailable_reason()}")


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
    assert "fused / GEMM floor" in r.stdout


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
