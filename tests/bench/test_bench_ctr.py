"""`ssmrec bench ctr` on the tiny world: outputs, failure handling, resume, list validation."""

import gzip
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from ssmrec.bench import common
from ssmrec.bench.ctr import (DEFAULT_LIST, PAPER_AUC, REFERENCE_VOCAB, load_entries, reference_config_for,
                              reference_params)
from tests.conftest import SHARED_DATA, run_cli

# Two small real entries and one that fails while it trains (in the worker): a learning rate so large
# that the loss diverges, which the Trainer stops with one line.
TINY_LIST = {"models": [
    {"label": "tiny_mm", "config": "mmctr_synth/mambactr_tiny", "reference": "mmctr/mambactr",
     "paper": "mambactr_origin"},
    {"label": "tiny_nomm", "config": "mmctr_synth/mambactr_tiny", "reference": "mmctr/mambactr",
     "set": {"model_params.use_mm_emb": False}, "paper": "mambactr_origin_nomm"},
    {"label": "broken", "config": "mmctr_synth/mambactr_tiny",
     "set": {"train.lr": 1.0e+30, "train.grad_clip": 0.0, "model_params.batch_norm": False}},
]}
FAST = ["--epochs", "1", "--set", "train.max_steps_per_epoch=3", "--set", "data.max_len=8", "--infer-repeats", "2"]


def _write_list(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("ssmrec: error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def bench_run(tiny_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_ctr")
    lst = _write_list(tmp / "list.yaml", TINY_LIST)
    out = tmp / "out"
    proc = run_cli("bench", "ctr", "--data", tiny_world, "--config-list", lst, "--out", out, *FAST)
    return proc, out, lst


@pytest.mark.slow
def test_bench_writes_consistent_results_and_records_the_failure(bench_run):
    proc, out, _ = bench_run
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    err = _error_line(proc)
    assert "1 of 3 models failed" in err and "broken" in err and "diverged" in err

    res = json.loads((out / "results.json").read_text())
    recs = {r["label"]: r for r in res["records"]}
    assert list(recs) == ["tiny_mm", "tiny_nomm", "broken"]
    meta = res["meta"]
    assert meta["epochs"] == 1 and meta["seed"] == 20242025 and meta["torch"]
    assert 0.5 < meta["oracle_auc"] < 1 and 0 < meta["popularity_auc"] < 1

    for label in ("tiny_mm", "tiny_nomm"):
        r = recs[label]
        assert r["status"] == "ok", r
        assert 0 < r["valid_auc"] < 1 and r["valid_logloss"] > 0
        assert r["oracle_auc"] == pytest.approx(meta["oracle_auc"])  # synthetic data has truth/
        assert r["params"] > 0 and r["params_ref"] > r["params"]  # real vocab >> tiny world's
        assert 0 < r["train_s_per_epoch"] <= r["wall_s"]
        assert r["infer_repeats"] == 2 and 0 < r["infer_ms_per_1k_min"] <= r["infer_ms_per_1k_median"]
        assert r["peak_rss_mb"] > 50 and r["threads"] >= 1
        assert r["epochs_run"] == 1 and r["max_len"] == 8  # --set reaches every model
        assert (Path(r["run_dir"]) / "best.pt").is_file()
    # Without the 128 x 128 multimodal projection (and a narrower item vector) the model is smaller.
    assert recs["tiny_nomm"]["params"] < recs["tiny_mm"]["params"]
    assert recs["tiny_nomm"]["params_ref"] < recs["tiny_mm"]["params_ref"]
    assert recs["broken"]["status"] == "failed" and "training diverged" in recs["broken"]["error"]

    md = (out / "results.md").read_text()
    rows = [line for line in md.splitlines() if re.match(r"^\| \d+ \| ", line)]
    assert [row.split("|")[2].strip() for row in rows] == sorted(
        ["tiny_mm", "tiny_nomm"], key=lambda lab: -recs[lab]["valid_auc"])
    aucs = [float(row.split("|")[7]) for row in rows]
    assert aucs == sorted(aucs, reverse=True)
    for row in rows:  # each model's own batch size and learning rate are shown
        r = recs[row.split("|")[2].strip()]
        assert row.split("|")[4].strip() == f"{r['batch_size']} / {r['lr']:g}"
    assert f"{recs['tiny_mm']['params']:,}" in md and f"{recs['tiny_mm']['params_ref']:,}" in md
    assert "oracle AUC" in md and "broken" in md.split("**Failed:**")[1]
    assert "MambaCTR origin (Mamba2)" in md and "0.9835" in md  # the paper comparison
    assert md.strip() in proc.stdout  # the table is printed at the end

    png = (out / "auc_vs_time.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not list(out.glob(".*tmp*"))  # atomic writes left no temporary files


def test_params_at_reference_match_a_direct_build(bench_run):
    _, out, lst = bench_run
    recs = {r["label"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    entry = load_entries(lst)[1]  # tiny_nomm: its model_params override reaches the reference build
    path, cfg = reference_config_for(entry)
    assert cfg["model_params"]["use_mm_emb"] is False
    assert recs["tiny_nomm"]["params_ref"] == reference_params(cfg, str(path))


@pytest.mark.slow
def test_resume_keeps_measured_models_and_reruns_the_rest(bench_run, tiny_world):
    _, out, lst = bench_run
    before = {r["label"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    proc = run_cli("bench", "ctr", "--data", tiny_world, "--config-list", lst, "--out", out, "--resume",
                   "--models", "tiny_mm,broken", *FAST)
    assert proc.returncode == 2 and "1 of 2 models failed" in _error_line(proc)
    assert "tiny_mm: kept from" in proc.stdout
    after = {r["label"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    assert after["tiny_mm"] == before["tiny_mm"]  # not re-run
    assert after["tiny_nomm"] == before["tiny_nomm"]  # not selected, still kept
    assert after["broken"]["status"] == "failed" and after["broken"]["wall_s"] != before["broken"]["wall_s"]

    # Other settings cannot be mixed into the same results file.
    proc = run_cli("bench", "ctr", "--data", tiny_world, "--config-list", lst, "--out", out, "--resume",
                   "--models", "tiny_mm", "--epochs", "2")
    assert proc.returncode == 2 and "epochs=1" in _error_line(proc)


def test_unknown_label_is_one_line_error(tmp_path, tiny_world):
    lst = _write_list(tmp_path / "list.yaml", TINY_LIST)
    proc = run_cli("bench", "ctr", "--data", tiny_world, "--config-list", lst, "--out", tmp_path / "o",
                   "--models", "tiny_mm,nope")
    assert proc.returncode == 2
    line = _error_line(proc)
    assert "'nope'" in line and "tiny_mm" in line
    assert not (tmp_path / "o").exists()


def test_missing_config_file_is_one_line_error_naming_the_model(tmp_path, tiny_world):
    doc = {"models": TINY_LIST["models"][:1] + [{"label": "later", "config": "mmctr_synth/not_written_yet"}]}
    lst = _write_list(tmp_path / "list.yaml", doc)
    proc = run_cli("bench", "ctr", "--data", tiny_world, "--config-list", lst, "--out", tmp_path / "o")
    assert proc.returncode == 2
    line = _error_line(proc)
    assert "'later'" in line and "not_written_yet" in line
    assert not (tmp_path / "o" / "results.json").exists()  # nothing was trained


@pytest.mark.parametrize("doc, message", [
    ({"models": [{"label": "a", "config": "x", "sett": {}}]}, "unknown key 'sett'"),
    ({"models": [{"label": "a", "config": "x"}, {"label": "a", "config": "y"}]}, "duplicate label 'a'"),
    ({"models": [{"label": "a b", "config": "x"}]}, "label 'a b'"),
    ({"models": [{"label": "a", "config": "x", "paper": "gpt"}]}, "unknown paper row 'gpt'"),
    ({"models": []}, "empty"),
    ({"model": []}, "'models'"),
])
def test_bad_model_list_is_a_config_error(tmp_path, doc, message):
    from ssmrec.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_entries(_write_list(tmp_path / "l.yaml", doc))


def test_default_list_covers_the_issue_models():
    entries = load_entries(DEFAULT_LIST)
    assert [e.label for e in entries] == ["din", "din_dice", "qin", "transformer_dcn", "dmf", "mambactr_origin",
                                          "mambactr_origin_nomm", "mambactr_ablated", "mambactr_ablated_nomm"]
    nomm = [e for e in entries if e.label.endswith("_nomm")]
    assert nomm and all(e.set == {"model_params.use_mm_emb": False} for e in nomm)
    assert all(e.paper in PAPER_AUC for e in entries if e.paper)


def test_reference_vocab_matches_the_real_feature_map():
    fm_path = SHARED_DATA / "mmctr-microlens1m-vocab" / "feature_map.json"
    if not fm_path.is_file():
        pytest.skip(f"{fm_path} not available")
    features = {k: v for f in json.loads(fm_path.read_text())["features"] for k, v in f.items()}
    assert features["item_id"]["vocab_size"] == REFERENCE_VOCAB["item_id"]
    assert features["item_tags"]["vocab_size"] == REFERENCE_VOCAB["item_tags"]
    assert features["likes_level"]["vocab_size"] == features["views_level"]["vocab_size"] == REFERENCE_VOCAB["levels"]
    vocab = json.loads(gzip.decompress((fm_path.parent / "feature_vocab.json.gz").read_bytes()))
    assert len(vocab["item_id"]) == REFERENCE_VOCAB["item_id"]


def test_qin_params_at_reference_match_the_reference_doc():
    entry = next(e for e in load_entries(DEFAULT_LIST) if e.label == "qin")
    path, cfg = reference_config_for(entry)
    if cfg is None:
        pytest.skip(f"{path} not written yet")
    assert reference_params(cfg, str(path)) == 31_244_293  # reference doc §4


def test_common_timing_and_atomic_writes(tmp_path):
    calls = []
    t = common.time_repeats(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and t["repeats"] == 3 and len(t["times"]) == 3
    assert 0 <= t["min"] <= t["median"] <= max(t["times"])
    s = common.summarize_times([3.0, 1.0, 2.0, 10.0])
    assert (s["min"], s["median"]) == (1.0, 2.5)
    with pytest.raises(ValueError):
        common.time_repeats(lambda: None, repeats=0)

    p = common.write_json_atomic(tmp_path / "sub" / "r.json", {"a": math.nan, "b": [1.5, math.inf]})
    assert json.loads(p.read_text()) == {"a": None, "b": [1.5, None]}
    assert sorted(x.name for x in p.parent.iterdir()) == ["r.json"]

    plt = common.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    png = common.save_figure_atomic(fig, tmp_path / "f.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and sorted(x.name for x in tmp_path.iterdir()) == ["f.png", "sub"]

    table = common.markdown_table(["a", "b"], [[1, "x|y"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]
    assert common.format_seconds(73.2) == "1:13" and common.format_seconds(3700) == "1:01:40"
    assert common.format_seconds(None) == "n/a"


@pytest.mark.slow
def test_resume_reruns_a_model_whose_config_file_changed(tmp_path, tiny_world):
    from ssmrec.bench.ctr import _config_path

    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(_config_path("mmctr_synth/mambactr_tiny").read_text())
    lst = _write_list(tmp_path / "list.yaml", {"models": [{"label": "mine", "config": str(cfg_file)}]})
    out = tmp_path / "out"
    args = ("bench", "ctr", "--data", tiny_world, "--config-list", lst, "--out", out, *FAST)
    assert run_cli(*args).returncode == 0

    proc = run_cli(*args, "--resume")  # nothing changed: kept
    assert proc.returncode == 0 and "mine: kept from" in proc.stdout

    doc = yaml.safe_load(cfg_file.read_text())
    doc["train"]["lr"] = 1.0e-4
    cfg_file.write_text(yaml.safe_dump(doc))
    proc = run_cli(*args, "--resume")  # the YAML changed: re-trained with the new lr
    assert proc.returncode == 0 and "mine: kept from" not in proc.stdout and "mine: training" in proc.stdout
    rec = json.loads((out / "results.json").read_text())["records"][0]
    assert rec["lr"] == pytest.approx(1e-4) and rec["run_config"]["train"]["lr"] == pytest.approx(1e-4)


@pytest.mark.slow
def test_invalid_model_params_are_refused_before_training_anything(tmp_path, tiny_world):
    """A config error (headdim not dividing Mamba-2's inner width) is found when the plan is
    resolved: one line, and no model is trained."""
    lst = _write_list(tmp_path / "l.yaml", {"models": [
        {"label": "ok", "config": "mmctr_synth/mambactr_tiny"},
        {"label": "typo", "config": "mmctr_synth/mambactr_tiny", "set": {"model_params.headdim": 7}}]})
    proc = run_cli("bench", "ctr", "--data", tiny_world, "--config-list", lst, "--out", tmp_path / "o", *FAST)
    assert proc.returncode == 2
    line = _error_line(proc)
    assert "model 'typo'" in line and "headdim (7) must divide" in line
    assert not (tmp_path / "o" / "results.json").exists()
