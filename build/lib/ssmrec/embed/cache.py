"""Per-item embedding cache on disk, so an interrupted `ssmrec embed` resumes where it stopped.

Layout: ``CACHE/<modality>-<model name>-<key>/shard-<first item id>.npz``, one shard per encoded
batch holding ``ids`` (int64) and ``emb`` (float32, the raw encoder output). ``key`` hashes the
encoder's identity (model files) and the inputs it reads (item ids + titles, or ids + cover paths),
so a cache is only reused for the same model on the same items. Every shard is written to a
temporary file and renamed (:func:`ssmrec.io.atomic_write`), so a killed run leaves complete shards
only; the items of a batch that was in flight when the run died are simply encoded again.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import numpy as np

from ssmrec.errors import OutputError
from ssmrec.io import atomic_write, os_error_line, write_json_atomic


class EmbeddingCache:
    def __init__(self, root, modality: str, encoder_info: dict, items_fingerprint: str):
        key = hashlib.sha1(json.dumps([modality, encoder_info["fingerprint"], items_fingerprint]).encode()).hexdigest()
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(encoder_info["spec"]).name or "model")[:40]
        self.dir = Path(root) / f"{modality}-{slug}-{key[:12]}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(os_error_line(e, self.dir, "create the embedding cache folder")) from None
        meta = self.dir / "meta.json"
        if not meta.exists():
            write_json_atomic(meta, {"modality": modality, "encoder": encoder_info,
                                     "items_fingerprint": items_fingerprint})

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """All cached (ids, emb); emb None when empty. Unreadable shards (should not happen: writes are
        atomic) are ignored and their items re-encoded."""
        ids, embs = [], []
        for f in sorted(self.dir.glob("shard-*.npz")):
            try:
                with np.load(f) as z:
                    i, e = z["ids"], z["emb"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                continue
            if len(i) == len(e):
                ids.append(i)
                embs.append(e)
        if not ids:
            return np.zeros(0, np.int64), None
        return np.concatenate(ids).astype(np.int64), np.concatenate(embs).astype(np.float32)

    def add(self, ids: np.ndarray, emb: np.ndarray) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, ids=np.asarray(ids, np.int64), emb=np.asarray(emb, np.float32))

        # No fsync per batch: a shard lost or torn by a power cut is unreadable, ignored by load() and
        # its items encoded again; a killed process cannot tear it (rename is atomic).
        atomic_write(self.dir / f"shard-{int(ids[0]):09d}.npz", write, fsync=False)
