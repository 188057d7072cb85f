"""Reading the item table: synthetic layout (cover_path column) and MicroLens raw layout (cover folder)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ssmrec.embed.items import load_image, read_item_table
from ssmrec.errors import DataError


def test_synthetic_layout(tiny_world):
    t = read_item_table(tiny_world)
    assert len(t) == 300 and t.ids[0] == 1 and t.ids[-1] == 300
    assert all(p is not None and p.is_file() for p in t.covers)
    assert t.titles[0] and t.n_empty_titles == 0
    img, reason = load_image(t.covers[0])
    assert reason is None and img.mode == "RGB"


def _microlens(tmp_path, ids, titles, images=("jpg",)):
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()), "item_title": pa.array(titles, pa.string()),
                             "likes_level": pa.array([3] * len(ids))}), tmp_path / "item_feature.parquet")
    (tmp_path / "item_images").mkdir()
    for i, ext in zip(ids, images):
        Image.new("RGB", (8, 8), (i % 255, 0, 0)).save(tmp_path / "item_images" / f"{i}.{ext}")
    return tmp_path


def test_microlens_layout_cover_folder_and_null_titles(tmp_path):
    root = _microlens(tmp_path, [7, 3, 9], ["a cat", None, "  "], images=("jpg", "png"))  # 9 has no cover
    t = read_item_table(root)
    assert t.ids.tolist() == [7, 3, 9]
    assert t.titles == ["a cat", "", "  "] and t.n_empty_titles == 2
    assert t.covers[0].name == "7.jpg" and t.covers[1].name == "3.png" and t.covers[2] is None
    assert load_image(t.covers[2]) == (None, "no cover file for this item")
    # Text-only reading needs no cover folder.
    (root / "item_images" / "7.jpg").unlink()
    assert read_item_table(root, need_covers=False).covers is None


@pytest.mark.parametrize("ids,titles,match", [
    ([1, 2, 2], ["a", "b", "c"], "duplicate item id 2"),
    ([0, 1], ["a", "b"], "item id 0 < 1"),
    ([1, 2], [1, 2], "expected a string column"),
])
def test_bad_item_tables_are_one_line_errors(tmp_path, ids, titles, match):
    pq.write_table(pa.table({"item_id": ids, "item_title": titles}), tmp_path / "item_feature.parquet")
    (tmp_path / "covers").mkdir()
    with pytest.raises(DataError, match=match) as e:
        read_item_table(tmp_path)
    assert "item_feature.parquet" in str(e.value) and "\n" not in str(e.value)


def test_missing_table_column_and_cover_folder(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_item_table(tmp_path)
    pq.write_table(pa.table({"item_id": [1]}), tmp_path / "item_feature.parquet")
    with pytest.raises(DataError, match="item_title"):
        read_item_table(tmp_path)
    with pytest.raises(DataError, match="no 'cover_path' column and no cover folder"):
        read_item_table(tmp_path, need_titles=False)
    (tmp_path / "item_feature.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(DataError, match="cannot read parquet"):
        read_item_table(tmp_path)


def test_corrupt_and_truncated_images_are_reported_not_raised(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    img, reason = load_image(bad)
    assert img is None and "cannot decode" in reason
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    assert load_image(cut)[0] is None
    assert "file not found" in load_image(tmp_path / "nope.png")[1]
