"""Multimodal item embedding (MambaCTR §3.2.2): cover images + titles -> fused, PCA-reduced vectors.

``embed_items(items, out, image_encoder=..., text_encoder=...)`` is the entry point; see
:mod:`ssmrec.embed.pipeline` for the outputs, :mod:`ssmrec.embed.encoders` for how models are
found and run, :mod:`ssmrec.embed.fusion` for the fusion rule and :mod:`ssmrec.embed.cache` for
resuming. Heavy dependencies (torch, transformers, sentence-transformers) are imported lazily.
"""

from ssmrec.embed.fusion import fuse, parse_weights
from ssmrec.embed.items import ItemTable, read_item_table
from ssmrec.embed.pipeline import embed_items

__all__ = ["embed_items", "read_item_table", "ItemTable", "fuse", "parse_weights"]
