"""CTR models on MM-CTR data, registered under task ``ctr`` (see :mod:`ssmrec.registry`).

Importing this package imports every module in it, so a new model is one file with one
``@register("ctr", ...)`` class; ``CTR_MODELS`` and :func:`build_ctr_model` are the CTR views of the
registry.
"""

from __future__ import annotations

from ssmrec.models.ctr.din import DIN, DINConfig
from ssmrec.models.ctr.dmf import DMF, DMFConfig
from ssmrec.models.ctr.mambactr import MambaCTR, MambaCTRConfig
from ssmrec.models.ctr.qin import QIN, QINConfig
from ssmrec.models.ctr.transformer_dcn import TransformerDCN, TransformerDCNConfig
from ssmrec.registry import _REGISTRY, get_model

import importlib as _importlib
import pkgutil as _pkgutil

for _module in _pkgutil.iter_modules(__path__):  # every model file registers itself
    _importlib.import_module(f"{__name__}.{_module.name}")

CTR_MODELS = {name: (spec.cls, spec.config_cls) for (task, name), spec in _REGISTRY.items() if task == "ctr"}

__all__ = ["CTR_MODELS", "build_ctr_model", "model_config", "DIN", "DINConfig", "DMF", "DMFConfig", "MambaCTR",
           "MambaCTRConfig", "QIN", "QINConfig", "TransformerDCN", "TransformerDCNConfig"]


def model_config(name: str, params: dict, source: str = "config"):
    """The model's validated config dataclass; unknown keys and bad values are one-line ConfigErrors."""
    return get_model("ctr", name, source).config(params, source)


def build_ctr_model(name: str, params: dict, item_info, source: str = "config"):
    """Build a CTR model from its params and the item tables (an ``ItemInfo`` or any object with
    ``tags``, ``emb`` and ``n_tags``)."""
    spec = get_model("ctr", name, source)
    return spec.cls(spec.config(params, source), item_info.tags, item_info.emb, item_info.n_tags)
