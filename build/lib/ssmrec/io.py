"""Writing files safely: the one place that implements atomic writes and output-path checks.

Every writer goes through :func:`atomic_write`: the content is written to a temporary file in the
target's folder, flushed and fsynced, then renamed over the target (``os.replace`` is atomic on one
filesystem), so a killed process or a full disk never leaves a torn or half-written file and never
destroys the previous version. OS errors become one-line :class:`~ssmrec.errors.OutputError`s.

:func:`check_output_dir` / :func:`check_output_file` are called by every command *before* any work,
so an unwritable location fails in one line at once instead of after an hour of training.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Callable

from ssmrec.errors import OutputError, one_line

__all__ = ["atomic_write", "write_text_atomic", "write_bytes_atomic", "write_json_atomic", "save_torch_atomic",
           "save_figure_atomic", "check_output_dir", "check_output_file", "os_error_line", "tmp_path_for",
           "finite_json", "check_not_inside", "write_parquet_atomic"]


def os_error_line(e: OSError, path, what: str = "write") -> str:
    reason = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EROFS: "read-only file system", errno.ENOTDIR: "a parent is a regular file, not a folder",
              errno.EISDIR: "is a directory"}.get(e.errno, e.strerror or one_line(e))
    return f"{path}: cannot {what} ({reason})"


def tmp_path_for(path: Path) -> Path:
    """A temporary sibling of ``path`` (same folder, so the rename is atomic), keeping the suffix so
    writers that pick a format from it (matplotlib, numpy) still work."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def atomic_write(path, write: Callable[[Path], None], fsync: bool = True) -> Path:
    """Call ``write(tmp_path)`` then atomically rename ``tmp_path`` to ``path``.

    The parent folder is created. On any failure the temporary file is removed and ``path`` keeps
    its previous content; OS errors (permission, disk full, a regular file in the way) are re-raised
    as one-line :class:`OutputError`.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory, expected a file path")
    tmp = tmp_path_for(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(os_error_line(e, path)) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def write_bytes_atomic(path, data: bytes) -> Path:
    return atomic_write(path, lambda t: t.write_bytes(data))


def write_text_atomic(path, text: str) -> Path:
    return atomic_write(path, lambda t: t.write_text(text))


def finite_json(obj):
    """NaN / inf -> None recursively, so the JSON is standard (``json.dumps`` writes bare NaN)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_json_atomic(path, obj, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(finite_json(obj), indent=indent) + "\n")


def save_torch_atomic(obj, path) -> Path:
    import torch

    def write(tmp):
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch's zip writer reports a full disk as a RuntimeError
            if "write" in str(e).lower():
                raise OSError(errno.ENOSPC if "space" in str(e).lower() else errno.EIO, one_line(e, 120)) from None
            raise

    return atomic_write(path, write)


def write_parquet_atomic(table, path) -> Path:
    import pyarrow.parquet as pq

    return atomic_write(path, lambda t: pq.write_table(table, t))


def save_figure_atomic(fig, path, dpi: int = 110, **kw) -> Path:
    return atomic_write(path, lambda t: fig.savefig(t, dpi=dpi, **kw), fsync=False)


def _probe(folder: Path, what: str, display) -> None:
    probe = folder / f".ssmrec-write-test.{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"0")
    except OSError as e:
        raise OutputError(os_error_line(e, display, f"write {what}")) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def check_output_dir(path, what: str = "output") -> Path:
    """Make sure ``path`` is (or can become) a writable folder, creating it; one line if not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: cannot write {what} (exists and is not a folder)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(os_error_line(e, path, f"create {what} folder")) from None
    _probe(path, what, path)
    return path


def check_not_inside(path, input_dir, what: str, input_what: str = "input data folder") -> None:
    """No command modifies its input: refuse an output at or below an input folder."""
    out, inp = Path(path).resolve(), Path(input_dir).resolve()
    if out == inp or inp in out.parents:
        raise OutputError(f"{path}: {what} would be written into the {input_what} {input_dir}; "
                          f"commands never modify their input, choose another location")


def check_output_file(path, what: str = "output") -> Path:
    """Make sure a file can be written at ``path`` (its folder writable, not a folder itself)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: cannot write {what} (is a directory, expected a file path)")
    check_output_dir(path.parent, what)
    return path
