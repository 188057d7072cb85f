"""Validated parameter types shared by every config (run, train, data and model configs).

Configs are pydantic v2 models / dataclasses: types *and* ranges are declared once here
(``PosInt``, ``Rate``, ``Widths``, ...) and checked by pydantic; :func:`validation_error_line` turns
pydantic's report into the project's one-line error naming the key and the allowed values.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, StrictBool, StrictInt, StringConstraints, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass

__all__ = ["PosInt", "NonNegInt", "PosFloat", "NonNegFloat", "Rate", "UnitFloat", "Widths", "WidthsOrEmpty",
           "Bool", "Name", "config_dataclass", "validation_error_line", "STRICT"]

PosInt = Annotated[StrictInt, Field(gt=0)]
NonNegInt = Annotated[StrictInt, Field(ge=0)]
# Floats accept numeric strings: YAML 1.1 reads "2e-3" (no dot) as a string.
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Rate = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]  # dropout-like: [0, 1)
UnitFloat = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]  # [0, 1]
Widths = Annotated[list[PosInt], Field(min_length=1)]
WidthsOrEmpty = list[PosInt]
Bool = StrictBool
# A name used as a folder name: no path separators, no leading dot.
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", min_length=1, max_length=200)]

STRICT = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


def config_dataclass(cls=None, /):
    """``@dataclass`` with pydantic validation of every field on construction (unknown keys are
    errors). ``__post_init__`` stays available for cross-field checks (raise ``ValueError``)."""

    def wrap(c):
        return _pydantic_dataclass(c, config=STRICT)

    return wrap if cls is None else wrap(cls)


_KIND = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
    "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping", "dataclass_type": "a mapping",
}


def _describe(err: dict) -> str:
    t, ctx = err["type"], err.get("ctx") or {}
    if t in _KIND:
        return f"must be {_KIND[t]}"
    if t == "greater_than":
        return f"must be > {ctx['gt']}"
    if t == "greater_than_equal":
        return f"must be >= {ctx['ge']}"
    if t == "less_than":
        return f"must be < {ctx['lt']}"
    if t == "less_than_equal":
        return f"must be <= {ctx['le']}"
    if t == "too_short":
        return f"must have at least {ctx.get('min_length')} element(s)"
    if t == "string_pattern_mismatch":
        return "must use only letters, digits, '_', '.', '-' (no '/', not starting with '.')"
    if t == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if t == "extra_forbidden":
        return "is not a known key"
    if t == "missing":
        return "is required"
    return err.get("msg", "is invalid")


def validation_error_line(e: Exception, prefix: str = "") -> str:
    """One line for the first problem in a pydantic ``ValidationError`` (or a ``ValueError`` raised by
    a cross-field check): ``'<prefix>.<key>' must be ..., got <value>``."""
    if isinstance(e, ValidationError):
        err = e.errors(include_url=False)[0]
        loc = [str(p) for p in err["loc"] if not (isinstance(p, int) and p == 0 and len(err["loc"]) == 1)]
        key = ".".join([prefix, *loc] if prefix else loc) or prefix or "config"
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            return f"unknown key '{key}'"
        what = _describe(err)
        got = err.get("input")
        if err["type"] == "literal_error":  # "stage1 must be one of (...)"
            return f"{key} {what}, got {got!r}"
        if err["type"].startswith("value_error"):
            return str(err.get("ctx", {}).get("error", err["msg"])).removeprefix("Value error, ")
        return f"'{key}' {what}, got {got!r}"
    from ssmrec.errors import one_line

    return one_line(str(e))
