"""Reading and validating MM-CTR challenge data (MicroLens-1M MMCTR schema, reference doc §1).

A data directory holds ``train.parquet``, ``valid.parquet``, ``test.parquet`` (label optional) and
``item_info.parquet``; other files (``item_feature.parquet``, ``covers/``, ``truth/``, ...) are
ignored by the loader. ``truth/{split}.parquet`` (column ``p_click``) is read only by
:func:`read_truth` and checked by :func:`describe`.

Everything is vectorised (pyarrow -> numpy -> torch): list columns are read through their offsets
and flattened values, never row by row. Every schema violation raises
:class:`ssmrec.errors.DataError` naming the file, the column and the first bad row.

Validation and statistics work on numpy arrays; torch is imported only by the functions that return
tensors, so ``ssmrec data check`` starts without paying the torch import.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ssmrec.data.batch import TensorBatch
from ssmrec.data.schema import (
    DEFAULT_MAX_LEN,
    INTERACTION_COLUMNS,
    ITEM_EMB_DIM,
    ITEM_INFO_COLUMNS,
    LEVEL_VOCAB,
    N_ITEM_TAGS,
    SPLITS,
)
from ssmrec.errors import ConfigError, DataError, one_line

if TYPE_CHECKING:
    import torch

__all__ = [
    "CTRBatch",
    "ItemInfo",
    "Split",
    "MMCTRData",
    "read_item_info",
    "read_split",
    "load_mmctr",
    "read_truth",
    "describe",
    "format_stats",
]

_OPTIONAL_LABEL_SPLITS = ("test",)
_RAGGED_BLOCK = 1 << 20  # rows per block when windowing ragged histories (bounds temporary memory)
_READ_ROWS = 1 << 17  # rows per record batch when reading an interaction file (bounds the arrow copy)


# ----------------------------------------------------------------------------------------------
# Containers
# ----------------------------------------------------------------------------------------------


@dataclass
class ItemInfo:
    tags: torch.Tensor  # (n_items, 5) int64, right-padded with 0
    emb: torch.Tensor  # (n_items, 128) float32
    n_items: int
    n_tags: int  # max tag id + 1 (embedding table size)


@dataclass
class CTRBatch(TensorBatch):
    """One typed mini-batch of MM-CTR rows: every model reads these fields by name.

    ``item_seq`` is left-padded with 0 (most recent item last); ``mask`` is ``item_seq > 0``.
    """

    user_id: torch.Tensor  # (B,) int64
    item_seq: torch.Tensor  # (B, L) int64
    mask: torch.Tensor  # (B, L) bool, True = real history slot
    item_id: torch.Tensor  # (B,) int64, the target item
    likes_level: torch.Tensor  # (B,) int64
    views_level: torch.Tensor  # (B,) int64
    label: torch.Tensor | None = None  # (B,) float32, None for unlabelled (test) rows

    def __len__(self) -> int:
        return int(self.item_id.shape[0])

    def rows(self, sel) -> "CTRBatch":
        """The rows ``sel`` (an index or boolean tensor) of this batch."""
        return CTRBatch(**{k: (None if v is None else v[sel]) for k, v in self.as_dict().items()})

    def newest(self, k: int) -> "CTRBatch":
        """The same rows with only the newest ``k`` history slots."""
        return replace(self, item_seq=self.item_seq[:, -k:], mask=self.mask[:, -k:])


@dataclass
class Split:
    name: str
    user_id: torch.Tensor  # (N,) int64
    item_seq: torch.Tensor  # (N, max_len) int32 (4 bytes an id), left-padded with 0, most recent item last
    item_id: torch.Tensor  # (N,) int64
    likes_level: torch.Tensor  # (N,) int64
    views_level: torch.Tensor  # (N,) int64
    label: torch.Tensor | None  # (N,) float32; None when the file has no label column
    # Facts about the stored file (path, stored list widths) used by describe(); not model inputs.
    info: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.item_id.shape[0])

    def batch(self, idx: torch.Tensor) -> CTRBatch:
        seq = self.item_seq[idx].long()
        return CTRBatch(user_id=self.user_id[idx], item_seq=seq, mask=seq > 0, item_id=self.item_id[idx],
                        likes_level=self.likes_level[idx], views_level=self.views_level[idx],
                        label=None if self.label is None else self.label[idx])


@dataclass
class MMCTRData:
    root: Path
    item_info: ItemInfo
    splits: dict[str, Split]
    max_len: int


# ----------------------------------------------------------------------------------------------
# Low-level helpers
# ----------------------------------------------------------------------------------------------


def _check_max_len(max_len) -> int:
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ConfigError(f"max_len must be a positive integer, got {max_len!r}")
    return int(max_len)


def _open_parquet(path: Path) -> pq.ParquetFile:
    if not path.exists():
        raise DataError(path, "file not found")
    if not path.is_file():
        raise DataError(path, "not a regular file")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(path, f"cannot read parquet (empty or truncated?): {one_line(str(e), 200)}") from None
    if pf.metadata.num_rows == 0:
        raise DataError(path, "file has 0 rows")
    return pf


def _read_table(path: Path) -> pa.Table:
    """The whole file (item_info: small); interaction files are read by :func:`_row_slices`."""
    try:
        return _open_parquet(path).read()
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, f"cannot read parquet (truncated?): {one_line(str(e), 200)}") from None


def _check_columns(path: Path, names, required, optional=()) -> None:
    names = list(names)
    seen = set()
    for name in names:
        if name in seen:
            raise DataError(path, "duplicate column", column=name)
        seen.add(name)
    for name in required:
        if name not in seen:
            raise DataError(path, f"missing column (found: {', '.join(names)})", column=name)
    allowed = set(required) | set(optional)
    for name in names:
        if name not in allowed:
            raise DataError(path, f"unexpected column (expected: {', '.join(list(required) + list(optional))})",
                            column=name)


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _first_true(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _check_no_nulls(path: Path, name: str, arr: pa.Array) -> None:
    if arr.null_count:
        row = _first_true(np.asarray(arr.is_null().to_numpy(zero_copy_only=False)))
        raise DataError(path, "null value", column=name, row=row)


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _int_column(path: Path, table: pa.Table, name: str) -> np.ndarray:
    arr = _column(table, name)
    if not _is_int(arr.type):
        raise DataError(path, f"expected an integer column, got {arr.type}", column=name)
    _check_no_nulls(path, name, arr)
    return np.asarray(arr.to_numpy(zero_copy_only=False)).astype(np.int64, copy=False)


def _list_column(path: Path, table: pa.Table, name: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(offsets, values)`` of a list column; ``values[offsets[r]:offsets[r+1]]`` is row r.

    ``kind`` is ``"int"`` (values int64) or ``"float"`` (values float32). Offsets are int64 and
    start at 0. Checks the arrow type and nulls (of rows and of list elements).
    """
    arr = _column(table, name)
    t = arr.type
    want = "integers" if kind == "int" else "floats"
    ok_value = (lambda vt: _is_int(vt)) if kind == "int" else (lambda vt: pa.types.is_floating(vt))
    if not _is_list(t) or not ok_value(t.value_type):
        raise DataError(path, f"expected a list of {want}, got {t}", column=name)
    _check_no_nulls(path, name, arr)
    n = len(arr)
    if pa.types.is_fixed_size_list(t):
        values = arr.flatten()
        offsets = np.arange(n + 1, dtype=np.int64) * t.list_size
    else:
        offsets = np.asarray(arr.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        values = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        offsets = offsets - offsets[0]
    if values.null_count:
        first = _first_true(np.asarray(values.is_null().to_numpy(zero_copy_only=False)))
        row = int(np.searchsorted(offsets, first, side="right") - 1)
        raise DataError(path, "null element inside list", column=name, row=row)
    np_values = np.asarray(values.to_numpy(zero_copy_only=False))
    np_values = np_values.astype(np.int64 if kind == "int" else np.float32, copy=False)
    return offsets, np_values


def _value_row(offsets: np.ndarray, bad_values: np.ndarray) -> int:
    """Row of the first True in ``bad_values`` (indexed like the flattened list values)."""
    first = _first_true(bad_values)
    return int(np.searchsorted(offsets, first, side="right") - 1)


def _fixed_width(path: Path, name: str, offsets: np.ndarray, values: np.ndarray, width: int) -> np.ndarray:
    lengths = np.diff(offsets)
    bad = lengths != width
    if bad.any():
        row = _first_true(bad)
        raise DataError(path, f"list has length {int(lengths[row])}, expected {width}", column=name, row=row)
    return values.reshape(len(lengths), width)


def _left_pad_window(offsets: np.ndarray, values: np.ndarray, max_len: int) -> np.ndarray:
    """Right-most ``max_len`` entries of every list, left-padded with 0 -> (n, max_len) int64."""
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    if n == 0:
        return np.zeros((0, max_len), dtype=np.int64)
    w = int(lengths[0])
    if (lengths == w).all():  # fixed width (the challenge stores 64): one strided copy
        mat = values.reshape(n, w)
        if w >= max_len:
            return np.array(mat[:, w - max_len:], dtype=np.int64, order="C")
        out = np.zeros((n, max_len), dtype=np.int64)
        if w:
            out[:, max_len - w:] = mat
        return out
    out = np.zeros((n, max_len), dtype=np.int64)
    for a in range(0, n, _RAGGED_BLOCK):  # ragged: scatter block by block (vectorised per block)
        b = min(n, a + _RAGGED_BLOCK)
        k = np.minimum(lengths[a:b], max_len)
        total = int(k.sum())
        if total == 0:
            continue
        rows = np.repeat(np.arange(a, b, dtype=np.int64), k)
        j = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(k) - k, k)
        src = np.repeat(offsets[a + 1:b + 1] - k, k) + j
        col = np.repeat(max_len - k, k) + j
        out[rows, col] = values[src]
    return out


# ----------------------------------------------------------------------------------------------
# Public readers
# ----------------------------------------------------------------------------------------------


def _item_info_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(tags (n, 5) int64, emb (n, 128) float32)`` of item_info.parquet."""
    table = _read_table(path)
    _check_columns(path, table.column_names, ITEM_INFO_COLUMNS)
    n = table.num_rows

    ids = _int_column(path, table, "item_id")
    bad = ids != np.arange(n, dtype=np.int64)
    if bad.any():
        row = _first_true(bad)
        raise DataError(path, f"item_id must equal the row index (dense, sorted, starting at 0); "
                              f"found {int(ids[row])} at row {row}", column="item_id", row=row)

    off, vals = _list_column(path, table, "item_tags", "int")
    tags = _fixed_width(path, "item_tags", off, vals, N_ITEM_TAGS)
    neg = tags < 0
    if neg.any():
        row = _first_true(neg.any(axis=1))
        raise DataError(path, f"negative tag id {int(tags[row][tags[row] < 0][0])}", column="item_tags", row=row)

    off, vals = _list_column(path, table, "item_emb_d128", "float")
    emb = _fixed_width(path, "item_emb_d128", off, vals, ITEM_EMB_DIM)
    finite = np.isfinite(emb).all(axis=1)
    if not finite.all():
        row = _first_true(~finite)
        raise DataError(path, "NaN or inf in embedding", column="item_emb_d128", row=row)

    return np.array(tags, dtype=np.int64), np.array(emb, dtype=np.float32)


def _n_tags(tags: np.ndarray) -> int:
    return int(tags.max()) + 1 if tags.size else 1


def _to_item_info(tags: np.ndarray, emb: np.ndarray) -> ItemInfo:
    import torch

    return ItemInfo(tags=torch.from_numpy(tags), emb=torch.from_numpy(emb), n_items=int(tags.shape[0]),
                    n_tags=_n_tags(tags))


def read_item_info(path) -> ItemInfo:
    """Read ``item_info.parquet``: dense ids 0..n-1 in row order, 5 tags, 128-d finite embedding."""
    return _to_item_info(*_item_info_arrays(Path(path)))


def _shifted(e: DataError, offset: int) -> DataError:
    """``e`` with its row counted from the start of the file, not of the record batch."""
    return DataError(e.file, e.message, column=e.column, row=None if e.row is None else e.row + offset)


def _row_slices(pf: pq.ParquetFile):
    """The file's rows as tables of at most ``_READ_ROWS`` rows, one row group decoded at a time
    (``iter_batches`` was measured to hold every row group's decoded lists at once: 311 MB against
    58 MB for a 400k-row file in 8 row groups)."""
    for g in range(pf.num_row_groups):
        group = pf.read_row_group(g)
        for start in range(0, group.num_rows, _READ_ROWS):
            yield group.slice(start, _READ_ROWS)
        del group


def _split_arrays(path: Path, max_len: int, n_items, require_label: bool) -> dict:
    """Validated numpy columns of one interaction file (+ ``"info"``); see :func:`read_split`.

    Memory-bounded: the file is read one row group at a time and processed ``_READ_ROWS`` rows at a
    time into preallocated arrays, histories windowed to ``max_len`` on the way in and held as int32
    (4 bytes an id; item ids are < 2^31), so the peak is the final arrays plus one decoded row group,
    never the arrow table of every list (``ssmrec data synth`` writes row groups of 131,072 rows;
    pyarrow's default is 1,048,576)."""
    pf = _open_parquet(path)
    required = [c for c in INTERACTION_COLUMNS if c != "label" or require_label]
    optional = [] if require_label else ["label"]
    _check_columns(path, pf.schema_arrow.names, required, optional)
    has_label = "label" in pf.schema_arrow.names
    N = pf.metadata.num_rows
    out = {"user_id": np.empty(N, np.int64), "item_seq": np.zeros((N, max_len), np.int32),
           "item_id": np.empty(N, np.int64), "likes_level": np.empty(N, np.int64),
           "views_level": np.empty(N, np.int64), "label": np.empty(N, np.float32) if has_label else None}
    width_min, width_max = np.iinfo(np.int64).max, 0
    label_nulls = []  # per batch: (first row, all labels null): withheld test labels are stored as nulls
    a = 0
    try:
        for table in _row_slices(pf):
            b = a + table.num_rows
            try:
                widths, null_labels = _read_rows(path, table, max_len, n_items, require_label, out, a, b)
            except DataError as e:
                raise _shifted(e, a) from None
            width_min, width_max = min(width_min, int(widths.min())), max(width_max, int(widths.max()))
            label_nulls.append((a, null_labels))
            a = b
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, f"cannot read parquet (truncated?): {one_line(str(e), 200)}") from None
    if has_label and any(null for _, null in label_nulls):
        if not all(null for _, null in label_nulls):  # some batches all null, others not: a null label
            row = next(start for start, null in label_nulls if null)
            raise DataError(path, "null value", column="label", row=row)
        out["label"] = None
    out["info"] = {"file": str(path), "stored_width_min": width_min, "stored_width_max": width_max}
    return out


def _read_rows(path: Path, table: pa.Table, max_len: int, n_items, require_label: bool, out: dict, a: int,
               b: int) -> tuple[np.ndarray, bool]:
    """Validate one record batch (rows counted from 0 within it) and write it into ``out[a:b]``.
    Returns the stored history widths and whether every label of the batch is null."""
    out["user_id"][a:b] = _int_column(path, table, "user_id")

    off, seq_vals = _list_column(path, table, "item_seq", "int")
    hi = n_items if n_items is not None else np.iinfo(np.int32).max
    if seq_vals.size and (seq_vals.min() < 0 or seq_vals.max() >= hi):  # cheap check, then locate
        bad = (seq_vals < 0) | (seq_vals >= hi)
        row = _value_row(off, bad)
        v = int(seq_vals[_first_true(bad)])
        rng = f"0..{n_items - 1}" if n_items is not None else "0..2^31-1"
        raise DataError(path, f"item id {v} outside item_info ids ({rng})", column="item_seq", row=row)
    widths = np.diff(off)
    out["item_seq"][a:b] = _left_pad_window(off, seq_vals, max_len)
    del seq_vals, off

    item_id = _int_column(path, table, "item_id")
    bad = item_id < 1
    if n_items is not None:
        bad |= item_id >= n_items
    if bad.any():
        row = _first_true(bad)
        rng = f"1..{n_items - 1}" if n_items is not None else ">= 1"
        raise DataError(path, f"target item id {int(item_id[row])} outside item_info ids ({rng})",
                        column="item_id", row=row)
    out["item_id"][a:b] = item_id

    for col in ("likes_level", "views_level"):
        x = _int_column(path, table, col)
        bad = (x < 0) | (x >= LEVEL_VOCAB)
        if bad.any():
            row = _first_true(bad)
            raise DataError(path, f"value {int(x[row])} outside 0..{LEVEL_VOCAB - 1}", column=col, row=row)
        out[col][a:b] = x

    if "label" not in table.column_names:
        return widths, False
    arr = _column(table, "label")
    t = arr.type
    if not (_is_int(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
        raise DataError(path, f"expected a numeric label column, got {t}", column="label")
    if not require_label and arr.null_count == len(arr):
        return widths, True  # withheld labels stored as all-null
    _check_no_nulls(path, "label", arr)
    if pa.types.is_boolean(t):
        arr = pc.cast(arr, pa.int8())
    y = np.asarray(arr.to_numpy(zero_copy_only=False)).astype(np.float64, copy=False)
    bad = ~((y == 0) | (y == 1))  # NaN fails both comparisons
    if bad.any():
        row = _first_true(bad)
        raise DataError(path, f"label {y[row]!r} not in {{0, 1}}", column="label", row=row)
    out["label"][a:b] = y
    return widths, False


def _to_split(name: str, a: dict) -> Split:
    import torch

    t = {k: torch.from_numpy(a[k]) for k in ("user_id", "item_seq", "item_id", "likes_level", "views_level")}
    label = torch.from_numpy(a["label"]) if a["label"] is not None else None
    return Split(name=name, label=label, info=a["info"], **t)


def read_split(path, name, max_len=DEFAULT_MAX_LEN, n_items=None, require_label=True) -> Split:
    """Read one interaction file (train/valid/test) into tensors.

    ``item_seq`` keeps the right-most ``max_len`` stored ids, left-padded with 0. With ``n_items``
    (the row count of item_info) ids are range-checked against item_info. ``require_label=False``
    makes the label column optional (a label column that is entirely null is treated as absent).
    """
    return _to_split(name, _split_arrays(Path(path), _check_max_len(max_len), n_items, require_label))


def _root(root) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(root, "data directory not found")
    if not root.is_dir():
        raise DataError(root, "not a directory")
    return root


def _load_arrays(root, max_len, splits):
    root = _root(root)
    max_len = _check_max_len(max_len)
    if isinstance(splits, str):
        splits = (splits,)
    tags, emb = _item_info_arrays(root / "item_info.parquet")
    out: dict[str, dict] = {}
    for name in splits:
        path = root / f"{name}.parquet"
        optional = name in _OPTIONAL_LABEL_SPLITS
        if optional and not path.exists():
            continue
        out[name] = _split_arrays(path, max_len, n_items=int(tags.shape[0]), require_label=not optional)
    return root, max_len, tags, emb, out


def load_mmctr(root, max_len=DEFAULT_MAX_LEN, splits=SPLITS) -> MMCTRData:
    """Load item_info and the requested splits. ``test`` is optional (file and label); every
    other requested split (train, valid) must exist and carry labels."""
    root, max_len, tags, emb, arrays = _load_arrays(root, max_len, splits)
    item_info = _to_item_info(tags, emb)
    out = {name: _to_split(name, a) for name, a in arrays.items()}
    return MMCTRData(root=root, item_info=item_info, splits=out, max_len=max_len)


def read_truth(root, split, n_rows=None):
    """``root/truth/{split}.parquet`` column ``p_click`` as float64 (row order of the split), or
    None when absent. Checks length (against ``n_rows`` or the split file's row count), nulls, NaN
    and the range [0, 1]."""
    root = Path(root)
    path = root / "truth" / f"{split}.parquet"
    if not path.exists():
        return None
    table = _read_table(path)
    if "p_click" not in table.column_names:
        raise DataError(path, f"missing column (found: {', '.join(table.column_names)})", column="p_click")
    arr = _column(table, "p_click")
    if not (pa.types.is_floating(arr.type) or _is_int(arr.type)):
        raise DataError(path, f"expected a float column, got {arr.type}", column="p_click")
    _check_no_nulls(path, "p_click", arr)
    p = np.asarray(arr.to_numpy(zero_copy_only=False)).astype(np.float64)
    bad = ~((p >= 0.0) & (p <= 1.0))  # NaN fails both comparisons
    if bad.any():
        row = _first_true(bad)
        raise DataError(path, f"probability {p[row]!r} not in [0, 1]", column="p_click", row=row)
    if n_rows is None:
        split_path = root / f"{split}.parquet"
        if split_path.is_file():
            try:
                n_rows = pq.ParquetFile(split_path).metadata.num_rows
            except (pa.ArrowException, OSError, ValueError) as e:
                raise DataError(split_path,
                                f"cannot read parquet (empty or truncated?): {one_line(str(e), 200)}") from None
    if n_rows is not None and len(p) != n_rows:
        raise DataError(path, f"has {len(p)} rows but {split}.parquet has {n_rows}", column="p_click")
    return p


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------


def _value_counts(x: np.ndarray) -> dict[int, int]:
    counts = np.bincount(x, minlength=LEVEL_VOCAB)
    return {int(i): int(c) for i, c in enumerate(counts) if c}


def _split_stats(a: dict, max_len: int) -> dict:
    hist = np.count_nonzero(a["item_seq"], axis=1)
    label = a["label"]
    return {
        "rows": int(a["item_id"].shape[0]),
        "users": int(np.unique(a["user_id"]).size),
        "items": int(np.unique(a["item_id"]).size),
        "has_label": label is not None,
        "label_rate": float(label.mean(dtype=np.float64)) if label is not None else None,
        "stored_seq_width": [a["info"]["stored_width_min"], a["info"]["stored_width_max"]],
        "history": {
            "min": int(hist.min()),
            "median": float(np.median(hist)),
            "mean": float(hist.mean()),
            "p90": float(np.percentile(hist, 90)),
            "max": int(hist.max()),
            "frac_full": float((hist == max_len).mean()),
            "frac_empty": float((hist == 0).mean()),
        },
        "likes_level": _value_counts(a["likes_level"]),
        "views_level": _value_counts(a["views_level"]),
    }


def describe(root, max_len=DEFAULT_MAX_LEN) -> dict:
    """Validate a data directory completely (raises DataError) and return statistics."""
    root, max_len, tags, emb, arrays = _load_arrays(root, max_len, SPLITS)
    n_items = int(tags.shape[0])
    stats: dict = {
        "root": str(root),
        "max_len": max_len,
        "item_info": {
            "n_items": n_items,
            "n_tags": _n_tags(tags),
            "tags_per_item_mean": float(np.count_nonzero(tags[1:], axis=1).mean()) if n_items > 1 else 0.0,
            "emb_dim": int(emb.shape[1]),
            "emb_row0_zero": bool((emb[0] == 0).all()),
            "tags_row0_zero": bool((tags[0] == 0).all()),
        },
        "splits": {name: _split_stats(a, max_len) for name, a in arrays.items()},
        "missing_splits": [s for s in SPLITS if s not in arrays],
    }
    widths = [w for a in arrays.values() for w in (a["info"]["stored_width_min"], a["info"]["stored_width_max"])]
    stats["seq_width_min"], stats["seq_width_max"] = min(widths), max(widths)
    stats["seq_fixed_width"] = stats["seq_width_min"] == stats["seq_width_max"]

    truth_dir = root / "truth"
    truth = {"present": truth_dir.is_dir(), "splits": {}}
    if truth["present"]:
        for name, a in arrays.items():
            p = read_truth(root, name, n_rows=int(a["item_id"].shape[0]))
            if p is not None:
                truth["splits"][name] = {"rows": int(p.size), "mean_p_click": float(p.mean())}
    stats["truth"] = truth
    return stats


def _fmt_counts(counts: dict) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))


def format_stats(stats: dict) -> str:
    """Human-readable summary of :func:`describe` output (printed by ``ssmrec data check``)."""
    ii = stats["item_info"]
    if stats["seq_fixed_width"]:
        width = f"fixed {stats['seq_width_max']}"
    else:
        width = f"ragged {stats['seq_width_min']}..{stats['seq_width_max']}"
    lines = [
        f"MM-CTR data: {stats['root']}  (OK)",
        f"item_info: {ii['n_items']} items (incl. padding row 0), tag vocab {ii['n_tags']}, "
        f"{ii['tags_per_item_mean']:.2f} tags/item, emb dim {ii['emb_dim']}, "
        f"item_emb_d128[0] all zero: {'yes' if ii['emb_row0_zero'] else 'no'}",
        f"item_seq stored width: {width}; window max_len {stats['max_len']}",
    ]
    for name, s in stats["splits"].items():
        h = s["history"]
        label = f"label rate {s['label_rate']:.4f}" if s["has_label"] else "no labels"
        lines += [
            f"{name}: {s['rows']} rows, {s['users']} users, {s['items']} target items, {label}",
            f"  history length (non-zero ids in window): min {h['min']} median {h['median']:g} "
            f"mean {h['mean']:.2f} p90 {h['p90']:g} max {h['max']}; full windows {h['frac_full']:.1%}, "
            f"empty {h['frac_empty']:.1%}",
            f"  likes_level: {_fmt_counts(s['likes_level'])}",
            f"  views_level: {_fmt_counts(s['views_level'])}",
        ]
    for name in stats.get("missing_splits", []):
        lines.append(f"{name}: absent")
    t = stats["truth"]
    if t["present"]:
        parts = ", ".join(f"{k} ({v['rows']} rows, mean p_click {v['mean_p_click']:.4f})" for k, v in t["splits"].items())
        lines.append(f"truth/: present: {parts or 'no split files'}")
    else:
        lines.append("truth/: absent")
    return "\n".join(lines)
