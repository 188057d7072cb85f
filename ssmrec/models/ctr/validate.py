"""Value checks shared by the CTR config dataclasses. A bad value raises ``ValueError`` naming the
key (``model.<key>``); ``ssmrec.models.ctr.model_config`` turns it into a one-line ``ConfigError``."""

from __future__ import annotations


def _name(key):
    return f"model.{key}"


def check_choice(cfg, key, allowed):
    if getattr(cfg, key) not in allowed:
        raise ValueError(f"{_name(key)} must be one of {tuple(allowed)}, got {getattr(cfg, key)!r}")


def check_positive(cfg, *keys):
    for key in keys:
        val = getattr(cfg, key)
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{_name(key)} must be a positive integer, got {val!r}")


def check_rate(cfg, *keys):
    for key in keys:
        val = getattr(cfg, key)
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0.0 <= val < 1.0:
            raise ValueError(f"{_name(key)} must be a number in [0, 1), got {val!r}")


def check_widths(cfg, *keys, allow_empty=False):
    for key in keys:
        val = getattr(cfg, key)
        ok = isinstance(val, (list, tuple)) and (allow_empty or len(val) > 0) and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in val)
        if not ok:
            raise ValueError(f"{_name(key)} must be a list of positive integers, got {val!r}")


def check_bool(cfg, *keys):
    for key in keys:
        if not isinstance(getattr(cfg, key), bool):
            raise ValueError(f"{_name(key)} must be true or false, got {getattr(cfg, key)!r}")
