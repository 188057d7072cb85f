"""Sequential next-item models (task ``next_item``): Mamba4Rec, SASRec, GRU4Rec.

Every model maps a right-padded ``SeqBatch`` to hidden states ``(B, L, D)`` (``forward``) and scores
states against the shared item table (``full_sort_predict``), RecBole's contract; the task owns the
loss (full-softmax cross-entropy) and the ranking metrics. Importing this package imports every
module in it, so a new model is one file with one ``@register("next_item", ...)`` class.
"""

from __future__ import annotations

import importlib as _importlib
import pkgutil as _pkgutil

for _module in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_module.name}")
