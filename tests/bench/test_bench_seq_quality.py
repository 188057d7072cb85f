"""`ssmrec bench seq --quality` at toy size: rows x seeds trained, aggregated as mean ± std of the
runs' own test metrics, resumable, plan errors one line."""

import json
import re
import shutil
import statistics

import pytest
import yaml

from tests.conftest import run_cli

PLAN = {"seeds": 2, "datasets": {"synth": {
    "rows": [{"config": "seq/synth_mamba4rec", "protocol": "masked",
              "set": {"data.source": "synth-tiny", "model_params.hidden_size": 16}},
             {"config": "seq/synth_gru4rec", "protocol": "unmasked", "label": "GRU4Rec toy",
              "set": {"data.source": "synth-tiny"}}],
    "anchors": [{"name": "a published number", "protocol": "masked", "ndcg@10": 0.5}]}}}


def _plan(tmp_path, plan=PLAN):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


@pytest.mark.slow
def test_quality_table_is_the_mean_and_std_of_the_seeds_and_resumes(tmp_path):
    out, plan = tmp_path / "q", _plan(tmp_path)
    args = ["bench", "seq", "--quality", "--plan", plan, "--epochs", "2", "--jobs", "2", "--threads", "1", "--out", out]
    r = run_cli(*args)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    q = json.loads((out / "quality.json").read_text())
    assert len(q["runs"]) == 4 and all(x["status"] == "ok" for x in q["runs"])
    for row in q["rows"]:
        name, protocol = row["row"], row["protocol"]
        summaries = [json.loads((out / "runs" / "synth" / f"{name}-s{i}" / "summary.json").read_text()) for i in (0, 1)]
        assert {s["protocol"] for s in summaries} == {protocol}  # validation selected under the row's protocol
        for m in ("hr@10", "ndcg@10", "mrr@20"):
            vals = [s[f"test_{protocol}_{m}"] for s in summaries]
            assert row[f"{protocol}_{m}"] == pytest.approx([statistics.fmean(vals), statistics.stdev(vals)])
        assert row["seeds"] == 2 and row["params"] == summaries[0]["params"]
        seeds = {yaml.safe_load((out / "runs" / "synth" / f"{name}-s{i}" / "config.yaml").read_text())["train"]["seed"]
                 for i in (0, 1)}
        assert len(seeds) == 2  # two seeds, not one run twice
        for i in (0, 1):
            bench = json.loads((out / "runs" / "synth" / f"{name}-s{i}" / "bench.json").read_text())
            assert bench["peak_rss_mb"] > 50 and bench["jobs"] == 2 and bench["threads"] == 1
    md = (out / "quality.md").read_text()
    assert "GRU4Rec toy" in md and "a published number" in md and " ± " in md
    assert "threads per run: 1; runs at a time: 2" in md  # as the runs recorded it, not this invocation's
    assert (out / "quality.png").stat().st_size > 1000
    # a rerun keeps the finished runs; a changed config retrains
    r = run_cli(*args)
    assert r.returncode == 0 and "4 already finished with the same config, 0 to train" in r.stdout
    r = run_cli(*args[:-2], "--out", out, "--dry-run", "--set", "train.lr=0.002")
    assert r.returncode == 0 and "0 already finished with the same config, 4 to train" in r.stdout
    # --report-only: one more seed planned, nothing trains, the table keeps the 2 finished seeds
    r = run_cli(*args[:-6], "--out", out, "--seeds", "3", "--report-only")  # default --jobs / --threads
    assert r.returncode == 0, r.stderr[-2000:]
    assert "threads per run: 1; runs at a time: 2" in (out / "quality.md").read_text()
    assert not (out / "runs" / "synth" / "synth_gru4rec-unmasked-s2").exists()
    q = json.loads((out / "quality.json").read_text())
    assert [row["seeds"] for row in q["rows"]] == [2, 2]
    # one entry per row, naming its one missing seed
    assert re.search(r"Not trained yet: .*synth_gru4rec-unmasked \(seeds \d+\)", (out / "quality.md").read_text())
    # an interrupted run (last.pt, no summary) continues with --resume instead of starting over
    run0 = out / "runs" / "synth" / "synth_mamba4rec-masked-s0"
    before = json.loads((run0 / "summary.json").read_text())
    (run0 / "summary.json").unlink()
    r = run_cli(*args)
    assert r.returncode == 0 and "resume synth synth_mamba4rec-masked-s0" in r.stdout, r.stdout[-2000:]
    after = json.loads((run0 / "summary.json").read_text())
    assert after["test_masked_ndcg@10"] == before["test_masked_ndcg@10"] and after["epochs"] == before["epochs"]
    # every finished run left a small record; with the run folders gone the table rebuilds from them alone
    names = sorted(f"{row}-s{i}" for row in ("synth_mamba4rec-masked", "synth_gru4rec-unmasked") for i in (0, 1))
    assert sorted(p.stem for p in (out / "records" / "synth").glob("*.json")) == names
    table = json.loads((out / "quality.json").read_text())["rows"]
    shutil.rmtree(out / "runs")
    r = run_cli(*args[:-6], "--out", out, "--seeds", "2", "--report-only")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "quality.json").read_text())["rows"] == table
    r = run_cli(*args, "--dry-run")
    assert r.returncode == 0 and "4 already finished with the same config, 0 to train" in r.stdout
    r = run_cli(*args, "--dry-run", "--set", "train.lr=0.002")  # a record of another config does not count
    assert r.returncode == 0 and "0 already finished with the same config, 4 to train" in r.stdout
    # --seed-index: only that seed of each row trains; the others keep their records
    r = run_cli(*args, "--dry-run", "--seeds", "3", "--seed-index", "2")
    assert r.returncode == 0 and "4 already finished with the same config, 2 to train" in r.stdout, r.stdout[-2000:]
    assert re.search(r"train +synth synth_gru4rec-unmasked-s2", r.stdout) and "keep   synth synth_gru4rec-unmasked-s1" in r.stdout
    for bad in ("3", "x", "-1"):
        r = run_cli(*args, "--dry-run", "--seeds", "3", "--seed-index", bad)
        lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
        assert r.returncode != 0 and len(lines) == 1 and "--seed-index" in lines[0] and "0..2" in lines[0], r.stderr
    r = run_cli(*args, "--seeds", "4", "--seed-index", "3", "--rows", "synth_gru4rec-unmasked")  # s2 stays untrained
    assert r.returncode == 0, r.stderr[-2000:]
    q = json.loads((out / "quality.json").read_text())
    assert [row["seeds"] for row in q["rows"]] == [3] and "synth_gru4rec-unmasked-s3" in r.stdout
    assert [x["status"] for x in q["runs"]] == ["ok", "ok", "missing", "ok"]
    # a damaged record is one clear line naming it, not a silent retrain or a traceback
    (out / "records" / "synth" / "synth_gru4rec-unmasked-s1.json").write_text("{not json")
    r = run_cli(*args, "--report-only")
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "synth_gru4rec-unmasked-s1.json" in lines[0], r.stderr[-1500:]


def test_quality_plan_errors_are_one_line(tmp_path):
    bad_protocol = {"datasets": {"synth": {"rows": [{"config": "seq/synth_mamba4rec", "protocol": "half"}]}}}
    bad_config = {"datasets": {"synth": {"rows": [{"config": "seq/nope", "protocol": "masked"}]}}}
    for plan, needles, extra in [(bad_protocol, ["plan.yaml", "protocol"], []), (bad_config, ["seq/nope"], []),
                                 (PLAN, ["--rows", "synth_mamba4rec-masked"], ["--rows", "x-masked"]),
                                 (PLAN, ["--datasets", "synth"], ["--datasets", "beauty"])]:
        r = run_cli("bench", "seq", "--quality", "--plan", _plan(tmp_path, plan), "--dry-run", "--out", tmp_path / "q", *extra)
        lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
        assert r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-1500:]
        assert all(n in lines[0] for n in needles), lines[0]


def test_one_seed_has_no_std_and_two_have_the_sample_std():
    from ssmrec.bench.seq_quality import Plan, _pm, aggregate

    plan = Plan.model_validate({"seeds": 2, "datasets": {"d": {"rows": [{"config": "seq/x", "protocol": "masked"}]}}})
    rec = {"dataset": "d", "row": "x-masked", "status": "ok", "params": 10, "best_epoch": 3, "epochs": 5,
           "epoch_s": [1.0, 2.0], "peak_rss_mb": None, "masked_ndcg@10": 0.1}
    one = aggregate(plan, [rec])[0]
    assert one["masked_ndcg@10"] == (0.1, None) and _pm(one["masked_ndcg@10"]) == "0.1000"
    two = aggregate(plan, [rec, {**rec, "seed": 1, "masked_ndcg@10": 0.2}])[0]
    assert two["masked_ndcg@10"] == pytest.approx((0.15, statistics.stdev([0.1, 0.2])))
    assert _pm(two["masked_ndcg@10"]) == "0.1500 ± 0.0707" and two["seeds"] == 2


def test_runs_are_planned_seed_major(tmp_path):
    """A bench stopped early should leave one seed of every row, not every seed of the first row."""
    from ssmrec.bench.seq_quality import load_plan, plan_runs

    plan, _ = load_plan(_plan(tmp_path))
    runs = plan_runs(plan, tmp_path / "q", None, 1, [])
    assert [r["run_dir"].name for r in runs] == ["synth_mamba4rec-masked-s0", "synth_gru4rec-unmasked-s0",
                                                 "synth_mamba4rec-masked-s1", "synth_gru4rec-unmasked-s1"]
