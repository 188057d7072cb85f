"""Small utilities shared by the benchmark modules (``ssmrec bench ...``).

* :func:`time_repeats` — call a function ``repeats`` times, return min / median / all seconds.
* :func:`summarize_times` — the same statistics for timings measured elsewhere.
* :func:`write_json_atomic`, :func:`write_text_atomic`, :func:`save_figure_atomic` — the atomic
  writers of :mod:`ssmrec.io` (a killed bench never leaves a torn output).
* :func:`pyplot` — matplotlib's pyplot on the non-interactive Agg backend.
* :func:`markdown_table` — a GitHub Markdown table from headers and rows.
* :func:`machine_info`, :func:`peak_rss_mb` — what to record next to every measurement.

Nothing here imports torch: callers that need torch facts pass them in.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ssmrec.io import save_figure_atomic as _save_figure
from ssmrec.io import write_json_atomic, write_text_atomic

__all__ = ["summarize_times", "time_repeats", "write_json_atomic", "write_text_atomic", "save_figure_atomic",
           "pyplot", "markdown_table", "machine_info", "peak_rss_mb", "format_seconds"]


def summarize_times(seconds: Sequence[float]) -> dict:
    """``{"min", "median", "times", "repeats"}`` of a list of durations (seconds)."""
    times = [float(s) for s in seconds]
    if not times:
        raise ValueError("summarize_times needs at least one timing")
    return {"min": min(times), "median": statistics.median(times), "times": times, "repeats": len(times)}


def time_repeats(fn: Callable[[], object], repeats: int = 3, warmup: int = 0) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (perf_counter).

    Returns :func:`summarize_times` of the timed calls. Report the min (least disturbed by other
    processes on a shared machine) and the median (typical)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summarize_times(times)


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (benchmarks run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure_atomic(fig, path, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (:mod:`ssmrec.io`), then close it."""
    out = _save_figure(fig, path, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return out


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub Markdown table; cells are str()-ed, ``|`` escaped."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Where and when a benchmark ran: OS, CPU model and count, Python, UTC date."""
    return {"platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def format_seconds(s: float | None) -> str:
    """``73.2 -> '1:13'``; ``None -> 'n/a'``."""
    if s is None:
        return "n/a"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
