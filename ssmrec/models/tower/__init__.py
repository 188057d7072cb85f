"""Two-tower retrieval models (task ``retrieval``): FT-Mamba and FT-Transformer.

Every model holds a user tower and an item tower with separate weights, maps feature rows to vectors
(``encode_users`` / ``encode_items``) and scores a (user, item) pair by their inner product; the task
owns the loss and the ranking metrics, and ranks every item by encoding the catalogue once. Importing
this package imports every module in it, so a new model is one file with one
``@register("retrieval", ...)`` class.
"""

from __future__ import annotations

import importlib as _importlib
import pkgutil as _pkgutil

for _module in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_module.name}")
