"""CTR prediction on MM-CTR data (reference doc §1): BCE (+ a model's auxiliary losses), AUC / logloss /
gAUC, early stop on valid AUC (FuxiCTR conventions)."""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ssmrec.data.mmctr import CTRBatch, ItemInfo, MMCTRData, Split, load_mmctr, read_truth
from ssmrec.data.schema import DEFAULT_MAX_LEN, LEVEL_VOCAB, CandidateFeature, ServingSchema
from ssmrec.errors import SsmrecError
from ssmrec.models.incremental import IncrementalModel
from ssmrec.params import STRICT, PosInt
from ssmrec.tasks.base import Task
from ssmrec.metrics import auc as auc_score
from ssmrec.metrics import ctr_metrics

from pydantic import BaseModel


class CTRDataConfig(BaseModel):
    model_config = STRICT

    dir: str = "data/synth-default"  # an MM-CTR folder: train/valid/test/item_info parquet
    max_len: PosInt = DEFAULT_MAX_LEN  # newest history slots kept per row


def ctr_loss(model_out: dict, batch: CTRBatch) -> dict[str, torch.Tensor]:
    """BCE on the click logit plus every auxiliary loss the model returns (already weighted)."""
    bce = F.binary_cross_entropy_with_logits(model_out["logit"], batch.label)
    parts = {"bce": bce}
    if "aux_loss" in model_out:
        parts["aux"] = model_out["aux_loss"]
    parts["loss"] = sum(parts.values())
    return parts


@torch.no_grad()
def predict_split(model, split: Split, batch_size: int, device, progress: bool = False, desc: str = "predict"):
    """Click probabilities for every row of ``split`` in order, as a float64 numpy array."""
    from tqdm import tqdm

    model.eval()
    out = np.empty(len(split), dtype=np.float64)
    bar = tqdm(total=len(split), unit="row", unit_scale=True, desc=desc, disable=not progress, leave=False)
    for start in range(0, len(split), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(split)))
        batch = split.batch(idx).to(device)
        out[start:start + len(idx)] = torch.sigmoid(model(batch)["logit"]).double().cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return out


def evaluate_split(model, split: Split, batch_size: int, device, truth=None, progress=False) -> dict:
    t0 = time.perf_counter()
    p = predict_split(model, split, batch_size, device, progress, desc=f"eval {split.name}")
    dt = time.perf_counter() - t0
    y = split.label.numpy()
    m = ctr_metrics(y, p, split.user_id.numpy())
    m["infer_ms_per_1k"] = 1000.0 * dt / max(len(split), 1) * 1000.0
    if truth is not None:
        m["oracle_auc"] = auc_score(y, truth)
    return m


def popularity_auc(data: MMCTRData, split: str = "valid") -> float:
    """AUC of a no-personalisation baseline: the target item's smoothed train click rate."""
    tr, ev = data.splits["train"], data.splits[split]
    n = data.item_info.n_items
    clicks = torch.bincount(tr.item_id, weights=tr.label.double(), minlength=n)
    shows = torch.bincount(tr.item_id, minlength=n).double()
    prior = float(tr.label.double().mean())
    rate = (clicks + 10 * prior) / (shows + 10)
    return auc_score(ev.label.numpy(), rate[ev.item_id].numpy())


def item_levels(data: MMCTRData) -> dict[str, torch.Tensor]:
    """Each item's likes / views level in its last training row (0 for items never shown), which
    ``ssmrec serve`` uses for candidates whose levels a request does not give."""
    tr = data.splits.get("train")
    if tr is None:
        return {}
    n = data.item_info.n_items
    last = torch.full((n,), -1, dtype=torch.long).scatter_reduce(0, tr.item_id, torch.arange(len(tr)), "amax")
    seen = last >= 0
    out = {}
    for name, col in (("item_likes_level", tr.likes_level), ("item_views_level", tr.views_level)):
        lv = torch.zeros(n, dtype=torch.long)
        lv[seen] = col[last[seen]]
        out[name] = lv
    return out


def data_feature_map(data: MMCTRData) -> dict:
    info = data.item_info
    return {"n_items": int(info.n_items), "n_tags": int(info.n_tags), "max_len": int(data.max_len),
            "item_emb_dim": int(info.emb.shape[1]), "data_dir": str(data.root)}


def check_feature_map(fm: dict, data: MMCTRData, ckpt_path) -> None:
    got = data_feature_map(data)
    for key in ("n_items", "n_tags", "max_len", "item_emb_dim"):
        if fm.get(key) != got[key]:
            raise SsmrecError(f"{ckpt_path}: checkpoint was trained with {key}={fm.get(key)}, "
                              f"but {data.root} has {key}={got[key]}")


class CTRTask(Task):
    name = "ctr"
    DataConfig = CTRDataConfig
    monitor = ("auc", "max")
    metric_names = ("auc", "logloss", "gauc")

    def __init__(self, cfg, data: MMCTRData | None = None):
        super().__init__(cfg)
        self.data = data
        self.truth: dict[str, np.ndarray | None] = {}

    # ------------------------------------------------------------------ data module
    def setup(self, splits=("train", "valid")) -> None:
        if self.data is None:
            self.data = load_mmctr(self.cfg.data.dir, self.cfg.data.max_len, splits=splits)
        for name in splits:
            if name in self.data.splits and name not in self.truth:
                self.truth[name] = read_truth(self.data.root, name)

    def feature_map(self) -> dict:
        return data_feature_map(self.data)

    def artifacts(self) -> dict[str, torch.Tensor]:
        info = self.data.item_info
        return {"item_tags": info.tags.clone(), "item_emb": info.emb.clone(), **item_levels(self.data)}

    def check_feature_map(self, fm: dict, source) -> None:
        check_feature_map(fm, self.data, source)

    def num_train_samples(self) -> int:
        return len(self.data.splits["train"])

    def train_batch(self, idx: torch.Tensor) -> CTRBatch:
        return self.data.splits["train"].batch(idx)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[CTRBatch]:
        s = self.data.splits[split]
        for start in range(0, len(s), batch_size):
            yield s.batch(torch.arange(start, min(start + batch_size, len(s))))

    # ------------------------------------------------------------------ model, loss, metrics
    def build_model(self, artifacts: dict | None = None, feature_map: dict | None = None):
        from ssmrec.registry import get_model

        if artifacts is not None:
            tags, emb = artifacts["item_tags"], artifacts["item_emb"]
            n_tags = int(feature_map["n_tags"]) if feature_map else int(tags.max()) + 1
            info = ItemInfo(tags=tags, emb=emb, n_items=int(tags.shape[0]), n_tags=n_tags)
        else:
            info = self.data.item_info
        spec = get_model("ctr", self.cfg.model)
        model = spec.cls(spec.config(self.cfg.model_params), info.tags, info.emb, info.n_tags)
        if isinstance(model, IncrementalModel):  # servable: it reads the newest max_len events, as training does
            model.set_serving_window(int((feature_map or {}).get("max_len", self.cfg.data.max_len)))
        return model

    def serving_schema(self, feature_map: dict, artifacts: dict, model: str) -> ServingSchema:
        """Candidates carry ``likes_level`` and ``views_level`` (0..10); a request that omits one gets the
        item's level in the training data (checkpoint artifacts), when the checkpoint has them."""
        feats = tuple(CandidateFeature(name, 0, LEVEL_VOCAB - 1, artifacts.get(f"item_{name}"))
                      for name in ("likes_level", "views_level"))
        return ServingSchema("ctr", model, int(feature_map["n_items"]),
                             int(feature_map.get("max_len", self.cfg.data.max_len)), None, feats)

    def loss(self, model_out: dict, batch: CTRBatch) -> dict[str, torch.Tensor]:
        return ctr_loss(model_out, batch)

    def evaluate(self, model, split: str = "valid", batch_size: int = 256, device="cpu", progress=False) -> dict:
        s = self.data.splits[split]
        if s.label is None:
            raise SsmrecError(f"{self.data.root / (split + '.parquet')}: no 'label' column, cannot evaluate")
        return evaluate_split(model, s, batch_size, device, self.truth.get(split), progress)

    def summary_extras(self, model=None, device="cpu") -> dict:
        return {"popularity_auc": popularity_auc(self.data)}

    def plot_keys(self):
        return "auc", ["logloss"]
