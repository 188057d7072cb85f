"""Sequential-recommendation data: per-user chronological item sequences (Mamba4Rec, reference doc §7).

Readers for the public next-item data sets and the Mamba4Rec/RecBole preprocessing:

* :func:`load_seq_dataset` detects the layout of a file or folder and reads it (gzip transparently):

  ==========================  =====================================================================
  layout                      recognised by
  ==========================  =====================================================================
  S3-Rec / MicroLens          ``*.txt`` / ``*.tsv``: one line per user, ``user item item ...``
  sequence files              (``Beauty.txt``, ``Video_Games.txt``) or ``user<TAB>item item ...``
                              (``MicroLens-50k_pairs.tsv``, CRLF line ends). Ids are integers; the
                              file order within a line is the chronological order.
  RecBole atomic ``*.inter``  a tab-separated header of ``name:type`` fields; ``user_id`` and
                              ``item_id`` are required (tokens: any non-empty text), ``timestamp``
                              optional (a number); other fields (``rating`` ...) are ignored.
  MovieLens ``u.data``        tab-separated ``user item rating timestamp`` integers, no header.
  MovieLens ``ratings.dat``   ``user::item::rating::timestamp`` integers, no header.
  interaction ``*.parquet``   a user column (``user_id``/``userID``/``userId``/``user``) and an item
                              column (``item_id``/``itemID``/``itemId``/``movieID``/``movieId``/
                              ``movie_id``/``item``), integer or string; optional ``timestamp``
                              (e.g. ``ml-1m/ratings_user_item.parquet``, which has no timestamps).
  ==========================  =====================================================================

  Files with another name are recognised by their first line. A folder must hold exactly one
  recognised file (``*.txt``/``*.tsv`` count only when their first line is a sequence line, so
  README.txt files are ignored; a parquet file counts only with a user and an item column).

* :func:`from_interactions` turns ``(user, item[, timestamp])`` rows into a :class:`SeqDataset`:
  iterative k-core filtering (:func:`kcore_filter`), chronological order (a *stable* sort by
  timestamp, so ties keep the file order; without timestamps the file order), re-indexing, CSR.
* :func:`leave_one_out` gives the paper's split (train ``seq[:-2]``, valid target ``seq[-2]``, test
  target ``seq[-1]``) as index ranges into the CSR arrays; the next-item task uses it.
* :func:`download` fetches the official MovieLens archives for users with a network.

Re-indexing rule (deterministic, documented once here): users are numbered ``0..n_users-1`` and items
``1..n_items-1`` (``0`` = padding) in ascending order of their original id -- numeric order when
every original id of that kind is an integer (all layouts except RecBole/parquet string tokens,
which are tested and converted), lexicographic order otherwise. So already dense 1-based ids (the
S3-Rec files) keep their numbers when nothing is filtered out.

k-core counts interaction *rows*: a repeated (user, item) pair counts every time (as RecBole).

Everything is vectorised (numpy / pyarrow compute over whole columns); the only Python loop is over
k-core filtering rounds. Every malformed input raises one :class:`ssmrec.errors.DataError` line
naming the file, the field and the first bad row; for text files the row is the 1-based line number
in the (decompressed) file, for parquet files the 1-based data row.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ssmrec.errors import ConfigError, DataError, SsmrecError, one_line

__all__ = [
    "SeqDataset",
    "LeaveOneOut",
    "kcore_filter",
    "from_interactions",
    "load_seq_dataset",
    "leave_one_out",
    "detect_layout",
    "download",
    "PAD_TOKEN",
    "LAYOUTS",
]

PAD_TOKEN = "[PAD]"

# Layout names (also reported by detect_layout).
SEQUENCE = "sequence"  # S3-Rec / MicroLens: user item item ...
RECBOLE = "recbole-inter"
UDATA = "movielens-u.data"
RATINGS_DAT = "movielens-ratings.dat"
PARQUET = "parquet"
LAYOUTS = (SEQUENCE, RECBOLE, UDATA, RATINGS_DAT, PARQUET)

_INT_RE = r"^[0-9]{1,18}$"  # non-negative integer ids that fit int64
_FLOAT_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"  # finite decimal numbers
_RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
_PARQUET_USER = ("user_id", "userID", "userId", "user")
_PARQUET_ITEM = ("item_id", "itemID", "itemId", "movieID", "movieId", "movie_id", "item")
_PARQUET_TIME = ("timestamp",)
_GZIP_MAGIC = b"\x1f\x8b"


# ----------------------------------------------------------------------------------------------
# Containers
# ----------------------------------------------------------------------------------------------


@dataclass
class SeqDataset:
    """Per-user chronological item sequences in CSR form. Item ids are re-indexed to 1..n_items-1
    (0 = padding); users to 0..n_users-1 (see the module docstring for the order)."""

    name: str
    n_items: int  # number of item ids INCLUDING the padding id 0
    offsets: np.ndarray  # (n_users + 1,) int64, CSR offsets into `items`
    items: np.ndarray  # (n_interactions,) int64, values in 1..n_items-1, chronological per user
    user_raw: np.ndarray  # (n_users,) original user ids (str)
    item_raw: np.ndarray  # (n_items,) original item ids (str); item_raw[0] == "[PAD]"
    source: str  # the file it was read from

    @property
    def n_users(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def lengths(self) -> np.ndarray:
        """(n_users,) int64 sequence lengths."""
        return np.diff(self.offsets)

    def seq(self, user: int) -> np.ndarray:
        """The chronological item sequence of user index ``user`` (a view)."""
        return self.items[self.offsets[user]:self.offsets[user + 1]]

    def stats(self) -> dict:
        n_users, n_inter = self.n_users, int(self.items.shape[0])
        return {"users": n_users, "items": int(self.n_items - 1), "interactions": n_inter,
                "avg_len": float(n_inter / n_users) if n_users else 0.0}


@dataclass(frozen=True)
class LeaveOneOut:
    """The paper's leave-one-out split (Mamba4Rec / RecBole ``LS: valid_and_test``) as index ranges
    into a CSR item array; the pipeline's only split of sequences (:class:`ssmrec.tasks.next_item.NextItemTask`).

    Row ``r`` is user ``users[r]`` with sequence ``s = items[start:start + n]``, ``n >= 3``: training
    sequence ``s[:n-2]`` = ``items[start:train_end]``; validation = history ``items[start:valid]``
    (the training sequence), target ``items[valid]`` (``s[n-2]``); test = history ``items[start:test]``
    (training sequence + valid target), target ``items[test]`` (``s[n-1]``). Training never reads
    ``items[train_end:]``. Users with fewer than 3 interactions are left out of all three (none
    exist after 5-core filtering).
    """

    users: np.ndarray  # (m,) int64 indices of the users kept
    start: np.ndarray  # (m,) int64
    train_end: np.ndarray  # (m,) int64, exclusive
    valid: np.ndarray  # (m,) int64 index of the valid target (== train_end)
    test: np.ndarray  # (m,) int64 index of the test target (== valid + 1)

    @property
    def n_users(self) -> int:
        return int(self.users.shape[0])

    def history_and_target(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(history start, history end, target index)`` per user for ``"valid"`` or ``"test"``:
        the history is ``items[start:end]`` and the target ``items[target]`` (``end == target``)."""
        target = {"valid": self.valid, "test": self.test}[split]
        return self.start, target, target


# ----------------------------------------------------------------------------------------------
# Filtering, building, splitting (pure numpy)
# ----------------------------------------------------------------------------------------------


def _check_min(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
    return int(v)


def kcore_filter(users: np.ndarray, items: np.ndarray, min_user: int = 5, min_item: int = 5) -> np.ndarray:
    """Boolean keep-mask of the (user, item) interaction rows after ITERATIVE filtering: rows of users
    with fewer than ``min_user`` and items with fewer than ``min_item`` interactions are removed,
    repeatedly, until every remaining user has ``>= min_user`` and every remaining item
    ``>= min_item`` interactions (the unique largest such subset). Interaction rows are counted, so a
    repeated pair counts each time. ``0`` (or ``1``) disables a side. Vectorised per round."""
    min_user, min_item = _check_min("min_user", min_user), _check_min("min_item", min_item)
    users, items = np.asarray(users), np.asarray(items)
    if users.shape != items.shape or users.ndim != 1:
        raise ValueError(f"users and items must be 1-d arrays of one length, got {users.shape} and {items.shape}")
    keep = np.ones(users.shape[0], dtype=bool)
    if users.shape[0] == 0 or (min_user <= 1 and min_item <= 1):
        return keep
    _, u = np.unique(users, return_inverse=True)
    _, i = np.unique(items, return_inverse=True)
    u, i = u.reshape(-1), i.reshape(-1)
    nu, ni = int(u.max()) + 1, int(i.max()) + 1
    while True:  # one pass per filtering round
        drop = np.zeros_like(keep)
        if min_user > 1:
            drop |= np.bincount(u[keep], minlength=nu)[u] < min_user
        if min_item > 1:
            drop |= np.bincount(i[keep], minlength=ni)[i] < min_item
        drop &= keep
        if not drop.any():
            return keep
        keep &= ~drop


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique values, inverse codes) -- ascending original-id order (numeric for integers)."""
    uniq, inv = np.unique(values, return_inverse=True)
    return uniq, inv.reshape(-1).astype(np.int64, copy=False)


def _as_str(values: np.ndarray) -> np.ndarray:
    return np.asarray(values).astype(str)


def from_interactions(users, items, timestamps=None, name: str = "", source: str = "",
                      min_user: int = 5, min_item: int = 5) -> SeqDataset:
    """Build a :class:`SeqDataset` from interaction rows (in file order).

    k-core filter (:func:`kcore_filter`; ``0`` disables a side), then order each user's items by a
    stable sort on ``timestamps`` when given (ties keep the row order), else keep the row order.
    Users -> ``0..``, items -> ``1..`` in ascending original-id order (numeric for integer ids,
    lexicographic for strings). Raises :class:`DataError` when nothing is left.
    """
    min_user, min_item = _check_min("min_user", min_user), _check_min("min_item", min_item)
    users, items = np.asarray(users).reshape(-1), np.asarray(items).reshape(-1)
    src = source or name or "<interactions>"
    if users.shape != items.shape:
        raise DataError(src, f"users ({users.shape[0]}) and items ({items.shape[0]}) differ in length")
    ts = None
    if timestamps is not None:
        ts = np.asarray(timestamps).reshape(-1)
        if ts.shape != users.shape:
            raise DataError(src, f"timestamps ({ts.shape[0]}) and users ({users.shape[0]}) differ in length",
                            column="timestamp")
        if ts.dtype.kind == "f" and not np.isfinite(ts).all():
            raise DataError(src, "timestamp is not finite", column="timestamp",
                            row=int(np.argmin(np.isfinite(ts))) + 1)
    if users.shape[0] == 0:
        raise DataError(src, "no interactions")

    keep = kcore_filter(users, items, min_user, min_item)
    if not keep.all():
        users, items = users[keep], items[keep]
        ts = None if ts is None else ts[keep]
    if users.shape[0] == 0:
        raise DataError(src, f"no interactions left after k-core filtering (min_user={min_user}, "
                             f"min_item={min_item})")

    user_uniq, u = _codes(users)
    item_uniq, i = _codes(items)
    order = np.argsort(u, kind="stable") if ts is None else np.lexsort((ts, u))  # lexsort is stable
    counts = np.bincount(u, minlength=user_uniq.shape[0]).astype(np.int64)
    offsets = np.zeros(user_uniq.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    item_raw = np.concatenate([np.array([PAD_TOKEN]), _as_str(item_uniq)])
    return SeqDataset(name=name, n_items=int(item_uniq.shape[0]) + 1, offsets=offsets, items=i[order] + 1,
                      user_raw=_as_str(user_uniq), item_raw=item_raw, source=str(source))


def leave_one_out(offsets: np.ndarray) -> LeaveOneOut:
    """The paper's leave-one-out split of the CSR sequences ``offsets`` (see :class:`LeaveOneOut`)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    lens = np.diff(offsets)
    users = np.flatnonzero(lens >= 3).astype(np.int64)
    start, end = offsets[:-1][users], offsets[1:][users]
    return LeaveOneOut(users=users, start=start, train_end=end - 2, valid=end - 2, test=end - 1)


# ----------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------


def _base_name(path: Path) -> str:
    name = path.name
    return name[:-3] if name.lower().endswith(".gz") else name


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is gzip (by magic or by a .gz name)."""
    if not path.exists():
        raise DataError(path, "file not found")
    if not path.is_file():
        raise DataError(path, "not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read: {one_line(e)}") from None
    if not raw:
        raise DataError(path, "file is empty")
    is_gz = raw[:2] == _GZIP_MAGIC
    if path.name.lower().endswith(".gz") and not is_gz:
        raise DataError(path, "unreadable gzip: not a gzip file (no gzip magic bytes)")
    if is_gz:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(path, f"unreadable gzip (truncated or corrupt): {one_line(e, 160)}") from None
        if not raw:
            raise DataError(path, "file is empty (after gunzip)")
    return raw


def _first_line(path: Path, limit: int = 1 << 16) -> str:
    """First non-blank line (for layout sniffing), read without loading the whole file."""
    magic = b""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
        opener = gzip.open if magic == _GZIP_MAGIC else open
        with opener(path, "rb") as f:
            for _ in range(64):
                line = f.readline(limit)
                if not line:
                    break
                if line.strip():
                    return line.decode("utf-8", errors="replace").rstrip("\r\n")
    except (OSError, EOFError, zlib.error) as e:
        if path.name.lower().endswith(".gz") or magic == _GZIP_MAGIC:
            raise DataError(path, f"unreadable gzip (truncated or corrupt): {one_line(e, 160)}") from None
        raise DataError(path, f"cannot read: {one_line(e)}") from None
    return ""


_INT_TOKEN = re.compile(r"[0-9]{1,18}")


def _looks_like_sequence(line: str) -> bool:
    toks = line.split()
    return bool(toks) and all(_INT_TOKEN.fullmatch(t) for t in toks)


def _looks_like_header(line: str) -> bool:
    fields = line.split("\t")
    return all(":" in f and f.rsplit(":", 1)[1].strip() in _RECBOLE_TYPES for f in fields)


def _sniff(line: str) -> str | None:
    if not line.strip():
        return None
    if _looks_like_header(line):
        return RECBOLE
    if "::" in line:
        return RATINGS_DAT
    tab = line.split("\t")
    if len(tab) == 4 and all(_INT_TOKEN.fullmatch(t.strip()) for t in tab):
        return UDATA
    if _looks_like_sequence(line):
        return SEQUENCE
    return None


def _parquet_columns(names) -> tuple[str | None, str | None, str | None]:
    pick = lambda cands: next((c for c in cands if c in names), None)  # noqa: E731
    return pick(_PARQUET_USER), pick(_PARQUET_ITEM), pick(_PARQUET_TIME)


def _layout_of_file(path: Path, strict: bool) -> str | None:
    """Layout of one file, or None when not recognised. ``strict`` (an explicitly named file): a
    *.txt/*.tsv file is read as a sequence file whatever its first line; unknown -> None."""
    base = _base_name(path).lower()
    if base.endswith(".inter"):
        return RECBOLE
    if base == "u.data":
        return UDATA
    if base == "ratings.dat":
        return RATINGS_DAT
    if base.endswith(".parquet"):
        if strict:
            return PARQUET
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowException, OSError, ValueError):
            return None
        u, i, _ = _parquet_columns(names)
        return PARQUET if u and i else None
    if base.endswith((".txt", ".tsv")):
        if strict:
            return SEQUENCE
        return SEQUENCE if _looks_like_sequence(_first_line(path)) else None
    # Other names: an explicitly named file is recognised by its first line; in a folder, only the
    # names above count (so movies.dat, u.item, u1.base, README ... are ignored).
    return _sniff(_first_line(path)) if strict else None


def detect_layout(path) -> tuple[Path, str]:
    """``(file, layout)`` for a file or a folder (see the module docstring); raises DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "not found")
    if path.is_dir():
        found, entries = [], []
        for p in sorted(path.iterdir()):
            if not p.is_file():
                continue
            entries.append(p.name)
            layout = _layout_of_file(p, strict=False)
            if layout is not None:
                found.append((p, layout))
        if not found:
            listing = ", ".join(entries[:12]) + (", ..." if len(entries) > 12 else "") or "nothing"
            raise DataError(path, f"no recognised interaction file (found: {listing}); expected a sequence "
                                  f"*.txt/*.tsv, *.inter, u.data, ratings.dat or an interaction *.parquet")
        if len(found) > 1:
            listing = ", ".join(f"{p.name} ({layout})" for p, layout in found)
            raise DataError(path, f"ambiguous: several interaction files ({listing}); pass one file")
        return found[0]
    layout = _layout_of_file(path, strict=True)
    if layout is None:
        line = _first_line(path)
        raise DataError(path, f"unknown layout: first line {line[:60]!r} is not a sequence line, a RecBole "
                              f"header, u.data or ratings.dat row", row=1)
    return path, layout


def _lines(path: Path, data: bytes) -> pa.LargeStringArray:
    """All lines of ``data`` as a zero-copy string array (line ``k`` = element ``k - 1``, including its
    ``\\n``); a UTF-8 BOM is skipped. Checks UTF-8 (the error names the first bad line)."""
    if data[:3] == b"\xef\xbb\xbf":
        data = data[3:]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(path, "not UTF-8 text (a binary file?)", row=line) from None
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10) + 1
    if not data.endswith(b"\n"):
        ends = np.append(ends, len(data))
    offsets = np.concatenate([np.zeros(1, np.int64), ends.astype(np.int64)])
    return pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(data))


def _np(arr) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False))


def _first_false(mask: np.ndarray) -> int:
    return int(np.argmin(mask))


def _bad_token(path: Path, tokens: pa.Array, k: int, what: str, column, row) -> DataError:
    tok = tokens[k].as_py()
    shown = repr(tok if len(tok) <= 40 else tok[:40] + "...")
    if not tok:
        msg = f"expected {what}, got an empty field"
    elif tok.isascii() and tok.isdigit():
        msg = f"integer {shown} is too large (at most 18 digits)"
    else:
        msg = f"expected {what}, got {shown}"
    return DataError(path, msg, column=column, row=row)


def _parse_typed(path: Path, tokens: pa.Array, rows: np.ndarray, column: str, pattern, arrow_type, np_type,
                 what: str) -> np.ndarray:
    """Tokens matching ``pattern`` -> ``np_type``; ``rows[k]`` = the line of token ``k``."""
    ok = _np(pc.match_substring_regex(tokens, pattern))
    if not ok.all():
        k = _first_false(ok)
        raise _bad_token(path, tokens, k, what, column, int(rows[k]))
    return _np(pc.cast(tokens, arrow_type)).astype(np_type, copy=False)


def _parse_int(path: Path, tokens: pa.Array, rows: np.ndarray, column: str) -> np.ndarray:
    return _parse_typed(path, tokens, rows, column, _INT_RE, pa.int64(), np.int64, "a non-negative integer")


def _parse_float(path: Path, tokens: pa.Array, rows: np.ndarray, column: str) -> np.ndarray:
    return _parse_typed(path, tokens, rows, column, _FLOAT_RE, pa.float64(), np.float64, "a finite number")


def _parse_token(path: Path, tokens: pa.Array, rows: np.ndarray, column: str) -> np.ndarray:
    """RecBole tokens: integers when every token is one (numeric order), else strings."""
    ok = _np(pc.match_substring_regex(tokens, _INT_RE))
    if ok.all():
        return _np(pc.cast(tokens, pa.int64())).astype(np.int64, copy=False)
    empty = _np(pc.equal(pc.utf8_length(tokens), 0))
    if empty.any():
        k = int(np.argmax(empty))
        raise DataError(path, "empty id", column=column, row=int(rows[k]))
    return _np(tokens).astype(str)


def _delimited(path: Path, lines: pa.Array, line_no: np.ndarray, sep: str, names: list[str]):
    """Split ``lines`` (blank lines already removed; ``line_no`` their numbers) on ``sep`` into
    ``len(names)`` string columns; a wrong field count names the first bad line."""
    fields = pc.split_pattern(lines, sep)
    counts = _np(pc.list_value_length(fields))
    bad = counts != len(names)
    if bad.any():
        r = int(np.argmax(bad))
        shown = "'::'" if sep == "::" else "TAB"
        raise DataError(path, f"expected {len(names)} fields ({', '.join(names)}) separated by {shown}, "
                              f"found {int(counts[r])}", row=int(line_no[r]))
    flat = pc.list_flatten(fields)
    n, w = len(lines), len(names)
    return {name: pc.take(flat, pa.array(np.arange(j, n * w, w, dtype=np.int64))) for j, name in enumerate(names)}


def _nonblank(lines: pa.Array, first_line: int = 1) -> tuple[pa.Array, np.ndarray]:
    """Lines without their line ends, blank ones dropped, and the 1-based numbers of those kept."""
    trimmed = pc.utf8_rtrim(lines, characters="\r\n")
    keep = _np(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(trimmed)), 0))
    line_no = np.arange(first_line, first_line + len(lines), dtype=np.int64)
    if keep.all():
        return trimmed, line_no
    idx = np.flatnonzero(keep)
    return pc.take(trimmed, pa.array(idx)), line_no[idx]


def _no_rows(path: Path, what: str = "no interaction rows") -> DataError:
    return DataError(path, what)


def _read_sequence(path: Path, data: bytes):
    lines, line_no = _nonblank(_lines(path, data))
    if len(lines) == 0:
        raise _no_rows(path, "no data lines (only blank lines)")
    tokens = pc.ascii_split_whitespace(pc.utf8_trim_whitespace(lines))
    flat = pc.list_flatten(tokens)
    offsets = _np(tokens.offsets).astype(np.int64) - int(tokens.offsets[0].as_py())
    lens = np.diff(offsets)
    row_of = np.repeat(np.arange(len(lines), dtype=np.int64), lens)
    is_user = np.zeros(len(flat), dtype=bool)
    is_user[offsets[:-1]] = True  # every kept line has >= 1 token
    ok = _np(pc.match_substring_regex(flat, _INT_RE))
    if not ok.all():
        k = _first_false(ok)
        column = "user_id" if is_user[k] else "item_id"
        raise _bad_token(path, flat, k, f"a non-negative integer {column.split('_')[0]} id", column,
                         int(line_no[row_of[k]]))
    values = _np(pc.cast(flat, pa.int64())).astype(np.int64, copy=False)
    item_pos = ~is_user
    users = np.repeat(values[is_user], lens - 1)
    return users, values[item_pos], None


def _read_recbole(path: Path, data: bytes):
    lines = _lines(path, data)
    header = lines[0].as_py().rstrip("\r\n")
    fields = header.split("\t")
    names = []
    for f in fields:
        name, _, typ = f.rpartition(":")
        if not name or typ.strip() not in _RECBOLE_TYPES:
            raise DataError(path, f"header field {f[:40]!r} is not 'name:type' with type one of "
                                  f"{', '.join(_RECBOLE_TYPES)} (a RecBole .inter file starts with a header)",
                            row=1)
        names.append(name.strip())
    for need in ("user_id", "item_id"):
        if need not in names:
            raise DataError(path, f"missing header field '{need}:token' (found: {', '.join(fields)})",
                            column=need, row=1)
    body, line_no = _nonblank(lines.slice(1), first_line=2)
    if len(body) == 0:
        raise _no_rows(path, "no interaction rows after the header")
    cols = _delimited(path, body, line_no, "\t", names)
    trim = lambda c: pc.utf8_rtrim(c, characters="\r")  # noqa: E731
    users = _parse_token(path, trim(cols["user_id"]), line_no, "user_id")
    items = _parse_token(path, trim(cols["item_id"]), line_no, "item_id")
    ts = None
    if "timestamp" in names:
        ts = _parse_float(path, pc.utf8_trim_whitespace(cols["timestamp"]), line_no, "timestamp")
    return users, items, ts


def _read_movielens(path: Path, data: bytes, sep: str):
    lines, line_no = _nonblank(_lines(path, data))
    if len(lines) == 0:
        raise _no_rows(path, "no data lines (only blank lines)")
    names = ["user_id", "item_id", "rating", "timestamp"]
    cols = _delimited(path, lines, line_no, sep, names)
    out = {n: _parse_int(path, pc.utf8_trim_whitespace(cols[n]), line_no, n) for n in
           ("user_id", "item_id", "timestamp")}
    _parse_float(path, pc.utf8_trim_whitespace(cols["rating"]), line_no, "rating")
    return out["user_id"], out["item_id"], out["timestamp"]


def _read_parquet(path: Path):
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(path, f"cannot read parquet (empty or truncated?): {one_line(e, 200)}") from None
    u, i, t = _parquet_columns(table.column_names)
    for col, cands in ((u, _PARQUET_USER), (i, _PARQUET_ITEM)):
        if col is None:
            raise DataError(path, f"missing a column named one of {', '.join(cands)} "
                                  f"(found: {', '.join(table.column_names)})", column=cands[0])
    if table.num_rows == 0:
        raise _no_rows(path, "file has 0 rows")
    rows = np.arange(1, table.num_rows + 1, dtype=np.int64)

    def column(name: str, kind: str) -> np.ndarray:
        arr = table.column(name).combine_chunks()
        if arr.null_count:
            k = int(np.argmax(_np(arr.is_null())))
            raise DataError(path, "null value", column=name, row=k + 1)
        typ = arr.type
        if kind == "float" and (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
            return _np(arr)
        if pa.types.is_integer(typ):
            return _np(arr).astype(np.int64, copy=False)
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            arr = pc.utf8_trim_whitespace(arr)
            return _parse_float(path, arr, rows, name) if kind == "float" else _parse_token(path, arr, rows, name)
        raise DataError(path, f"expected an integer or string column, got {typ}", column=name)

    return column(u, "token"), column(i, "token"), (None if t is None else column(t, "float"))


def _read_interactions(path: Path, layout: str):
    if layout == PARQUET:
        if not path.is_file():
            raise DataError(path, "not a regular file")
        return _read_parquet(path)
    data = _read_bytes(path)
    if layout == SEQUENCE:
        return _read_sequence(path, data)
    if layout == RECBOLE:
        return _read_recbole(path, data)
    if layout == UDATA:
        return _read_movielens(path, data, "\t")
    if layout == RATINGS_DAT:
        return _read_movielens(path, data, "::")
    raise AssertionError(layout)


def _dataset_name(path: Path) -> str:
    base = _base_name(path)
    for ext in (".inter", ".txt", ".tsv", ".parquet"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
    if base == "u.data" or base.startswith("ratings"):  # generic names: use the folder's name
        base = path.parent.name or base
    return base


def load_seq_dataset(path, min_user: int = 5, min_item: int = 5) -> SeqDataset:
    """Detect the layout of ``path`` (a folder or a file; see the module docstring), read it and build
    a :class:`SeqDataset` with :func:`from_interactions` (iterative ``min_user``/``min_item``-core
    filtering, ``0`` disables; chronological order by timestamp where the layout has one, else the
    file order). Every malformed input raises one :class:`DataError` line naming the file, the field
    and the first bad line."""
    _check_min("min_user", min_user), _check_min("min_item", min_item)
    file, layout = detect_layout(path)
    users, items, ts = _read_interactions(file, layout)
    return from_interactions(users, items, ts, name=_dataset_name(file), source=str(file),
                             min_user=min_user, min_item=min_item)


# ----------------------------------------------------------------------------------------------
# Downloading (users with a network; never used by the tests)
# ----------------------------------------------------------------------------------------------

# name -> (url, the rating file inside the archive). No sha256 or size is pinned: the shared
# READMEs record checksums of derived files only (RecBole ml-100k.inter, the ml-1m parquet), not of
# these archives, so nothing here could be verified. download() checks the archive is a complete zip
# holding the rating file and writes its sha256 next to it (<archive>.sha256) for the user to pin.
_ARCHIVES = {
    "ml-100k": ("https://files.grouplens.org/datasets/movielens/ml-100k.zip", "ml-100k/u.data"),
    "ml-1m": ("https://files.grouplens.org/datasets/movielens/ml-1m.zip", "ml-1m/ratings.dat"),
}


def download(name: str, dest) -> Path:
    """Download and unpack the official GroupLens archive of ``name`` (``'ml-100k'`` or ``'ml-1m'``)
    into ``dest``; returns the unpacked folder (``dest/ml-100k`` holding ``u.data``, ``dest/ml-1m``
    holding ``ratings.dat``), which :func:`load_seq_dataset` reads. An already unpacked folder is
    returned without a download.

    No sha256 or size is checked: none of these archives' checksums could be verified from the
    shared READMEs, so instead the archive must be a complete zip holding the rating file, and its
    sha256 is written to ``dest/<name>.zip.sha256`` for the user to record. Offline -> one
    :class:`SsmrecError` line saying to download it by hand."""
    if name not in _ARCHIVES:
        raise ConfigError(f"unknown dataset {name!r} to download (known: {', '.join(_ARCHIVES)})")
    url, member = _ARCHIVES[name]
    dest = Path(dest)
    folder = dest / name
    if (dest / member).is_file():
        return folder
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SsmrecError(f"cannot create {dest}: {one_line(e)}") from None
    archive = dest / f"{name}.zip"
    part = dest / f"{name}.zip.part"
    sha = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as out:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                sha.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise SsmrecError(one_line(f"cannot download {name} from {url} ({one_line(reason, 120)}); "
                                   f"download it by hand and pass the folder", 400)) from None
    part.replace(archive)
    try:
        with zipfile.ZipFile(archive) as zf:
            if member not in zf.namelist():
                raise SsmrecError(f"{archive}: downloaded archive lacks {member}; download it by hand and pass "
                                  f"the folder")
            bad = zf.testzip()
            if bad is not None:
                raise SsmrecError(f"{archive}: corrupt member {bad} in the downloaded archive; download it by "
                                  f"hand and pass the folder")
            zf.extractall(dest)
    except (zipfile.BadZipFile, OSError) as e:
        raise SsmrecError(f"{archive}: not a complete zip ({one_line(e, 120)}); download it by hand and pass "
                          f"the folder") from None
    (dest / f"{name}.zip.sha256").write_text(f"{sha.hexdigest()}  {archive.name}\n")
    return folder
