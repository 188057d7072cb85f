#!/usr/bin/env python3
"""Throw-away side-by-side harness: training throughput of the official MM-CTR
challenge baseline (FuxiCTR's DIN, reczoo/WWW2025_MMCTR_Challenge) on our
synthetic full-size MM-CTR world.

Runs with the throw-away venv only (see README.md beside this file):

    /tmp/fxvenv/bin/python benchmarks/fuxictr/din_harness.py --threads 2 --out /tmp/fx_din.json

It must not import ssmrec, and ssmrec must never depend on FuxiCTR.

What it mirrors (re-expressed here, not copied; see README.md for the file list):
  * data: the challenge's ``src/mmctr_dataloader.py`` -- the whole split is read with
    ``pandas.read_parquet`` and materialised as one 2-D numpy array (list columns
    expanded into columns with ``np.array(col.to_list())``, then ``np.column_stack``);
    a ``torch.utils.data.DataLoader`` over that array (per-row ``__getitem__``,
    ``default_collate``) with a collator that cuts ``item_seq`` to the last ``max_len``
    ids, builds ``mask = item_seq > 0``, appends the target ``item_id`` to the history,
    looks all ``B*(max_len+1)`` items up in the ``item_info`` DataFrame with ``.iloc``
    and turns each item column into a tensor with ``np.array(col.to_list())``.
  * model: the challenge's ``src/DIN.py`` on FuxiCTR's own layers (FeatureEmbedding,
    DIN_Attention, MLP_Block) and BaseModel (compile -> Adam, BCE loss,
    regularization_loss, reset_parameters), with its overridden ``train_step``.
  * hyper-parameters: ``config/din_config/model_config.yaml`` (Base + DIN_default)
    overlaid with ``config/DIN_microlens_mmctr_tuner_config_01.yaml``'s tuner_space
    (first grid point: embedding_regularizer 1e-6).
"""

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections import OrderedDict

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import default_collate

import fuxictr
from fuxictr.features import FeatureMap
from fuxictr.pytorch.layers import DIN_Attention, Dice, FeatureEmbedding, MLP_Block
from fuxictr.pytorch.models import BaseModel
from fuxictr.pytorch.torch_utils import seed_everything
from fuxictr.utils import not_in_whitelist

DATASET_ID = "MicroLens_1M_x1"
DEFAULT_DATA = "/work/main/data/synth-microlens1m"
DEFAULT_REFERENCE_FEATURE_MAP = "/work/shared/data/mmctr-microlens1m-vocab/feature_map.json"

# config/din_config/model_config.yaml (Base + DIN_default), overlaid with the
# tuner_space of config/DIN_microlens_mmctr_tuner_config_01.yaml
# (embedding_regularizer: [1.e-6, 1.e-7] -> first point; net_regularizer: 0;
#  net_dropout: 0.1; learning_rate: 1.e-3; batch_size: 8192).
OFFICIAL_PARAMS = OrderedDict(
    # Base
    model_root="./checkpoints/",
    num_workers=3,
    verbose=1,
    early_stop_patience=3,
    pickle_feature_encoder=True,
    save_best_only=True,
    eval_steps=None,
    debug_mode=False,
    group_id="user_id",
    use_features=None,
    feature_specs=None,
    feature_config=None,
    # DIN_default
    model="DIN",
    dataset_id=DATASET_ID,
    loss="binary_crossentropy",
    metrics=["AUC", "logloss"],
    task="binary_classification",
    optimizer="adam",
    learning_rate=1.0e-3,
    embedding_regularizer=1.0e-6,
    net_regularizer=0,
    batch_size=8192,
    embedding_dim=64,
    dnn_hidden_units=[1024, 512, 256],
    dnn_activations="ReLU",
    attention_hidden_units=[512, 256],
    attention_hidden_activations="ReLU",
    attention_output_activation=None,
    attention_dropout=0.1,
    din_use_softmax=False,
    net_dropout=0.1,
    batch_norm=True,
    epochs=100,
    shuffle=True,
    seed=20242025,
    monitor="AUC",
    monitor_mode="max",
    max_len=64,
    accumulation_steps=1,
)

# The FuxiCTR feature map the real challenge data produces (FuxiCTR 2.3.7), as in
# /work/shared/data/mmctr-microlens1m-vocab/feature_map.json; built here so the
# harness runs without that file.
FEATURE_MAP_SPEC = OrderedDict(
    dataset_id=DATASET_ID,
    num_fields=5,
    total_features=103480,
    input_length=11,
    labels=["label"],
    features=[
        {"user_id": {"type": "meta"}},
        {"item_seq": {"type": "meta"}},
        {"likes_level": {"source": "", "type": "categorical", "padding_idx": 0, "vocab_size": 11}},
        {"views_level": {"source": "", "type": "categorical", "padding_idx": 0, "vocab_size": 11}},
        {"item_id": {"source": "item", "type": "categorical", "padding_idx": 0, "vocab_size": 91718}},
        {"item_tags": {"source": "item", "type": "sequence",
                       "feature_encoder": "layers.MaskedAveragePooling()", "padding_idx": 0,
                       "max_len": 5, "vocab_size": 11740}},
        {"item_emb_d128": {"source": "item", "type": "embedding", "embedding_dim": 128}},
    ],
)
# FuxiCTR >= 2.3.8's FeatureMap.set_column_index reads "pretrain_dim" of "embedding"
# features (2.3.7 did not); the model itself reads pretrain_dim with default
# embedding_dim (128), so stating it changes nothing in the network.
FEATURE_SPEC_OVERRIDES = [{"name": "item_emb_d128", "pretrain_dim": 128}]


# --------------------------------------------------------------------------- data
class WholeSplitDataset(Dataset):
    """One split, fully materialised as a 2-D numpy array (mirrors the challenge's
    ParquetDataset): scalar columns take one column, list columns one per element."""

    def __init__(self, path, max_rows=None):
        self.column_index = dict()
        t0 = time.perf_counter()
        frame = self._read_frame(path, max_rows)
        self.read_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.darray = self._to_array(frame)
        self.array_seconds = time.perf_counter() - t1
        del frame

    @staticmethod
    def _read_frame(path, max_rows):
        if max_rows is None:
            return pd.read_parquet(path)  # the whole split, as the baseline does
        # smoke tests: only the leading row groups that hold max_rows rows
        parquet = pq.ParquetFile(path)
        groups, rows = [], 0
        while rows < max_rows and len(groups) < parquet.num_row_groups:
            rows += parquet.metadata.row_group(len(groups)).num_rows
            groups.append(len(groups))
        return parquet.read_row_groups(groups).slice(0, max_rows).to_pandas()

    def _to_array(self, frame):
        arrays = []
        idx = 0
        for col in frame.columns:
            if frame[col].dtype == "object":  # list column -> one column per element
                array = np.array(frame[col].to_list())
                width = array.shape[1]
                self.column_index[col] = [idx + i for i in range(width)]
                idx += width
            else:
                array = frame[col].to_numpy()
                self.column_index[col] = idx
                idx += 1
            arrays.append(array)
        return np.column_stack(arrays)

    def __getitem__(self, index):
        return self.darray[index, :]

    def __len__(self):
        return self.darray.shape[0]


class ItemLookupCollator:
    """Per-batch collation of the challenge's BatchCollator: user-side columns,
    history mask, and the item-side features of the B*(max_len+1) items read out of
    the item_info DataFrame by position (row index == item id, row 0 = padding)."""

    def __init__(self, feature_map, max_len, column_index, item_info):
        self.feature_map = feature_map
        self.max_len = max_len
        self.column_index = column_index
        self.item_info = item_info  # pandas DataFrame read once with pd.read_parquet

    def __call__(self, rows):
        batch_tensor = default_collate(rows)
        wanted = set(list(self.feature_map.features.keys()) + self.feature_map.labels)
        batch_dict = dict()
        for col, idx in self.column_index.items():
            if col in wanted:
                batch_dict[col] = batch_tensor[:, idx]
        history = batch_dict.pop("item_seq")[:, -self.max_len:]
        mask = (history > 0).float()
        target = batch_dict.pop("item_id").numpy().reshape(-1, 1)
        items = np.hstack([history.numpy(), target]).flatten()
        looked_up = self.item_info.iloc[items]
        item_dict = dict()
        for col in looked_up.columns:
            if col in wanted:
                item_dict[col] = torch.from_numpy(np.array(looked_up[col].to_list()))
        return batch_dict, item_dict, mask


def make_loader(feature_map, dataset, item_info, batch_size, shuffle, num_workers, max_len):
    return DataLoader(
        dataset=dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=ItemLookupCollator(feature_map, max_len, dataset.column_index, item_info),
    )


# -------------------------------------------------------------------------- model
class ChallengeDIN(BaseModel):
    """The challenge baseline's DIN (src/DIN.py) on FuxiCTR layers.

    Item side (source == "item"): item_id Embedding(91718, 64) + item_tags
    Embedding(11740, 64) masked-average-pooled over 5 tags + item_emb_d128 through
    FuxiCTR's bias-free Linear(128, 128) projection -> 256 per item, computed for
    all B*(max_len+1) items. Target = last item, history = the first max_len.
    DIN_Attention(256, units [512, 256], ReLU, dropout 0.1, no softmax, no BN).
    DNN input = likes/views embeddings (2*64) + target (256) + pooled (256) = 640,
    MLP_Block [1024, 512, 256] ReLU + BN + dropout 0.1 -> 1 -> Sigmoid.
    """

    def __init__(self, feature_map, model_id="DIN", gpu=-1,
                 dnn_hidden_units=[512, 128, 64], dnn_activations="ReLU",
                 attention_hidden_units=[64], attention_hidden_activations="Dice",
                 attention_output_activation=None, attention_dropout=0,
                 learning_rate=1e-3, embedding_dim=10, net_dropout=0, batch_norm=False,
                 din_use_softmax=False, accumulation_steps=1,
                 embedding_regularizer=None, net_regularizer=None, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu,
                         embedding_regularizer=embedding_regularizer,
                         net_regularizer=net_regularizer, **kwargs)
        if isinstance(dnn_activations, str) and dnn_activations.lower() == "dice":
            dnn_activations = [Dice(units) for units in dnn_hidden_units]
        self.feature_map = feature_map
        self.embedding_dim = embedding_dim
        self.item_info_dim = sum(spec.get("embedding_dim", embedding_dim)
                                 for spec in feature_map.features.values()
                                 if spec.get("source") == "item")
        self.accumulation_steps = accumulation_steps
        self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
        self.attention_layers = DIN_Attention(
            self.item_info_dim,
            attention_units=attention_hidden_units,
            hidden_activations=attention_hidden_activations,
            output_activation=attention_output_activation,
            dropout_rate=attention_dropout,
            use_softmax=din_use_softmax,
        )
        self.dnn = MLP_Block(input_dim=feature_map.sum_emb_out_dim() + self.item_info_dim,
                             output_dim=1,
                             hidden_units=dnn_hidden_units,
                             hidden_activations=dnn_activations,
                             output_activation=self.output_activation,
                             dropout_rates=net_dropout,
                             batch_norm=batch_norm)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def forward(self, inputs):
        user_dict, item_dict, mask = self.get_inputs(inputs)
        parts = []
        if user_dict:
            parts.append(self.embedding_layer(user_dict, flatten_emb=True))
        item_emb = self.embedding_layer(item_dict, flatten_emb=True)
        item_emb = item_emb.view(mask.shape[0], -1, self.item_info_dim)
        target_emb = item_emb[:, -1, :]
        history_emb = item_emb[:, :-1, :]
        pooled = self.attention_layers(target_emb, history_emb, mask)
        parts += [target_emb, pooled]
        return {"y_pred": self.dnn(torch.cat(parts, dim=-1))}

    def get_inputs(self, inputs, feature_source=None):
        batch_dict, item_dict, mask = inputs
        user_dict = dict()
        for feature, value in batch_dict.items():
            if feature in self.feature_map.labels:
                continue
            spec = self.feature_map.features[feature]
            if spec["type"] == "meta":
                continue
            if feature_source and not_in_whitelist(spec["source"], feature_source):
                continue
            user_dict[feature] = value.to(self.device)
        for item in item_dict:
            item_dict[item] = item_dict[item].to(self.device)
        return user_dict, item_dict, mask.to(self.device)

    def get_labels(self, inputs):
        return inputs[0][self.feature_map.labels[0]].to(self.device).float().view(-1, 1)

    def get_group_id(self, inputs):
        return inputs[0][self.feature_map.group_id]

    def train_step(self, batch_data):
        # as the challenge's override: no zero_grad before, clip + step + zero_grad after
        return_dict = self.forward(batch_data)
        y_true = self.get_labels(batch_data)
        loss = self.compute_loss(return_dict, y_true) / self.accumulation_steps
        loss.backward()
        if (self._batch_index + 1) % self.accumulation_steps == 0:
            nn.utils.clip_grad_norm_(self.parameters(), self._max_gradient_norm)
            self.optimizer.step()
            self.optimizer.zero_grad()
        return loss


# ---------------------------------------------------------------------- helpers
def build_feature_map(data_dir, reference_json, workdir):
    spec = json.loads(json.dumps(FEATURE_MAP_SPEC))
    matches_reference = None
    if reference_json and os.path.exists(reference_json):
        with open(reference_json) as fh:
            ref = json.load(fh)
        matches_reference = (ref.get("features") == spec["features"]
                             and ref.get("labels") == spec["labels"]
                             and ref.get("dataset_id") == spec["dataset_id"])
    path = os.path.join(workdir, "feature_map.json")
    with open(path, "w") as fh:
        json.dump(spec, fh, indent=4)
    feature_map = FeatureMap(DATASET_ID, data_dir)
    feature_map.load(path, {"group_id": OFFICIAL_PARAMS["group_id"],
                            "embedding_dim": OFFICIAL_PARAMS["embedding_dim"],
                            "use_features": None,
                            "feature_specs": FEATURE_SPEC_OVERRIDES})
    return feature_map, matches_reference


def check_ids(dataset, item_info, feature_map):
    """Cheap range checks of our world against the real vocab sizes."""
    feats = feature_map.features
    problems = []
    ids = item_info["item_id"].to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        problems.append("item_info row order != item_id (positional .iloc lookup would be wrong)")
    if len(item_info) > feats["item_id"]["vocab_size"]:
        problems.append("item_info has more rows than the item_id vocab")
    tags = np.array(item_info["item_tags"].to_list())
    if tags.max() >= feats["item_tags"]["vocab_size"]:
        problems.append(f"item_tags max {tags.max()} >= vocab {feats['item_tags']['vocab_size']}")
    if tags.shape[1] != feats["item_tags"]["max_len"]:
        problems.append(f"item_tags width {tags.shape[1]} != max_len {feats['item_tags']['max_len']}")
    ci = dataset.column_index
    arr = dataset.darray
    for col in ("likes_level", "views_level", "item_id"):
        hi = arr[:, ci[col]].max()
        if hi >= feats[col]["vocab_size"]:
            problems.append(f"{col} max {hi} >= vocab {feats[col]['vocab_size']}")
    seq = arr[:, ci["item_seq"]]
    if seq.max() >= len(item_info):
        problems.append("item_seq holds ids beyond item_info")
    left_padded = bool((seq[:, -1] > 0).mean() >= (seq[:, 0] > 0).mean())
    return problems, ("left" if left_padded else "right")


def count_params(model):
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    non_emb = sum(p.numel() for n, p in model.named_parameters()
                  if p.requires_grad and "embedding" not in n)
    return total, non_emb


def rss_mb():
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return self_kb / 1024.0, child_kb / 1024.0


def summarise(seconds, batch_size):
    med = statistics.median(seconds)
    return {
        "min_step_seconds": min(seconds),
        "median_step_seconds": med,
        "mean_step_seconds": statistics.fmean(seconds),
        "samples_per_second": batch_size / med,
    }


def time_training(model, loader, warmup, steps):
    model.train()
    model._max_gradient_norm = 10.0  # BaseModel.fit default; run_expid passes none
    model._batch_index = 0
    model._total_steps = 0
    records = []
    iterator = iter(loader)
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:  # only with small --max-rows: start the next epoch
            iterator = iter(loader)
            batch = next(iterator)
        t1 = time.perf_counter()
        model._batch_index = i
        model._total_steps += 1
        loss = model.train_step(batch)
        loss_value = loss.item()  # train_epoch accumulates loss.item() every batch
        t2 = time.perf_counter()
        records.append((t2 - t0, t1 - t0, t2 - t1, loss_value))
        tag = "warmup" if i < warmup else "step"
        print(f"[{tag} {i + 1 - (0 if i < warmup else warmup)}] {t2 - t0:.3f}s "
              f"(batch wait {t1 - t0:.3f}s, train_step {t2 - t1:.3f}s) loss {loss_value:.5f}",
              flush=True)
    del iterator  # shuts the loader workers down
    return records[warmup:]


def time_inference(model, loader, batches):
    model.eval()
    records = []
    rows = []
    iterator = iter(loader)
    with torch.no_grad():
        for i in range(batches):
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                iterator = iter(loader)
                batch = next(iterator)
            t1 = time.perf_counter()
            y = model.forward(batch)["y_pred"].data.cpu().numpy().reshape(-1)
            t2 = time.perf_counter()
            records.append((t2 - t0, t1 - t0, t2 - t1))
            rows.append(len(y))
            print(f"[infer {i + 1}] {t2 - t0:.3f}s (batch wait {t1 - t0:.3f}s, "
                  f"forward {t2 - t1:.3f}s) rows {len(y)}", flush=True)
    del iterator
    return records, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="dir with train.parquet and item_info.parquet")
    p.add_argument("--split", default="train", help="which <split>.parquet to read (default train)")
    p.add_argument("--batch-size", type=int, default=OFFICIAL_PARAMS["batch_size"])
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps first")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch.set_num_threads in the training process")
    p.add_argument("--num-workers", type=int, default=OFFICIAL_PARAMS["num_workers"],
                   help="DataLoader worker processes (official config: 3; 0 = collate in the "
                        "training process, so its cost lands inside every step)")
    p.add_argument("--no-shuffle", action="store_true",
                   help="read batches in file order (official train loader shuffles)")
    p.add_argument("--max-rows", type=int, default=None,
                   help="read only the leading row groups holding this many rows (smoke tests)")
    p.add_argument("--embedding-regularizer", type=float,
                   default=OFFICIAL_PARAMS["embedding_regularizer"],
                   help="official tuner grid: 1e-6 or 1e-7 (same cost)")
    p.add_argument("--infer-batches", type=int, default=0,
                   help="also time this many no_grad forward batches (unshuffled, as the "
                        "official valid/test loaders), after training")
    p.add_argument("--reference-feature-map", default=DEFAULT_REFERENCE_FEATURE_MAP,
                   help="real FuxiCTR feature_map.json to compare the built one against")
    p.add_argument("--out", default=None, help="write the JSON result here")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    params = dict(OFFICIAL_PARAMS)
    params.update(batch_size=args.batch_size, embedding_regularizer=args.embedding_regularizer,
                  num_workers=args.num_workers, shuffle=not args.no_shuffle, gpu=-1)
    seed_everything(seed=params["seed"])

    workdir = tempfile.mkdtemp(prefix="fx_din_harness_")
    params["model_root"] = os.path.join(workdir, "checkpoints")  # never written
    feature_map, fm_matches = build_feature_map(args.data, args.reference_feature_map, workdir)

    split_path = os.path.join(args.data, f"{args.split}.parquet")
    item_info_path = os.path.join(args.data, "item_info.parquet")
    print(f"loading {split_path} (max_rows={args.max_rows}) ...", flush=True)
    dataset = WholeSplitDataset(split_path, args.max_rows)
    t0 = time.perf_counter()
    item_info = pd.read_parquet(item_info_path)
    item_info_seconds = time.perf_counter() - t0
    problems, padding_side = check_ids(dataset, item_info, feature_map)
    for msg in problems:
        print("WARNING:", msg, flush=True)
    rss_after_load, _ = rss_mb()
    print(f"split: {len(dataset)} rows, array {dataset.darray.shape} {dataset.darray.dtype} "
          f"({dataset.darray.nbytes / 2**30:.2f} GiB); read {dataset.read_seconds:.1f}s, "
          f"to array {dataset.array_seconds:.1f}s; item_info {len(item_info)} rows "
          f"{item_info_seconds:.1f}s; item_seq {padding_side}-padded", flush=True)

    model = ChallengeDIN(feature_map, **params)
    n_params, n_non_emb = count_params(model)
    print(f"model: {n_params:,} parameters ({n_non_emb:,} outside FuxiCTR's embedding layer); "
          f"torch threads {torch.get_num_threads()}, workers {args.num_workers}", flush=True)

    train_loader = make_loader(feature_map, dataset, item_info, args.batch_size,
                               params["shuffle"], args.num_workers, params["max_len"])
    train_records = time_training(model, train_loader, args.warmup, args.steps)
    step_s = [r[0] for r in train_records]
    result = OrderedDict()
    result["what"] = ("official MM-CTR baseline DIN (reczoo/WWW2025_MMCTR_Challenge src/DIN.py "
                      "+ src/mmctr_dataloader.py) on FuxiCTR, training throughput")
    result["data"] = os.path.abspath(args.data)
    result["split"] = args.split
    result["rows_loaded"] = len(dataset)
    result["max_rows"] = args.max_rows
    result["batch_size"] = args.batch_size
    result["warmup"] = args.warmup
    result["steps"] = args.steps
    result["threads"] = torch.get_num_threads()
    result["num_workers"] = args.num_workers
    result["shuffle"] = params["shuffle"]
    result["step_seconds"] = step_s
    result["batch_wait_seconds"] = [r[1] for r in train_records]
    result["train_step_seconds"] = [r[2] for r in train_records]
    result["losses"] = [r[3] for r in train_records]
    result.update(summarise(step_s, args.batch_size))
    result["train_step_only_median_seconds"] = statistics.median(result["train_step_seconds"])

    if args.infer_batches > 0:
        infer_loader = make_loader(feature_map, dataset, item_info, args.batch_size, False,
                                   args.num_workers, params["max_len"])
        infer_records, infer_rows = time_inference(model, infer_loader, args.infer_batches)
        total_s = sum(r[0] for r in infer_records)
        result["inference"] = {
            "batches": args.infer_batches,
            "batch_seconds": [r[0] for r in infer_records],
            "batch_wait_seconds": [r[1] for r in infer_records],
            "forward_seconds": [r[2] for r in infer_records],
            "median_batch_seconds": statistics.median(r[0] for r in infer_records),
            "rows_per_second": sum(infer_rows) / total_s,
            "rows_per_second_median_batch": args.batch_size / statistics.median(
                r[0] for r in infer_records),
        }

    peak_self, peak_child = rss_mb()
    result["peak_rss_mb"] = peak_self
    result["peak_rss_children_mb"] = peak_child
    result["rss_after_load_mb"] = rss_after_load
    result["load_seconds"] = {"split_read": dataset.read_seconds,
                              "split_to_array": dataset.array_seconds,
                              "item_info_read": item_info_seconds}
    result["split_array"] = {"shape": list(dataset.darray.shape),
                             "dtype": str(dataset.darray.dtype),
                             "gib": dataset.darray.nbytes / 2**30}
    result["item_seq_padding"] = padding_side
    result["data_warnings"] = problems
    result["feature_map_matches_reference"] = fm_matches
    result["param_count"] = n_params
    result["param_count_non_embedding"] = n_non_emb
    result["model_config"] = {k: params[k] for k in (
        "embedding_dim", "dnn_hidden_units", "dnn_activations", "attention_hidden_units",
        "attention_hidden_activations", "attention_dropout", "din_use_softmax", "net_dropout",
        "batch_norm", "learning_rate", "optimizer", "loss", "embedding_regularizer",
        "net_regularizer", "max_len", "accumulation_steps", "seed")}
    result["model_description"] = (
        "FuxiCTR DIN as the MM-CTR baseline: per item (B*65 of them, history 64 + target) "
        "item_id Emb(91718,64) + item_tags Emb(11740,64) masked-mean over 5 tags + "
        "item_emb_d128 via Linear(128,128,no bias) = 256; DIN_Attention MLP 1024->512->256->1 "
        "ReLU, dropout 0.1, no BN, no softmax, masked weights; DNN on "
        "[likes 64, views 64, target 256, pooled 256]=640 -> 1024->512->256 ReLU+BN+dropout 0.1 "
        "-> 1 sigmoid; loss BCE + 1e-6/2*||emb tables + item-emb projection||^2 over whole "
        "tables; Adam lr 1e-3; clip_grad_norm 10")
    result["versions"] = {"fuxictr": fuxictr.__version__, "torch": torch.__version__,
                          "numpy": np.__version__, "pandas": pd.__version__,
                          "pyarrow": pa.__version__, "python": platform.python_version()}
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}

    print(f"median step {result['median_step_seconds']:.3f}s (min {result['min_step_seconds']:.3f}s)"
          f" -> {result['samples_per_second']:.1f} samples/s; peak RSS {peak_self:.0f} MB "
          f"(children {peak_child:.0f} MB)", flush=True)
    if "inference" in result:
        print(f"inference: {result['inference']['rows_per_second']:.1f} rows/s", flush=True)
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
        print(f"wrote {args.out}", flush=True)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
