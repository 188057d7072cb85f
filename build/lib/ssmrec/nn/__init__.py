"""Neural-network building blocks (Mamba / Mamba-2 blocks and reference selective scans)."""
