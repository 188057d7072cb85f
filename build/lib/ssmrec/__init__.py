"""ssmrec: efficient multimodal recommendation with state-space (Mamba) models."""

__version__ = "0.1.0"
