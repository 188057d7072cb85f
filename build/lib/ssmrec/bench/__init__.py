"""Benchmarks (`ssmrec bench ...`): measured side by side in one process, printed, saved as JSON + PNG."""
