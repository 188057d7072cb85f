"""Shared fixtures: a tiny synthetic MM-CTR world (generated once per session)."""

import os
import shutil
import sys
from pathlib import Path

import pytest

# Keep test processes from oversubscribing the 2-core CI machine: `make test` runs two pytest-xdist
# workers, each with one torch thread (tests that need more threads set them explicitly).
os.environ.setdefault("OMP_NUM_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")

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


def _build_tools() -> tuple[str | None, str | None]:
    """(C++ compiler, ninja) on this machine, as paths, or None where missing: what the fused kernel's
    build (torch.utils.cpp_extension) needs. The compiler is $CXX, else c++, g++ or clang++."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else []
    compiler = next((w for w in map(shutil.which, names + ["c++", "g++", "clang++"]) if w), None)
    return compiler, shutil.which("ninja")


def require_fused():
    """For a test that exercises the fused C++ CPU kernel: returns the loaded extension module.

    Where the kernel can be built (a C++ compiler and ninja are present) but did not build or load,
    the test FAILS with the kernel's own reason: a broken kernel build must not pass as ~40 silent
    skips. Only on a machine without the build tools is the test skipped. Call it inside the test
    (or a fixture), never at import: collecting tests must not compile the kernel.

    ``SSMREC_SCAN_IMPL`` does not matter here: it only changes what ``scan_impl="auto"`` resolves
    to, and tests that exercise the kernel call it directly or ask for ``scan_impl="fused"``."""
    from ssmrec.nn import fused_scan

    ext = fused_scan.load_extension()
    if ext is not None:
        return ext
    reason = fused_scan.fused_unavailable_reason()
    compiler, ninja = _build_tools()
    if compiler and ninja:
        pytest.fail(f"the fused CPU kernel is expected to build here (compiler {compiler}, ninja {ninja}) but is "
                    f"unavailable: {reason}", pytrace=False)
    missing = " and no ".join(what for what, path in (("C++ compiler", compiler), ("ninja", ninja)) if not path)
    pytest.skip(f"fused CPU kernel unavailable ({reason}); this machine has no {missing} to build it")


def run_cli(*args, cwd=None, timeout=600, env=None):
    """Run ``python -m ssmrec.cli ARGS`` in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "ssmrec.cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
