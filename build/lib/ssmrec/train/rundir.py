"""A run folder owned by one process at a time, never holding two runs at once.

* ``run.lock`` is held with ``fcntl.flock`` for the whole run (the kernel releases it when the
  process dies, so a SIGKILL never leaves a stale lock); a second writer gets one line naming the
  holder's pid.
* A fresh run into a folder that holds an earlier run refuses unless told to overwrite; with
  ``overwrite`` every file of the earlier run is removed before anything is written, so neither its
  weights nor its metrics can be mistaken for the new run's.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ssmrec.errors import OutputError
from ssmrec.io import check_output_dir, os_error_line

RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "summary.json", "training_curve.png", "config.yaml")


class RunDir:
    def __init__(self, path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> "RunDir":
        import fcntl

        check_output_dir(self.path, "run")
        lock = self.path / "run.lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(os_error_line(e, lock, "create the run lock")) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(f"{self.path}: in use by another ssmrec process (pid {holder}); wait for it to "
                              f"finish, or choose another name / out_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None

    def previous_run_files(self) -> list[str]:
        return [name for name in RUN_FILES if (self.path / name).exists()]

    def clear(self) -> None:
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        self.remove_temp_files()

    def remove_temp_files(self) -> None:
        """Temporary files of a killed writer (we hold the lock: nobody else is writing)."""
        for stale in self.path.glob(".*.tmp*"):
            stale.unlink(missing_ok=True)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
