"""CLI end to end: `ssmrec demo --preset tiny` prints the summary JSON line; usage errors are one line."""

import json

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_demo_tiny_end_to_end(tmp_path):
    r = run_cli("demo", "--preset", "tiny", "--data-dir", tmp_path / "world", "--out-dir", tmp_path / "runs",
                "--set", "train.progress=false")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("valid_auc", "valid_logloss", "oracle_auc", "train_s_per_epoch", "infer_ms_per_1k"):
        assert isinstance(summary[key], float), key
    assert 0.5 < summary["valid_auc"] < summary["oracle_auc"] <= 1.0
    assert (tmp_path / "world" / "truth" / "valid.parquet").exists()
    assert (tmp_path / "runs" / "demo-tiny" / "best.pt").exists()


def test_missing_config_and_checkpoint_are_one_line_errors(tmp_path):
    for args in (("train", "--config", tmp_path / "nope.yaml"),
                 ("predict", "--checkpoint", tmp_path / "nope.pt", "--out", tmp_path / "s.csv"),
                 ("data", "check", tmp_path / "empty_dir")):
        r = run_cli(*args)
        assert r.returncode == 2, args
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert r.stderr.startswith("ssmrec: error:")
