"""What every CTR model shares for serving: the candidate features of the MM-CTR format and the offline
path (``forward`` on one row per (user, candidate), the history left-padded to the training window as
the data pipeline pads it), which is also the served path of a model with no incremental form."""

from __future__ import annotations

import torch
from torch import Tensor

from ssmrec.data.mmctr import CTRBatch
from ssmrec.models.incremental import IncrementalModel, ModelState


class CTRModel(IncrementalModel):
    serving_task = "ctr"
    candidate_features = ("likes_level", "views_level")

    def candidate_side(self, features: dict[str, Tensor] | None, n: int) -> tuple[Tensor, Tensor]:
        """(likes, views) of ``n`` candidates from a named feature mapping; a missing one is an error."""
        features = features or {}
        missing = [f for f in self.candidate_features if f not in features]
        if missing:
            raise ValueError(f"features: '{missing[0]}' is required for every candidate")
        out = [torch.as_tensor(features[f], dtype=torch.long).reshape(-1) for f in self.candidate_features]
        for f, v in zip(self.candidate_features, out):
            if len(v) != n:
                raise ValueError(f"features.{f}: {len(v)} values for {n} candidates")
        return out[0], out[1]

    def window_rows(self, windows: list[Tensor], candidates: list[Tensor],
                    features: list[dict[str, Tensor]] | None) -> CTRBatch:
        """One row per (user, candidate): each user's window left-padded to the training window."""
        L = self.serving_window
        sizes = [len(c) for c in candidates]
        seq = torch.zeros(len(windows), L, dtype=torch.long)
        for i, w in enumerate(windows):
            w = w[-L:]
            if len(w):
                seq[i, L - len(w):] = w
        user = torch.repeat_interleave(torch.arange(len(windows)), torch.tensor(sizes))
        side = [self.candidate_side(None if features is None else features[i], len(c))
                for i, c in enumerate(candidates)]
        return CTRBatch(user_id=user, item_seq=seq[user], mask=seq[user] > 0, item_id=torch.cat(candidates),
                        likes_level=torch.cat([s[0] for s in side]), views_level=torch.cat([s[1] for s in side]))

    @torch.inference_mode()
    def offline_score(self, windows: list[Tensor], candidates: list[Tensor],
                      features: list[dict[str, Tensor]] | None = None) -> list[Tensor]:
        """Click probabilities by ``forward`` on the window rows (what batch evaluation computes)."""
        batch = self.window_rows(windows, candidates, features)
        return list(torch.sigmoid(self(batch)["logit"]).split([len(c) for c in candidates]))

    def score(self, states: list[ModelState], candidates: list[Tensor],
              features: list[dict[str, Tensor]] | None = None) -> list[Tensor]:
        return self.offline_score([s.window for s in states], candidates, features)
