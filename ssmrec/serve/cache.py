"""The user-state cache: LRU under a byte budget, persisted atomically, restored on start.

States are dicts of tensors that are never modified in place (a scorer's ``update`` returns fresh
tensors), so a snapshot is a shallow copy of the table taken in O(users) and written by another
thread while serving goes on. The file is written to a temporary sibling, fsynced and renamed
(:func:`ssmrec.io.save_torch_atomic`): a kill at any moment leaves the previous snapshot or the new
one, never a torn file. It loads with ``torch.load(weights_only=True)`` and carries the checkpoint's
fingerprint, so states are never restored into a different model.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch

from ssmrec.errors import SsmrecError, one_line
from ssmrec.io import save_torch_atomic
from ssmrec.serve.adapter import UserEntry



FORMAT = "ssmrec-state-cache"
VERSION = 2  # 2: entries are {state: ModelState dict, seen}; the fingerprint names the state schema and mode
# Per-entry bookkeeping beyond tensor data (dict, key, OrderedDict node, tensor headers), counted
# against the budget so that many tiny states cannot exceed it unnoticed.
ENTRY_OVERHEAD = 512


class StateCache:
    def __init__(self, byte_budget: int, fingerprint: str = ""):
        if byte_budget <= 0:
            raise SsmrecError(f"state cache budget must be positive, got {byte_budget} bytes")
        self.byte_budget, self.fingerprint = int(byte_budget), fingerprint
        self._entries: OrderedDict[str, tuple[UserEntry, int]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0
        self.version = 0  # bumped by every put: a snapshot is needed when it moved

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, user: str) -> bool:
        return user in self._entries

    def get(self, user: str) -> UserEntry | None:
        entry = self._entries.get(user)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(user)
        return entry[0]

    def peek(self, user: str) -> UserEntry | None:
        """The state without counting a hit or refreshing its recency."""
        entry = self._entries.get(user)
        return None if entry is None else entry[0]

    def put(self, user: str, state: UserEntry) -> None:
        size = state.nbytes + ENTRY_OVERHEAD
        if size > self.byte_budget:
            raise SsmrecError(f"one user's state needs {size} bytes, over the whole cache budget of "
                              f"{self.byte_budget} bytes (raise --cache-bytes)")
        old = self._entries.pop(user, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[user] = (state, size)
        self.bytes += size
        self.version += 1
        while self.bytes > self.byte_budget:  # least recently used first
            _, (_, n) = self._entries.popitem(last=False)
            self.bytes -= n
            self.evictions += 1

    def snapshot(self) -> tuple[int, list[tuple[str, UserEntry]]]:
        """(version, users in LRU order with their states): cheap, consistent, safe to save elsewhere."""
        return self.version, [(u, s) for u, (s, _) in self._entries.items()]

    # ------------------------------------------------------------------ persistence
    def save(self, path, snapshot=None) -> int:
        """Write a snapshot atomically; returns the version it holds."""
        version, items = snapshot if snapshot is not None else self.snapshot()
        save_torch_atomic({"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint,
                           "saved_at": time.time(), "users": [u for u, _ in items],
                           "states": [s.to_dict() for _, s in items]}, path)
        return version

    def restore(self, path, decode) -> int:
        """Load a snapshot written by :meth:`save` (users beyond the budget: least recent dropped);
        ``decode(dict) -> entry`` checks each entry against the served model's schema. Returns the number
        of users restored. Every problem is one line naming the file."""
        path = Path(path)
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise SsmrecError(f"{path}: cannot read the state cache ({one_line(e, 160)}); move it away to "
                              f"start empty") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise SsmrecError(f"{path}: not an ssmrec state cache")
        if blob.get("version") != VERSION:
            raise SsmrecError(f"{path}: state cache format version {blob.get('version')}, this ssmrec reads "
                              f"{VERSION}; move it away to start empty")
        if blob.get("fingerprint") != self.fingerprint:
            raise SsmrecError(f"{path}: the state cache was written for another checkpoint or serving mode / state "
                              f"schema (fingerprint "
                              f"{str(blob.get('fingerprint'))[:12]}, this one {self.fingerprint[:12]}); move "
                              f"it away or pass the matching --checkpoint")
        entries = []
        for user, state in zip(blob["users"], blob["states"]):
            try:
                entries.append((str(user), decode(state)))
            except ValueError as e:  # StateSchemaError: another model, layout, window or mode
                raise SsmrecError(f"{path}: user {str(user)!r}: {str(e)[:300]}; move it away to start "
                                  f"empty") from None
        for user, entry in entries:
            self.put(user, entry)
        self.version = 0
        return len(self)


class Persister:
    """Saves the cache every ``interval`` seconds when it changed, off the serving thread, one save at
    a time; ``flush()`` saves now and waits (shutdown)."""

    def __init__(self, cache: StateCache, path, interval: float):
        self.cache, self.path, self.interval = cache, Path(path), float(interval)
        self.saved_version = cache.version
        self.saved_at: float | None = None
        self.saved_users = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._next = time.monotonic() + self.interval

    def due(self) -> bool:
        return (self.cache.version != self.saved_version and time.monotonic() >= self._next
                and (self._thread is None or not self._thread.is_alive()))

    def start_save(self) -> None:
        """Take the snapshot now (on the caller's thread, which owns the cache) and write it in the background."""
        snap = self.cache.snapshot()
        self._next = time.monotonic() + self.interval
        self._thread = threading.Thread(target=self._write, args=(snap,), name="ssmrec-persist", daemon=True)
        self._thread.start()

    def _write(self, snap) -> None:
        with self._lock:
            try:
                self.saved_version = self.cache.save(self.path, snap)
                self.saved_at, self.saved_users, self.last_error = time.time(), len(snap[1]), None
            except Exception as e:  # a full disk must not stop serving; /health reports it
                self.last_error = one_line(e, 200)

    def flush(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self.cache.version != self.saved_version or not self.path.exists():
            self._write(self.cache.snapshot())
