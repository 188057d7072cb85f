"""The incremental-inference contract: a servable model owns its per-user state and how it moves.

A model that serves implements, through its own public methods (the shape of ``mamba_ssm``'s
``allocate_inference_cache`` + ``forward(..., inference_params)``, typed like Hugging Face's
``MambaCache``):

* ``init_state()`` -> the :class:`ModelState` of a user with no events;
* ``prefill(history)`` -> the state after a whole history (1-D item ids, oldest first), in one pass;
* ``step(states, events)`` -> the states after appending each user's new events (a list per user);
* ``score(states, candidates, features)`` -> per user, the candidates' probabilities (CTR: click;
  next item: softmax over the catalogue); ``features`` maps each named candidate feature to values;
* ranking models also ``score_all(states)`` -> ``(B, n_items)`` scores (column 0, padding, is -inf).

**What is served is what was trained.** Training and offline evaluation read the newest
``serving_window`` events of a history (``data.max_len``; BERT4Rec: ``max_len - 1``, then [MASK]); a
served score equals the offline forward on that window. While a user has at most ``serving_window``
events, a model with an O(1) update (``advance``: Mamba layers stepped, a GRU stepped, keys and values
appended) applies each event in O(1). Past the window a recurrent state cannot forget its oldest event,
so the state is rebuilt from the window it keeps (one parallel ``prefill`` over ``serving_window``
events): bounded, independent of the history length, and exactly what training saw. A model whose
state is a set of per-event entries with no recurrence (DMF's keys and values: ``slides``) drops the
oldest entry instead and stays O(1) at any length. Models without an incremental form keep the window
alone and run their offline forward on it per request.

States are never modified in place: ``step`` returns fresh tensors, so a cache snapshot is a shallow
copy. ``ModelState.to_dict`` / ``from_dict`` save and load them with ``torch.load(weights_only=True)``;
``IncrementalModel.check_state`` refuses, in one line, a state written for another schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

# Bumped whenever any model's state layout changes: restored caches from older layouts are refused.
STATE_SCHEMA_VERSION = 2

__all__ = ["ModelState", "IncrementalModel", "StateSchemaError", "STATE_SCHEMA_VERSION", "as_ids", "pad_left",
           "pad_right", "split_rows"]


class StateSchemaError(ValueError):
    """A state that does not belong to this model (another schema, shape or dtype)."""


def as_ids(x) -> Tensor:
    return torch.as_tensor(x, dtype=torch.long).reshape(-1)


def split_rows(tensors: dict[str, Tensor], n: int) -> list[dict[str, Tensor]]:
    """Batched tensors ``(n, ...)`` -> one dict per row, each ``(1, ...)`` and a fresh copy."""
    return [{k: v[b:b + 1].clone() for k, v in tensors.items()} for b in range(n)]


def pad_left(seqs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """``(1, n_i, ...)`` tensors -> ``(B, max n, ...)`` left-padded with zeros, and the ``(B, max n)`` mask."""
    n = max(s.shape[1] for s in seqs)
    out = seqs[0].new_zeros((len(seqs), n) + tuple(seqs[0].shape[2:]))
    mask = torch.zeros(len(seqs), n, dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s.shape[1]:
            out[i, n - s.shape[1]:], mask[i, n - s.shape[1]:] = s[0], True
    return out, mask


def pad_right(events: list[Tensor]) -> tuple[Tensor, Tensor]:
    """1-D id tensors -> ``(B, T)`` right-padded ids (0) and the validity mask."""
    T = max(len(e) for e in events)
    ids = torch.zeros(len(events), T, dtype=torch.long)
    valid = torch.zeros(len(events), T, dtype=torch.bool)
    for i, e in enumerate(events):
        ids[i, :len(e)], valid[i, :len(e)] = e, True
    return ids, valid


@dataclass(frozen=True)
class ModelState:
    """One user's serving state.

    ``schema``: the model's :attr:`IncrementalModel.state_schema` (class, layout, window, version);
    ``n_events``: events applied so far; ``window``: the newest ``serving_window`` item ids, oldest first
    (what training would read); ``tensors``: the model's own named tensors (leading dimension 1)."""

    schema: str
    n_events: int
    window: Tensor
    tensors: dict[str, Tensor]

    @property
    def nbytes(self) -> int:
        return self.window.numel() * self.window.element_size() + sum(
            t.numel() * t.element_size() for t in self.tensors.values())

    def to_dict(self) -> dict:
        return {"schema": self.schema, "n_events": int(self.n_events), "window": self.window,
                "tensors": dict(self.tensors)}

    @classmethod
    def from_dict(cls, d) -> "ModelState":
        if not isinstance(d, dict) or not {"schema", "n_events", "window", "tensors"} <= d.keys():
            raise StateSchemaError("not a model state (expected schema, n_events, window, tensors)")
        if not isinstance(d["tensors"], dict) or not all(isinstance(t, Tensor) for t in d["tensors"].values()) \
                or not isinstance(d["window"], Tensor):
            raise StateSchemaError("not a model state (window and tensors must be tensors)")
        return cls(str(d["schema"]), int(d["n_events"]), d["window"], dict(d["tensors"]))


class IncrementalModel:
    """Mixin of a servable model (see the module docstring). Subclasses set ``serving_task`` and
    override the hooks:

    * ``encode_window(window)``: the model's tensors after reading ``window`` (1-D ids) from an empty
      state; an empty window gives the initial tensors. Default: none (the window is the state).
    * ``advance(tensors, events, n_before)``: O(1)-per-event update of a list of users' tensors
      (``advances``); by default batched :meth:`step_tensors` calls on fixed-size tensors.
    * ``slides``: ``advance`` stays exact when the oldest events leave the window, after
      ``trim(tensors, keep)`` keeps the newest ``keep`` entries (no recurrence across events).
    """

    serving_task: ClassVar[str]  # "ctr" | "next_item"
    state_layout: ClassVar[str] = "window"  # names the tensors' layout; part of the schema
    advances: ClassVar[bool] = False
    slides: ClassVar[bool] = False
    candidate_features: ClassVar[tuple[str, ...]] = ()
    _serving_window: int | None = None

    # ------------------------------------------------------------------ configuration
    def set_serving_window(self, n: int) -> None:
        """The number of newest events training reads (the task sets it when it builds the model)."""
        if int(n) < 1:
            raise ValueError(f"serving window must be >= 1, got {n}")
        self._serving_window = int(n)

    @property
    def serving_window(self) -> int:
        if self._serving_window is None:
            raise ValueError(f"{type(self).__name__}: serving window not set (the task sets it from data.max_len; "
                             f"call set_serving_window)")
        return self._serving_window

    @property
    def state_schema(self) -> str:
        return f"{type(self).__name__}/{self.state_layout}/window={self.serving_window}/v{STATE_SCHEMA_VERSION}"

    # ------------------------------------------------------------------ hooks
    def encode_window(self, window: Tensor) -> dict[str, Tensor]:
        return {}

    def encode_windows(self, windows: Tensor) -> list[dict[str, Tensor]]:
        """``encode_window`` of each row of ``windows (B, n)`` (windows of one length): models with a
        batched prefill override this, so that users whose window slid are rebuilt in one pass."""
        return [self.encode_window(w) for w in windows]

    def serving_refusal(self) -> str | None:
        """Why this configuration cannot be served exactly as it is evaluated (None: it can)."""
        return None

    def step_tensors(self, tensors: dict[str, Tensor], items: Tensor, positions: Tensor) -> dict[str, Tensor]:
        """One event per row: batched fixed-size tensors ``(B, ...)``, item ids and 0-based positions in the
        window ``(B,)`` -> the new tensors (pure; ``ssmrec export`` traces it). Optional: a model that sets
        ``advances`` either implements this or overrides :meth:`advance`."""
        raise NotImplementedError(f"{type(self).__name__} sets advances but implements neither step_tensors nor "
                                  f"advance")

    def advance(self, tensors: list[dict[str, Tensor]], events: list[Tensor],
                n_before: list[int]) -> list[dict[str, Tensor]]:
        """Default for fixed-size tensors: users batched, one :meth:`step_tensors` per event position;
        a row with no event at a position keeps its tensors."""
        batched = {k: torch.cat([t[k] for t in tensors]) for k in tensors[0]}
        ids, valid = pad_right(events)
        pos = torch.tensor(n_before, dtype=torch.long)
        for t in range(ids.shape[1]):
            new = self.step_tensors(batched, ids[:, t], pos + t)
            if bool(valid[:, t].all()):
                batched = new
            else:
                v = valid[:, t]
                batched = {k: torch.where(v.view(-1, *[1] * (x.dim() - 1)), x, batched[k]) for k, x in new.items()}
        return split_rows(batched, len(events))

    def trim(self, tensors: dict[str, Tensor], keep: int) -> dict[str, Tensor]:
        return {k: v[:, -keep:].clone() if keep else v[:, :0].clone() for k, v in tensors.items()}

    # ------------------------------------------------------------------ the contract
    @torch.inference_mode()
    def init_state(self) -> ModelState:
        empty = torch.zeros(0, dtype=torch.long)
        return ModelState(self.state_schema, 0, empty, self.encode_window(empty))

    @torch.inference_mode()
    def prefill(self, history) -> ModelState:
        history = as_ids(history)
        window = history[-self.serving_window:].clone()
        return ModelState(self.state_schema, len(history), window, self.encode_window(window))

    @torch.inference_mode()
    def step(self, states: list[ModelState], events: list) -> list[ModelState]:
        L = self.serving_window
        events = [as_ids(e) for e in events]
        out: list[ModelState | None] = [None] * len(states)
        stepped, rebuild = [], {}
        for i, (st, e) in enumerate(zip(states, events)):
            n = st.n_events + len(e)
            if not len(e):
                out[i] = st
            elif self.advances and (n <= L or self.slides):
                stepped.append(i)
            else:  # the window slid: rebuild from the window (bounded by L, what training reads)
                window = torch.cat([st.window, e])[-L:].clone()
                out[i] = ModelState(st.schema, n, window, {})
                rebuild.setdefault(len(window), []).append(i)
        for idx in rebuild.values():  # one batched prefill per window length (past the window: all L)
            for i, t in zip(idx, self.encode_windows(torch.stack([out[i].window for i in idx]))):
                out[i] = ModelState(out[i].schema, out[i].n_events, out[i].window, t)
        if stepped:
            new = self.advance([states[i].tensors for i in stepped], [events[i] for i in stepped],
                               [states[i].n_events for i in stepped])
            for i, t in zip(stepped, new):
                st, e = states[i], events[i]
                window = torch.cat([st.window, e])[-L:].clone()
                if self.slides:
                    t = self.trim(t, len(window))
                out[i] = ModelState(st.schema, st.n_events + len(e), window, t)
        return out  # type: ignore[return-value]

    def score(self, states: list[ModelState], candidates: list[Tensor],
              features: list[dict[str, Tensor]] | None = None) -> list[Tensor]:
        """Per user, the candidates' scores. Every task's base implements it (``CTRModel``: ``forward`` on the
        window; ``SeqRecModel``: softmax over the catalogue; the two towers: inner products)."""
        raise NotImplementedError(f"{type(self).__name__} does not derive from a task's serving base "
                                  f"(CTRModel, SeqRecModel) and defines no score")

    # ------------------------------------------------------------------ checks
    def check_state(self, state: ModelState) -> None:
        """One-line :class:`StateSchemaError` unless ``state`` has this model's schema, tensor names,
        dtypes and shapes (dimension 1 of a growing tensor may differ, up to the window)."""
        if state.schema != self.state_schema:
            raise StateSchemaError(f"state schema '{state.schema}' is not this model's '{self.state_schema}'")
        L = self.serving_window
        w = state.window
        if w.dtype != torch.long or w.dim() != 1 or len(w) > L or len(w) > state.n_events or \
                (len(w) < L and len(w) != state.n_events):
            raise StateSchemaError(f"state window of shape {tuple(w.shape)} / {w.dtype} does not fit "
                                   f"{state.n_events} events and window {L}")
        ref = self.init_state().tensors
        if set(ref) != set(state.tensors):
            raise StateSchemaError(f"state tensors {sorted(state.tensors)} are not this model's {sorted(ref)}")
        for name, r in ref.items():
            t = state.tensors[name]
            growing = r.dim() >= 2 and r.shape[1] == 0
            same = t.dtype == r.dtype and t.dim() == r.dim() and all(
                a == b for j, (a, b) in enumerate(zip(t.shape, r.shape)) if not (growing and j == 1))
            if not same or (growing and t.shape[1] > L):
                raise StateSchemaError(f"state tensor '{name}' is {tuple(t.shape)} {t.dtype}, expected "
                                       f"{tuple(r.shape)} {r.dtype}" + (" (dimension 1 up to the window)" if growing else ""))
