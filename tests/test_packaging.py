"""A plain (non-editable) install works: the built wheel carries the configs and `ssmrec demo` runs
from it, outside the source tree."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_runs_the_tiny_demo(tmp_path):
    # Build from a copy of what git tracks (setuptools writes build/ next to the sources).
    import shutil

    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file() and not (REPO / f).is_symlink():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(dist), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next(dist.glob("ssmrec-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "ssmrec/configs/mmctr_synth/mambactr_tiny.yaml" in names
    assert "ssmrec/configs/bench/ctr.yaml" in names and "ssmrec/nn/csrc/selective_scan_cpu.cpp" in names

    # A fresh venv: the wheel is installed into it; its dependencies (torch, ...) come from this
    # environment's site-packages through a .pth line (lines of a .pth are paths, so this
    # environment's editable install of ssmrec is *not* activated there).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = subprocess.run([str(py), "-c", "import ssmrec; print(ssmrec.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(site), where  # the wheel's copy, not the source tree
    r = subprocess.run([str(venv / "bin" / "ssmrec"), "demo", "--preset", "tiny", "--set", "train.epochs=1",
                        "--set", "train.progress=false"], cwd=work, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = __import__("json").loads(r.stdout.strip().splitlines()[-1])
    assert summary["valid_auc"] > 0.6 and (work / "runs" / "demo-tiny" / "best.pt").exists()
