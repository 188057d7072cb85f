"""Typed batches: dataclasses of tensors that every model reads by field name (not free-form dicts).

:class:`TensorBatch` gives each batch type the same device move and field replacement.
"""

from __future__ import annotations

from dataclasses import fields, replace


class TensorBatch:
    """Mixin for ``@dataclass`` batches whose fields are tensors (or ``None``)."""

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to(self, device, non_blocking: bool = True):
        return replace(self, **{k: (None if v is None else v.to(device, non_blocking=non_blocking))
                                for k, v in self.as_dict().items()})

    def replace(self, **changes):
        return replace(self, **changes)
