"""The chunked generator behind `ssmrec data synth --size microlens1m`: exact split row counts by
global time rank, users simulated in chunks and appended to the split files, the full per-category
tag pool, a world `data check` accepts; and the preset matches the real challenge's sizes."""

import dataclasses
import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ssmrec.data.mmctr import describe, load_mmctr
from ssmrec.data.synth import PRESETS, WorldConfig, synthesize

VOCAB = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mmctr-microlens1m-vocab"

SMALL = WorldConfig(n_items=400, n_users=1_500, n_categories=7, tags_per_category=10, n_impressions=4,
                    warmup_max=30, write_covers=False, split_rows=(5_000, 300, 600), chunk_users=250,
                    tag_projection=True)


def test_chunked_world_has_exact_split_counts_and_passes_the_checker(tmp_path):
    out = synthesize(tmp_path / "w", config=SMALL, seed=3)
    stats = describe(out)  # the same validation as `ssmrec data check`
    assert [stats["splits"][s]["rows"] for s in ("train", "valid", "test")] == list(SMALL.split_rows)
    assert stats["item_info"]["n_items"] == SMALL.n_items + 1
    # the whole per-category tag pool is reachable: the largest tag id is the last of the last category
    assert stats["item_info"]["n_tags"] == SMALL.n_categories * (SMALL.tags_per_category + 1) + 1
    assert "label" not in pq.read_schema(out / "test.parquet").names
    for split, n in zip(("train", "valid", "test"), SMALL.split_rows):
        assert pq.read_metadata(out / "truth" / f"{split}.parquet").num_rows == n
    data = load_mmctr(out, max_len=SMALL.max_len)
    users = np.concatenate([data.splits[s].user_id.numpy() for s in ("train", "valid", "test")])
    assert users.min() >= 1 and users.max() <= SMALL.n_users
    # 1,500 users x 4 impressions = 6,000 rows; 5,900 are kept (the 100 latest dropped)
    assert len(users) == sum(SMALL.split_rows) < SMALL.n_users * SMALL.n_impressions
    assert json.loads((out / "world.json").read_text())["split_rows"] == list(SMALL.split_rows)


def test_chunked_world_is_deterministic_and_chunk_size_only_moves_rows(tmp_path):
    a = synthesize(tmp_path / "a", config=SMALL, seed=3)
    b = synthesize(tmp_path / "b", config=SMALL, seed=3)
    for f in ("train.parquet", "test.parquet", "item_info.parquet", "truth/valid.parquet"):
        assert pq.read_table(a / f).equals(pq.read_table(b / f)), f
    # the items and the time split do not depend on the chunking
    c = synthesize(tmp_path / "c", config=dataclasses.replace(SMALL, chunk_users=700), seed=3)
    assert pq.read_table(a / "item_info.parquet").equals(pq.read_table(c / "item_info.parquet"))
    assert describe(c)["splits"]["valid"]["rows"] == SMALL.split_rows[1]


def test_the_microlens1m_preset_has_the_real_sizes():
    cfg = PRESETS["microlens1m"]
    assert cfg.split_rows == (3_600_000, 10_000, 379_142)  # reference doc §1.1
    assert cfg.n_users * cfg.n_impressions >= sum(cfg.split_rows)
    n_tags = cfg.n_categories * (cfg.tags_per_category + 1) + 1
    assert (cfg.n_items + 1, n_tags) == (91_718, 11_740)
    assert cfg.chunk_users and not cfg.write_covers
    if not (VOCAB / "feature_map.json").exists():
        pytest.skip(f"shared vocabulary not present at {VOCAB}")
    fm = json.loads((VOCAB / "feature_map.json").read_text())
    features = {f: spec for d in fm["features"] for f, spec in d.items()}
    assert features["item_id"]["vocab_size"] == cfg.n_items + 1
    assert features["item_tags"]["vocab_size"] == n_tags
    vocab = json.loads(gzip.decompress((VOCAB / "feature_vocab.json.gz").read_bytes()))
    assert len(vocab["item_tags"]) == n_tags
