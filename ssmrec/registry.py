"""One registry of models, keyed by (task, name).

A model registers itself with its config dataclass::

    @register("ctr", "din", DINConfig)
    class DIN(nn.Module): ...

and a run config names both (``task: ctr``, ``model: din``). The registry imports a task's model
package lazily (``MODEL_PACKAGES``), so ``import ssmrec`` stays cheap and a new family only adds one
line here. Model configs are pydantic dataclasses (:mod:`ssmrec.params`): building one validates
every field's type and range, and every failure becomes one :class:`~ssmrec.errors.ConfigError`
line naming the key and the allowed values.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, fields

from ssmrec.errors import ConfigError

# Where each task's models live (imported on first lookup).
MODEL_PACKAGES = {"ctr": "ssmrec.models.ctr", "next_item": "ssmrec.models.seq", "retrieval": "ssmrec.models.tower"}


@dataclass(frozen=True)
class ModelSpec:
    task: str
    name: str
    cls: type
    config_cls: type

    def config(self, params: dict | None, source: str = "config"):
        """The model's validated config instance from a ``model_params`` mapping."""
        from ssmrec.params import validation_error_line

        params = {} if params is None else params
        if not isinstance(params, dict):
            raise ConfigError(f"{source}: 'model_params' must be a mapping, got {params!r}")
        known = [f.name for f in fields(self.config_cls)]
        for key in params:
            if key not in known:
                raise ConfigError(f"{source}: unknown key 'model_params.{key}' for model '{self.name}' "
                                  f"(known: {', '.join(known)})")
        try:
            return self.config_cls(**params)
        except Exception as e:  # pydantic ValidationError, or a ValueError from a cross-field check
            raise ConfigError(f"{source}: {validation_error_line(e, 'model_params')}") from None

    @property
    def servable(self) -> bool:
        """The model implements the incremental-inference contract (:mod:`ssmrec.models.incremental`)."""
        from ssmrec.models.incremental import IncrementalModel

        return issubclass(self.cls, IncrementalModel)

    def resolved_params(self, params: dict | None, source: str = "config") -> dict:
        return asdict(self.config(params, source))


_REGISTRY: dict[tuple[str, str], ModelSpec] = {}


def register(task: str, name: str, config_cls: type):
    """Class decorator: make ``cls`` buildable as ``model: name`` under ``task: task``."""
    if task not in MODEL_PACKAGES:
        raise ValueError(f"unknown task {task!r} (add it to ssmrec.registry.MODEL_PACKAGES)")

    def wrap(cls):
        key = (task, name)
        if key in _REGISTRY and _REGISTRY[key].cls is not cls:
            raise ValueError(f"model {name!r} is already registered for task {task!r}")
        _REGISTRY[key] = ModelSpec(task, name, cls, config_cls)
        return cls

    return wrap


def _load(task: str, source: str) -> None:
    if task not in MODEL_PACKAGES:
        raise ConfigError(f"{source}: unknown task '{task}' (choose from {', '.join(MODEL_PACKAGES)})")
    importlib.import_module(MODEL_PACKAGES[task])
    load_plugins()


def load_plugins() -> None:
    """Import the modules named in ``$SSMREC_PLUGINS`` (comma-separated), so models defined outside
    the package register themselves before a config names them."""
    import os

    for name in filter(None, (m.strip() for m in os.environ.get("SSMREC_PLUGINS", "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"SSMREC_PLUGINS: cannot import '{name}' ({e})") from None


def model_names(task: str, source: str = "config") -> list[str]:
    _load(task, source)
    return sorted(name for (t, name) in _REGISTRY if t == task)


def get_model(task: str, name: str, source: str = "config") -> ModelSpec:
    _load(task, source)
    spec = _REGISTRY.get((task, name))
    if spec is None:
        raise ConfigError(f"{source}: unknown model '{name}' for task '{task}' "
                          f"(choose from {', '.join(model_names(task))})")
    return spec
