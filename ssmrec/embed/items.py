"""Reading the item table that `ssmrec embed` encodes: ids, title texts and cover image paths.

Two layouts are recognised in the ``--items`` folder:

* **Synthetic world** (``ssmrec data synth``): ``item_feature.parquet`` with ``item_id``,
  ``item_title`` and ``cover_path`` (a path relative to the folder, e.g. ``covers/000001.png``).
* **MicroLens raw** (MM-CTR challenge Task-1 material): ``item_feature.parquet`` with ``item_id``
  and ``item_title`` (other columns such as ``item_tags`` / ``likes_level`` are ignored) and a cover
  folder of ``{item_id}.jpg`` files (``item_images/`` as unpacked from ``item_images.rar``, or
  ``covers/``; any of .jpg/.jpeg/.png/.webp). ``covers=`` names the folder explicitly.

* **MicroLens-50K/100K release**: ``MicroLens-*_titles.csv[.gz]`` (``item,title``; no covers, so
  text encoders only).

Images are never read here; :func:`load_image` opens one (the pipeline decodes them batch by batch).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ssmrec.errors import DataError, one_line

ITEM_FEATURE_FILE = "item_feature.parquet"
DEFAULT_COVER_DIRS = ("covers", "item_images")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class ItemTable:
    root: Path  # the --items folder
    file: Path  # item_feature.parquet
    ids: np.ndarray  # (n,) int64, unique, >= 1, in file order
    titles: list[str] | None  # None when the table has no title column
    covers: list[Path | None] | None  # absolute cover paths; None entry = no cover file found
    n_empty_titles: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self, modality: str) -> str:
        """Hash of what an encoder of ``modality`` reads (ids + titles, or ids + cover paths), so a
        cache built from other inputs is never reused."""
        h = hashlib.sha1(self.ids.tobytes())
        for v in (self.titles if modality == "text" else self.covers) or []:
            h.update(str(v).encode("utf-8", "surrogatepass") + b"\0")
        return h.hexdigest()


def _column(path, table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _string_column(path: Path, table: pa.Table, name: str) -> tuple[list[str], np.ndarray]:
    """Values of a string column as Python strings (nulls -> ""), plus the null mask."""
    arr = _column(path, table, name)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise DataError(path, f"expected a string column, got {arr.type}", column=name)
    null = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    values = arr.fill_null("").to_pylist()
    return values, null


def _cover_index(folder: Path) -> dict[str, str]:
    """``{stem: file name}`` of the image files in ``folder`` (one directory listing, not n stats)."""
    index: dict[str, str] = {}
    with os.scandir(folder) as it:
        for entry in it:
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() in IMAGE_SUFFIXES:
                index.setdefault(stem, entry.name)
    return index


def read_item_table(items, covers=None, need_titles: bool = True, need_covers: bool = True) -> ItemTable:
    """Read and validate ``items/item_feature.parquet`` (see the module docstring for layouts).

    ``covers``: cover folder for the MicroLens layout (default: ``items/covers`` or
    ``items/item_images``); ignored when the table has a ``cover_path`` column.
    """
    root = Path(items)
    path = root / ITEM_FEATURE_FILE
    if not root.is_dir():
        raise DataError(root, "--items must be a folder holding item_feature.parquet")
    titles_csv = sorted(root.glob("*titles.csv")) + sorted(root.glob("*titles.csv.gz"))
    if not path.is_file() and titles_csv:  # MicroLens-50K/100K release: item,title (no covers)
        path = titles_csv[0]
        try:
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(path)
        except (pa.ArrowException, OSError) as e:
            raise DataError(path, f"cannot read CSV: {one_line(str(e), 200)}") from None
        if not {"item", "title"} <= set(table.column_names):
            raise DataError(path, f"expected columns item,title (found: {', '.join(table.column_names)})")
        table = pa.table({"item_id": table["item"], "item_title": table["title"]})
        schema = table.schema
    elif not path.is_file():
        raise DataError(path, "file not found (expected the item table: item_id, item_title[, cover_path])")
    else:
        try:
            schema = pq.read_schema(path)
            wanted = [c for c in ("item_id", "item_title", "cover_path") if c in schema.names]
            table = pq.read_table(path, columns=wanted)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise DataError(path, f"cannot read parquet (empty or truncated?): {one_line(str(e), 200)}") from None
    if "item_id" not in table.column_names:
        raise DataError(path, f"missing column (found: {', '.join(schema.names)})", column="item_id")
    if table.num_rows == 0:
        raise DataError(path, "file has 0 rows")

    arr = _column(path, table, "item_id")
    if not pa.types.is_integer(arr.type):
        raise DataError(path, f"expected an integer column, got {arr.type}", column="item_id")
    if arr.null_count:
        raise DataError(path, "null value", column="item_id",
                        row=_first(np.asarray(arr.is_null().to_numpy(zero_copy_only=False))))
    ids = np.asarray(arr.to_numpy(zero_copy_only=False)).astype(np.int64)
    bad = ids < 1
    if bad.any():
        row = _first(bad)
        raise DataError(path, f"item id {int(ids[row])} < 1 (0 is the padding row of item_info)",
                        column="item_id", row=row)
    order = np.argsort(ids, kind="stable")
    dup = ids[order][1:] == ids[order][:-1]
    if dup.any():
        row = int(order[1:][_first(dup)])
        raise DataError(path, f"duplicate item id {int(ids[row])}", column="item_id", row=row)

    titles, n_empty = None, 0
    if need_titles:
        if "item_title" not in table.column_names:
            raise DataError(path, "missing column (needed by the text encoder)", column="item_title")
        titles, null = _string_column(path, table, "item_title")
        n_empty = int(sum(1 for t in titles if not t.strip()))

    cover_list = None
    if need_covers:
        if "cover_path" in table.column_names:
            rel, null = _string_column(path, table, "cover_path")
            cover_list = [None if (n or not r) else (root / r).resolve() for r, n in zip(rel, null)]
        else:
            folder = Path(covers) if covers is not None else next(
                (root / d for d in DEFAULT_COVER_DIRS if (root / d).is_dir()), None)
            if folder is None or not folder.is_dir():
                where = str(folder) if folder is not None else " or ".join(str(root / d) for d in DEFAULT_COVER_DIRS)
                raise DataError(path, f"no 'cover_path' column and no cover folder {where} "
                                      "(pass --covers DIR with {item_id}.jpg files, or omit the image encoder)")
            index = _cover_index(folder)
            folder = folder.resolve()
            cover_list = [folder / index[s] if s in index else None for s in map(str, ids.tolist())]
    return ItemTable(root=root, file=path, ids=ids, titles=titles, covers=cover_list, n_empty_titles=n_empty)


def load_image(path: Path | None):
    """Open one cover as RGB; returns ``(image, None)`` or ``(None, reason)`` (never raises for bad files)."""
    from PIL import Image, UnidentifiedImageError

    if path is None:
        return None, "no cover file for this item"
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncated files fail here, not later in the encoder
            return im.convert("RGB"), None
    except FileNotFoundError:
        return None, f"file not found: {path}"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return None, f"cannot decode {path}: {' '.join(str(e).split())[:160]}"
