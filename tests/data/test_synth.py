"""Synthetic world: exact schema (validated by the real loader), truth files, Task-1 material,
determinism per seed, and the properties the world promises (recency matters, oracle > chance)."""

import dataclasses
import errno
import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ssmrec.data.mmctr import describe, read_truth
from ssmrec.data.synth import PRESETS, WorldConfig, generate, synthesize
from ssmrec.errors import OutputError, SsmrecError
from tests.conftest import run_cli


def test_schema_truth_and_task1_files(tiny_world, tiny_data):
    stats = describe(tiny_world)  # the loader's validation accepts the world
    assert stats is not None
    for split in ("train", "valid", "test"):
        t = read_truth(tiny_world, split)
        assert len(t) == len(tiny_data.splits[split]) and ((t > 0) & (t < 1)).all()
    assert tiny_data.splits["test"].label is None  # withheld, like the challenge
    assert pq.read_schema(tiny_world / "train.parquet").names == [
        "user_id", "item_seq", "likes_level", "views_level", "item_id", "label"]
    feat = pq.read_table(tiny_world / "item_feature.parquet").to_pydict()
    n = tiny_data.item_info.n_items - 1
    assert feat["item_id"] == list(range(1, n + 1))
    assert all(isinstance(t, str) and len(t.split()) == 4 for t in feat["item_title"])
    from PIL import Image

    img = Image.open(tiny_world / feat["cover_path"][0])
    assert img.size == (PRESETS["tiny"].cover_size,) * 2 and img.mode == "RGB"
    info = tiny_data.item_info
    assert (info.emb[0] == 0).all() and (info.tags[0] == 0).all()
    # levels 0-9 as in the real vocabulary, ids in range, histories left-padded
    s = tiny_data.splits["train"]
    assert 0 <= int(s.likes_level.min()) and int(s.likes_level.max()) <= 9
    seq = s.item_seq
    first_real = (seq > 0).int().argmax(1)
    lengths = (seq > 0).sum(1)
    assert ((first_real == seq.shape[1] - lengths) | (lengths == 0)).all()


def _digest(path):
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*.parquet")):
        h.update(f.read_bytes())
    return h.hexdigest()


def test_deterministic_per_seed(tmp_path):
    cfg = PRESETS["tiny"]
    a = synthesize(tmp_path / "a", config=cfg, seed=3)
    b = synthesize(tmp_path / "b", config=cfg, seed=3)
    c = synthesize(tmp_path / "c", config=cfg, seed=4)
    assert _digest(a) == _digest(b) != _digest(c)
    assert (a / "covers" / "000001.png").read_bytes() == (b / "covers" / "000001.png").read_bytes()


def test_refuses_to_overwrite_without_flag(tmp_path):
    synthesize(tmp_path / "w", preset="tiny")
    with pytest.raises(SsmrecError, match="not empty"):
        synthesize(tmp_path / "w", preset="tiny")
    r = run_cli("data", "synth", "--out", tmp_path / "w", "--preset", "tiny")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "--overwrite" in r.stderr


_SMALL = WorldConfig(n_items=40, n_users=60, n_categories=3, warmup_max=10, n_impressions=4, cover_size=8)


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_world_json_records_the_preset_or_config_actually_used(tmp_path):
    synthesize(tmp_path / "tiny", preset="tiny")
    assert json.loads((tmp_path / "tiny" / "world.json").read_text())["preset"] == "tiny"
    # An explicit config is recorded as "custom" with every parameter (not as the unused default preset).
    custom = dataclasses.replace(_SMALL, beta=3.5)
    w = json.loads((synthesize(tmp_path / "custom", config=custom, seed=7) / "world.json").read_text())
    assert w["preset"] == "custom" and w["seed"] == 7
    assert {k: w[k] for k in dataclasses.asdict(custom)} == dataclasses.asdict(custom)
    # A config equal to a preset is recorded under that preset's name.
    w = json.loads((synthesize(tmp_path / "as-preset", config=PRESETS["tiny"]) / "world.json").read_text())
    assert w["preset"] == "tiny" and w["n_users"] == PRESETS["tiny"].n_users


def test_overwrite_replaces_only_a_world_and_never_leaves_half_of_one(tmp_path, monkeypatch):
    import ssmrec.data.synth as synth

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("precious")
    with pytest.raises(OutputError, match="not a synthetic world"):
        synthesize(mine, config=_SMALL, overwrite=True)
    assert (mine / "keep.txt").read_text() == "precious"
    (tmp_path / "afile").write_text("x")
    r = run_cli("data", "synth", "--out", tmp_path / "afile", "--preset", "tiny")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "not a folder" in lines[0] and "Traceback" not in r.stderr

    world = synthesize(tmp_path / "w", config=_SMALL, seed=1)
    before = _files(world)
    calls = []

    def disk_full_at_cover_5(path, *a):
        calls.append(path)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return draw(path, *a)

    draw = synth._draw_cover
    monkeypatch.setattr(synth, "_draw_cover", disk_full_at_cover_5)
    with pytest.raises(OutputError, match="no space left on device") as e:
        synthesize(world, config=_SMALL, seed=2, overwrite=True)
    assert "\n" not in str(e.value) and str(world) in str(e.value)
    assert _files(world) == before  # the old world is intact
    monkeypatch.undo()
    synthesize(world, config=_SMALL, seed=2, overwrite=True)
    assert json.loads((world / "world.json").read_text())["seed"] == 2 and _files(world) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mine", "w"]  # no staging or old copy left


def test_temporal_split_and_recency_matters():
    w = generate(PRESETS["tiny"], seed=0)
    r = w["rows"]
    assert (np.diff(r["time"]) >= 0).all()  # rows sorted by time -> contiguous split is temporal
    n = len(r["label"])
    tr, va = slice(0, int(0.8 * n)), slice(int(0.8 * n), n)
    oracle = roc_auc_score(r["label"][va], r["p_click"][va])
    z, seq, m = w["z"], r["item_seq"], r["item_seq"] > 0

    def pooled_score(weights):
        u = (z[seq] * (weights * m)[..., None]).sum(1)
        return np.stack([(u * z[r["item_id"]]).sum(1), w["log_pop"][r["item_id"]]], 1)

    recent = 0.75 ** np.arange(seq.shape[1] - 1, -1, -1)[None, :]
    aucs = {}
    for name, wts in {"mean": np.ones((1, seq.shape[1])), "recency": recent}.items():
        X = pooled_score(wts)
        aucs[name] = roc_auc_score(r["label"][va], LogisticRegression().fit(X[tr], r["label"][tr]).decision_function(X[va]))
    assert oracle > aucs["recency"] > aucs["mean"] + 0.02, (oracle, aucs)
