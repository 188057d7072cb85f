"""The task contract the Trainer relies on (see :mod:`ssmrec.tasks`).

Models keep RecBole's split of duties: a model's ``forward(batch)`` returns named outputs (logits,
auxiliary losses); the task turns them into the loss (:meth:`Task.loss`, named parts) and into
predictions and metrics (:meth:`Task.evaluate`), the way TensorFlow Recommenders' tasks own loss and
metrics. Nothing here is specific to a model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Iterator

import torch
from pydantic import BaseModel

from ssmrec.metrics import metric_direction


class Task(ABC):
    name: ClassVar[str]
    DataConfig: ClassVar[type[BaseModel]]
    # The metric to early-stop on and its direction; a config may pick another metric of
    # ``monitor_names(cfg)`` with ``train.monitor`` (its direction then follows from its name,
    # :func:`ssmrec.metrics.metric_direction`).
    monitor: ClassVar[tuple[str, str]]
    metric_names: ClassVar[tuple[str, ...]]

    def __init__(self, cfg):
        self.cfg = cfg

    # ------------------------------------------------------------------ config
    @classmethod
    def monitor_names(cls, cfg) -> tuple[str, ...]:
        """The validation metrics ``train.monitor`` may name for this config."""
        return cls.metric_names

    @classmethod
    def check_config(cls, cfg, source: str) -> None:
        """Cross-section checks (data vs model vs train); raise ConfigError. Default: monitor name."""
        from ssmrec.errors import ConfigError

        mon = cfg.train.monitor
        allowed = cls.monitor_names(cfg)
        if mon is not None and (mon not in allowed or metric_direction(mon) is None):
            raise ConfigError(f"{source}: train.monitor must be one of {', '.join(allowed)} for task "
                              f"'{cls.name}', got {mon!r}")

    def default_monitor(self) -> str:
        return self.monitor[0]

    def monitor_spec(self) -> tuple[str, str]:
        """(metric, "max" | "min"): the direction always follows from the metric's name."""
        mon = self.cfg.train.monitor or self.default_monitor()
        return mon, metric_direction(mon)

    # ------------------------------------------------------------------ data module
    @abstractmethod
    def setup(self, splits: tuple[str, ...] = ("train", "valid")) -> None:
        """Load (and validate) the data needed for ``splits``."""

    @abstractmethod
    def feature_map(self) -> dict:
        """Plain facts about the data the model depends on (vocabulary sizes, widths); stored in
        checkpoints and compared on resume / evaluation."""

    @abstractmethod
    def artifacts(self) -> dict[str, torch.Tensor]:
        """Tensors besides weights a model needs to be rebuilt (item tables); stored in checkpoints."""

    @abstractmethod
    def check_feature_map(self, fm: dict, source) -> None:
        """Raise a one-line SsmrecError when loaded data does not match a checkpoint's feature map."""

    @abstractmethod
    def num_train_samples(self) -> int: ...

    def arrange_epoch(self, order: torch.Tensor, batch_size: int, seed: int) -> torch.Tensor:
        """Reorder an epoch's shuffled sample indices before they are cut into batches of
        ``batch_size`` (default: unchanged). Must be a pure function of its arguments (resume)."""
        return order

    @abstractmethod
    def train_batch(self, idx: torch.Tensor):
        """The typed batch of training samples ``idx``."""

    @abstractmethod
    def eval_batches(self, split: str, batch_size: int) -> Iterator:
        """Typed batches covering ``split`` in order."""

    # ------------------------------------------------------------------ model, loss, metrics
    @abstractmethod
    def build_model(self, artifacts: dict | None = None, feature_map: dict | None = None) -> torch.nn.Module:
        """The registered model of ``cfg.model`` (from loaded data, or from a checkpoint's artifacts)."""

    @abstractmethod
    def loss(self, model_out: dict, batch) -> dict[str, torch.Tensor]:
        """``{"loss": total, <part>: value, ...}``; ``loss`` is what is minimised. The regulariser
        is added by the Trainer (it depends only on parameters)."""

    @abstractmethod
    def evaluate(self, model, split: str, batch_size: int, device, progress: bool = False) -> dict:
        """Metrics of ``model`` on ``split`` (a dict with every name of ``metric_names`` it can compute)."""

    def summary_extras(self, model=None, device="cpu") -> dict:
        """Reference numbers for the run summary (baselines, oracle), and metrics of the final
        ``model`` on held-out data where the task has them (e.g. next-item test metrics)."""
        return {}

    def serving_schema(self, feature_map: dict, artifacts: dict, model: str):
        """The :class:`~ssmrec.data.schema.ServingSchema` of a checkpoint of this task (``ssmrec serve``)."""
        from ssmrec.errors import SsmrecError

        raise SsmrecError(f"task '{type(self).__name__}' checkpoints cannot be served")

    def plot_keys(self) -> tuple[str, list[str]]:
        """(quality metric, loss-like metrics) for the training curve."""
        return self.monitor[0], []
