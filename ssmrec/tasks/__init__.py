"""Tasks: what a model family trains on and is judged by.

A task owns its data module (typed batches for training and evaluation, the feature map and the item
tables a checkpoint must carry), model construction from the registry, the loss (returned as named
parts, so auxiliary losses are logged) and the evaluation metrics with the monitor to early-stop on.
The one :class:`~ssmrec.train.trainer.Trainer` runs any task; no model needs a trainer of its own.
"""

from __future__ import annotations

import importlib

from ssmrec.errors import ConfigError

TASK_CLASSES = {"ctr": "ssmrec.tasks.ctr:CTRTask", "next_item": "ssmrec.tasks.next_item:NextItemTask",
                "retrieval": "ssmrec.tasks.retrieval:RetrievalTask"}


def task_class(name: str):
    if name not in TASK_CLASSES:
        raise ConfigError(f"unknown task '{name}' (choose from {', '.join(TASK_CLASSES)})")
    module, attr = TASK_CLASSES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def make_task(cfg):
    """The task object for a run config."""
    return task_class(cfg.task)(cfg)
