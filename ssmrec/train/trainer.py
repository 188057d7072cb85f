"""Trainer for CTR models on MM-CTR data (FuxiCTR conventions, reference doc §1.5).

Adam, BCE + (lambda/2)||theta||^2 regularisers for the embedding and the network, global grad-norm
clip, LR x ``lr_decay`` on every non-improving epoch, early stop on valid AUC after ``patience``
such epochs, best model reloaded at the end.

Crash safety: ``last.pt`` (model, optimiser, counters, RNG) is rewritten atomically every
``checkpoint_every`` steps and at each epoch end; ``--resume`` continues from it mid-epoch (the
epoch's shuffle is a pure function of seed and epoch, so the remaining batches are the same).
``best.pt`` holds the best weights with config and feature map.

Distributed: under ``torchrun --nproc-per-node N`` each rank trains on its shard of every
epoch's permutation with ``batch_size / N`` rows per step (same global batch), gradients are
averaged by DDP (gloo on CPU, nccl on GPU); rank 0 evaluates, checkpoints and logs.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml

from ssmrec.config import RunConfig
from ssmrec.data.mmctr import MMCTRData, Split, load_mmctr, read_truth
from ssmrec.errors import SsmrecError
from ssmrec.models.ctr import build_ctr_model
from ssmrec.nn.mamba import prepare_kernels
from ssmrec.train import checkpoint
from ssmrec.train.metrics import auc as auc_score
from ssmrec.train.metrics import ctr_metrics


def _dist_info():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return _dist_info()


def device_for_rank() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def feature_map(data: MMCTRData) -> dict:
    info = data.item_info
    return {"n_items": int(info.n_items), "n_tags": int(info.n_tags), "max_len": int(data.max_len),
            "item_emb_dim": int(info.emb.shape[1]), "data_dir": str(data.root)}


def check_feature_map(fm: dict, data: MMCTRData, ckpt_path) -> None:
    got = feature_map(data)
    for key in ("n_items", "n_tags", "max_len", "item_emb_dim"):
        if fm.get(key) != got[key]:
            raise SsmrecError(f"{ckpt_path}: checkpoint was trained with {key}={fm.get(key)}, "
                              f"but {data.root} has {key}={got[key]}")


def regularization(model, emb_lambda: float, net_lambda: float) -> torch.Tensor | float:
    """FuxiCTR regulariser: (lambda_e/2)||.||^2 over the embedding module, (lambda_n/2)||.||^2 else."""
    if emb_lambda == 0 and net_lambda == 0:
        return 0.0
    reg = 0.0
    for name, p in model.named_parameters():
        lam = emb_lambda if name.startswith("embedding.") else net_lambda
        if lam > 0:
            reg = reg + (lam / 2) * p.pow(2).sum()
    return reg


@torch.no_grad()
def predict_split(model, split: Split, batch_size: int, device, progress: bool = False, desc: str = "predict"):
    """Click probabilities for every row of ``split`` in order, as a float64 numpy array."""
    from tqdm import tqdm

    model.eval()
    out = np.empty(len(split), dtype=np.float64)
    bar = tqdm(total=len(split), unit="row", unit_scale=True, desc=desc, disable=not progress, leave=False)
    for start in range(0, len(split), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(split)))
        batch = to_device(split.batch(idx), device)
        out[start:start + len(idx)] = torch.sigmoid(model(batch)["logit"]).double().cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return out


def evaluate(model, split: Split, batch_size: int, device, truth=None, progress=False) -> dict:
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


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(ep, [h["valid_auc"] for h in history], "o-", label="valid AUC")
    if history and history[0].get("oracle_auc") is not None:
        axes[0].axhline(history[0]["oracle_auc"], ls="--", c="gray", label="oracle AUC")
    axes[0].set_xlabel("epoch"), axes[0].legend(), axes[0].set_title("AUC")
    axes[1].plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    axes[1].plot(ep, [h["valid_logloss"] for h in history], "o-", label="valid logloss")
    axes[1].set_xlabel("epoch"), axes[1].legend(), axes[1].set_title("loss")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


class Trainer:
    def __init__(self, cfg: RunConfig, data: MMCTRData | None = None):
        self.cfg = cfg
        self.rank, self.world = init_distributed()
        self.device = device_for_rank()
        tc = cfg.train
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        torch.manual_seed(tc.seed)
        self.data = data if data is not None else load_mmctr(cfg.data.dir, cfg.data.max_len, splits=("train", "valid"))
        self.truth = read_truth(self.data.root, "valid")
        self.model = build_ctr_model(cfg.model, cfg.model_params, self.data.item_info).to(self.device)
        prepare_kernels(self.model, self.device)  # compile outside the timed epochs
        self.ddp = None
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=tc.lr)
        self.run_dir = cfg.run_dir
        self.state = {"epoch": 0, "step": 0, "global_step": 0, "best_auc": -math.inf, "best_epoch": -1,
                      "bad_epochs": 0, "lr": tc.lr, "done": False, "train_seconds": 0.0, "epoch_loss_sum": 0.0,
                      "epoch_rows": 0}
        self.history: list[dict] = []

    # ---------------------------------------------------------------- checkpoints
    def _payload(self, with_optimizer: bool) -> dict:
        obj = {"model": self.model.state_dict(), "config": self.cfg.to_dict(),
               "feature_map": feature_map(self.data), "state": dict(self.state), "history": list(self.history)}
        if with_optimizer:
            obj["optimizer"] = self.optimizer.state_dict()
            obj["rng"] = torch.get_rng_state()
        return obj

    def save_last(self):
        if self.rank == 0:
            checkpoint.save_atomic(self._payload(True), self.run_dir / "last.pt")

    def resume(self) -> bool:
        path = self.run_dir / "last.pt"
        if not path.exists():
            return False
        ck = checkpoint.load(path)
        check_feature_map(ck["feature_map"], self.data, path)
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.state.update(ck["state"])
        self.history = list(ck.get("history", []))
        torch.set_rng_state(ck["rng"])
        self._set_lr(self.state["lr"])
        return True

    def _set_lr(self, lr):
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    # ---------------------------------------------------------------- training
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.train.seed * 1000 + epoch)
        perm = torch.randperm(len(self.data.splits["train"]), generator=g)
        return perm[self.rank::self.world]

    def train_epoch(self, epoch: int):
        from tqdm import tqdm

        tc, st = self.cfg.train, self.state
        split = self.data.splits["train"]
        order = self._epoch_order(epoch)
        local_bs = max(1, tc.batch_size // self.world)
        n_steps = len(order) // local_bs if len(order) >= local_bs else 1
        if self.world > 1:  # every rank must run the same number of steps (DDP all-reduce)
            t = torch.tensor([n_steps]); dist.all_reduce(t, op=dist.ReduceOp.MIN); n_steps = int(t)
        if tc.max_steps_per_epoch > 0:
            n_steps = min(n_steps, tc.max_steps_per_epoch)
        model = self.ddp or self.model
        model.train()
        bar = tqdm(total=n_steps * local_bs * self.world, initial=st["step"] * local_bs * self.world,
                   unit="sample", unit_scale=True, desc=f"epoch {epoch + 1}", leave=False,
                   disable=not (tc.progress and self.rank == 0), smoothing=0.1)
        t0 = time.perf_counter()
        for step in range(st["step"], n_steps):
            idx = order[step * local_bs:(step + 1) * local_bs]
            batch = to_device(split.batch(idx), self.device)
            out = model(batch)
            bce = F.binary_cross_entropy_with_logits(out["logit"], batch["label"])
            loss = bce + out.get("aux_loss", 0.0) + regularization(
                self.model, tc.embedding_regularizer, tc.net_regularizer)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            self.optimizer.step()
            st["step"] = step + 1
            st["global_step"] += 1
            st["epoch_loss_sum"] += float(bce.detach()) * len(idx)
            st["epoch_rows"] += len(idx)
            bar.update(len(idx) * self.world)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{st['epoch_loss_sum'] / max(st['epoch_rows'], 1):.4f}")
            if tc.checkpoint_every > 0 and st["step"] % tc.checkpoint_every == 0 and st["step"] < n_steps:
                st["train_seconds"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save_last()
        bar.close()
        st["train_seconds"] += time.perf_counter() - t0
        return st["epoch_loss_sum"] / max(st["epoch_rows"], 1)

    def _log(self, record: dict):
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        plot_curves(self.history, self.run_dir / "training_curve.png")

    def fit(self, resume: bool = False) -> dict:
        tc, st = self.cfg.train, self.state
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.run_dir.glob(".*.tmp*"):  # left by a killed run; never a real checkpoint
                stale.unlink(missing_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        if resume:
            if self.resume():
                if self.rank == 0:
                    print(f"resumed from {self.run_dir / 'last.pt'} at epoch {st['epoch'] + 1}, step {st['step']}",
                          flush=True)
            elif self.rank == 0:
                print(f"no checkpoint in {self.run_dir}; starting fresh", flush=True)
        elif self.rank == 0:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        valid = self.data.splits["valid"]
        while not st["done"] and st["epoch"] < tc.epochs:
            epoch = st["epoch"]
            train_loss = self.train_epoch(epoch)
            epoch_seconds = st["train_seconds"]
            improved = torch.zeros(1)
            if self.rank == 0:
                m = evaluate(self.model, valid, tc.eval_batch_size, self.device, self.truth)
                record = {"epoch": epoch + 1, "train_loss": train_loss, "valid_auc": m["auc"],
                          "valid_logloss": m["logloss"], "valid_gauc": m["gauc"], "oracle_auc": m.get("oracle_auc"),
                          "lr": st["lr"], "train_s": epoch_seconds, "infer_ms_per_1k": m["infer_ms_per_1k"]}
                self.history.append(record)
                if m["auc"] > st["best_auc"] + tc.min_delta:
                    improved[0] = 1
                    st["best_auc"], st["best_epoch"] = m["auc"], epoch + 1
                print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}),
                      flush=True)
            if self.world > 1:
                dist.broadcast(improved, 0)
            if improved.item():
                st["bad_epochs"] = 0
                if self.rank == 0:
                    checkpoint.save_atomic(self._payload(False), self.run_dir / "best.pt")
            else:
                st["bad_epochs"] += 1
                st["lr"] = max(st["lr"] * tc.lr_decay, tc.min_lr)
                self._set_lr(st["lr"])
                if st["bad_epochs"] >= tc.patience:
                    st["done"] = True
            st.update(epoch=epoch + 1, step=0, train_seconds=0.0, epoch_loss_sum=0.0, epoch_rows=0)
            if self.rank == 0:
                self.history[-1]["train_s"] = epoch_seconds
                self._log(self.history[-1])
            self.save_last()
        return self.finish()

    def finish(self) -> dict:
        """Reload the best weights, evaluate once more and summarise the run."""
        if self.world > 1:
            dist.barrier()
        best = self.run_dir / "best.pt"
        if best.exists():
            self.model.load_state_dict(checkpoint.load(best)["model"])
        summary = {}
        if self.rank == 0:
            valid = self.data.splits["valid"]
            m = evaluate(self.model, valid, self.cfg.train.eval_batch_size, self.device, self.truth)
            epochs = [h["train_s"] for h in self.history]
            summary = {"model": self.cfg.model, "run_dir": str(self.run_dir), "best_epoch": self.state["best_epoch"],
                       "epochs": len(self.history), "valid_auc": m["auc"], "valid_logloss": m["logloss"],
                       "valid_gauc": m["gauc"], "oracle_auc": m.get("oracle_auc"),
                       "popularity_auc": popularity_auc(self.data),
                       "train_s_per_epoch": float(np.mean(epochs)) if epochs else None,
                       "infer_ms_per_1k": m["infer_ms_per_1k"],
                       "params": sum(p.numel() for p in self.model.parameters()),
                       "world_size": self.world}
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def load_trained(ckpt_path, data_dir=None, splits=("valid", "test")):
    """Load ``best.pt``/``last.pt`` plus matching data; returns (model, config, data)."""
    from ssmrec.config import from_dict

    ck = checkpoint.load(ckpt_path)
    for key in ("model", "config", "feature_map"):
        if key not in ck:
            raise SsmrecError(f"{ckpt_path}: not an ssmrec checkpoint (missing '{key}')")
    cfg = from_dict(ck["config"], source=str(ckpt_path))
    root = Path(data_dir) if data_dir else Path(ck["feature_map"]["data_dir"])
    data = load_mmctr(root, ck["feature_map"]["max_len"], splits=splits)
    check_feature_map(ck["feature_map"], data, ckpt_path)
    model = build_ctr_model(cfg.model, cfg.model_params, data.item_info)
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:  # weights from another ssmrec version or an edited config
        raise SsmrecError(f"{ckpt_path}: weights do not match the model in its config "
                          f"({str(e).splitlines()[-1].strip()[:200]})") from None
    model.eval()
    return model, cfg, data
