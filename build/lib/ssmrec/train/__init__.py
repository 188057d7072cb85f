"""Training: trainer loop, metrics, checkpoints."""
