"""MM-CTR parquet IO: round trips, statistics, truth files, every validation error and the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ssmrec.data import mmctr
from ssmrec.data.mmctr import (
    ItemInfo,
    MMCTRData,
    Split,
    describe,
    format_stats,
    load_mmctr,
    read_item_info,
    read_split,
    read_truth,
)
from ssmrec.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
N_ITEMS = 20  # item ids 0..19, 0 = padding
N_ROWS = 50
WIDTH = 8


# ----------------------------------------------------------------------------------------------
# Building small MM-CTR directories
# ----------------------------------------------------------------------------------------------


def _fixed_list(mat: np.ndarray, typ=pa.int64()) -> pa.Array:
    n, w = mat.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1), typ), w)


def _ragged_list(rows: list[list[int]], typ=pa.list_(pa.int64())) -> pa.Array:
    return pa.array(rows, type=typ)


def make_world(seed: int = 0) -> dict:
    """Numpy arrays of a small valid world (histories stored left-padded at width WIDTH)."""
    rng = np.random.default_rng(seed)
    tags = np.zeros((N_ITEMS, 5), np.int64)
    for i in range(1, N_ITEMS):
        k = 1 + i % 5
        tags[i, :k] = rng.integers(1, 30, size=k)
    tags[3, 0] = 33  # max tag -> n_tags = 34
    emb = rng.normal(size=(N_ITEMS, 128)).astype(np.float32)
    emb[0] = 0.0
    splits = {}
    for s_i, name in enumerate(("train", "valid", "test")):
        r = np.random.default_rng(seed * 10 + s_i + 1)
        hist_len = r.integers(0, WIDTH + 1, size=N_ROWS)
        hist_len[:5] = [0, 1, 3, WIDTH, WIDTH]  # some empty, short and full histories
        seq = np.zeros((N_ROWS, WIDTH), np.int64)
        for row, h in enumerate(hist_len):
            if h:
                seq[row, WIDTH - h:] = r.integers(1, N_ITEMS, size=h)
        splits[name] = {
            "user_id": r.integers(100, 130, size=N_ROWS),
            "item_seq": seq,
            "item_id": r.integers(1, N_ITEMS, size=N_ROWS),
            "likes_level": r.integers(0, 11, size=N_ROWS),
            "views_level": r.integers(0, 10, size=N_ROWS),
            "label": (r.random(N_ROWS) < 0.3).astype(np.float32),
            "p_click": r.random(N_ROWS),
        }
    return {"tags": tags, "emb": emb, "splits": splits}


def split_table(d: dict, with_label: bool = True, seq_array: pa.Array | None = None) -> pa.Table:
    cols = {
        "user_id": pa.array(d["user_id"], pa.int64()),
        "item_seq": seq_array if seq_array is not None else _fixed_list(d["item_seq"]),
        "item_id": pa.array(d["item_id"], pa.int64()),
        "likes_level": pa.array(d["likes_level"], pa.int64()),
        "views_level": pa.array(d["views_level"], pa.int64()),
    }
    if with_label:
        cols["label"] = pa.array(d["label"], pa.float32())
    return pa.table(cols)


def item_table(w: dict) -> pa.Table:
    return pa.table({
        "item_id": pa.array(np.arange(N_ITEMS), pa.int64()),
        "item_tags": _fixed_list(w["tags"]),
        "item_emb_d128": _fixed_list(w["emb"], pa.float32()),
    })


def write_world(root: Path, w: dict, test_label: bool = False, truth: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(item_table(w), root / "item_info.parquet")
    for name, d in w["splits"].items():
        pq.write_table(split_table(d, with_label=(name != "test" or test_label)), root / f"{name}.parquet")
    if truth:
        (root / "truth").mkdir(exist_ok=True)
        for name, d in w["splits"].items():
            pq.write_table(pa.table({"p_click": d["p_click"], "label": d["label"]}), root / "truth" / f"{name}.parquet")
    # unrelated files must be ignored
    pq.write_table(pa.table({"item_id": [1, 2], "item_title": ["a", "b"]}), root / "item_feature.parquet")
    (root / "covers").mkdir(exist_ok=True)
    return root


@pytest.fixture
def world():
    return make_world()


@pytest.fixture
def good_dir(tmp_path, world):
    return write_world(tmp_path / "mmctr", world)


def set_column(table: pa.Table, name: str, arr) -> pa.Table:
    arr = arr if isinstance(arr, (pa.Array, pa.ChunkedArray)) else pa.array(arr)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, arr)
    return table.append_column(name, arr)


def rewrite(path: Path, fn) -> None:
    pq.write_table(fn(pq.read_table(path)), path)


def window_ref(lists: list[list[int]], max_len: int) -> np.ndarray:
    """Per-row reference implementation of the left-padded window (test only)."""
    out = np.zeros((len(lists), max_len), np.int64)
    for r, lst in enumerate(lists):
        keep = list(lst)[-max_len:] if max_len else []
        if keep:
            out[r, max_len - len(keep):] = keep
    return out


def assert_data_error(exc: DataError, file: str, column, row, fragment: str | None = None):
    msg = str(exc)
    assert Path(exc.file).name == file, msg
    assert file in msg
    assert exc.column == column, msg
    assert exc.row == row, msg
    if column is not None:
        assert f"column '{column}'" in msg
    if row is not None:
        assert f"row {row}" in msg
    else:
        assert ", row " not in msg
    assert "\n" not in msg
    if fragment is not None:
        assert fragment in msg, msg


# ----------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------


def test_item_info_round_trip(good_dir, world):
    info = read_item_info(good_dir / "item_info.parquet")
    assert isinstance(info, ItemInfo)
    assert info.n_items == N_ITEMS
    assert info.n_tags == 34
    assert info.tags.dtype == torch.int64 and info.tags.shape == (N_ITEMS, 5)
    assert info.emb.dtype == torch.float32 and info.emb.shape == (N_ITEMS, 128)
    np.testing.assert_array_equal(info.tags.numpy(), world["tags"])
    np.testing.assert_array_equal(info.emb.numpy(), world["emb"])


def test_load_mmctr_round_trip(good_dir, world):
    data = load_mmctr(good_dir, max_len=WIDTH)
    assert isinstance(data, MMCTRData)
    assert data.max_len == WIDTH and data.root == good_dir
    assert set(data.splits) == {"train", "valid", "test"}
    for name, d in world["splits"].items():
        s = data.splits[name]
        assert isinstance(s, Split) and s.name == name and len(s) == N_ROWS
        for col in ("user_id", "item_id", "likes_level", "views_level", "item_seq"):
            t = getattr(s, col)
            assert t.dtype == (torch.int32 if col == "item_seq" else torch.int64), col  # histories: 4 B an id
            np.testing.assert_array_equal(t.numpy(), d[col])
        if name == "test":
            assert s.label is None
        else:
            assert s.label.dtype == torch.float32
            np.testing.assert_array_equal(s.label.numpy(), d["label"])
    # left padding: row 1 has exactly one history item in the last column
    seq = data.splits["train"].item_seq
    assert (seq[1, :-1] == 0).all() and seq[1, -1] > 0
    assert (seq[0] == 0).all()


@pytest.mark.parametrize("max_len", [1, 3, 5])
def test_truncation_keeps_most_recent(good_dir, world, max_len):
    s = read_split(good_dir / "train.parquet", "train", max_len=max_len, n_items=N_ITEMS)
    stored = world["splits"]["train"]["item_seq"]
    assert s.item_seq.shape == (N_ROWS, max_len)
    np.testing.assert_array_equal(s.item_seq.numpy(), stored[:, -max_len:])


def test_window_wider_than_stored_left_pads(good_dir, world):
    s = read_split(good_dir / "valid.parquet", "valid", max_len=12, n_items=N_ITEMS)
    stored = world["splits"]["valid"]["item_seq"]
    assert s.item_seq.shape == (N_ROWS, 12)
    assert (s.item_seq[:, :4] == 0).all()
    np.testing.assert_array_equal(s.item_seq[:, 4:].numpy(), stored)


@pytest.mark.parametrize("list_type", [pa.list_(pa.int64()), pa.large_list(pa.int32()), pa.list_(pa.int16())])
@pytest.mark.parametrize("max_len", [4, 6, 10])
def test_ragged_histories(tmp_path, world, list_type, max_len):
    rng = np.random.default_rng(3)
    lists = []
    for r in range(N_ROWS):
        n = int(rng.integers(0, 10))
        lists.append([int(x) for x in rng.integers(1, N_ITEMS, size=n)])
    lists[0] = []
    lists[1] = [0, 7, 0, 5]  # stored zeros are padding wherever they are, kept as-is
    lists[2] = list(range(1, 10))  # longer than every window: keep the right-most
    d = world["splits"]["train"]
    pq.write_table(split_table(d, seq_array=_ragged_list(lists, list_type)), tmp_path / "train.parquet",
                   row_group_size=7)  # several chunks
    s = read_split(tmp_path / "train.parquet", "train", max_len=max_len, n_items=N_ITEMS)
    np.testing.assert_array_equal(s.item_seq.numpy(), window_ref(lists, max_len))
    assert s.item_seq[2, -1] == 9  # most recent last
    if max_len < 9:
        assert s.item_seq[2, 0] == 10 - max_len  # oldest kept entry
    assert s.info["stored_width_min"] == 0 and s.info["stored_width_max"] == 9
    b = s.batch(torch.tensor([1, 0]))
    np.testing.assert_array_equal(b.mask.numpy(), window_ref([[0, 7, 0, 5], []], max_len) > 0)


@pytest.mark.parametrize("read_rows", [1, 7, 50, 1 << 17])
def test_reading_by_record_batches_equals_one_batch_and_rows_count_from_the_file(tmp_path, world, monkeypatch,
                                                                                 read_rows):
    """The reader goes through a file read_rows rows at a time: the arrays are the same for any batch
    size, batches become int64 model inputs, and an error names the row in the file, not in the batch."""
    rng = np.random.default_rng(5)
    lists = [[int(x) for x in rng.integers(1, N_ITEMS, size=int(rng.integers(0, 12)))] for _ in range(N_ROWS)]
    d = world["splits"]["train"]
    pq.write_table(split_table(d, seq_array=_ragged_list(lists)), tmp_path / "train.parquet", row_group_size=9)
    monkeypatch.setattr(mmctr, "_READ_ROWS", read_rows)
    s = read_split(tmp_path / "train.parquet", "train", max_len=6, n_items=N_ITEMS)
    np.testing.assert_array_equal(s.item_seq.numpy(), window_ref(lists, 6))
    for col in ("user_id", "item_id", "likes_level", "views_level"):
        np.testing.assert_array_equal(getattr(s, col).numpy(), d[col])
    np.testing.assert_array_equal(s.label.numpy(), d["label"])
    assert s.batch(torch.tensor([3, 1])).item_seq.dtype == torch.int64
    bad = [list(x) for x in lists]
    bad[37] = bad[37] + [N_ITEMS + 5]
    pq.write_table(split_table(d, seq_array=_ragged_list(bad)), tmp_path / "bad.parquet", row_group_size=9)
    with pytest.raises(DataError, match=r"bad.parquet: column 'item_seq', row 37: item id 25 outside"):
        read_split(tmp_path / "bad.parquet", "train", max_len=6, n_items=N_ITEMS)
    labels = pa.array([None if r >= 40 else float(d["label"][r]) for r in range(N_ROWS)], pa.float32())
    t = split_table(d).set_column(split_table(d).column_names.index("label"), "label", labels)
    pq.write_table(t, tmp_path / "nulls.parquet")
    with pytest.raises(DataError, match=r"nulls.parquet: column 'label', row 40: null value"):
        read_split(tmp_path / "nulls.parquet", "test", max_len=6, n_items=N_ITEMS, require_label=False)


def test_ragged_block_path_matches_reference(monkeypatch):
    monkeypatch.setattr(mmctr, "_RAGGED_BLOCK", 3)
    lists = [[1, 2, 3], [], [4], [5, 6, 7, 8, 9, 10], [11, 12], [], [13]]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    values = np.array([v for x in lists for v in x], np.int64)
    for max_len in (1, 2, 4, 7):
        np.testing.assert_array_equal(mmctr._left_pad_window(offsets, values, max_len), window_ref(lists, max_len))


def test_sliced_list_arrays(world):
    """Offsets of sliced arrays do not start at 0: reading must honour them."""
    full = _ragged_list([[1], [2, 3], [4, 5, 6], [7], [8, 9]])
    table = pa.table({"item_seq": full.slice(2, 3)})
    off, vals = mmctr._list_column(Path("x.parquet"), table, "item_seq", "int")
    np.testing.assert_array_equal(off, [0, 3, 4, 6])
    np.testing.assert_array_equal(vals, [4, 5, 6, 7, 8, 9])
    fixed = _fixed_list(np.arange(12).reshape(6, 2))
    off, vals = mmctr._list_column(Path("x.parquet"), pa.table({"item_seq": fixed.slice(4, 2)}), "item_seq", "int")
    np.testing.assert_array_equal(off, [0, 2, 4])
    np.testing.assert_array_equal(vals, [8, 9, 10, 11])


def test_batch_and_mask(good_dir, world):
    data = load_mmctr(good_dir, max_len=6)
    tr = data.splits["train"]
    idx = torch.tensor([4, 0, 2])
    b = tr.batch(idx)
    assert set(b.as_dict()) == {"user_id", "item_seq", "mask", "item_id", "likes_level", "views_level", "label"}
    d = world["splits"]["train"]
    np.testing.assert_array_equal(b.item_seq.numpy(), d["item_seq"][[4, 0, 2]][:, -6:])
    assert b.mask.dtype == torch.bool
    np.testing.assert_array_equal(b.mask.numpy(), d["item_seq"][[4, 0, 2]][:, -6:] > 0)
    np.testing.assert_array_equal(b.label.numpy(), d["label"][[4, 0, 2]])
    np.testing.assert_array_equal(b.item_id.numpy(), d["item_id"][[4, 0, 2]])
    te = data.splits["test"].batch(torch.arange(3))
    assert te.label is None and te.item_seq.shape == (3, 6)


def test_narrow_int_types_and_int_label(tmp_path, world):
    d = world["splits"]["train"]
    t = split_table(d)
    t = set_column(t, "user_id", pa.array(d["user_id"], pa.int32()))
    t = set_column(t, "item_id", pa.array(d["item_id"], pa.uint16()))
    t = set_column(t, "likes_level", pa.array(d["likes_level"], pa.int8()))
    t = set_column(t, "item_seq", _fixed_list(d["item_seq"], pa.int32()))
    t = set_column(t, "label", pa.array(d["label"].astype(np.int64)))
    pq.write_table(t, tmp_path / "train.parquet")
    s = read_split(tmp_path / "train.parquet", "train", max_len=WIDTH, n_items=N_ITEMS)
    assert s.item_id.dtype == torch.int64 and s.label.dtype == torch.float32
    np.testing.assert_array_equal(s.item_seq.numpy(), d["item_seq"])
    np.testing.assert_array_equal(s.label.numpy(), d["label"])
    np.testing.assert_array_equal(s.likes_level.numpy(), d["likes_level"])


def test_test_split_optional_and_labelled(tmp_path, world):
    root = write_world(tmp_path / "a", world, test_label=True)
    data = load_mmctr(root, max_len=WIDTH)
    np.testing.assert_array_equal(data.splits["test"].label.numpy(), world["splits"]["test"]["label"])
    (root / "test.parquet").unlink()
    data = load_mmctr(root, max_len=WIDTH)
    assert set(data.splits) == {"train", "valid"}
    data = load_mmctr(root, max_len=WIDTH, splits=("valid",))
    assert set(data.splits) == {"valid"}


def test_all_null_test_label_is_withheld(tmp_path, world):
    root = write_world(tmp_path / "a", world)
    rewrite(root / "test.parquet", lambda t: set_column(t, "label", pa.nulls(N_ROWS, pa.float32())))
    assert load_mmctr(root, max_len=WIDTH).splits["test"].label is None


def test_bad_max_len(good_dir):
    with pytest.raises(ConfigError):
        load_mmctr(good_dir, max_len=0)


# ----------------------------------------------------------------------------------------------
# describe / format_stats / read_truth
# ----------------------------------------------------------------------------------------------


def test_describe_stats(good_dir, world):
    max_len = 6
    st = describe(good_dir, max_len=max_len)
    assert st["item_info"]["n_items"] == N_ITEMS
    assert st["item_info"]["n_tags"] == 34
    assert st["item_info"]["emb_row0_zero"] is True
    assert st["item_info"]["emb_dim"] == 128
    assert st["seq_width_min"] == st["seq_width_max"] == WIDTH and st["seq_fixed_width"]
    assert st["max_len"] == max_len
    assert st["truth"]["present"] is True
    assert st["truth"]["splits"]["valid"]["rows"] == N_ROWS
    assert st["missing_splits"] == []
    for name, d in world["splits"].items():
        s = st["splits"][name]
        assert s["rows"] == N_ROWS
        assert s["users"] == len(np.unique(d["user_id"]))
        assert s["items"] == len(np.unique(d["item_id"]))
        hist = (d["item_seq"][:, -max_len:] > 0).sum(1)
        h = s["history"]
        assert h["min"] == hist.min() == 0
        assert h["max"] == hist.max() == max_len
        assert h["median"] == pytest.approx(np.median(hist))
        assert h["mean"] == pytest.approx(hist.mean())
        assert h["p90"] == pytest.approx(np.percentile(hist, 90))
        assert h["frac_full"] == pytest.approx((hist == max_len).mean())
        assert s["stored_seq_width"] == [WIDTH, WIDTH]
        assert s["likes_level"] == {int(k): int(v) for k, v in zip(*np.unique(d["likes_level"], return_counts=True))}
        assert s["views_level"] == {int(k): int(v) for k, v in zip(*np.unique(d["views_level"], return_counts=True))}
        if name == "test":
            assert s["label_rate"] is None and s["has_label"] is False
        else:
            assert s["label_rate"] == pytest.approx(d["label"].mean())
    text = format_stats(st)
    assert f"train: {N_ROWS} rows" in text
    assert "tag vocab 34" in text and "fixed 8" in text and "truth/: present" in text
    assert len(text.splitlines()) >= 10


def test_describe_without_truth_and_nonzero_row0(tmp_path, world):
    world["emb"][0, 3] = 0.5
    root = write_world(tmp_path / "a", world, truth=False)
    (root / "test.parquet").unlink()
    st = describe(root, max_len=WIDTH)
    assert st["truth"] == {"present": False, "splits": {}}
    assert st["item_info"]["emb_row0_zero"] is False
    assert st["missing_splits"] == ["test"]
    text = format_stats(st)
    assert "truth/: absent" in text and "test: absent" in text and "all zero: no" in text


def test_read_truth(good_dir, world):
    for name in ("train", "valid", "test"):
        p = read_truth(good_dir, name)
        assert p.dtype == np.float64
        np.testing.assert_array_equal(p, world["splits"][name]["p_click"])
    shutil.rmtree(good_dir / "truth")
    assert read_truth(good_dir, "train") is None


@pytest.mark.parametrize(
    "mutate, column, row, fragment",
    [
        (lambda p: np.concatenate([p, [0.5]]), "p_click", None, "51 rows"),
        (lambda p: np.where(np.arange(len(p)) == 6, 1.5, p), "p_click", 6, "not in [0, 1]"),
        (lambda p: np.where(np.arange(len(p)) == 9, -0.1, p), "p_click", 9, "not in [0, 1]"),
        (lambda p: np.where(np.arange(len(p)) == 4, np.nan, p), "p_click", 4, "not in [0, 1]"),
    ],
)
def test_read_truth_errors(good_dir, mutate, column, row, fragment):
    path = good_dir / "truth" / "valid.parquet"
    p = pq.read_table(path).column("p_click").to_numpy()
    pq.write_table(pa.table({"p_click": mutate(p)}), path)
    with pytest.raises(DataError) as ei:
        read_truth(good_dir, "valid")
    assert_data_error(ei.value, "valid.parquet", column, row, fragment)
    assert "truth" in str(ei.value)
    with pytest.raises(DataError):
        describe(good_dir, max_len=WIDTH)


def test_read_truth_missing_column_and_null(good_dir):
    path = good_dir / "truth" / "train.parquet"
    pq.write_table(pa.table({"prob": np.zeros(N_ROWS)}), path)
    with pytest.raises(DataError) as ei:
        read_truth(good_dir, "train")
    assert_data_error(ei.value, "train.parquet", "p_click", None, "missing column")
    pq.write_table(pa.table({"p_click": pa.array([0.1] * 7 + [None] + [0.2] * 42)}), path)
    with pytest.raises(DataError) as ei:
        read_truth(good_dir, "train")
    assert_data_error(ei.value, "train.parquet", "p_click", 7, "null")


# ----------------------------------------------------------------------------------------------
# Validation errors: each names the file, the column and the first bad row
# ----------------------------------------------------------------------------------------------


def _row_set(arr: np.ndarray, rows: dict) -> np.ndarray:
    arr = arr.copy()
    for r, v in rows.items():
        arr[r] = v
    return arr


def _seq_with(d, rows: dict) -> pa.Array:
    seq = d["item_seq"].copy()
    for r, (c, v) in rows.items():
        seq[r, c] = v
    return _fixed_list(seq)


def _ragged_from(mat: np.ndarray, lengths: dict) -> list[list]:
    lists = [list(map(int, row)) for row in mat]
    for r, n in lengths.items():
        lists[r] = lists[r][:n] if n <= len(lists[r]) else lists[r] + [1] * (n - len(lists[r]))
    return lists


W = make_world()  # values used to build the mutations below (same seed as the fixture)
TR = W["splits"]["train"]


def _tags_lists(lengths: dict) -> pa.Array:
    return pa.array(_ragged_from(W["tags"], lengths), pa.list_(pa.int64()))


def _emb_lists(lengths: dict) -> pa.Array:
    lists = [list(map(float, row)) for row in W["emb"]]
    for r, n in lengths.items():
        lists[r] = lists[r][:n]
    return pa.array(lists, pa.list_(pa.float32()))


def _emb_with(rows: dict) -> pa.Array:
    emb = W["emb"].copy()
    for r, (c, v) in rows.items():
        emb[r, c] = v
    return _fixed_list(emb, pa.float32())


def _null_at(values, row, typ):
    vals = [None if i == row else (v.item() if hasattr(v, "item") else v) for i, v in enumerate(values)]
    return pa.array(vals, typ)


# (id, file, mutation of the table, expected column, expected row, message fragment)
CASES = [
    # --- interaction files -------------------------------------------------------------------
    ("missing_column", "train.parquet", lambda t: t.drop_columns(["likes_level"]), "likes_level", None, "missing column"),
    ("missing_label", "valid.parquet", lambda t: t.drop_columns(["label"]), "label", None, "missing column"),
    ("extra_column", "train.parquet", lambda t: set_column(t, "item_title", ["x"] * N_ROWS), "item_title", None,
     "unexpected column"),
    ("extra_column_test", "test.parquet", lambda t: set_column(t, "foo", np.zeros(N_ROWS)), "foo", None,
     "unexpected column"),
    ("item_id_float", "train.parquet", lambda t: set_column(t, "item_id", TR["item_id"].astype(np.float64)),
     "item_id", None, "integer"),
    ("item_id_string", "train.parquet", lambda t: set_column(t, "item_id", TR["item_id"].astype(str)),
     "item_id", None, "integer"),
    ("user_id_string", "valid.parquet", lambda t: set_column(t, "user_id", ["u"] * N_ROWS), "user_id", None,
     "integer"),
    ("likes_float", "train.parquet", lambda t: set_column(t, "likes_level", TR["likes_level"] * 1.0),
     "likes_level", None, "integer"),
    ("label_string", "train.parquet", lambda t: set_column(t, "label", ["1"] * N_ROWS), "label", None, "numeric"),
    ("item_seq_not_list", "train.parquet", lambda t: set_column(t, "item_seq", TR["item_id"]), "item_seq", None,
     "list of integers"),
    ("item_seq_list_of_float", "train.parquet",
     lambda t: set_column(t, "item_seq", _fixed_list(TR["item_seq"].astype(np.float64), pa.float64())),
     "item_seq", None, "list of integers"),
    ("item_seq_list_of_string", "train.parquet",
     lambda t: set_column(t, "item_seq", pa.array([["1"]] * N_ROWS)), "item_seq", None, "list of integers"),
    ("null_item_id", "train.parquet", lambda t: set_column(t, "item_id", _null_at(TR["item_id"], 7, pa.int64())),
     "item_id", 7, "null"),
    ("null_user_id", "train.parquet", lambda t: set_column(t, "user_id", _null_at(TR["user_id"], 0, pa.int64())),
     "user_id", 0, "null"),
    ("null_label", "train.parquet", lambda t: set_column(t, "label", _null_at(TR["label"], 3, pa.float32())),
     "label", 3, "null"),
    ("null_views", "train.parquet",
     lambda t: set_column(t, "views_level", _null_at(TR["views_level"], 49, pa.int64())), "views_level", 49, "null"),
    ("null_seq_row", "train.parquet",
     lambda t: set_column(t, "item_seq", pa.array([None if r == 5 else list(map(int, x))
                                                   for r, x in enumerate(TR["item_seq"])], pa.list_(pa.int64()))),
     "item_seq", 5, "null"),
    ("null_seq_element", "train.parquet",
     lambda t: set_column(t, "item_seq", pa.array([[1, None, 2] if r == 9 else list(map(int, x))
                                                   for r, x in enumerate(TR["item_seq"])], pa.list_(pa.int64()))),
     "item_seq", 9, "null element"),
    ("target_zero", "train.parquet", lambda t: set_column(t, "item_id", _row_set(TR["item_id"], {11: 0, 20: 0})),
     "item_id", 11, "outside item_info"),
    ("target_too_big", "train.parquet",
     lambda t: set_column(t, "item_id", _row_set(TR["item_id"], {30: 99, 12: N_ITEMS})), "item_id", 12,
     "outside item_info"),
    ("target_negative", "valid.parquet", lambda t: set_column(t, "item_id", _row_set(TR["item_id"], {2: -3})),
     "item_id", 2, "outside item_info"),
    ("seq_negative", "train.parquet", lambda t: set_column(t, "item_seq", _seq_with(TR, {13: (7, -1), 40: (0, -2)})),
     "item_seq", 13, "outside item_info"),
    ("seq_too_big", "valid.parquet",
     lambda t: set_column(t, "item_seq", _seq_with(TR, {14: (0, N_ITEMS), 15: (7, 1000)})), "item_seq", 14,
     "outside item_info"),
    ("seq_too_big_ragged", "test.parquet",
     lambda t: set_column(t, "item_seq", pa.array([[1, 2, 3], [], [4], [5, N_ITEMS + 5], [1]] * 10)),
     "item_seq", 3, "outside item_info"),
    ("likes_too_big", "train.parquet",
     lambda t: set_column(t, "likes_level", _row_set(TR["likes_level"], {15: 11, 16: 12})), "likes_level", 15,
     "outside 0..10"),
    ("views_negative", "test.parquet",
     lambda t: set_column(t, "views_level", _row_set(TR["views_level"], {16: -1})), "views_level", 16,
     "outside 0..10"),
    ("label_two", "train.parquet", lambda t: set_column(t, "label", _row_set(TR["label"], {17: 2.0, 18: 3.0})),
     "label", 17, "not in {0, 1}"),
    ("label_half", "valid.parquet", lambda t: set_column(t, "label", _row_set(TR["label"], {21: 0.5})),
     "label", 21, "not in {0, 1}"),
    ("label_nan", "train.parquet", lambda t: set_column(t, "label", _row_set(TR["label"], {18: np.nan, 19: 5})),
     "label", 18, "not in {0, 1}"),
    ("label_int_minus_one", "train.parquet",
     lambda t: set_column(t, "label", _row_set(TR["label"].astype(np.int64), {22: -1})), "label", 22,
     "not in {0, 1}"),
    ("test_label_bad", "test.parquet", lambda t: set_column(t, "label", _row_set(TR["label"], {8: 7.0})),
     "label", 8, "not in {0, 1}"),
    ("test_label_partly_null", "test.parquet",
     lambda t: set_column(t, "label", _null_at(TR["label"], 10, pa.float32())), "label", 10, "null"),
    # --- item_info ---------------------------------------------------------------------------
    ("info_missing_column", "item_info.parquet", lambda t: t.drop_columns(["item_tags"]), "item_tags", None,
     "missing column"),
    ("info_extra_column", "item_info.parquet", lambda t: set_column(t, "item_title", ["x"] * N_ITEMS),
     "item_title", None, "unexpected column"),
    ("info_not_sorted", "item_info.parquet", lambda t: t.take([0, 1, 2, 4, 3] + list(range(5, N_ITEMS))),
     "item_id", 3, "row index"),
    ("info_gap", "item_info.parquet", lambda t: t.take([0, 1, 2, 3, 4] + list(range(6, N_ITEMS))),
     "item_id", 5, "row index"),
    ("info_starts_at_one", "item_info.parquet", lambda t: t.slice(1), "item_id", 0, "row index"),
    ("info_item_id_float", "item_info.parquet",
     lambda t: set_column(t, "item_id", np.arange(N_ITEMS, dtype=np.float64)), "item_id", None, "integer"),
    ("info_tags_short", "item_info.parquet", lambda t: set_column(t, "item_tags", _tags_lists({6: 4, 9: 3})),
     "item_tags", 6, "length 4, expected 5"),
    ("info_tags_long", "item_info.parquet", lambda t: set_column(t, "item_tags", _tags_lists({2: 6})),
     "item_tags", 2, "length 6, expected 5"),
    ("info_tags_fixed_6", "item_info.parquet",
     lambda t: set_column(t, "item_tags", _fixed_list(np.zeros((N_ITEMS, 6), np.int64))), "item_tags", 0,
     "length 6, expected 5"),
    ("info_tags_float", "item_info.parquet",
     lambda t: set_column(t, "item_tags", _fixed_list(W["tags"].astype(np.float32), pa.float32())), "item_tags",
     None, "list of integers"),
    ("info_tags_negative", "item_info.parquet",
     lambda t: set_column(t, "item_tags", _fixed_list(_row_set(W["tags"], {9: [1, -4, 0, 0, 0]}))), "item_tags", 9,
     "negative tag"),
    ("info_tags_null_element", "item_info.parquet",
     lambda t: set_column(t, "item_tags", pa.array([[1, None, 0, 0, 0] if r == 4 else list(map(int, x))
                                                    for r, x in enumerate(W["tags"])], pa.list_(pa.int64()))),
     "item_tags", 4, "null element"),
    ("info_emb_short", "item_info.parquet", lambda t: set_column(t, "item_emb_d128", _emb_lists({2: 127})),
     "item_emb_d128", 2, "length 127, expected 128"),
    ("info_emb_int", "item_info.parquet",
     lambda t: set_column(t, "item_emb_d128", _fixed_list(np.zeros((N_ITEMS, 128), np.int64))), "item_emb_d128",
     None, "list of floats"),
    ("info_emb_nan", "item_info.parquet",
     lambda t: set_column(t, "item_emb_d128", _emb_with({7: (100, np.nan), 12: (0, np.nan)})), "item_emb_d128", 7,
     "NaN or inf"),
    ("info_emb_inf", "item_info.parquet", lambda t: set_column(t, "item_emb_d128", _emb_with({8: (5, -np.inf)})),
     "item_emb_d128", 8, "NaN or inf"),
    ("info_null_emb_row", "item_info.parquet",
     lambda t: set_column(t, "item_emb_d128", pa.array([None if r == 11 else list(map(float, x))
                                                        for r, x in enumerate(W["emb"])], pa.list_(pa.float32()))),
     "item_emb_d128", 11, "null"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_validation_errors(good_dir, case):
    _, file, mutate, column, row, fragment = case
    rewrite(good_dir / file, mutate)
    with pytest.raises(DataError) as ei:
        load_mmctr(good_dir, max_len=WIDTH)
    assert_data_error(ei.value, file, column, row, fragment)
    with pytest.raises(DataError) as ei2:  # describe validates the same way
        describe(good_dir, max_len=WIDTH)
    assert str(ei2.value) == str(ei.value)


def test_valid_cases_are_really_valid(good_dir):
    """Guard for the table above: the unmutated directory loads, so each error comes from its mutation."""
    load_mmctr(good_dir, max_len=WIDTH)
    describe(good_dir, max_len=WIDTH)


@pytest.mark.parametrize("file", ["train.parquet", "valid.parquet", "item_info.parquet"])
def test_missing_file(good_dir, file):
    (good_dir / file).unlink()
    with pytest.raises(DataError) as ei:
        load_mmctr(good_dir)
    assert_data_error(ei.value, file, None, None, "file not found")


def test_missing_directory(tmp_path):
    with pytest.raises(DataError) as ei:
        load_mmctr(tmp_path / "nope")
    assert "nope" in str(ei.value) and "not found" in str(ei.value)


@pytest.mark.parametrize("file", ["train.parquet", "test.parquet", "item_info.parquet"])
@pytest.mark.parametrize("how", ["empty", "truncated", "garbage"])
def test_unreadable_parquet(good_dir, file, how):
    path = good_dir / file
    raw = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    else:
        path.write_bytes(b"this is not parquet\n" * 10)
    with pytest.raises(DataError) as ei:
        load_mmctr(good_dir)
    assert_data_error(ei.value, file, None, None, "cannot read parquet (empty or truncated?)")


@pytest.mark.parametrize("file", ["train.parquet", "test.parquet", "item_info.parquet"])
def test_zero_rows(good_dir, file):
    rewrite(good_dir / file, lambda t: t.slice(0, 0))
    with pytest.raises(DataError) as ei:
        load_mmctr(good_dir)
    assert_data_error(ei.value, file, None, None, "0 rows")


def test_read_split_without_n_items_skips_upper_bound(good_dir):
    rewrite(good_dir / "train.parquet", lambda t: set_column(t, "item_id", _row_set(TR["item_id"], {0: 10_000})))
    s = read_split(good_dir / "train.parquet", "train", max_len=WIDTH)
    assert s.item_id[0] == 10_000
    with pytest.raises(DataError) as ei:
        read_split(good_dir / "train.parquet", "train", max_len=WIDTH, n_items=N_ITEMS)
    assert_data_error(ei.value, "train.parquet", "item_id", 0, "outside")


# ----------------------------------------------------------------------------------------------
# CLI end to end
# ----------------------------------------------------------------------------------------------


def _cli_cmd(*args):
    return [sys.executable, "-m", "ssmrec.cli", "data", "check", *map(str, args)]


def _corrupt_empty_train(root):
    (root / "train.parquet").write_bytes(b"")
    return "train.parquet"


def _corrupt_label(root):
    rewrite(root / "valid.parquet", lambda t: set_column(t, "label", _row_set(TR["label"], {4: 2.0})))
    return "valid.parquet"


def _corrupt_emb(root):
    rewrite(root / "item_info.parquet", lambda t: set_column(t, "item_emb_d128", _emb_with({3: (0, np.nan)})))
    return "item_info.parquet"


def _corrupt_missing_valid(root):
    (root / "valid.parquet").unlink()
    return "valid.parquet"


def _corrupt_truth(root):
    pq.write_table(pa.table({"p_click": np.full(N_ROWS, 2.0)}), root / "truth" / "test.parquet")
    return "test.parquet"


CORRUPTIONS = [_corrupt_empty_train, _corrupt_label, _corrupt_emb, _corrupt_missing_valid, _corrupt_truth]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Run `ssmrec data check` on a good and on several corrupted directories, concurrently
    (each process pays the torch import, so running them one after another is slow)."""
    base = tmp_path_factory.mktemp("cli")
    jobs = {"good": (write_world(base / "good", make_world()), None, ("--max-len", "6"))}
    for fn in CORRUPTIONS:
        root = write_world(base / fn.__name__, make_world())
        jobs[fn.__name__] = (root, fn(root), ())
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    procs = {k: subprocess.Popen(_cli_cmd(root, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env) for k, (root, _, extra) in jobs.items()}
    results = {}
    for k, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        results[k] = (proc.returncode, out, err, jobs[k][1])
    return results


def test_cli_check_good(cli_runs):
    rc, out, err, _ = cli_runs["good"]
    assert rc == 0, err
    assert f"train: {N_ROWS} rows" in out and "valid:" in out and "test:" in out
    assert "tag vocab 34" in out and "window max_len 6" in out
    assert err == ""


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=[f.__name__ for f in CORRUPTIONS])
def test_cli_check_corrupt(cli_runs, corrupt):
    rc, out, err, file = cli_runs[corrupt.__name__]
    assert rc != 0
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ssmrec: error:")
    assert file in lines[0]


_PEAK_SCRIPT = """
import sys, resource
import pyarrow as pa
from ssmrec.data.mmctr import read_split
s = read_split(sys.argv[1], "train", max_len=64)
print(pa.default_memory_pool().max_memory(), s.item_seq.numel() * 4)
"""


@pytest.mark.slow
def test_the_readers_arrow_memory_does_not_grow_with_rows(tmp_path):
    """Reading 4x the rows needs 4x the output arrays, but the arrow side (one decoded row group in
    flight) stays bounded: its peak at 400k rows is under 1.5x its peak at 100k rows and under the
    int32 histories' own bytes (the whole-table reader held every row's int64 lists: > 2x them)."""
    rng = np.random.default_rng(0)
    peaks = {}
    for n in (100_000, 400_000):
        seq = rng.integers(1, 1000, size=(n, 64))
        table = pa.table({"user_id": pa.array(np.arange(n)), "item_seq": _fixed_list(seq),
                          "likes_level": pa.array(np.zeros(n, np.int64)), "views_level": pa.array(np.zeros(n, np.int64)),
                          "item_id": pa.array(np.ones(n, np.int64)), "label": pa.array(np.zeros(n, np.float32))})
        path = tmp_path / f"train{n}.parquet"
        pq.write_table(table, path, row_group_size=50_000)  # the reader decodes one row group at a time
        del table, seq
        r = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True, text=True,
                           cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert r.returncode == 0, r.stderr[-2000:]
        arrow_peak, hist_bytes = map(int, r.stdout.split())
        peaks[n] = arrow_peak
        if n == 400_000:
            assert arrow_peak < hist_bytes, (arrow_peak, hist_bytes)
    assert peaks[400_000] < 1.5 * peaks[100_000], peaks  # measured: 86 MB at both sizes
