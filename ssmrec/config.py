"""Run configuration: layered, validated, one resolver for ``train``, ``bench`` and ``demo``.

A run YAML states only what differs from the defaults declared once in the pydantic models below
(and in each model's config dataclass)::

    task: ctr                      # which task owns data, loss and metrics (default ctr)
    name: mambactr_synth           # run folder name under out_dir
    model: mambactr                # a model registered for the task (ssmrec.registry)
    out_dir: runs
    base: mmctr_synth/mambactr_default   # optional: start from another config (path or built-in)
    data: {dir: data/synth-default, max_len: 64}   # the task's DataConfig
    model_params: {...}            # fields of the model's config dataclass
    train: {...}                   # fields of TrainConfig

Layers, lowest first: the defaults, ``base:`` configs (recursively), the YAML, then ``--set
key=value`` overrides. Every field is validated for type and range; the first problem is one
:class:`~ssmrec.errors.ConfigError` line naming the file, the key and the allowed values. Built-in
configs ship inside the package (``ssmrec/configs``), so a non-editable install finds them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ValidationError

from ssmrec.errors import ConfigError
from ssmrec.params import (STRICT, Bool, Name, NonNegFloat, NonNegInt, PosFloat, PosInt, Rate,
                           validation_error_line)

TASKS = ("ctr", "next_item", "retrieval")


def builtin_config_dir() -> Path:
    """``ssmrec/configs`` of the installed package (works for editable and wheel installs)."""
    return Path(str(resources.files("ssmrec") / "configs"))


class Section(BaseModel):
    model_config = STRICT


class TrainConfig(Section):
    """The task-independent training loop (one Trainer for every family)."""

    batch_size: PosInt = 128
    eval_batch_size: PosInt = 256  # CPU inference is fastest at small batches (measured: 256 -> 0.85 ms/row)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: PosFloat = 5e-4
    weight_decay: NonNegFloat = 0.0  # decoupled (adamw) or L2 (adam); never on biases, norms, A_log, D, dt_bias
    adam_eps: PosFloat = 1e-8  # Adam's denominator floor; with 1e-8 a near-zero gradient becomes a full +-lr step
    lr_schedule: Literal["plateau", "constant"] = "plateau"  # plateau: LR x lr_decay on a non-improving epoch
    epochs: PosInt = 100
    patience: PosInt = 5  # early stop after this many epochs without improvement of the monitor
    monitor: str | None = None  # a metric of the task (default: the task's own, e.g. ctr -> auc, max)
    lr_decay: PosFloat = 0.1
    min_lr: NonNegFloat = 1e-6
    min_delta: NonNegFloat = 1e-6
    grad_clip: NonNegFloat = 10.0  # global grad-norm clip (0 = off)
    # Exponential moving average of the weights (0 = off): validation, best.pt and so every later use
    # (test, evaluate, serve, export) read the average; training steps the raw weights. The decay
    # ramps up as min(ema_decay, (1 + n) / (10 + n)) over the first steps n, so early epochs are not
    # dominated by the initial weights.
    ema_decay: Rate = 0.0
    embedding_regularizer: NonNegFloat = 0.0  # FuxiCTR (lambda/2)||.||^2 on the embedding module
    net_regularizer: NonNegFloat = 0.0  # the same on every other decayable parameter
    seed: NonNegInt = 20242025
    checkpoint_every: NonNegInt = 500  # steps between resumable checkpoints (0 = end of epoch only)
    threads: NonNegInt = 0  # torch intra-op threads (0 = torch default)
    progress: Bool = True
    max_steps_per_epoch: NonNegInt = 0  # 0 = full epoch; >0 caps steps (smoke tests)
    drop_last: Bool = False  # drop each epoch's last partial batch (FuxiCTR trains on it: false)
    # DDP on CPU: embedding tables with at least this many rows all-reduce only the rows some rank
    # touched (train/ddp.py); 0 = every gradient through DDP's dense all-reduce
    ddp_sparse_min_rows: NonNegInt = 4096
    # Evaluate the final weights on held-out test data in the summary (next-item / retrieval tasks).
    # `ssmrec tune` turns it off: a search selects on validation only and never reads the test split.
    evaluate_test: Bool = True


class RunHeader(Section):
    task: Literal[TASKS] = "ctr"  # type: ignore[valid-type]
    name: Name = "run"
    model: str = "mambactr"
    out_dir: str = "runs"
    data: dict = {}
    model_params: dict = {}
    train: dict = {}


@dataclass
class RunConfig:
    name: str = "run"
    model: str = "mambactr"
    out_dir: str = "runs"
    data: BaseModel | None = None  # the task's DataConfig
    model_params: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: str = "ctr"

    def __post_init__(self):
        if self.data is None:
            from ssmrec.tasks import task_class

            self.data = task_class(self.task).DataConfig()

    def to_dict(self) -> dict:
        return {"task": self.task, "name": self.name, "model": self.model, "out_dir": self.out_dir,
                "data": self.data.model_dump(), "model_params": copy.deepcopy(self.model_params),
                "train": self.train.model_dump()}

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def model_spec(self):
        from ssmrec.registry import get_model

        return get_model(self.task, self.model)

    def resolved(self) -> dict:
        """The config as a dict with the model's defaults filled in (what checkpoints store and a resume
        compares)."""
        d = self.to_dict()
        d["model_params"] = self.model_spec().resolved_params(self.model_params)
        return d

    def model_config(self, source: str = "config"):
        return self.model_spec().config(self.model_params, source)


def _section(cls, values, key: str, source: str):
    if values is None:
        values = {}
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        raise ConfigError(f"{source}: {validation_error_line(e, key)}") from None


def from_dict(d: dict, source: str = "config") -> RunConfig:
    """Validate a (merged) config mapping into a :class:`RunConfig`; one ``ConfigError`` line if not."""
    from ssmrec.tasks import task_class

    if not isinstance(d, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    d = {k: v for k, v in d.items() if k != "base"}
    for key in ("data", "model_params", "train"):
        if d.get(key) is None and key in d:
            d[key] = {}
    head = _section(RunHeader, d, "", source)
    if not isinstance(head.out_dir, str) or not head.out_dir.strip():
        raise ConfigError(f"{source}: 'out_dir' must be a non-empty path")
    task = task_class(head.task)
    cfg = RunConfig(name=head.name, model=head.model, out_dir=head.out_dir, task=head.task,
                    data=_section(task.DataConfig, head.data, "data", source),
                    model_params=copy.deepcopy(head.model_params),
                    train=_section(TrainConfig, head.train, "train", source))
    from ssmrec.registry import get_model

    spec = get_model(cfg.task, cfg.model, source)
    spec.config(cfg.model_params, source)  # validates model keys now, not mid-run
    task.check_config(cfg, source)
    return cfg


def set_dotted(d: dict, key: str, value, where: str) -> None:
    """``d[a][b] = value`` for ``key = 'a.b'`` (sections created as needed)."""
    node = d
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{where}: empty key segment in '{key}'")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: '{p}' is not a section")
    node[parts[-1]] = value


def apply_overrides(d: dict, overrides: list[str] | None) -> dict:
    """Apply ``--set a.b=value`` overrides (value parsed as YAML) to a config dict."""
    d = copy.deepcopy(d)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        set_dotted(d, key.strip(), value, f"--set {item!r}")
    return d


def deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_config_path(name_or_path) -> Path:
    """A config path, or a built-in name such as ``mmctr_synth/mambactr`` (in ``ssmrec/configs``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    name = str(name_or_path)
    builtin = builtin_config_dir() / (name if name.endswith(".yaml") else name + ".yaml")
    if builtin.is_file():
        return builtin
    raise ConfigError(f"{name_or_path}: config file not found (a path, or a built-in name such as "
                      f"mmctr_synth/mambactr_default; built-ins live in {builtin_config_dir()})")


def read_yaml(path: Path) -> dict:
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config ({type(e).__name__})") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(d).__name__}")
    return d


def load_layers(name_or_path, _seen: tuple = ()) -> tuple[dict, Path]:
    """The merged dict of a config and its ``base:`` chain (no overrides, not validated)."""
    path = resolve_config_path(name_or_path)
    key = path.resolve()
    if key in _seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    d = read_yaml(path)
    base = d.get("base")
    if base is None:
        return d, path
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a config path or built-in name, got {base!r}")
    try:
        base_dict, _ = load_layers(base if Path(base).is_absolute() or not (path.parent / base).is_file()
                                   else path.parent / base, _seen + (key,))
    except ConfigError as e:
        raise ConfigError(f"{path}: base: {e}") from None
    return deep_merge(base_dict, {k: v for k, v in d.items() if k != "base"}), path


def load_config(name_or_path, overrides: list[str] | None = None) -> RunConfig:
    """The one resolver: built-in name or path -> base chain -> overrides -> validated RunConfig."""
    d, path = load_layers(name_or_path)
    return from_dict(apply_overrides(d, overrides), source=str(path))


def resume_incompatibilities(old: dict, new: dict) -> list[str]:
    """Dotted keys whose change makes ``--resume`` continue a different run (model, data, batch,
    optimiser, seed...). Budget and bookkeeping keys (epochs, patience, threads, progress,
    checkpoint_every, eval_batch_size, max_steps_per_epoch) may change."""
    may_change = {"train.epochs", "train.patience", "train.threads", "train.progress", "train.checkpoint_every",
                  "train.eval_batch_size", "train.max_steps_per_epoch", "train.evaluate_test", "out_dir", "name"}

    def flat(d, prefix=""):
        out = {}
        for k, v in (d or {}).items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                out.update(flat(v, key + "."))
            else:
                out[key] = v
        return out

    a, b = flat(old), flat(new)
    if "task" not in a:  # checkpoints from before tasks existed were CTR runs
        a["task"] = "ctr"
    # The saved config is fully resolved, so a key it lacks did not exist when the run started: a
    # field added by a newer version, whose default keeps the old behaviour.
    return sorted(k for k in set(a) | set(b) if k not in may_change and k in a and a.get(k) != b.get(k))
