"""Sequential-recommendation loaders (ssmrec.data.seq): every layout, k-core filtering, leave-one-out,
malformed inputs (one-line errors naming file, field and line) and the shared real data sets."""

from __future__ import annotations

import gzip
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ssmrec.data import seq
from ssmrec.data.seq import (
    PAD_TOKEN,
    SeqDataset,
    detect_layout,
    download,
    from_interactions,
    kcore_filter,
    leave_one_out,
    load_seq_dataset,
)
from ssmrec.errors import ConfigError, DataError, SsmrecError
from tests.conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, content) -> Path:
    data = content.encode() if isinstance(content, str) else content
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def _seqs(ds: SeqDataset) -> dict[str, list[str]]:
    """{raw user id: [raw item ids in order]} -- the dataset as the file spells it."""
    return {str(ds.user_raw[u]): [str(x) for x in ds.item_raw[ds.seq(u)]] for u in range(ds.n_users)}


def _check_invariants(ds: SeqDataset) -> None:
    assert ds.offsets.dtype == np.int64 and ds.items.dtype == np.int64
    assert ds.offsets[0] == 0 and ds.offsets[-1] == ds.items.shape[0]
    assert (np.diff(ds.offsets) > 0).all()
    assert ds.items.min() >= 1 and ds.items.max() == ds.n_items - 1
    assert ds.item_raw.shape == (ds.n_items,) and ds.item_raw[0] == PAD_TOKEN
    assert ds.user_raw.shape == (ds.n_users,)
    assert len(np.unique(ds.items)) == ds.n_items - 1  # every re-indexed item is used


# ----------------------------------------------------------------------------------------------
# Module hygiene
# ----------------------------------------------------------------------------------------------


def test_import_does_not_pull_torch():
    code = "import sys, ssmrec.data.seq; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------------------------------------
# k-core filtering
# ----------------------------------------------------------------------------------------------


def test_kcore_needs_several_rounds():
    # min 2/2. Round 1 drops (u4,d) (d seen once); then u4 has 1 row -> (u4,c) goes; then c has 1 ->
    # (u3,c) goes; then u3 has 1 -> (u3,a) goes; a keeps 2 rows. One round alone would keep rows 0..6.
    users = np.array(["u1", "u1", "u2", "u2", "u3", "u3", "u4", "u4"])
    items = np.array(["a", "b", "a", "b", "a", "c", "c", "d"])
    keep = kcore_filter(users, items, 2, 2)
    assert keep.tolist() == [True, True, True, True, False, False, False, False]
    # Disabling a side: only users with >= 2 rows -- everyone.
    assert kcore_filter(users, items, 2, 0).all()
    # Only items with >= 2: round 1 drops d, then nothing else is below 2 on the item side.
    assert kcore_filter(users, items, 0, 2).tolist() == [True] * 7 + [False]
    assert kcore_filter(users, items, 0, 0).all()


def test_kcore_counts_repeated_pairs_and_can_empty():
    users = np.array([1, 1, 2])
    items = np.array([7, 7, 8])
    assert kcore_filter(users, items, 2, 2).tolist() == [True, True, False]
    assert not kcore_filter(users, items, 3, 1).any()
    assert kcore_filter(np.array([], dtype=np.int64), np.array([], dtype=np.int64)).shape == (0,)


def _kcore_reference(users, items, mu, mi):
    """Row-by-row reference (test only): remove offenders one pass at a time until stable."""
    keep = [True] * len(users)
    while True:
        uc, ic = {}, {}
        for k, ok in enumerate(keep):
            if ok:
                uc[users[k]] = uc.get(users[k], 0) + 1
                ic[items[k]] = ic.get(items[k], 0) + 1
        changed = False
        for k, ok in enumerate(keep):
            if ok and (uc[users[k]] < mu or ic[items[k]] < mi):
                keep[k], changed = False, True
        if not changed:
            return keep


@pytest.mark.parametrize("seed", range(6))
def test_kcore_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n = 400
    users = rng.integers(0, 60, n)
    items = (rng.zipf(1.6, n) % 80).astype(np.int64)
    for mu, mi in ((5, 5), (3, 4), (0, 3), (4, 0)):
        assert kcore_filter(users, items, mu, mi).tolist() == _kcore_reference(users.tolist(), items.tolist(), mu, mi)


def test_kcore_bad_thresholds():
    with pytest.raises(ConfigError, match="min_user"):
        kcore_filter(np.array([1]), np.array([1]), -1, 5)
    with pytest.raises(ConfigError, match="min_item"):
        load_seq_dataset("/nonexistent", 5, 2.5)


# ----------------------------------------------------------------------------------------------
# from_interactions and leave_one_out
# ----------------------------------------------------------------------------------------------


def test_from_interactions_order_reindex_and_ties():
    users = np.array([20, 3, 20, 3, 20, 3])
    items = np.array([11, 5, 9, 5, 2, 11])
    ts = np.array([30.0, 5.0, 10.0, 5.0, 10.0, 1.0])
    ds = from_interactions(users, items, ts, name="x", source="mem", min_user=0, min_item=0)
    _check_invariants(ds)
    # users in ascending numeric order (3 < 20), items 2 -> 1, 5 -> 2, 9 -> 3, 11 -> 4
    assert ds.user_raw.tolist() == ["3", "20"]
    assert ds.item_raw.tolist() == [PAD_TOKEN, "2", "5", "9", "11"]
    # user 3: ts 1 (11), then the tie at ts 5 in row order (5, 5); user 20: tie at 10 keeps row order
    # (9 before 2), then 11 at ts 30.
    assert _seqs(ds) == {"3": ["11", "5", "5"], "20": ["9", "2", "11"]}
    assert ds.offsets.tolist() == [0, 3, 6] and ds.items.tolist() == [4, 2, 2, 3, 1, 4]
    assert ds.stats() == {"users": 2, "items": 4, "interactions": 6, "avg_len": 3.0}
    assert ds.lengths().tolist() == [3, 3] and ds.name == "x" and ds.source == "mem"
    # Without timestamps: row order within each user.
    ds2 = from_interactions(users, items, None, min_user=0, min_item=0)
    assert _seqs(ds2) == {"3": ["5", "5", "11"], "20": ["11", "9", "2"]}


def test_from_interactions_string_ids_lexicographic():
    ds = from_interactions(np.array(["b", "a", "b"]), np.array(["x10", "x9", "x2"]), min_user=0, min_item=0)
    assert ds.user_raw.tolist() == ["a", "b"]
    assert ds.item_raw.tolist() == [PAD_TOKEN, "x10", "x2", "x9"]
    assert _seqs(ds) == {"a": ["x9"], "b": ["x10", "x2"]}


def test_from_interactions_errors():
    with pytest.raises(DataError, match="no interactions left after k-core") as e:
        from_interactions(np.array([1, 2]), np.array([1, 2]), source="f.txt")
    assert "f.txt" in str(e.value)
    with pytest.raises(DataError, match="differ in length"):
        from_interactions(np.array([1, 2]), np.array([1]))
    with pytest.raises(DataError, match="timestamp"):
        from_interactions(np.array([1, 2]), np.array([1, 2]), np.array([1.0, np.nan]), min_user=0, min_item=0)


def test_leave_one_out_hand_case():
    # u0: 1 2 3 4   u1: 5 6 (too short, dropped)   u2: 7 8 9
    users = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    items = np.arange(1, 10)
    ds = from_interactions(users, items, min_user=0, min_item=0)
    assert ds.items.tolist() == list(range(1, 10))  # dense 1-based ids keep their numbers
    sp = leave_one_out(ds.offsets)
    assert sp.users.tolist() == [0, 2] and sp.n_users == 2
    assert sp.start.tolist() == [0, 6] and sp.train_end.tolist() == [2, 7]
    assert [ds.items[a:b].tolist() for a, b in zip(sp.start, sp.train_end)] == [[1, 2], [7]]
    assert ds.items[sp.valid].tolist() == [3, 8] and ds.items[sp.test].tolist() == [4, 9]
    start, end, target = sp.history_and_target("valid")
    assert [ds.items[a:b].tolist() for a, b in zip(start, end)] == [[1, 2], [7]]
    assert (target == sp.valid).all()
    start, end, target = sp.history_and_target("test")
    assert [ds.items[a:b].tolist() for a, b in zip(start, end)] == [[1, 2, 3], [7, 8]]
    assert ds.items[target].tolist() == [4, 9]
    for a in (sp.users, sp.start, sp.train_end, sp.valid, sp.test):
        assert a.dtype == np.int64


def test_the_next_item_task_uses_this_leave_one_out(tmp_path):
    """The pipeline's split is leave_one_out's: the task's evaluation targets are its valid / test
    items, and users too short for it are dropped the same way."""
    from ssmrec.config import from_dict
    from ssmrec.tasks.next_item import NextItemTask, SeqSplitData, load_split_data

    cfg = {"task": "next_item", "model": "mamba4rec"}
    task = NextItemTask(from_dict({**cfg, "data": {"max_len": 5}}),
                        SeqSplitData("t", 10, np.array([0, 4, 7]), np.array([1, 2, 3, 4, 7, 8, 9])))
    task.setup()
    sp = leave_one_out(np.array([0, 4, 7]))
    for split, idx in (("valid", sp.valid), ("test", sp.test)):
        batch = next(task.eval_batches(split, 8))
        assert batch.target.tolist() == task.data.items[idx].tolist()
        assert batch.target.tolist() == ([3, 8] if split == "valid" else [4, 9])
    assert task.data.bounds("test")[1].tolist() == sp.test.tolist()
    # A source with a too-short user: load_split_data keeps leave_one_out's users.
    path = tmp_path / "x.txt"  # S3-Rec layout: user 1 has 4 items, user 2 two (dropped), user 3 three
    path.write_text("1 1 2 3 4\n2 5 6\n3 7 8 9\n")
    d = load_split_data(from_dict({**cfg, "data": {"source": str(path), "min_user": 0, "min_item": 0}}).data)
    assert d.user_raw.tolist() == ["1", "3"] and d.offsets.tolist() == [0, 4, 7]
    assert d.items.tolist() == [1, 2, 3, 4, 7, 8, 9]


# ----------------------------------------------------------------------------------------------
# Every layout, hand-made
# ----------------------------------------------------------------------------------------------

SEQ_TEXT = "1 1 2 3\n2 4 2\n\n3 5\n"  # a blank line is skipped
SEQ_EXPECT = {"1": ["1", "2", "3"], "2": ["4", "2"], "3": ["5"]}


@pytest.mark.parametrize("name,text", [
    ("Beauty.txt", SEQ_TEXT),
    ("Beauty.txt.gz", SEQ_TEXT),
    ("MicroLens-50k_pairs.tsv", SEQ_TEXT.replace("\n", "\r\n").replace("1 1", "1\t1").replace("2 4", "2\t4")),
    ("MicroLens-50k_pairs.tsv.gz", SEQ_TEXT.replace("\n", "\r\n").replace(" ", "\t", 1)),
    ("no_trailing_newline.txt", SEQ_TEXT.rstrip("\n")),
])
def test_sequence_files(tmp_path, name, text):
    p = _write(tmp_path / name, text)
    assert detect_layout(p) == (p, seq.SEQUENCE)
    ds = load_seq_dataset(p, 0, 0)
    _check_invariants(ds)
    assert _seqs(ds) == SEQ_EXPECT
    assert ds.source == str(p)
    assert ds.items.tolist() == [1, 2, 3, 4, 2, 5]  # ids 1..5 keep their numbers


def test_sequence_file_kcore(tmp_path):
    # min 2/2: user 3 (1 item) goes, then item 5 has no rows, item 1 has 1 row -> user 1 row (1) goes...
    p = _write(tmp_path / "s.txt", "1 1 2 3\n2 2 3 4\n3 5\n4 3 2\n")
    ds = load_seq_dataset(p, 2, 2)
    # item counts: 1:1 2:3 3:3 4:1 5:1 -> drop 1, 4, 5 (user 3 empties); users 1: [2,3], 2: [2,3], 4: [3,2]
    assert _seqs(ds) == {"1": ["2", "3"], "2": ["2", "3"], "4": ["3", "2"]}
    assert ds.n_items == 3


INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "7\t100\t3\t50\n"
         "5\t200\t4\t20\n"
         "7\t300\t1\t10\n"
         "7\t400\t5\t50\n"   # tie with the first row of user 7: keeps file order (100 then 400)
         "5\t100\t2\t5.5\n")


@pytest.mark.parametrize("name", ["toy.inter", "toy.inter.gz"])
def test_recbole_inter_sorted_by_time(tmp_path, name):
    p = _write(tmp_path / name, INTER)
    assert detect_layout(p)[1] == seq.RECBOLE
    ds = load_seq_dataset(p, 0, 0)
    _check_invariants(ds)
    assert _seqs(ds) == {"5": ["100", "200"], "7": ["300", "100", "400"]}
    assert ds.name == "toy"


def test_recbole_inter_tokens_extra_fields_no_timestamp(tmp_path):
    text = ("item_id:token\tsession:token_seq\tuser_id:token\n"
            "i2\ta b c\tbob\n"
            "i10\tx\talice\n"
            "i1\ty z\tbob\r\n")  # CRLF tolerated; no timestamp -> file order
    p = _write(tmp_path / "tok.inter", text)
    ds = load_seq_dataset(p, 0, 0)
    assert _seqs(ds) == {"alice": ["i10"], "bob": ["i2", "i1"]}
    assert ds.item_raw.tolist() == [PAD_TOKEN, "i1", "i10", "i2"]  # string ids: lexicographic


U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t51\t2\t881250000\n186\t1\t5\t891717742\n"


@pytest.mark.parametrize("name,text", [
    ("u.data", U_DATA),
    ("u.data.gz", U_DATA),
    ("ratings.dat", U_DATA.replace("\t", "::")),
    ("ratings.dat.gz", U_DATA.replace("\t", "::").replace("\n", "\r\n")),
    ("interactions.log", U_DATA),  # another name: recognised by its first line
])
def test_movielens_files(tmp_path, name, text):
    p = _write(tmp_path / name, text)
    expect = seq.RATINGS_DAT if "::" in text else seq.UDATA
    assert detect_layout(p) == (p, expect)
    ds = load_seq_dataset(p, 0, 0)
    _check_invariants(ds)
    assert _seqs(ds) == {"186": ["302", "1"], "196": ["51", "242"]}
    assert ds.user_raw.tolist() == ["186", "196"]
    assert ds.item_raw.tolist() == [PAD_TOKEN, "1", "51", "242", "302"]


@pytest.mark.parametrize("typ", [pa.string(), pa.int64()])
def test_parquet_interactions(tmp_path, typ):
    conv = (lambda xs: [str(x) for x in xs]) if typ == pa.string() else list
    t = pa.table({"userID": pa.array(conv([2, 1, 2, 1]), typ), "movieID": pa.array(conv([10, 20, 30, 10]), typ)})
    p = tmp_path / "ratings_user_item.parquet"
    pq.write_table(t, p)
    ds = load_seq_dataset(tmp_path, 0, 0)  # through the folder
    assert ds.source == str(p) and ds.name == tmp_path.name
    assert _seqs(ds) == {"1": ["20", "10"], "2": ["10", "30"]}
    t2 = t.append_column("timestamp", pa.array([5, 1, 2, 0]))
    pq.write_table(t2, p)
    assert _seqs(load_seq_dataset(p, 0, 0)) == {"1": ["10", "20"], "2": ["30", "10"]}


def test_folder_picks_the_one_recognised_file(tmp_path):
    # An S3-Rec style folder: the README and the attributes file are ignored.
    _write(tmp_path / "README.txt", "Amazon Beauty, S3-Rec preprocessing\n")
    _write(tmp_path / "Beauty_item2attributes.json.gz", '{"1": [1]}')
    p = _write(tmp_path / "Beauty.txt.gz", SEQ_TEXT)
    assert detect_layout(tmp_path) == (p, seq.SEQUENCE)
    assert _seqs(load_seq_dataset(tmp_path, 0, 0)) == SEQ_EXPECT


def test_folder_movielens_layouts(tmp_path):
    ml1m = tmp_path / "ml-1m"
    ml1m.mkdir()
    _write(ml1m / "movies.dat", "1::Toy Story (1995)::Animation\n")
    _write(ml1m / "users.dat", "1::F::1::10::48067\n")
    _write(ml1m / "README", "SUMMARY\n")
    p = _write(ml1m / "ratings.dat", U_DATA.replace("\t", "::"))
    assert detect_layout(ml1m) == (p, seq.RATINGS_DAT)
    assert load_seq_dataset(ml1m, 0, 0).name == "ml-1m"
    ml100k = tmp_path / "ml-100k"
    ml100k.mkdir()
    for extra in ("u1.base", "u1.test", "u.item", "u.user"):
        _write(ml100k / extra, U_DATA)
    p = _write(ml100k / "u.data", U_DATA)
    assert detect_layout(ml100k) == (p, seq.UDATA)
    recbole = tmp_path / "toy"
    recbole.mkdir()
    _write(recbole / "toy.item", "item_id:token\ttitle:token_seq\n100\ta\n")
    _write(recbole / "toy.user", "user_id:token\tage:token\n7\t30\n")
    p = _write(recbole / "toy.inter", INTER)
    assert detect_layout(recbole) == (p, seq.RECBOLE)


# ----------------------------------------------------------------------------------------------
# Malformed inputs: one line naming the file, the field and the first bad line
# ----------------------------------------------------------------------------------------------

_FULL_GZ = gzip.compress("".join(f"{k} {3 * k} {7 * k}\n" for k in range(2000)).encode())
_TRUNCATED_GZ = _FULL_GZ[: len(_FULL_GZ) // 2]
_HDR = "user_id:token\titem_id:token\ttimestamp:float\n"

MALFORMED = [
    # name, content, fragments that must appear in the message
    ("Beauty.txt", "1 1 2\n2 3 x 4\n", ["column 'item_id'", "row 2", "'x'"]),
    ("Beauty.txt", "1 1 2\nu2 3 4\n", ["column 'user_id'", "row 2", "'u2'"]),
    ("Beauty.txt", "1 1 2\n\n3 4 5.5\n", ["column 'item_id'", "row 3", "'5.5'"]),  # blank lines still count
    ("Beauty.txt", "1 1 2\n2 3 -4\n", ["column 'item_id'", "row 2", "'-4'"]),
    ("Beauty.txt", "1 2 99999999999999999999\n", ["column 'item_id'", "row 1", "too large"]),  # beyond int64
    ("pairs.tsv", "1\t2 3\r\n2\t4 abc\r\n", ["column 'item_id'", "row 2", "'abc'"]),
    ("Beauty.txt", b"1 2 3\n\xff\xfe 4\n", ["not UTF-8", "row 2"]),
    ("Beauty.txt", "", ["file is empty"]),
    ("Beauty.txt", "\n \n\n", ["no data lines"]),
    ("Beauty.txt.gz", _TRUNCATED_GZ, ["unreadable gzip"]),
    ("Beauty.txt.gz", b"1 2 3\n", ["unreadable gzip", "not a gzip file"]),
    ("toy.inter", "user_id:token\trating:float\n1\t3\n", ["column 'item_id'", "row 1", "missing header field"]),
    ("toy.inter", "1\t2\t3\n", ["row 1", "header field '1'"]),
    ("toy.inter", _HDR + "1\t2\t3\n1\t3\n", ["row 3", "expected 3 fields", "found 2"]),
    ("toy.inter", _HDR + "1\t2\t3\n1\t3\tsoon\n", ["column 'timestamp'", "row 3", "'soon'"]),
    ("toy.inter", _HDR + "1\t2\t3\n\t3\t4\n", ["column 'user_id'", "row 3", "empty id"]),
    ("toy.inter", _HDR, ["no interaction rows"]),
    ("u.data", "1\t2\t3\t4\n1\t2\t3\n", ["row 2", "expected 4 fields", "found 3"]),
    ("u.data", "1\t2\t3\t4\n1\tb\t3\t4\n", ["column 'item_id'", "row 2", "'b'"]),
    ("u.data", "1\t2\t3\t4\n1\t2\t3\t4.5\n", ["column 'timestamp'", "row 2", "'4.5'"]),
    ("u.data", "1\t2\tgood\t4\n", ["column 'rating'", "row 1", "'good'"]),
    ("ratings.dat", "1::2::3::4\n1:2:3:4\n", ["row 2", "expected 4 fields", "'::'", "found 1"]),
    ("ratings.dat", "1::2::3::4\n\nx::2::3::4\n", ["column 'user_id'", "row 3", "'x'"]),
    ("ratings.dat", "1::2::3::4::5\n", ["row 1", "expected 4 fields", "found 5"]),
    ("data.csv", "user,item\n1,2\n", ["unknown layout", "row 1", "'user,item'"]),
]


@pytest.mark.parametrize("name,content,fragments", MALFORMED,
                         ids=[f"{i}-{c[0]}" for i, c in enumerate(MALFORMED)])
def test_malformed_files(tmp_path, name, content, fragments):
    p = tmp_path / name
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(DataError) as e:
        load_seq_dataset(p, 0, 0)
    msg = str(e.value)
    assert "\n" not in msg and "\r" not in msg
    assert str(p) in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)


def test_malformed_parquet(tmp_path):
    p = tmp_path / "r.parquet"
    pq.write_table(pa.table({"userID": ["1", "2"], "rating": [1, 2]}), p)
    with pytest.raises(DataError, match=r"column 'item_id'.*missing a column named one of item_id") as e:
        load_seq_dataset(p, 0, 0)
    assert str(p) in str(e.value)
    pq.write_table(pa.table({"user_id": ["1", None, "3"], "item_id": [1, 2, 3]}), p)
    with pytest.raises(DataError, match=r"column 'user_id', row 2: null value"):
        load_seq_dataset(p, 0, 0)
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [1.5, 2.0]}), p)
    with pytest.raises(DataError, match=r"column 'item_id'.*integer or string"):
        load_seq_dataset(p, 0, 0)
    p.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="cannot read parquet"):
        load_seq_dataset(p, 0, 0)


def test_bad_paths_and_folders(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_seq_dataset(tmp_path / "missing")
    folder = tmp_path / "f"
    folder.mkdir()
    _write(folder / "README.txt", "hello\n")
    _write(folder / "titles.csv", "item,title\n")
    with pytest.raises(DataError) as e:
        load_seq_dataset(folder)
    msg = str(e.value)
    assert "\n" not in msg and "no recognised interaction file" in msg
    assert "README.txt" in msg and "titles.csv" in msg and str(folder) in msg
    _write(folder / "a.inter", INTER)
    _write(folder / "Beauty.txt", SEQ_TEXT)
    with pytest.raises(DataError) as e:
        load_seq_dataset(folder)
    msg = str(e.value)
    assert "\n" not in msg and "ambiguous" in msg and "a.inter" in msg and "Beauty.txt" in msg
    # A corrupt *.txt.gz inside a folder is reported as such, not skipped.
    empty = tmp_path / "g"
    empty.mkdir()
    (empty / "Beauty.txt.gz").write_bytes(_TRUNCATED_GZ[:30])
    with pytest.raises(DataError, match="unreadable gzip"):
        load_seq_dataset(empty)


def test_kcore_empties_file(tmp_path):
    p = _write(tmp_path / "s.txt", SEQ_TEXT)
    with pytest.raises(DataError, match=r"no interactions left after k-core filtering \(min_user=5"):
        load_seq_dataset(p)


# ----------------------------------------------------------------------------------------------
# download (never touches the network here)
# ----------------------------------------------------------------------------------------------


def test_download_offline_is_one_line(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError(OSError("[Errno -3] Temporary failure\nin name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(SsmrecError) as e:
        download("ml-100k", tmp_path / "dl")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("cannot download ml-100k from https://files.grouplens.org/datasets/movielens/ml-100k.zip (")
    assert msg.endswith("); download it by hand and pass the folder")
    assert not list((tmp_path / "dl").glob("*.part"))
    with pytest.raises(SsmrecError, match="cannot download ml-1m from https://files.grouplens.org/datasets/"
                                          r"movielens/ml-1m.zip"):
        download("ml-1m", tmp_path / "dl")
    with pytest.raises(ConfigError, match="unknown dataset 'ml-20m'"):
        download("ml-20m", tmp_path)


def test_download_reuses_unpacked_folder(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    (tmp_path / "ml-100k").mkdir()
    _write(tmp_path / "ml-100k" / "u.data", U_DATA)
    folder = download("ml-100k", tmp_path)
    assert folder == tmp_path / "ml-100k"
    assert load_seq_dataset(folder, 0, 0).n_users == 2


# ----------------------------------------------------------------------------------------------
# Real shared data
# ----------------------------------------------------------------------------------------------

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(),
                                  reason=f"shared real data not present at {SHARED_DATA}")


@needs_shared
def test_real_amazon_beauty():
    ds = load_seq_dataset(SHARED_DATA / "amazon-beauty", 5, 5)
    assert (ds.n_users, ds.n_items - 1, ds.items.shape[0]) == (22363, 12101, 198502)  # Mamba4Rec Table 2
    _check_invariants(ds)
    assert Path(ds.source).name == "Beauty.txt.gz"
    # Already 5-core and dense: ids keep their numbers; the first line is "1 1 2 3 4 5".
    assert (ds.item_raw[1:] == np.arange(1, 12102).astype(str)).all()
    assert ds.seq(0).tolist() == [1, 2, 3, 4, 5] and ds.user_raw[0] == "1"
    sp = leave_one_out(ds.offsets)
    assert sp.n_users == 22363 and int((sp.train_end - sp.start).sum()) == 198502 - 2 * 22363


@needs_shared
def test_real_amazon_video_games():
    ds = load_seq_dataset(SHARED_DATA / "amazon-video-games", 5, 5)
    # README: 24,303 / 10,672 / 231,780 (Mamba4Rec Table 2's 10,673 counts RecBole's padding item).
    assert (ds.n_users, ds.n_items - 1, ds.items.shape[0]) == (24303, 10672, 231780)
    assert ds.n_items == 10673
    _check_invariants(ds)


@needs_shared
def test_real_ml_100k_recbole_chronological():
    path = SHARED_DATA / "ml-100k"
    raw = load_seq_dataset(path, 0, 0)
    assert (raw.n_users, raw.n_items - 1, raw.items.shape[0]) == (943, 1682, 100000)
    ds = load_seq_dataset(path, 5, 5)
    assert (ds.n_users, ds.n_items - 1, ds.items.shape[0]) == (943, 1349, 99287)
    _check_invariants(ds)
    # Checked by hand in ml-100k.inter: user 196 rated 242 (line 2), 286 (line 13735) and 269
    # (line 78789) all at 881250949, then 306 at 881251021, 340 at ...045, 1022 at ...143. Ties keep
    # the file order (242, 286, 269 -- not the id order 242, 269, 286).
    u = int(np.flatnonzero(raw.user_raw == "196")[0])
    assert raw.item_raw[raw.seq(u)[:6]].tolist() == ["242", "286", "269", "306", "340", "1022"]
    assert len(raw.seq(u)) == 39
    # Whole-file check: every user's sequence is the stable timestamp sort of its file rows.
    lines = (path / "ml-100k.inter").read_text().splitlines()[1:]
    cols = np.array([ln.split("\t") for ln in lines])
    us, its, ts = cols[:, 0].astype(np.int64), cols[:, 1], cols[:, 3].astype(np.float64)
    order = np.lexsort((ts, us))
    assert (raw.item_raw[raw.items] == its[order]).all()


@needs_shared
def test_real_microlens_50k():
    path = SHARED_DATA / "microlens-50k"
    raw = load_seq_dataset(path, 0, 0)
    assert (raw.n_users, raw.n_items - 1, raw.items.shape[0]) == (50000, 19220, 359708)
    assert Path(raw.source).name == "MicroLens-50k_pairs.tsv.gz"
    ds = load_seq_dataset(path, 5, 5)
    assert (ds.n_users, ds.n_items - 1, ds.items.shape[0]) == (46420, 14079, 332730)
    _check_invariants(ds)


@needs_shared
def test_real_ml_1m_parquet_matches_mamba4rec_counts():
    # No timestamps in the shared copy (file order is not chronological), but the 5-core counts are
    # order-free and equal Mamba4Rec's Table 2: 6,040 / 3,416 / 999,611.
    ds = load_seq_dataset(SHARED_DATA / "ml-1m", 5, 5)
    assert (ds.n_users, ds.n_items - 1, ds.items.shape[0]) == (6040, 3416, 999611)
    raw = load_seq_dataset(SHARED_DATA / "ml-1m", 0, 0)
    assert (raw.n_users, raw.n_items - 1, raw.items.shape[0]) == (6040, 3706, 1000209)
