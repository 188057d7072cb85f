"""Sequential next-item recommendation (Mamba4Rec's protocol, reference doc §7.2).

Split: leave-one-out per user (:func:`ssmrec.data.seq.leave_one_out`: last item = test, second-last =
valid, the rest = train; users with fewer than 3 items are left out). Model inputs are the newest
``max_len`` items, **right-padded** (real items first), so a causal model's state at position
``len - 1`` is the user's state.

Training samples (``data.train_mode``); both modes train exactly the same (prefix, next) pairs, one
per training item after the first (``items[start:t] -> items[t]``):

* ``all_positions`` — a window of at most ``max_len`` inputs, the window shifted by one as targets,
  the loss at every real position: a causal model computes every prefix of the window once. A user
  whose training sequence is longer than ``max_len + 1`` gets several windows, ``data.window_stride``
  apart (default ``max_len // 2``), each taking the loss only on targets no earlier window had, so
  every pair is trained exactly once; such a pair's prefix is cut to at least
  ``max_len - stride + 1`` items instead of ``max_len`` (stride 1 gives exactly the prefixes' inputs).
* ``prefixes`` — RecBole's augmentation, what the paper ran: every prefix of a training sequence is a
  sample predicting its next item, its newest ``max_len`` items as input (about L times more encoder
  work for the same pairs). ``data.empty_history: true`` adds each user's first training item as a
  sample with an empty history, what BSARec's and FMLP-Rec's datasets train (their prefix loop starts
  at length 0): its input is the padding id alone, so the model learns a start state and the first
  items' prior. Off by default (RecBole, Mamba4Rec's paper). A model trained with it serves a user
  with no events from that same input (``SeqRecModel.empty_history_start``); without it such a user
  is refused. ``data.loss_excludes_history: true`` (also ``prefixes`` only) trains the way the
  ``masked`` protocol ranks: the items of a sample's input window leave its softmax (the target
  stays), so the loss never spends capacity pushing down items that protocol never ranks.

Loss: full-softmax cross-entropy over every item id (RecBole's "CE"; the padding id is a class, as
there). Evaluation: full ranking over all items, the padding id excluded, HR / NDCG / MRR @ each
``k`` in ``data.ks`` (:mod:`ssmrec.metrics`), under one of two named protocols (``data.protocol``):

* ``unmasked`` — RecBole's sequential full ranking (Mamba4Rec's tables): items of the user's history
  stay rankable.
* ``masked`` — every item of the user's **whole** history (not only the ``max_len`` the model reads)
  is excluded, the protocol S3-Rec, FMLP-Rec, BSARec and WEARec report. A target that repeats an
  earlier item of the history stays rankable (it is what is asked for); the FMLP-Rec / BSARec code
  masks it too, so there such a user is a miss (``repeat_targets_*`` in the summary says how many).

**Ties are ranked pessimistically**: an item scoring exactly the target's score counts as ranked
ahead of it; non-finite scores rank worst (:mod:`ssmrec.metrics`). The popularity and oracle
references follow the same protocol. Everything is batched; no per-user Python loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, model_validator

from ssmrec.data.batch import TensorBatch
from ssmrec.data.schema import ServingSchema
from ssmrec.data.seq import LeaveOneOut, leave_one_out
from ssmrec.errors import SsmrecError
from ssmrec.models.incremental import IncrementalModel
from ssmrec.metrics import exclude_items, rank_metrics, rank_of_target, warn_nonfinite
from ssmrec.params import STRICT, Bool, NonNegInt, PosInt, Rate
from ssmrec.tasks.base import Task

SYNTH_PREFIX = "synth"
PROTOCOLS = ("unmasked", "masked")


class NextItemDataConfig(BaseModel):
    model_config = STRICT

    source: str = "synth-tiny"  # synth-tiny | synth-default | a dataset folder or file (ssmrec.data.seq)
    max_len: PosInt = 50  # 50 for Amazon, 200 for MovieLens (Mamba4Rec)
    min_user: NonNegInt = 5  # iterative k-core filtering (0 = off)
    min_item: NonNegInt = 5
    train_mode: Literal["all_positions", "prefixes", "cloze"] = "all_positions"  # cloze: BERT4Rec
    # all_positions: step between the windows of a history longer than max_len + 1 (default max_len // 2)
    window_stride: PosInt | None = None
    # prefixes: also train items[start] from an empty history (input = the padding id; module docstring)
    empty_history: Bool = False
    # prefixes: the input window's items are not classes of the sample's softmax (the target stays one):
    # training that matches the masked protocol (module docstring)
    loss_excludes_history: Bool = False
    # evaluation (and so validation selection): history items rankable, or excluded (module docstring)
    protocol: Literal[PROTOCOLS] = "unmasked"  # type: ignore[valid-type]
    # Group samples of similar length into batches (within chunks of 64 batches of the epoch's shuffle;
    # the batches' order is shuffled again). Same samples, far fewer padding tokens: most Amazon
    # histories are much shorter than max_len. RecBole does not do this; false = its plain shuffle.
    bucket_by_length: Bool = True
    # all_positions: how a batch's per-position CE losses are averaged. "batch": the plain mean over
    # the batch's pairs. "pairs": divided by the epoch's mean number of pairs per batch, so every
    # (prefix, next) pair weighs the same in every batch, as in prefixes mode's fixed-size batches
    # (length-bucketed user batches hold 2 to 49 pairs per user, so a plain mean weighs a short
    # history's pairs more). Measured on amazon-beauty it did not train better (README), so "batch".
    loss_normalization: Literal["batch", "pairs"] = "batch"
    # Label smoothing of the full-catalogue CE (0 = RecBole's plain CE): the target keeps 1 - eps, the
    # rest is spread over every class. Logged `ce` stays the unsmoothed CE, comparable across runs.
    label_smoothing: Rate = 0.0
    ks: list[PosInt] = Field(default_factory=lambda: [5, 10, 20], min_length=1)
    seed: NonNegInt = 0  # the synthetic world's seed
    # Multimodal items (ours): a parquet with item_id + one list<float> column (e.g. `ssmrec embed`'s
    # item_emb.parquet of MicroLens titles), or S3-Rec's *_item2attributes.json[.gz] (multi-hot), frozen,
    # projected and added to / replacing the ID embedding.
    item_features: str | None = None
    item_feature_mode: Literal["add", "replace"] = "add"

    @model_validator(mode="before")
    @classmethod
    def _renamed_mask_seen(cls, d):
        """``mask_seen`` (checkpoints and configs before the named protocols) -> ``protocol``."""
        if isinstance(d, dict) and "mask_seen" in d:
            d = dict(d)
            old = d.pop("mask_seen")
            if "protocol" not in d and isinstance(old, bool):
                d["protocol"] = "masked" if old else "unmasked"
        return d

    def stride(self) -> int:
        return self.window_stride or max(self.max_len // 2, 1)


@dataclass
class SeqBatch(TensorBatch):
    """Right-padded histories. ``target`` is ``(B, L)`` (all_positions: the next item at every
    position, 0 = no target) or ``(B,)`` (one next item per row); ``None`` when only scoring."""

    item_seq: torch.Tensor  # (B, L) int64, real items first, 0 = padding
    lengths: torch.Tensor  # (B,) int64, >= 1
    target: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.item_seq.shape[0])



def windows(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray]:
    """The newest ``min(end - start, L)`` items of each ``items[start:end]``, right-padded to ``L``
    (vectorised gather). Returns ``(seq (N, L), lengths (N,))``."""
    n = np.minimum(ends - starts, L)
    first = ends - n
    cols = np.arange(L)[None, :]
    valid = cols < n[:, None]
    pos = np.where(valid, first[:, None] + cols, 0)
    seq = np.where(valid, items[pos] if len(items) else 0, 0)
    return seq.astype(np.int64), n.astype(np.int64)


def csr_pairs(items: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(row, item)`` for every item of every ``items[starts[r]:ends[r]]`` (vectorised)."""
    n = ends - starts
    rows = np.repeat(np.arange(len(starts)), n)
    pos = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n) + np.repeat(starts, n)
    return rows, items[pos]


def all_position_windows(start: np.ndarray, end: np.ndarray, L: int, stride: int):
    """``all_positions`` samples of the training sequences ``items[start:end]``: per window, inputs
    ``items[a:b]`` (``b - a <= L``), targets ``items[a+1:b+1]``, the loss on targets ``t >= first``.
    Every pair ``items[start:t] -> items[t]``, ``start < t < end``, is a loss target of exactly one
    window; a history with more than ``L`` pairs gets windows ``stride`` apart, the last one ending at
    the newest item. Returns ``(a, b, first)``; users with fewer than 2 items give no window."""
    n_pairs = np.maximum(end - start - 1, 0)
    extra = np.maximum(n_pairs - L, 0)
    per_user = np.where(n_pairs > 0, 1 + -(-extra // stride), 0)
    user = np.repeat(np.arange(len(start)), per_user)
    k = np.arange(int(per_user.sum())) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    s, e = start[user], end[user]
    last_a = e - 1 - L  # the window that ends at the newest item (only used when a user has > L pairs)
    a = np.where(k == 0, s, np.minimum(s + k * stride, last_a))
    prev_a = np.where(k == 0, s, np.minimum(s + (k - 1) * stride, last_a))
    b = np.minimum(a + L, e - 1)
    first = np.where(k == 0, s + 1, prev_a + L + 1)
    return a, b, first


@dataclass
class SeqSplitData:
    name: str
    n_items: int  # including the padding id 0
    offsets: np.ndarray  # CSR over the users kept (>= 3 items)
    items: np.ndarray
    P: np.ndarray | None = None  # the synthetic world's true transition matrix
    user_raw: np.ndarray | None = None  # original user ids of the users kept (None: synthetic)
    item_raw: np.ndarray | None = None  # original item ids by index (index 0 = padding)

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @cached_property
    def split(self) -> LeaveOneOut:
        split = leave_one_out(self.offsets)
        if split.n_users != self.n_users:
            raise SsmrecError(f"{self.name}: every user needs >= 3 interactions for leave-one-out")
        return split

    def bounds(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(history start, history end, target index) of every user for ``valid`` / ``test``."""
        return self.split.history_and_target(split)


def load_split_data(cfg: NextItemDataConfig) -> SeqSplitData:
    if cfg.source.startswith(SYNTH_PREFIX):
        from ssmrec.data.seq_synth import PRESETS, synth_sequences

        preset = cfg.source[len(SYNTH_PREFIX):].lstrip("-") or "default"
        if preset not in PRESETS:
            raise SsmrecError(f"data.source: unknown synthetic preset '{cfg.source}' "
                              f"(choose from {', '.join('synth-' + p for p in PRESETS)}, or a dataset path)")
        offsets, items, P = synth_sequences(PRESETS[preset], cfg.seed)
        name, n_items = cfg.source, PRESETS[preset].n_items + 1
    else:
        from ssmrec.data.seq import load_seq_dataset

        ds = load_seq_dataset(Path(cfg.source), min_user=cfg.min_user, min_item=cfg.min_item)
        offsets, items, P, name, n_items = ds.offsets, ds.items, None, ds.name, ds.n_items
        user_raw, item_raw = ds.user_raw, ds.item_raw
    if cfg.source.startswith(SYNTH_PREFIX):
        user_raw, item_raw = np.arange(len(offsets) - 1).astype(str), np.arange(n_items).astype(str)
    kept = leave_one_out(offsets)
    user_raw = user_raw[kept.users]
    if kept.n_users < len(offsets) - 1:  # users too short for leave-one-out (none after 5-core filtering)
        starts, ends = offsets[:-1][kept.users], offsets[1:][kept.users]
        items = csr_pairs(items, starts, ends)[1]
        offsets = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
    if len(offsets) < 2:
        raise SsmrecError(f"data.source {cfg.source}: no user has the 3 interactions leave-one-out needs")
    return SeqSplitData(name, int(n_items), offsets.astype(np.int64), items.astype(np.int64), P, user_raw, item_raw)


def _match_items(ids: np.ndarray, item_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every item of the task's index (``item_raw``, row 0 = padding): the row of ``ids`` holding
    its original id and whether there is one ``(rows, found)``; the padding row is never found."""
    ids = np.asarray(ids).astype(str)
    raw = np.asarray(item_raw).astype(str)
    if len(ids) == 0:
        return np.zeros(len(raw), dtype=np.int64), np.zeros(len(raw), dtype=bool)
    order = np.argsort(ids)
    rows = order[np.clip(np.searchsorted(ids[order], raw), 0, len(ids) - 1)]
    found = ids[rows] == raw
    found[0] = False
    return rows, found


def read_item_attributes(path: Path, item_raw: np.ndarray) -> torch.Tensor:
    """``(n_items, A)`` multi-hot float32 of S3-Rec's ``*_item2attributes.json[.gz]`` (``{"item_id":
    [attribute_id, ...]}``: Amazon categories / brand as anonymous ids, so there is no text to
    encode), aligned with the task's item index; row 0 and items without attributes: zeros."""
    import gzip
    import json

    from ssmrec.errors import DataError

    try:
        with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"cannot read item attributes JSON ({type(e).__name__})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, list) and all(isinstance(a, int) and a >= 0 for a in v)
                                            for v in raw.values()):
        raise DataError(path, 'expected {"item_id": [attribute_id >= 0, ...], ...}')
    keys = np.array(list(raw.keys()), dtype=str)
    lens = np.array([len(v) for v in raw.values()], dtype=np.int64)
    attrs = np.fromiter((a for v in raw.values() for a in v), dtype=np.int64, count=int(lens.sum()))
    width = int(attrs.max()) + 1 if len(attrs) else 1
    rows, found = _match_items(keys, item_raw)
    if not found.any():
        raise DataError(path, "no item id matches an item of the dataset")
    # per key: its item's row in the task's index (-1: not an item of the dataset)
    item_of_key = np.full(len(keys), -1)
    item_of_key[rows[found]] = np.nonzero(found)[0]
    item = np.repeat(item_of_key, lens)
    keep = item >= 0
    out = np.zeros((len(item_raw), width), dtype=np.float32)
    out[item[keep], attrs[keep]] = 1.0
    return torch.from_numpy(out)


def read_item_features(path, item_raw: np.ndarray) -> torch.Tensor:
    """``(n_items, F)`` float32 aligned with the task's item index (row 0 and items without a vector:
    zeros) from a parquet holding ``item_id`` and exactly one list<float> column, or multi-hot from
    an S3-Rec ``*_item2attributes.json[.gz]`` (:func:`read_item_attributes`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ssmrec.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "item features file not found (data.item_features)")
    if path.name.endswith((".json", ".json.gz")):
        return read_item_attributes(path, item_raw)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, f"cannot read parquet ({type(e).__name__})") from None
    if "item_id" not in table.column_names:
        raise DataError(path, "missing column", column="item_id")
    vec_cols = [c for c in table.column_names if pa.types.is_list(table.schema.field(c).type)
                or pa.types.is_fixed_size_list(table.schema.field(c).type)]
    if len(vec_cols) != 1:
        raise DataError(path, f"expected exactly one list<float> column besides item_id, found {vec_cols or 'none'}")
    col = table[vec_cols[0]].combine_chunks()
    lens = np.diff(col.offsets.to_numpy()) if hasattr(col, "offsets") else np.full(len(col), col.type.list_size)
    if col.null_count or len(set(lens.tolist())) != 1:
        raise DataError(path, "vectors must all be non-null and of one width", column=vec_cols[0])
    vecs = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), -1)
    rows, found = _match_items(table["item_id"].to_numpy(zero_copy_only=False), item_raw)
    out = np.zeros((len(item_raw), vecs.shape[1]), dtype=np.float32)
    out[found] = vecs[rows[found]]
    if found.sum() == 0:
        raise DataError(path, "no item_id matches an item of the dataset", column="item_id")
    return torch.from_numpy(out)


class NextItemTask(Task):
    name = "next_item"
    DataConfig = NextItemDataConfig
    monitor = ("ndcg@10", "max")
    metric_names = tuple(f"{m}@{k}" for k in (5, 10, 20) for m in ("hr", "ndcg", "mrr"))
    primary_loss = "ce"

    def __init__(self, cfg, data: SeqSplitData | None = None):
        super().__init__(cfg)
        self.data = data
        self._samples = None
        self._pairs_per_batch = None  # all_positions: the epoch's mean pairs per batch (arrange_epoch)
        self._features: torch.Tensor | None = None

    @classmethod
    def monitor_names(cls, cfg) -> tuple[str, ...]:
        return tuple(f"{m}@{k}" for k in cfg.data.ks for m in ("hr", "ndcg", "mrr"))

    @classmethod
    def check_config(cls, cfg, source: str) -> None:
        from ssmrec.errors import ConfigError

        super().check_config(cfg, source)  # train.monitor: one of monitor_names(cfg)
        if cfg.train.monitor is None and 10 not in cfg.data.ks:
            raise ConfigError(f"{source}: data.ks must contain 10 (the default monitor is ndcg@10) or set "
                              f"train.monitor, got ks = {cfg.data.ks}")
        from ssmrec.registry import get_model

        cloze_model = getattr(get_model("next_item", cfg.model, source).cls, "cloze", False)
        if cloze_model != (cfg.data.train_mode == "cloze"):
            raise ConfigError(f"{source}: data.train_mode must be "
                              f"{'cloze' if cloze_model else 'all_positions or prefixes'} for model "
                              f"'{cfg.model}', got {cfg.data.train_mode!r}")
        model_len = cfg.model_params.get("max_len")
        if model_len is not None and model_len < cfg.data.max_len:
            raise ConfigError(f"{source}: model_params.max_len ({model_len}) must be >= data.max_len "
                              f"({cfg.data.max_len})")
        for key in ("empty_history", "loss_excludes_history"):
            if getattr(cfg.data, key) and cfg.data.train_mode != "prefixes":
                raise ConfigError(f"{source}: data.{key} needs data.train_mode: prefixes, got "
                                  f"{cfg.data.train_mode!r}")
        if cfg.data.window_stride is not None and cfg.data.window_stride > cfg.data.max_len:
            raise ConfigError(f"{source}: data.window_stride ({cfg.data.window_stride}) must be <= data.max_len "
                              f"({cfg.data.max_len}), or every pair would not be trained")

    # ------------------------------------------------------------------ data module
    def setup(self, splits=("train", "valid")) -> None:
        if self.data is None:
            self.data = load_split_data(self.cfg.data)
        d, L = self.data, self.cfg.data.max_len
        start, train_end = d.split.start, d.split.train_end  # training never reads items[train_end:]
        mode = self.cfg.data.train_mode
        if mode == "all_positions":  # windows (a, b, first): inputs items[a:b], loss on targets >= first
            self._samples = ("all_positions", *all_position_windows(start, train_end, L, self.cfg.data.stride()))
        elif mode == "cloze":  # one sample per user: its training sequence, random positions masked
            users = np.flatnonzero(train_end - start >= 1)
            self._samples = ("cloze", start[users], train_end[users])
        else:  # one sample per prefix [start, start + t), t = 1 .. n_train - 1 (t = 0 too: empty_history)
            t0 = 0 if self.cfg.data.empty_history else 1
            n = np.maximum(train_end - start - t0, 0)
            users = np.repeat(np.arange(d.n_users), n)
            t = np.arange(n.sum()) - np.repeat(np.concatenate([[0], np.cumsum(n)[:-1]]), n) + t0
            self._samples = ("prefixes", start[users], start[users] + t)
        self._L = L
        if self.cfg.data.item_features and self._features is None:
            self._features = read_item_features(self.cfg.data.item_features, self.data.item_raw)
        self._mask_ratio = float(self.cfg.model_params.get("mask_ratio", 0.2))

    def feature_map(self) -> dict:
        fm = {"n_items": self.data.n_items, "n_users": self.data.n_users, "max_len": self.cfg.data.max_len,
              "dataset": self.data.name}
        if self.data.item_raw is not None:  # the dataset's own item ids by index: what `ssmrec serve` speaks
            fm["item_raw"] = [str(x) for x in self.data.item_raw.tolist()]
        return fm

    def artifacts(self) -> dict:
        return {} if self._features is None else {"item_features": self._features}

    def check_feature_map(self, fm: dict, source) -> None:
        for key in ("n_items", "max_len"):
            if fm.get(key) != self.feature_map()[key]:
                raise SsmrecError(f"{source}: checkpoint was trained with {key}={fm.get(key)}, but "
                                  f"{self.data.name} has {key}={self.feature_map()[key]}")

    def num_train_samples(self) -> int:
        return len(self._samples[1])

    def sample_lengths(self) -> np.ndarray:
        """Input tokens of each training sample (what a batch is padded to)."""
        _, starts, ends = self._samples[:3]
        return np.minimum(ends - starts, self._L)

    def sample_pairs(self) -> np.ndarray:
        """(prefix, next) pairs each training sample takes the loss on (cloze: tokens that may be masked)."""
        if self._samples[0] == "all_positions":
            _, a, b, first = self._samples
            return b - first + 1
        if self._samples[0] == "prefixes":
            return np.ones(len(self._samples[1]), dtype=np.int64)
        return self.sample_lengths()

    def train_pairs(self) -> int:
        """Pairs one epoch trains: the same number in all_positions and prefixes (one per training item
        after a user's first; prefixes with empty_history: every training item); cloze: the tokens its
        masks are drawn from."""
        return int(self.sample_pairs().sum())

    def arrange_epoch(self, order: torch.Tensor, batch_size: int, seed: int) -> torch.Tensor:
        if self._samples[0] == "all_positions":
            self._pairs_per_batch = float(self.sample_pairs().mean()) * min(batch_size, len(order))
        if not self.cfg.data.bucket_by_length or len(order) <= batch_size:
            return order
        o = order.numpy()
        chunk = np.arange(len(o)) // (batch_size * 64)
        sorted_o = o[np.lexsort((self.sample_lengths()[o], chunk))]  # by length within each chunk
        n_full = len(o) // batch_size  # full batches in a shuffled order, the partial one (if any) last
        batch_order = torch.randperm(n_full, generator=torch.Generator().manual_seed(seed)).numpy()
        idx = (batch_order[:, None] * batch_size + np.arange(batch_size)[None, :]).ravel()
        idx = np.concatenate([idx, np.arange(n_full * batch_size, len(o))])
        return torch.from_numpy(sorted_o[idx])

    def train_batch(self, idx: torch.Tensor) -> SeqBatch:
        mode, starts, ends = self._samples[:3]
        i = idx.numpy()
        items = self.data.items
        if mode == "all_positions":
            a, b, first = starts[i], ends[i], self._samples[3][i]
            seq, n = windows(items, a, b, self._L)  # b - a <= L: exactly items[a:b]
            tgt, _ = windows(items, a + 1, b + 1, self._L)
            tgt[np.arange(self._L)[None, :] < (first - a - 1)[:, None]] = 0  # targets an earlier window had
            width = int(n.max())  # trim the batch to its longest sequence
            return SeqBatch(torch.from_numpy(seq[:, :width]), torch.from_numpy(n),
                            torch.from_numpy(tgt[:, :width]))
        if mode == "cloze":
            seq, n = windows(items, starts[i], ends[i], self._L)
            seq = torch.from_numpy(seq[:, :int(n.max())])
            real = seq > 0
            masked = (torch.rand(seq.shape) < self._mask_ratio) & real
            none = ~masked.any(1)  # every row predicts at least one item: its last
            masked[none, torch.from_numpy(n)[none] - 1] = True
            target = torch.where(masked, seq, torch.zeros_like(seq))
            return SeqBatch(seq.masked_fill(masked, self.data.n_items), torch.from_numpy(n), target)
        seq, n = windows(items, starts[i], ends[i], self._L)
        n = np.maximum(n, 1)  # an empty history (empty_history) reads the padding id alone
        width = int(n.max())
        return SeqBatch(torch.from_numpy(seq[:, :width]), torch.from_numpy(n), torch.from_numpy(items[ends[i]]))

    def eval_batches(self, split: str, batch_size: int, order: np.ndarray | None = None) -> Iterator[SeqBatch]:
        """Batches of the ``split``'s users (with their targets), in ``order`` (default: user order)."""
        start, end, target = self.data.bounds(split)
        cloze = self.cfg.data.train_mode == "cloze"
        order = np.arange(len(start)) if order is None else order
        for a in range(0, len(order), batch_size):
            i = order[a:a + batch_size]
            yield self.history_batch(start[i], end[i], cloze, torch.from_numpy(self.data.items[target[i]]))

    def by_history_length(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """User order shortest history first. A batch is padded to its longest history, so batches of
        mixed lengths spend most of the scan and the FFN on padding (Beauty: 8.9 items on average, padded
        to 50); a row's output does not depend on the padding to its right."""
        return np.argsort(np.minimum(end - start, self._L), kind="stable")

    def history_batch(self, start, end, cloze: bool, target=None) -> SeqBatch:
        """Right-padded histories ``items[start:end]``; for Cloze models the newest ``max_len - 1``
        items followed by ``[MASK]`` (the position that is scored)."""
        L = self._L - 1 if cloze else self._L
        seq, n = windows(self.data.items, start, end, L)
        if cloze:
            seq = np.concatenate([seq, np.zeros((len(seq), 1), dtype=np.int64)], axis=1)
            seq[np.arange(len(seq)), n] = self.data.n_items
            n = n + 1
        return SeqBatch(torch.from_numpy(seq[:, :int(n.max())]), torch.from_numpy(n), target)

    def exclude_history(self, scores: torch.Tensor, start, end, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``scores`` (rows = users ``start[r]:end[r]``) with every item of each user's whole history
        ``items[start:end]`` set to -inf (in place), except ``keep[r]`` (the target); column 0 (padding)
        too."""
        rows, cols = csr_pairs(self.data.items, np.asarray(start), np.asarray(end))
        exclude_items(scores, torch.from_numpy(rows).to(scores.device), torch.from_numpy(cols).to(scores.device),
                      keep)
        scores[:, 0] = float("-inf")
        return scores

    # ------------------------------------------------------------------ model, loss, metrics
    def build_model(self, artifacts=None, feature_map=None):
        from ssmrec.registry import get_model

        n_items = int(feature_map["n_items"]) if feature_map else self.data.n_items
        spec = get_model("next_item", self.cfg.model)
        model = spec.cls(spec.config(self.cfg.model_params), n_items)
        features = (artifacts or {}).get("item_features", self._features)
        if features is not None:
            model.attach_item_features(features, self.cfg.data.item_feature_mode)
        # what serving reads: the newest max_len events (Cloze models: max_len - 1, then [MASK]), as
        # history_batch builds them for evaluation
        L = int((feature_map or {}).get("max_len", self.cfg.data.max_len))
        if isinstance(model, IncrementalModel):
            model.set_serving_window(L - 1 if getattr(model, "cloze", False) else L)
        model.empty_history_start = bool(self.cfg.data.empty_history)
        return model

    def serving_schema(self, feature_map: dict, artifacts: dict, model: str) -> ServingSchema:
        """Requests speak the dataset's own item ids when the checkpoint carries them; no candidate features."""
        raw = feature_map.get("item_raw")
        return ServingSchema("next_item", model, int(feature_map["n_items"]),
                             int(feature_map.get("max_len", self.cfg.data.max_len)),
                             [str(x) for x in raw] if raw is not None else None)

    def loss(self, model_out: dict, batch: SeqBatch) -> dict[str, torch.Tensor]:
        logits, labels = model_out["logits"], model_out["labels"]
        n = max(len(labels), 1)
        excluded = None
        if self.cfg.data.loss_excludes_history:  # prefixes: one row per sample, its window batch.item_seq
            excluded = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, batch.item_seq, True)
            excluded[torch.arange(len(labels), device=labels.device), labels] = False
            logits = logits.masked_fill(excluded, float("-inf"))
        logp = F.log_softmax(logits, dim=-1)
        ce_sum = F.nll_loss(logp, labels, reduction="sum")  # = F.cross_entropy, one softmax for both losses
        ce = ce_sum / n  # the mean, logged: comparable across modes (not across loss_excludes_history)
        eps = self.cfg.data.label_smoothing
        loss_sum = ce_sum
        if eps > 0:  # torch's smoothed CE: (1 - eps) CE + eps mean_c(-log p_c), c over the softmax's classes
            smooth = logp.mean(-1) if excluded is None else \
                logp.masked_fill(excluded, 0.0).sum(-1) / (~excluded).sum(-1)
            loss_sum = (1 - eps) * ce_sum - eps * smooth.sum()
        pairs_mode = self.cfg.data.loss_normalization == "pairs" and self._samples[0] == "all_positions"
        if pairs_mode and self._pairs_per_batch:
            return {"ce": ce, "loss": loss_sum / self._pairs_per_batch}
        return {"ce": ce, "loss": loss_sum / n}

    def _ranks(self, scores: torch.Tensor, start, end, target: torch.Tensor, protocol: str | None) -> torch.Tensor:
        """Ranks of ``target`` under ``protocol`` (default: the configured one); ``scores`` is modified
        in place."""
        scores[:, 0] = float("-inf")
        if (protocol or self.cfg.data.protocol) == "masked":
            self.exclude_history(scores, start, end, keep=target)
        return rank_of_target(scores, target)

    @torch.no_grad()
    def evaluate(self, model, split: str = "valid", batch_size: int = 4096, device="cpu", progress=False,
                 protocol: str | None = None) -> dict:
        """Metrics on ``split`` under ``protocol`` (default ``data.protocol``, what early stopping uses)."""
        model.eval()
        ks = self.cfg.data.ks
        sums: dict[str, float] = {}
        n, bad, t0 = 0, 0, time.perf_counter()
        start, end, _ = self.data.bounds(split)
        order = self.by_history_length(start, end)  # metrics are sums: the order is free
        for a, batch in zip(range(0, len(start), batch_size), self.eval_batches(split, batch_size, order)):
            batch = batch.to(device)
            i = order[a:a + len(batch)]
            scores = model(batch.replace(target=None))["logits"]
            bad += int((~torch.isfinite(scores.gather(1, batch.target.view(-1, 1)))).sum())
            for k, v in rank_metrics(self._ranks(scores, start[i], end[i], batch.target, protocol), ks).items():
                sums[k] = sums.get(k, 0.0) + float(v.sum())
            n += len(batch)
        warn_nonfinite(bad, n, f"{split} users")
        m = {k: v / max(n, 1) for k, v in sums.items()}
        m["infer_ms_per_4096_users"] = 1000.0 * (time.perf_counter() - t0) / max(n, 1) * 4096
        if self.data.P is not None:
            m["oracle_ndcg@10"] = self.oracle(split, protocol)["ndcg@10"]
        return m

    def oracle(self, split: str, protocol: str | None = None) -> dict:
        """Metrics of the true next-item distribution (synthetic worlds only), under the protocol."""
        start, end, target = self.data.bounds(split)
        last = self.data.items[end - 1]
        scores = torch.from_numpy(self.data.P[last])
        rank = self._ranks(scores, start, end, torch.from_numpy(self.data.items[target]), protocol)
        return {k: float(v.mean()) for k, v in rank_metrics(rank, self.cfg.data.ks).items()}

    def repeat_targets(self, split: str) -> int:
        """Users whose target already occurs in their history (rankable under both protocols)."""
        start, end, target = self.data.bounds(split)
        rows, cols = csr_pairs(self.data.items, start, end)
        return int(len(np.unique(rows[cols == self.data.items[target][rows]])))

    def summary_extras(self, model=None, device="cpu") -> dict:
        """Test metrics of the final (best) weights and the oracle / popularity references: ``test_*``
        under the configured protocol (the one validation selected with), and ``test_<protocol>_*``
        under each of the two."""
        protocol = self.cfg.data.protocol
        out = {"protocol": protocol}
        for p in PROTOCOLS:
            if model is not None:
                test = self.evaluate(model, "test", self.cfg.train.eval_batch_size, device, protocol=p)
                metrics = {k: v for k, v in test.items() if "@" in k and not k.startswith("oracle")}
                out.update({f"test_{p}_{k}": v for k, v in metrics.items()})
                if p == protocol:
                    out.update({f"test_{k}": v for k, v in metrics.items()})
            out[f"popularity_{p}_ndcg@10_test"] = self.popularity("test", p)["ndcg@10"]
            if self.data.P is not None:
                out[f"oracle_{p}_ndcg@10_test"] = self.oracle("test", p)["ndcg@10"]
        out["popularity_ndcg@10_test"] = out[f"popularity_{protocol}_ndcg@10_test"]
        if self.data.P is not None:
            out["oracle_ndcg@10_test"] = out[f"oracle_{protocol}_ndcg@10_test"]
        out["train_pairs"] = self.train_pairs()  # (prefix, next) pairs per epoch, as trained
        out["repeat_targets_test"] = self.repeat_targets("test")
        return out

    def popularity(self, split: str, protocol: str | None = None) -> dict:
        """A non-personalised baseline under the protocol: items ranked by their count in the training
        sequences (ties pessimistic); ``masked`` excludes each user's history items but the target."""
        start, end, target = self.data.bounds(split)
        d = self.data
        train_rows, train_items = csr_pairs(d.items, d.split.start, d.split.train_end)
        counts = np.bincount(train_items, minlength=d.n_items)
        counts[0] = -1  # the padding id is never ranked
        tgt = d.items[target]
        # Pessimistic rank without a (users x items) matrix: items counted at least as often as the target.
        ordered = np.sort(counts[1:])
        rank = len(ordered) - np.searchsorted(ordered, counts[tgt], side="left")
        if (protocol or self.cfg.data.protocol) == "masked":  # minus the distinct history items (not the target) ranked ahead
            rows, cols = csr_pairs(d.items, start, end)
            key = np.unique(rows * d.n_items + cols)
            rows, cols = key // d.n_items, key % d.n_items
            ahead = (cols != tgt[rows]) & (counts[cols] >= counts[tgt[rows]])
            rank = rank - np.bincount(rows[ahead], minlength=len(tgt))
        return {k: float(v.mean()) for k, v in rank_metrics(torch.from_numpy(rank), self.cfg.data.ks).items()}

    def plot_keys(self):
        return "ndcg@10", []

    @torch.no_grad()
    def recommend(self, model, k: int, batch_size: int = 4096, exclude_seen: bool = False, device="cpu"):
        """Top-``k`` next items for every user after their *whole* known sequence (valid and test items
        included): ``(user_raw, item_raw (N, k), scores (N, k))``, best first. ``exclude_seen`` removes
        every item of the whole sequence, not only the ``max_len`` the model reads."""
        model.eval()
        d = self.data
        start, end = d.offsets[:-1], d.offsets[1:]
        k = min(k, d.n_items - 1)
        top_i = np.zeros((d.n_users, k), dtype=np.int64)
        top_s = np.zeros((d.n_users, k), dtype=np.float32)
        order = self.by_history_length(start, end)
        for a in range(0, d.n_users, batch_size):
            u = order[a:a + batch_size]
            batch = self.history_batch(start[u], end[u], self.cfg.data.train_mode == "cloze").to(device)
            scores = model(batch)["logits"][:, :d.n_items]
            scores[:, 0] = float("-inf")
            if exclude_seen:
                self.exclude_history(scores, start[u], end[u])
            s, i = scores.topk(k, dim=1)
            top_i[u], top_s[u] = i.cpu().numpy(), s.float().cpu().numpy()
        return d.user_raw, d.item_raw[top_i], top_s
