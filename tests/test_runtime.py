"""`flush_denormals`: set once, it reaches torch's intra-op threads."""

import subprocess
import sys

import pytest

FLUSH_PROBE = r"""
import sys, torch
if sys.argv[1] == "flush":
    from ssmrec.runtime import flush_denormals
    assert flush_denormals()
torch.set_num_threads(2)
tiny = torch.full((1 << 22,), 1e-39)  # subnormal
out = tiny * 1.0  # split across both intra-op threads
print(int((out != 0).sum()))
"""


def test_flush_denormals_reaches_every_intra_op_thread():
    """Set before the first parallel region, the setting is inherited by torch's worker threads: a
    subnormal tensor multiplied on 2 threads comes back all zeros (DAZ), in every chunk."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("FTZ/DAZ is an x86 (SSE) setting; torch.set_flush_denormal is a no-op elsewhere")
    out = subprocess.run([sys.executable, "-c", FLUSH_PROBE, "flush"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0", f"{out.stdout.strip()} subnormal values survived"
    plain = subprocess.run([sys.executable, "-c", FLUSH_PROBE, "plain"], capture_output=True, text=True, check=True)
    assert plain.stdout.strip() == str(1 << 22)  # without it they all survive: the probe can fail
