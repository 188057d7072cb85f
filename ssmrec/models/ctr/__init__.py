"""CTR models on MM-CTR data. ``CTR_MODELS`` maps a config ``model:`` name to (class, config class)."""

from __future__ import annotations

from dataclasses import fields

from ssmrec.errors import ConfigError
from ssmrec.models.ctr.din import DIN, DINConfig
from ssmrec.models.ctr.dmf import DMF, DMFConfig
from ssmrec.models.ctr.mambactr import MambaCTR, MambaCTRConfig
from ssmrec.models.ctr.qin import QIN, QINConfig
from ssmrec.models.ctr.transformer_dcn import TransformerDCN, TransformerDCNConfig

CTR_MODELS = {
    "mambactr": (MambaCTR, MambaCTRConfig),
    "din": (DIN, DINConfig),
    "qin": (QIN, QINConfig),
    "transformer_dcn": (TransformerDCN, TransformerDCNConfig),
    "dmf": (DMF, DMFConfig),
}


def model_config(name: str, params: dict, source: str = "config"):
    """Build the model's config dataclass from a dict; unknown keys and bad values are errors."""
    if name not in CTR_MODELS:
        raise ConfigError(f"{source}: unknown model '{name}' (choose from {', '.join(CTR_MODELS)})")
    cls = CTR_MODELS[name][1]
    known = {f.name for f in fields(cls)}
    for key in params:
        if key not in known:
            raise ConfigError(f"{source}: unknown key 'model_params.{key}' for model '{name}'")
    try:
        return cls(**params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: model_params: {e}") from None


def build_ctr_model(name: str, params: dict, item_info, source: str = "config"):
    cfg = model_config(name, params, source)
    return CTR_MODELS[name][0](cfg, item_info.tags, item_info.emb, item_info.n_tags)
