"""The compiled fused-kernel cache is shared by every install of the same source, and built once.

Slow: compiles the kernel once (into a temporary ``$SSMREC_EXT_DIR``), from two concurrent processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_fused

pytestmark = pytest.mark.slow

PKG = Path(__file__).resolve().parents[2] / "ssmrec"
EXT = "ssmrec_selective_scan_cpu"

# Loads the kernel, runs a tiny scan against the reference, says where ssmrec and the .so came from.
# With NO_BUILD=1, cpp_extension.load (hence ninja) must not be called at all.
SCRIPT = r"""
import os, sys
import torch
if os.environ.get("NO_BUILD") == "1":
    import torch.utils.cpp_extension as ce
    def _boom(*a, **k):
        raise AssertionError("cpp_extension.load called although the kernel is cached")
    ce.load = _boom
import ssmrec
from ssmrec.nn import fused_scan
from ssmrec.nn.scan import selective_scan_ref
ext = fused_scan.load_extension()
assert ext is not None, fused_scan.fused_unavailable_reason()
g = torch.Generator().manual_seed(0)
u, delta, z = (torch.randn(2, 6, 5, generator=g) for _ in range(3))
A = -torch.rand(6, 4, generator=g) - 0.2
B, C = torch.randn(2, 4, 5, generator=g), torch.randn(2, 4, 5, generator=g)
y = fused_scan.selective_scan_fused(u, delta, A, B, C, z=z, delta_softplus=True)
torch.testing.assert_close(y, selective_scan_ref(u, delta, A, B, C, z=z, delta_softplus=True), rtol=1e-4, atol=1e-5)
print("PKG", os.path.dirname(ssmrec.__file__))
print("SO", ext.__file__)
"""


@pytest.fixture(autouse=True, scope="module")
def _needs_build_tools():
    """These tests compile the kernel in subprocesses: skipped only on a machine without a compiler or
    ninja; where the tools are there, a kernel that does not build fails (module scope: runs before
    the module-scoped concurrent build below)."""
    require_fused()


def _run(ext_dir: Path, pythonpath: Path, cwd: Path, no_build: bool = False, start: bool = False):
    env = dict(os.environ, SSMREC_EXT_DIR=str(ext_dir), PYTHONPATH=str(pythonpath), OMP_NUM_THREADS="1",
               NO_BUILD="1" if no_build else "0")
    cmd = [sys.executable, "-c", SCRIPT]
    if start:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=540)


def _field(stdout: str, key: str) -> str:
    return next(line.split(" ", 1)[1] for line in stdout.splitlines() if line.startswith(key + " "))


def _digest_dirs(ext_dir: Path) -> list[Path]:
    return sorted(ext_dir.glob(f"{EXT}-*"))


@pytest.fixture(scope="module")
def concurrent_build(tmp_path_factory):
    """Two processes started together on an empty cache (the first use of two jobs at once)."""
    ext_dir = tmp_path_factory.mktemp("ext")
    cwd = tmp_path_factory.mktemp("cwd")
    procs = [_run(ext_dir, PKG.parent, cwd, start=True) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=540)
        results.append((p.returncode, out, err))
    return ext_dir, results


def test_concurrent_first_use_builds_once(concurrent_build):
    ext_dir, results = concurrent_build
    for rc, out, err in results:
        assert rc == 0, err
    errs = "".join(err for _, _, err in results)
    assert errs.count("ssmrec: building the fused CPU scan kernel") == 1, errs
    assert errs.count("ssmrec: waiting for the fused CPU kernel build by another process") == 1, errs
    dirs = _digest_dirs(ext_dir)
    assert len(dirs) == 1
    assert sorted(p.name for p in dirs[0].iterdir()) == ["build.lock", f"{EXT}.so"]  # no build leftovers
    assert {_field(out, "SO") for _, out, _ in results} == {str(dirs[0] / f"{EXT}.so")}


def test_cache_shared_by_installs_in_different_places(concurrent_build, tmp_path):
    ext_dir, _ = concurrent_build
    (so,) = _digest_dirs(ext_dir)[0].glob("*.so")
    before = so.stat()
    for name in ("clone_a", "elsewhere/clone_b"):
        root = tmp_path / name
        shutil.copytree(PKG, root / "ssmrec", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        r = _run(ext_dir, root, tmp_path, no_build=True)
        assert r.returncode == 0, r.stderr
        assert _field(r.stdout, "PKG") == str(root / "ssmrec")  # really the copy, not /work/main
        assert _field(r.stdout, "SO") == str(so)
        assert "building" not in r.stderr and "waiting" not in r.stderr, r.stderr
    after = so.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert _digest_dirs(ext_dir) == [so.parent]
    assert sorted(p.name for p in so.parent.iterdir()) == ["build.lock", so.name]


SERIAL_SCRIPT = r"""
import torch
from ssmrec.nn import fused_scan
fused_scan._CFLAGS = fused_scan._CFLAGS + ["-fno-such-option-ssmrec"]  # this 'OpenMP' build must fail
ext = fused_scan.load_extension()
assert ext is not None, fused_scan.fused_unavailable_reason()
torch.set_num_threads(2)
print("THREADS", ext.parallel_threads(64))
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 5, 8, generator=g)
print("EXP_OK", bool(torch.allclose(ext.vec_exp_f32(x.flatten(), False), x.flatten().exp(), rtol=1e-5)))
"""


def test_compiler_without_openmp_falls_back_to_a_serial_build(tmp_path):
    """When the -fopenmp build fails (a compiler without OpenMP), the kernel is built without it: the
    fused path stays available, on one thread, and one line says so."""
    env = dict(os.environ, SSMREC_EXT_DIR=str(tmp_path / "ext"), PYTHONPATH=str(PKG.parent))
    r = subprocess.run([sys.executable, "-c", SERIAL_SCRIPT], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=540)
    assert r.returncode == 0, r.stderr
    assert _field(r.stdout, "THREADS") == "1" and _field(r.stdout, "EXP_OK") == "True"
    assert "did not build with OpenMP" in r.stderr
