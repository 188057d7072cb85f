"""The one serving adapter: a servable model's contract (:mod:`ssmrec.models.incremental`) plus what
serving adds beside the model state, for any model.

* Each user's :class:`UserEntry` is the model's :class:`~ssmrec.models.incremental.ModelState` and the
  exact set of items the user has had (``seen``, sorted unique int64 ids, 8 bytes per distinct item),
  which ``exclude_seen`` reads: the whole history, not the model's window.
* ``mode="incremental"`` serves through the model's own ``step`` / ``score``; ``mode="recompute"``
  keeps only the window and runs the model's offline forward on it per request (the no-state
  baseline ``ssmrec bench serve`` compares against). Both answer the same numbers.
* Scores are checked: a non-finite score raises :class:`NonFiniteScores` (the service answers 500 with
  one line and counts it) instead of reaching a response.
* ``topk`` with ``exclude_seen`` returns fewer than ``k`` items when fewer are eligible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ssmrec.models.incremental import IncrementalModel, ModelState, StateSchemaError, as_ids

SERVING_MODES = ("auto", "incremental", "recompute")  # auto = incremental

__all__ = ["UserEntry", "ServingAdapter", "NonFiniteScores", "SERVING_MODES"]


class NonFiniteScores(RuntimeError):
    pass


@dataclass(frozen=True)
class UserEntry:
    state: ModelState
    seen: Tensor  # sorted unique ids of every item the user has had

    @property
    def n_events(self) -> int:
        return self.state.n_events

    @property
    def nbytes(self) -> int:
        return self.state.nbytes + self.seen.numel() * self.seen.element_size()

    def to_dict(self) -> dict:
        return {"state": self.state.to_dict(), "seen": self.seen}


class ServingAdapter:
    def __init__(self, model: torch.nn.Module, mode: str = "auto"):
        if mode not in SERVING_MODES:
            raise ValueError(f"serving mode must be one of {', '.join(SERVING_MODES)}, got {mode!r}")
        if not isinstance(model, IncrementalModel):
            raise ValueError(f"{type(model).__name__} does not implement the incremental-inference contract "
                             f"(ssmrec.models.incremental.IncrementalModel)")
        refusal = model.serving_refusal()
        if refusal:
            raise ValueError(refusal)
        self.model = model.eval()
        self.task = model.serving_task
        if self.task == "retrieval" and mode == "recompute":
            raise ValueError("a retrieval model has one serving mode: the user tower per request against the "
                             "encoded catalogue (auto / incremental)")
        self.recompute = mode == "recompute"
        self._index = None
        self.mode = "recompute" if self.recompute else "incremental"
        self.name = "recompute" if self.recompute else model.state_layout

    @property
    def schema(self) -> str:
        """Names what a cached entry holds: the model's state schema and the mode."""
        return f"{self.model.state_schema}/{self.mode}"

    # ------------------------------------------------------------------ states
    def _window_state(self, n: int, window: Tensor) -> ModelState:
        return ModelState(self.schema, n, window, {})

    def init_entry(self) -> UserEntry:
        state = self._window_state(0, torch.zeros(0, dtype=torch.long)) if self.recompute else self.model.init_state()
        return UserEntry(state, torch.zeros(0, dtype=torch.long))

    def prefill(self, history) -> UserEntry:
        history = as_ids(history)
        if self.recompute:
            state = self._window_state(len(history), history[-self.model.serving_window:].clone())
        else:
            state = self.model.prefill(history)
        return UserEntry(state, torch.unique(history))

    def user_entry(self, x_num: Tensor, x_cat: Tensor) -> UserEntry:
        """Retrieval: a user's entry from its encoded feature row (no events, nothing seen)."""
        return UserEntry(self.model.user_state(x_num, x_cat), torch.zeros(0, dtype=torch.long))

    def update(self, entries: list[UserEntry], events: list) -> list[UserEntry]:
        events = [as_ids(e) for e in events]
        if self.recompute:
            L = self.model.serving_window
            states = [self._window_state(en.n_events + len(e), torch.cat([en.state.window, e])[-L:].clone())
                      for en, e in zip(entries, events)]
        else:
            states = self.model.step([en.state for en in entries], events)
        return [UserEntry(st, torch.unique(torch.cat([en.seen, e])) if len(e) else en.seen)
                for st, en, e in zip(states, entries, events)]

    @staticmethod
    def events_of(entry: UserEntry) -> int:
        return entry.n_events

    # ------------------------------------------------------------------ scores
    def _finite(self, scores: Tensor, what: str, allow_neg_inf_col0: bool = False) -> Tensor:
        s = scores[..., 1:] if allow_neg_inf_col0 else scores
        bad = ~torch.isfinite(s)
        if bool(bad.any()):
            raise NonFiniteScores(f"the model produced {int(bad.sum())} non-finite {what} (NaN or inf); "
                                  f"the checkpoint's weights are damaged")
        return scores

    def score(self, entries: list[UserEntry], candidates: list[Tensor],
              features: list[dict[str, Tensor]] | None = None) -> list[Tensor]:
        """Per user, the candidates' probabilities (CTR: click; next item: softmax over the catalogue)."""
        m = self.model
        if self.task == "ctr":
            out = m.offline_score([e.state.window for e in entries], candidates, features) if self.recompute \
                else m.score([e.state for e in entries], candidates, features)
        elif self.task == "retrieval":  # raw inner products, what the two towers are trained to order
            out = m.score([e.state for e in entries], candidates, features)
        else:
            if features:
                raise ValueError("features: a next-item model takes no candidate features")
            logp = torch.log_softmax(self.score_all(entries), dim=-1)
            out = [logp[i, c].exp() for i, c in enumerate(candidates)]
        return [self._finite(p, "scores") for p in out]

    def score_all(self, entries: list[UserEntry]) -> Tensor:
        """Ranking models: ``(B, n_items)`` scores of the whole catalogue (column 0, padding, -inf)."""
        if self.task == "ctr":
            raise ValueError("a CTR model ranks the candidates it is given; pass candidates")
        m = self.model
        s = m.offline_score_all([e.state.window for e in entries]) if self.recompute \
            else m.score_all([e.state for e in entries])
        return self._finite(s, "scores", allow_neg_inf_col0=True)

    def topk(self, entries: list[UserEntry], k: int, exclude_seen: bool = False,
             candidates: list[Tensor | None] | None = None,
             features: list[dict[str, Tensor]] | None = None) -> list[tuple[Tensor, Tensor]]:
        """Best ``k`` (ids, scores) per user among ``candidates`` (CTR: required; next item: default the
        whole catalogue). With ``exclude_seen``, items of the user's whole history are not eligible, and
        a user with fewer than ``k`` eligible items gets the shorter list."""
        if self.task == "ctr":
            if candidates is None or any(c is None for c in candidates):
                raise ValueError("a CTR model ranks the candidates it is given; pass candidates")
            per_user = list(zip(candidates, self.score(entries, candidates, features)))
        elif self.task == "retrieval" and candidates is None:  # the whole catalogue through the item index
            return self._index_topk(entries, k)
        elif self.task == "retrieval":
            per_user = list(zip(candidates, self.score(entries, candidates, features)))
        else:
            scores = self.score_all(entries)
            per_user = []
            for i in range(len(entries)):
                c = candidates[i] if candidates is not None else None
                per_user.append((c, scores[i, c]) if c is not None else (None, scores[i]))
        out = []
        for en, (c, s) in zip(entries, per_user):
            if exclude_seen and len(en.seen):  # copies: the batch's score rows stay untouched
                s = s.index_fill(0, en.seen, float("-inf")) if c is None else \
                    s.masked_fill(torch.isin(c, en.seen), float("-inf"))
            top = s.topk(min(k, len(s)))
            # scores were checked finite, so -inf here is the padding column or an excluded item: fewer
            # eligible items than k give the shorter list
            ok = torch.isfinite(top.values)
            idx = top.indices[ok]
            out.append((idx if c is None else c[idx], top.values[ok]))
        return out

    def _index_topk(self, entries: list[UserEntry], k: int) -> list[tuple[Tensor, Tensor]]:
        from ssmrec.index import build_index

        if self._index is None:  # built once: the catalogue is encoded once
            self._index = build_index(self.model._items().numpy(), "auto")
        users = torch.cat([e.state.tensors["u"] for e in entries])
        self._finite(users, "user vectors")
        scores, rows = self._index.search(users.numpy(), k)
        self._finite(torch.from_numpy(scores), "scores")  # a damaged item tower
        return [(torch.from_numpy(r).long(), torch.from_numpy(s)) for r, s in zip(rows, scores)]

    # ------------------------------------------------------------------ persistence
    def entry_from_dict(self, d) -> UserEntry:
        """A saved entry, checked against this model's schema; one-line StateSchemaError otherwise."""
        if not isinstance(d, dict) or "state" not in d or not isinstance(d.get("seen"), Tensor):
            raise StateSchemaError("not a user entry (expected state and seen)")
        state = ModelState.from_dict(d["state"])
        if self.recompute:
            if state.schema != self.schema or state.tensors:
                raise StateSchemaError(f"state schema '{state.schema}' is not this service's '{self.schema}'")
        else:
            self.model.check_state(state)
        seen = d["seen"]
        if seen.dtype != torch.long or seen.dim() != 1:
            raise StateSchemaError(f"seen set of shape {tuple(seen.shape)} / {seen.dtype}, expected 1-D int64")
        return UserEntry(state, seen)
