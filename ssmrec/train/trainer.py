"""The one Trainer: runs any task (:mod:`ssmrec.tasks`) with any registered model.

Loop: optimiser over parameter groups (no decay on vectors and marked parameters), the task's loss
(named parts, all logged) + the FuxiCTR L2 regulariser, global grad-norm clip, LR schedule
(``plateau``: LR x ``lr_decay`` on every non-improving epoch, FuxiCTR; or ``constant``), early stop
on the task's monitor (name and direction) after ``patience`` such epochs, best weights reloaded at
the end.

Run folder: owned by one process (``run.lock``); a fresh run into a used folder refuses unless
``overwrite``; ``last.pt`` (model, optimiser, counters, RNG, history) is rewritten atomically every
``checkpoint_every`` steps and at each epoch end, *before* that epoch's metrics row, and a resume
rewrites ``metrics.jsonl`` from the checkpoint's history, so a kill at any point never logs an epoch
twice. ``--resume`` continues mid-epoch (an epoch's shuffle is a pure function of seed and epoch)
and refuses when the config changed in a way that matters. A NaN/inf loss or gradient stops the
run with one line naming the step; nothing is saved after it, so ``last.pt`` stays the last good
state.

Distributed: under ``torchrun --nproc-per-node N`` each rank trains on its shard of every epoch's
permutation with ``batch_size / N`` rows per step (same global batch), gradients are averaged by
DDP (gloo on CPU, nccl on GPU); BatchNorm is synchronised over the global batch (torch's SyncBatchNorm
on GPU, :class:`~ssmrec.nn.sync_batchnorm.GlooSyncBatchNorm` on CPU, where torch has none); rank 0
evaluates, checkpoints and logs.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.profiler import record_function
import yaml

from ssmrec.config import RunConfig, resume_incompatibilities
from ssmrec.errors import OutputError, SsmrecError, TrainingDiverged, one_line
from ssmrec.io import save_figure_atomic, write_text_atomic
from ssmrec.nn.mamba import prepare_kernels
from ssmrec.nn.sync_batchnorm import convert_sync_batchnorm
from ssmrec.tasks import make_task
from ssmrec import checkpoint
from ssmrec.checkpoint import load_model
from ssmrec.runtime import flush_denormals
from ssmrec.train.ddp import SparseRowSync
from ssmrec.train.optim import l2_regularization, make_optimizer
from ssmrec.train.rundir import RunDir


__all__ = ["Trainer", "load_trained", "init_distributed", "plot_curves"]


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


def plot_curves(history: list[dict], path: Path, metric: str = "auc", losses: tuple = ("logloss",)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(ep, [h.get(f"valid_{metric}") for h in history], "o-", label=f"valid {metric}")
    if history and history[0].get(f"oracle_{metric}") is not None:
        axes[0].axhline(history[0][f"oracle_{metric}"], ls="--", c="gray", label=f"oracle {metric}")
    axes[0].set_xlabel("epoch"), axes[0].legend(), axes[0].set_title(metric)
    axes[1].plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    for name in losses:
        axes[1].plot(ep, [h.get(f"valid_{name}") for h in history], "o-", label=f"valid {name}")
    axes[1].set_xlabel("epoch"), axes[1].legend(), axes[1].set_title("loss")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)


class Trainer:
    def __init__(self, cfg: RunConfig, data=None, task=None):
        self.cfg = cfg
        self.rank, self.world = init_distributed()
        self.device = device_for_rank()
        tc = cfg.train
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        flush_denormals()
        torch.manual_seed(tc.seed)
        if task is None:
            if data is not None:
                from ssmrec.tasks import task_class

                task = task_class(cfg.task)(cfg, data)
            else:
                task = make_task(cfg)
        self.task = task
        self.task.setup(("train", "valid"))
        self.monitor, self.mode = self.task.monitor_spec()
        self.model = self.task.build_model().to(self.device)
        prepare_kernels(self.model, self.device)  # compile outside the timed epochs
        self.ddp = self.row_sync = None
        if self.world > 1:
            self.model = convert_sync_batchnorm(self.model, self.device)  # BN over the global batch
            # Large embedding tables are synchronised row-sparsely after backward (train/ddp.py).
            if self.device.type == "cpu" and tc.ddp_sparse_min_rows > 0:
                self.row_sync = SparseRowSync(self.model, tc.ddp_sparse_min_rows)
            # Non-persistent buffers are data every rank builds identically (MM-CTR's item tables,
            # 51 MB): DDP would broadcast them from rank 0 before every forward.
            data_buffers = sorted({n for n, _ in self.model.named_buffers()} - set(self.model.state_dict()))
            ignored = data_buffers + (self.row_sync.parameter_names if self.row_sync is not None else [])
            if ignored:
                torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                    self.model, ignored)
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model)
        self.optimizer = make_optimizer(self.model, tc)
        # train.ema_decay: the moving average of the trained parameters, what is validated and kept
        self._ema_params = self._ema = None
        if tc.ema_decay > 0:
            # detached views of the parameters (same storage), made once rather than every step
            self._ema_params = [p.detach() for p in self.model.parameters() if p.requires_grad and p.is_floating_point()]
            self._ema = [p.clone() for p in self._ema_params]
        self.run_dir = cfg.run_dir
        self.state = {"epoch": 0, "step": 0, "global_step": 0, "best": None, "best_epoch": -1,
                      "bad_epochs": 0, "lr": tc.lr, "done": False, "train_seconds": 0.0, "epoch_loss": {},
                      "epoch_rows": 0, "run_id": uuid.uuid4().hex[:12]}
        self.history: list[dict] = []
        self.step_seconds: list[float] = []  # wall time of every training step this process ran
        self.step_hooks: list = []  # callables run after every step (e.g. a profiler's step())
        # callables ``hook(epoch, record)`` run on rank 0 after each epoch's validation, before its
        # checkpoint (e.g. `ssmrec tune`'s pruning: raising there ends the run, last.pt stays resumable)
        self.epoch_hooks: list = []
        self._last_good = None  # (epoch, step) of the newest last.pt written by this run

    @property
    def data(self):  # the CTR task's MMCTRData (kept for callers of the CTR-only trainer)
        return getattr(self.task, "data", None)

    @property
    def truth(self):
        return self.task.truth.get("valid") if hasattr(self.task, "truth") else None

    # ---------------------------------------------------------------- checkpoints
    def _payload(self, with_optimizer: bool) -> dict:
        obj = {"task": self.cfg.task, "model": self.model.state_dict(), "config": self.cfg.resolved(),
               "feature_map": self.task.feature_map(), "artifacts": self.task.artifacts(),
               "state": dict(self.state), "history": list(self.history)}
        if with_optimizer:
            obj["optimizer"] = self.optimizer.state_dict()
            obj["rng"] = torch.get_rng_state()
            if self._ema is not None:  # last.pt: the raw weights above, the average beside them
                obj["ema"] = list(self._ema)
        return obj

    def _ema_step(self) -> None:
        n = self.state["global_step"]  # optimizer steps before this one
        decay = min(self.cfg.train.ema_decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(self._ema, self._ema_params, 1.0 - decay)

    @contextmanager
    def averaged_weights(self):
        """Inside: the model holds the moving average of its weights (``train.ema_decay``; a no-op
        when off); the raw training weights come back on exit."""
        if self._ema is None:
            yield
            return
        raw = [p.clone() for p in self._ema_params]
        torch._foreach_copy_(self._ema_params, self._ema)
        try:
            yield
        finally:
            torch._foreach_copy_(self._ema_params, raw)

    def save_last(self):
        if self.rank == 0:
            checkpoint.save_atomic(self._payload(True), self.run_dir / "last.pt")
            self._last_good = (self.state["epoch"], self.state["step"])

    def resume(self) -> bool:
        path = self.run_dir / "last.pt"
        if not path.exists():
            return False
        ck = checkpoint.load(path, require=("optimizer", "state", "rng"))
        changed = resume_incompatibilities(ck["config"], self.cfg.resolved())
        if changed:
            k = changed[0]
            old, new = _lookup(ck["config"], k), _lookup(self.cfg.resolved(), k)
            more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
            raise SsmrecError(f"{path}: cannot resume: the config changed: {k} was {old!r}, now {new!r}{more}; "
                              f"restore it, or start a fresh run with --overwrite")
        self.task.check_feature_map(ck["feature_map"], path)
        try:
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise SsmrecError(f"{path}: cannot resume: its weights do not fit this model "
                              f"({one_line(str(e).splitlines()[-1], 160)})") from None
        if self._ema is not None:
            saved = ck.get("ema")
            if saved is None or len(saved) != len(self._ema):
                raise SsmrecError(f"{path}: cannot resume: it holds no weight average for train.ema_decay")
            torch._foreach_copy_(self._ema, list(saved))
        self.state.update(ck["state"])
        self.history = list(ck.get("history", []))
        torch.set_rng_state(ck["rng"])
        self._set_lr(self.state["lr"])
        self._last_good = (self.state["epoch"], self.state["step"])
        return True

    def _set_lr(self, lr):
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    # ---------------------------------------------------------------- training
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.train.seed * 1000 + epoch)
        perm = torch.randperm(self.task.num_train_samples(), generator=g)
        return perm[self.rank::self.world]

    def _diverged(self, what: str, epoch: int, step: int):
        st, tc = self.state, self.cfg.train
        if self._last_good is not None:
            kept = (f"the last good checkpoint is {self.run_dir / 'last.pt'} "
                    f"(epoch {self._last_good[0] + 1}, step {self._last_good[1]})")
        else:
            kept = "no checkpoint was written yet"
        return TrainingDiverged(f"training diverged: {what} at epoch {epoch + 1}, step {step + 1} "
                                f"(global step {st['global_step'] + 1}); {kept}; lower train.lr (now {st['lr']:g}) "
                                f"or set train.grad_clip (now {tc.grad_clip:g})")

    def train_epoch(self, epoch: int):
        from tqdm import tqdm

        tc, st = self.cfg.train, self.state
        local_bs = max(1, tc.batch_size // self.world)
        order = self.task.arrange_epoch(self._epoch_order(epoch), local_bs, tc.seed * 1000 + epoch)
        if tc.drop_last:
            n_steps = max(len(order) // local_bs, 1)
        else:
            n_steps = math.ceil(len(order) / local_bs)
        if self.world > 1:  # every rank must run the same number of steps (DDP all-reduce)
            t = torch.tensor([n_steps]); dist.all_reduce(t, op=dist.ReduceOp.MIN); n_steps = int(t)
        if tc.max_steps_per_epoch > 0:
            n_steps = min(n_steps, tc.max_steps_per_epoch)
        model = self.ddp or self.model
        model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        bar = tqdm(total=n_steps * local_bs * self.world, initial=st["step"] * local_bs * self.world,
                   unit="sample", unit_scale=True, desc=f"epoch {epoch + 1}", leave=False,
                   disable=not (tc.progress and self.rank == 0), smoothing=0.1)
        t0 = time.perf_counter()
        for step in range(st["step"], n_steps):
            t_step = time.perf_counter()
            # The named ranges cost nothing unless a profiler runs (`ssmrec bench ctr --size` reads them).
            with record_function("ssmrec::data"):
                idx = order[step * local_bs:(step + 1) * local_bs]
                batch = self.task.train_batch(idx).to(self.device)
            with record_function("ssmrec::forward"):
                parts = self.task.loss(model(batch), batch)
                loss = parts["loss"] + l2_regularization(self.model, tc.embedding_regularizer, tc.net_regularizer)
            bad = torch.tensor([0.0 if bool(torch.isfinite(loss)) else 1.0])
            if self.world > 1:
                dist.all_reduce(bad)
            if bad.item():
                raise self._diverged(f"loss is {float(loss.detach())}", epoch, step)
            with record_function("ssmrec::backward"):
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.row_sync is not None:
                    self.row_sync.sync()
            with record_function("ssmrec::optimizer"):
                norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip if tc.grad_clip > 0 else math.inf)
                if not bool(torch.isfinite(norm)):
                    raise self._diverged(f"gradient norm is {float(norm)}", epoch, step)
                self.optimizer.step()
                if self._ema is not None:
                    self._ema_step()
            st["step"] = step + 1
            st["global_step"] += 1
            for name, value in parts.items():
                st["epoch_loss"][name] = st["epoch_loss"].get(name, 0.0) + float(value.detach()) * len(idx)
            st["epoch_rows"] += len(idx)
            bar.update(len(idx) * self.world)
            self.step_seconds.append(time.perf_counter() - t_step)
            for hook in self.step_hooks:
                hook()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{self._epoch_means().get(self._primary(), float('nan')):.4f}")
            if tc.checkpoint_every > 0 and st["step"] % tc.checkpoint_every == 0 and st["step"] < n_steps:
                st["train_seconds"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save_last()
        bar.close()
        st["train_seconds"] += time.perf_counter() - t0
        means = self._epoch_means()
        if self.world > 1:  # the global mean over every rank's rows
            names = sorted(means)
            t = torch.tensor([st["epoch_loss"].get(n, 0.0) for n in names] + [float(st["epoch_rows"])],
                             dtype=torch.float64)
            dist.all_reduce(t)
            means = {n: float(t[i] / max(t[-1], 1)) for i, n in enumerate(names)}
        return means

    def _primary(self) -> str:
        return getattr(self.task, "primary_loss", "bce" if self.cfg.task == "ctr" else "loss")

    def _epoch_means(self) -> dict:
        rows = max(self.state["epoch_rows"], 1)
        return {k: v / rows for k, v in self.state["epoch_loss"].items()}

    def _improved(self, value: float) -> bool:
        best, delta = self.state["best"], self.cfg.train.min_delta
        if value is None or not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best + delta if self.mode == "max" else value < best - delta

    def _append_metrics(self, record: dict):
        if self.rank != 0:
            return
        path = self.run_dir / "metrics.jsonl"
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # full disk, folder removed under us
            from ssmrec.io import os_error_line

            raise OutputError(os_error_line(e, path, "append metrics")) from None
        metric, losses = self.task.plot_keys()
        plot_curves(self.history, self.run_dir / "training_curve.png", metric, tuple(losses))

    def _rewrite_metrics(self):
        write_text_atomic(self.run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))

    def _start(self, resume: bool, overwrite: bool) -> RunDir | None:
        """Own the run folder and decide fresh / resumed (rank 0 decides; other ranks follow)."""
        if self.rank != 0:
            return None
        run = RunDir(self.run_dir).acquire()
        try:
            previous = run.previous_run_files()
            if resume and (self.run_dir / "last.pt").exists():
                run.remove_temp_files()
                return run
            if previous and not (overwrite or resume):
                raise OutputError(f"{self.run_dir}: holds an earlier run ({', '.join(previous)}); pass --resume to "
                                  f"continue it or --overwrite to replace it")
            run.clear()  # --overwrite, or --resume with nothing to resume: no file of an earlier run survives
            return run
        except BaseException:
            run.release()
            raise

    def fit(self, resume: bool = False, overwrite: bool = False) -> dict:
        run = self._start(resume, overwrite)
        try:
            return self._fit(resume)
        finally:
            if run is not None:
                run.release()

    def _fit(self, resume: bool) -> dict:
        tc, st = self.cfg.train, self.state
        if self.world > 1:
            dist.barrier()  # rank 0 owns and prepares the folder before any rank reads last.pt
        if resume:
            resumed = self.resume()  # every rank loads the same last.pt, so the replicas start identical
            if self.rank == 0:
                if resumed:
                    self._rewrite_metrics()
                    print(f"resumed from {self.run_dir / 'last.pt'} at epoch {st['epoch'] + 1}, step {st['step']}",
                          flush=True)
                else:
                    print(f"no checkpoint in {self.run_dir}; starting fresh", flush=True)
        if self.rank == 0:
            write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(self.cfg.resolved(), sort_keys=False))
        while not st["done"] and st["epoch"] < tc.epochs:
            epoch = st["epoch"]
            losses = self.train_epoch(epoch)
            epoch_seconds = st["train_seconds"]
            improved = torch.zeros(1)
            if self.rank == 0:
                with self.averaged_weights():
                    m = self.task.evaluate(self.model, "valid", tc.eval_batch_size, self.device)
                record = {"epoch": epoch + 1, "train_loss": losses.get(self._primary(), float("nan"))}
                record.update({f"train_{k}": v for k, v in losses.items() if k != self._primary()})
                record.update(_split_metrics(m, "valid"))
                record.update({"lr": st["lr"], "train_s": epoch_seconds})
                self.history.append(record)
                value = m.get(self.monitor)
                if self._improved(value):
                    improved[0] = 1
                    st["best"], st["best_epoch"] = value, epoch + 1
                print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}),
                      flush=True)
                for hook in self.epoch_hooks:
                    hook(epoch + 1, record)
            if self.world > 1:
                dist.broadcast(improved, 0)
            if improved.item():
                st["bad_epochs"] = 0
                if self.rank == 0:
                    with self.averaged_weights():
                        checkpoint.save_atomic(self._payload(False), self.run_dir / "best.pt")
            else:
                st["bad_epochs"] += 1
                if tc.lr_schedule == "plateau":
                    st["lr"] = max(st["lr"] * tc.lr_decay, tc.min_lr)
                    self._set_lr(st["lr"])
                if st["bad_epochs"] >= tc.patience:
                    st["done"] = True
            st.update(epoch=epoch + 1, step=0, train_seconds=0.0, epoch_loss={}, epoch_rows=0)
            self.save_last()  # before the metrics row: a kill in between is healed by the resume
            if self.rank == 0:
                self._append_metrics(self.history[-1])
        return self.finish()

    def finish(self) -> dict:
        """Reload this run's best weights, evaluate once more and summarise the run."""
        if self.world > 1:
            dist.barrier()
        best = self.run_dir / "best.pt"
        best_loaded = False
        if self.state["best_epoch"] > 0 and best.exists():
            ck = checkpoint.load(best)
            if ck.get("state", {}).get("run_id") == self.state["run_id"]:
                self.model.load_state_dict(ck["model"])
                best_loaded = True
        if not best_loaded and self._ema is not None:  # the monitor never improved: the final average
            torch._foreach_copy_(self._ema_params, self._ema)
        summary = {}
        if self.rank == 0:
            m = self.task.evaluate(self.model, "valid", self.cfg.train.eval_batch_size, self.device)
            epochs = [h["train_s"] for h in self.history]
            summary = {"model": self.cfg.model, "task": self.cfg.task, "run_dir": str(self.run_dir),
                       "run_id": self.state["run_id"], "best_epoch": self.state["best_epoch"],
                       "weights": "best" if best_loaded else "last (the monitor never improved)",
                       "epochs": len(self.history), "monitor": f"{self.mode} {self.monitor}"}
            summary.update(_split_metrics(m, "valid"))
            # without a model the task adds only its references (popularity, oracle), no test metrics
            summary.update(self.task.summary_extras(self.model if self.cfg.train.evaluate_test else None,
                                                    self.device))
            summary.update({"train_s_per_epoch": float(np.mean(epochs)) if epochs else None,
                            "params": sum(p.numel() for p in self.model.parameters()),
                            "world_size": self.world})
            from ssmrec.io import write_json_atomic

            write_json_atomic(self.run_dir / "summary.json", summary)
        return summary


def _split_metrics(m: dict, split: str) -> dict:
    """``valid_<metric>`` for quality metrics; references (``oracle_*``) and timings (``infer_*``) keep
    their names."""
    return {(k if k.startswith(("oracle", "infer")) else f"{split}_{k}"): v for k, v in m.items()}


def _lookup(d: dict, dotted: str):
    node = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def load_trained(ckpt_path, data_dir=None, splits=("valid", "test"), loaded=None):
    """Load ``best.pt``/``last.pt`` plus the requested splits of matching data; returns
    ``(model, config, data)``. The model comes from the checkpoint alone (``loaded``: what
    ``load_model`` already returned for it); ``data_dir`` (default: the folder it was trained on) is
    read only for the splits to score."""
    model, cfg, task, ck = loaded or load_model(ckpt_path)
    if data_dir:
        cfg.data.dir = str(data_dir)
    else:
        cfg.data.dir = ck["feature_map"].get("data_dir", cfg.data.dir)
    cfg.data.max_len = ck["feature_map"].get("max_len", cfg.data.max_len)
    task.data = None
    task.setup(tuple(splits))
    task.check_feature_map(ck["feature_map"], ckpt_path)
    return model, cfg, task.data
