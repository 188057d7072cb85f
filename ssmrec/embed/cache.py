"""Per-item embedding cache on disk, so an interrupted `ssmrec embed` resumes where it stopped.

Layout: ``CACHE/<modality>-<model name>-<key>/shard-<first item id>.npz``, one shard per encoded
batch holding ``ids`` (int64) and ``emb`` (float32, the raw encoder output). ``key`` hashes the
encoder's identity (model files) and the inputs it reads (item ids + titles, or ids + cover paths),
so a cache is only reused for the same model on the same items. Every shard is written to a
temporary file and renamed, so a killed run leaves complete shards only; the items of a batch that
was in flight when the run died are simply encoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np


class EmbeddingCache:
    def __init__(self, root, modality: str, encoder_info: dict, items_fingerprint: str):
        key = hashlib.sha1(json.dumps([modality, encoder_info["fingerprint"], items_fingerprint]).encode()).hexdigest()
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(encoder_info["spec"]).name or "model")[:40]
        self.dir = Path(root) / f"{modality}-{slug}-{key[:12]}"
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "meta.json"
        if not meta.exists():
            _atomic_write_bytes(meta, json.dumps({"modality": modality, "encoder": encoder_info,
                                                  "items_fingerprint": items_fingerprint}, indent=2).encode())

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """All cached (ids, emb); emb None when empty. Unreadable shards (should not happen: writes are
        atomic) are ignored and their items re-encoded."""
        ids, embs = [], []
        for f in sorted(self.dir.glob("shard-*.npz")):
            try:
                with np.load(f) as z:
                    i, e = z["ids"], z["emb"]
            except (OSError, ValueError, KeyError):
                continue
            if len(i) == len(e):
                ids.append(i)
                embs.append(e)
        if not ids:
            return np.zeros(0, np.int64), None
        return np.concatenate(ids).astype(np.int64), np.concatenate(embs).astype(np.float32)

    def add(self, ids: np.ndarray, emb: np.ndarray) -> None:
        path = self.dir / f"shard-{int(ids[0]):09d}.npz"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, ids=np.asarray(ids, np.int64), emb=np.asarray(emb, np.float32))
        os.replace(tmp, path)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
