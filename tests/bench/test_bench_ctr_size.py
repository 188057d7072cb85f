"""`ssmrec bench ctr --size`: the throughput mode's records, profile, FuxiCTR column and errors (tiny world)."""

import json
import statistics
import stat

import pytest
import yaml

from ssmrec.bench.ctr_size import auto_steps, op_family
from tests.conftest import run_cli

LIST = {"models": [
    {"label": "tiny_mm", "config": "mmctr_synth/mambactr_tiny"},
    {"label": "din", "config": "mmctr_synth/din", "set": {"model_params.attention_impl": "concat"}},
]}
SMALL = ["--set", "train.batch_size=32", "--set", "data.max_len=8", "--steps", "3", "--warmup", "1",
         "--infer-repeats", "2"]

# Stands in for the throw-away FuxiCTR venv's python: answers the harness's --out with fixed steps.
FAKE_FUXICTR = """#!/usr/bin/env python3
import json, sys
args = sys.argv[2:]
out = args[args.index("--out") + 1]
json.dump({"step_seconds": [2.0, 1.0, 4.0], "inference": {"rows_per_second": 1000.0}, "param_count": 7,
           "peak_rss_mb": 10.0, "fuxictr_version": "fake"}, open(out, "w"))
"""


def _error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("ssmrec: error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[-1]


def test_auto_steps_and_op_families():
    assert auto_steps(8192, 0, -1) == (5, 1)
    assert auto_steps(128, 0, -1) == (128, 5)
    assert auto_steps(128, 7, 0) == (7, 0)
    assert op_family("aten::addmm") == "gemm" and op_family("aten::embedding_dense_backward") == "embedding"
    assert op_family("_ScanFnBackward") == "mamba_kernels" and op_family("aten::relu") == "other"


@pytest.mark.slow
def test_size_mode_times_every_model_and_thread_count(tmp_path, tiny_world):
    lst = tmp_path / "list.yaml"
    lst.write_text(yaml.safe_dump(LIST))
    fake = tmp_path / "fxpython"
    fake.write_text(FAKE_FUXICTR)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"
    proc = run_cli("bench", "ctr", "--size", "microlens1m", "--data", tiny_world, "--config-list", lst, "--out", out,
                   "--thread-counts", "2,1", "--fuxictr-python", fake, *SMALL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["thread_counts"] == [1, 2]
    recs = {(r["label"], r["threads"]): r for r in res["records"]}
    assert set(recs) == {("tiny_mm", 1), ("tiny_mm", 2), ("din", 1), ("din", 2), ("fuxictr_din", 1),
                         ("fuxictr_din", 2)}
    for (label, threads), r in recs.items():
        assert r["status"] == "ok", r
        if label == "fuxictr_din":
            assert r["train_samples_per_s"] == pytest.approx(32 / 2.0)  # batch / median of the harness's steps
            assert r["infer_rows_per_s"] == 1000.0
            continue
        assert len(r["step_s"]) == 3 and r["warmup_steps"] == 1 and r["batch_size"] == 32
        assert r["train_samples_per_s"] == pytest.approx(32 / statistics.median(r["step_s"]))
        assert r["infer_rows_per_s"] > 0 and len(r["infer_s"]) == 2 and r["peak_rss_mb"] > 0
        if threads == 1:  # profiled with the fewest threads only
            shares = r["profile"]["phase_share"]
            assert set(shares) == {"data", "forward", "backward", "optimizer"}
            assert 0.5 < sum(shares.values()) <= 1.05, shares  # the phases cover the step
            assert r["profile"]["op_share"]["gemm"] > 0
        else:
            assert r["profile"] is None
    md = (out / "results.md").read_text()
    ratio = recs[("din", 1)]["train_samples_per_s"] / 16.0
    assert f"| {ratio:.2f} |" in md  # the DIN row's ratio to the official baseline at the same threads
    assert (out / "throughput.png").stat().st_size > 0


def test_size_mode_needs_the_world_and_valid_options(tmp_path, tiny_world):
    proc = run_cli("bench", "ctr", "--size", "microlens1m", "--data", tmp_path / "nowhere", "--out", tmp_path / "o")
    line = _error_line(proc)
    assert "train.parquet" in line and "ssmrec data synth --size microlens1m" in line
    proc = run_cli("bench", "ctr", "--size", "microlens1m", "--data", tiny_world, "--thread-counts", "1,x",
                   "--out", tmp_path / "o")
    assert "--thread-counts" in _error_line(proc)
    proc = run_cli("bench", "ctr", "--size", "microlens1m", "--data", tiny_world, "--epochs", "3",
                   "--out", tmp_path / "o")
    assert "--epochs" in _error_line(proc)
    proc = run_cli("bench", "ctr", "--data", tiny_world, "--steps", "4", "--out", tmp_path / "o")
    assert "--size" in _error_line(proc)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_size_mode_runs_ddp_processes_through_torchrun(tmp_path, tiny_world):
    lst = tmp_path / "list.yaml"
    lst.write_text(yaml.safe_dump(LIST))
    out = tmp_path / "out"
    proc = run_cli("bench", "ctr", "--size", "microlens1m", "--data", tiny_world, "--config-list", lst, "--out", out,
                   "--models", "tiny_mm", "--thread-counts", "1", "--processes", "2,1", "--no-profile", *SMALL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["process_counts"] == [1, 2]
    recs = {r["processes"]: r for r in res["records"]}
    assert set(recs) == {1, 2} and all(r["status"] == "ok" for r in recs.values())
    ddp = recs[2]
    assert ddp["batch_size"] == 32 and len(ddp["step_s"]) == 3  # the global batch; rank 0's steps
    assert ddp["train_samples_per_s"] == pytest.approx(32 / statistics.median(ddp["step_s"]))
    ratio = ddp["train_samples_per_s"] / recs[1]["train_samples_per_s"]
    assert f"| 1 x 1 | " in (out / "results.md").read_text() and f"| {ratio:.2f} |" in (out / "results.md").read_text()
