"""Shared fixtures: a tiny synthetic MM-CTR world (generated once per session)."""

import os
import sys
from pathlib import Path

import pytest

# Keep test processes from oversubscribing the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    from ssmrec.data.synth import synthesize

    out = tmp_path_factory.mktemp("worlds") / "tiny"
    synthesize(out, preset="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_data(tiny_world):
    from ssmrec.data.mmctr import load_mmctr

    return load_mmctr(tiny_world, 64, splits=("train", "valid", "test"))


def run_cli(*args, cwd=None, timeout=600, env=None):
    """Run ``python -m ssmrec.cli ARGS`` in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "ssmrec.cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
