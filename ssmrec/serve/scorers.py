"""Incremental scorers: one user's state, updated one event at a time, scored against candidates.

The protocol (:class:`IncrementalScorer`), for a list of users at once (the service micro-batches):

* ``init_state()`` -> the state of a user with no events; ``prefill(history)`` -> the state after a
  whole history (one parallel pass where the model has one);
* ``update(states, events)`` -> the states after appending each user's new events (1-D id tensors);
* ``score(states, candidates, likes, views)`` -> per user, the candidates' probabilities (CTR: click
  probability; next-item: softmax probability over the whole catalogue);
* ``topk(states, k, exclude_seen, candidates)`` -> per user, the best ``k`` item ids and scores
  (next-item: the whole catalogue or the given candidates; CTR: the given candidates).

A state is a dict of tensors with a leading batch dimension of 1, so it can be cached, measured
(``state_nbytes``) and saved with ``torch.save`` / loaded with ``weights_only=True``. Every scorer's
results equal the model's ``forward`` on the user's full history (tests/serve/test_scorers.py).

Implementations:

* :class:`MambaCTRScorer`: the Stage-I Mamba stack's per-layer (conv, ssm) state plus the newest
  ``window`` Stage-I outputs Stage II reads: O(1) per event; per request the GRU's input projection of
  the window once, then Stage II + head per candidate. With ``stage1: transformer`` (the "Transformer
  twin") the encoder is not causal, so every event recomputes Stage I over the whole history.
* :class:`DMFScorer`: the history's ID keys / values and multimodal unit vectors, appended per event
  (DMF's decoupled target attention); per candidate, similarities, bucket lookups and the MLPs.
* :class:`Mamba4RecScorer`: per-layer states and the newest output; scores = one product with the
  item table.
* :class:`SASRecScorer`: ``mode="kv"`` caches every layer's keys and values (an event costs O(L));
  ``mode="recompute"`` re-encodes the whole history per event (O(L^2)).
* :class:`RecomputeCTRScorer` / :class:`RecomputeNextItemScorer`: any model, the history kept and ``forward`` run per request on every
  (user, candidate) row, as batch evaluation does: the no-state baseline.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from types import SimpleNamespace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmrec.data.schema import DEFAULT_MAX_LEN

State = dict[str, Tensor]

__all__ = ["State", "IncrementalScorer", "MambaCTRScorer", "DMFScorer", "Mamba4RecScorer", "SASRecScorer",
           "RecomputeCTRScorer", "RecomputeNextItemScorer", "build_scorer", "state_nbytes", "SCORER_MODES"]

SCORER_MODES = ("auto", "recompute", "kv")


def state_nbytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _ids(x) -> Tensor:
    return torch.as_tensor(x, dtype=torch.long).reshape(-1)


def _pad_left(seqs: list[Tensor], min_len: int = 0) -> tuple[Tensor, Tensor]:
    """``(1, n_i, ...)`` tensors -> ``(B, max n, ...)`` left-padded with zeros, and the (B, max n) mask."""
    n = max(min_len, max(s.shape[1] for s in seqs))
    out = seqs[0].new_zeros((len(seqs), n) + tuple(seqs[0].shape[2:]))
    mask = torch.zeros(len(seqs), n, dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s.shape[1]:
            out[i, n - s.shape[1]:] = s[0]
            mask[i, n - s.shape[1]:] = True
    return out, mask


def _pad_right(events: list[Tensor]) -> tuple[Tensor, Tensor]:
    """1-D id tensors -> ``(B, T)`` right-padded ids and validity mask."""
    T = max(len(e) for e in events)
    ids = torch.zeros(len(events), T, dtype=torch.long)
    valid = torch.zeros(len(events), T, dtype=torch.bool)
    for i, e in enumerate(events):
        ids[i, :len(e)] = e
        valid[i, :len(e)] = True
    return ids, valid


def _stack_layer_states(states: list[State], n_layers: int) -> list[tuple[Tensor, Tensor]]:
    """Users' per-layer ``conv{i}`` / ``ssm{i}`` entries -> the stack's batched (conv, ssm) per layer."""
    return [(torch.cat([s[f"conv{i}"] for s in states]), torch.cat([s[f"ssm{i}"] for s in states]))
            for i in range(n_layers)]


def _put_layer_states(state: State, layer_states, row: int = 0) -> State:
    """Store row ``row`` of the stack's per-layer states into ``state`` (fresh tensors); returns it."""
    for i, (conv, ssm) in enumerate(layer_states):
        state[f"conv{i}"], state[f"ssm{i}"] = conv[row:row + 1].clone(), ssm[row:row + 1].clone()
    return state


def _append(old: Tensor, new: Tensor, keep: int | None) -> Tensor:
    """Concatenate along dim 1 and keep the newest ``keep`` entries (all when None); a fresh tensor."""
    out = torch.cat([old, new], dim=1)
    return (out[:, -keep:] if keep is not None else out).clone()


class IncrementalScorer(ABC):
    task: ClassVar[str]  # "ctr" | "next_item"
    name: ClassVar[str]

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    @abstractmethod
    def init_state(self) -> State: ...

    def prefill(self, history) -> State:
        history = _ids(history)
        state = self.init_state()
        return self.update([state], [history])[0] if len(history) else state

    @abstractmethod
    def update(self, states: list[State], events: list[Tensor]) -> list[State]: ...

    @abstractmethod
    def score(self, states: list[State], candidates: list[Tensor], likes: list[Tensor] | None = None,
              views: list[Tensor] | None = None) -> list[Tensor]:
        """Per user, the candidates' probabilities (CTR: click; next item: softmax over the catalogue)."""

    def topk(self, states: list[State], k: int, exclude_seen: bool = False,
             candidates: list[Tensor | None] | None = None, likes=None, views=None) -> list[tuple[Tensor, Tensor]]:
        """Best ``k`` (ids, scores) per user among ``candidates`` (CTR: required)."""
        if candidates is None or any(c is None for c in candidates):
            raise ValueError("a CTR model ranks the candidates it is given; pass candidates")
        scores = self.score(states, candidates, likes, views)
        out = []
        for st, c, s in zip(states, candidates, scores):
            if exclude_seen and "seen" in st:
                s = s.masked_fill(torch.isin(c, st["seen"][0]), float("-inf"))
            top = s.topk(min(k, len(c)))
            out.append((c[top.indices], top.values))
        return out

    @staticmethod
    def events_of(state: State) -> int:
        return int(state["n"][0])


# ------------------------------------------------------------------------------------------------
# CTR
# ------------------------------------------------------------------------------------------------


class _CTRScorer(IncrementalScorer):
    task = "ctr"

    def _side(self, candidates, likes, views):
        emb = self.model.embedding
        cand = torch.cat(candidates)
        lk = torch.cat(likes) if likes is not None else torch.zeros_like(cand)
        vw = torch.cat(views) if views is not None else torch.zeros_like(cand)
        return cand, torch.cat([emb.likes_table(lk), emb.views_table(vw)], dim=-1)


class MambaCTRScorer(_CTRScorer):
    name = "mambactr"

    def __init__(self, model, max_len: int = DEFAULT_MAX_LEN):
        super().__init__(model)
        cfg = model.cfg
        if not cfg.padding_noop and cfg.stage1 != "transformer":
            raise ValueError("serving needs model_params.padding_noop: true (padded steps must not move the state)")
        if cfg.drop_newest_on_full or cfg.inverted_padding_mask:
            raise ValueError("serving does not reproduce the reference quirks drop_newest_on_full / "
                             "inverted_padding_mask; the checkpoint sets one")
        self.window = cfg.window if cfg.stage2 == "augru" else None
        # Stage II's max-pool sees padded slots as zeros, so the forward's result depends on how many
        # there are: a short history is padded as training padded it (to the window, or to max_len
        # for the paper's whole-history GRU); a history longer than max_len is read whole.
        self.pad_to = cfg.window if self.window else max_len
        self.recurrent = model.encoder.recurrent
        self.d = model.embedding.item_dim

    def init_state(self) -> State:
        st: State = {"n": torch.zeros(1, dtype=torch.long), "win": torch.zeros(1, 0, self.d)}
        if self.recurrent:
            return _put_layer_states(st, self.model.encoder.layers.allocate_state(1))
        st["hist"] = torch.zeros(1, 0, dtype=torch.long)
        return st

    @torch.inference_mode()
    def prefill(self, history) -> State:
        history = _ids(history)
        if not self.recurrent or not len(history):
            return super().prefill(history)
        x = self.model.embedding.items(history)[None]
        h, layer_states = self.model.encoder.layers.prefill(x)
        st = {"n": torch.tensor([len(history)]), "win": (h[:, -self.window:] if self.window else h).clone()}
        return _put_layer_states(st, layer_states)

    @torch.inference_mode()
    def update(self, states, events):
        events = [_ids(e) for e in events]
        if not self.recurrent:  # Transformer twin: not causal, every event re-encodes the whole history
            out = []
            for st, e in zip(states, events):
                hist = torch.cat([st["hist"], e[None]], dim=1)
                h = self.model.encoder(self.model.embedding.items(hist), torch.ones_like(hist, dtype=torch.bool))
                out.append({"n": st["n"] + len(e), "hist": hist,
                            "win": (h[:, -self.window:] if self.window else h).clone()})
            return out
        ids, valid = _pad_right(events)
        x = self.model.embedding.items(ids)  # (B, T, D)
        layer_states = _stack_layer_states(states, len(self.model.encoder.layers))
        ys = []
        for t in range(ids.shape[1]):
            m = None if bool(valid[:, t].all()) else valid[:, t]
            y, layer_states = self.model.encoder.layers.step(x[:, t], layer_states, m)
            ys.append(y)
        y = torch.stack(ys, dim=1)
        out = []
        for b, (st, e) in enumerate(zip(states, events)):
            new = {"n": st["n"] + len(e), "win": _append(st["win"], y[b:b + 1, :len(e)], self.window)}
            out.append(_put_layer_states(new, layer_states, b))
        return out

    @torch.inference_mode()
    def score(self, states, candidates, likes=None, views=None):
        # One user at a time: the per-candidate Stage II + head is FLOP-bound, so batching users buys
        # nothing, while gathering every candidate's copy of its user's window cost ~20 % (measured).
        return [self._score_one(st, c, None if likes is None else likes[i], None if views is None else views[i])
                for i, (st, c) in enumerate(zip(states, candidates))]

    def _score_one(self, state, cand, likes, views):
        m = self.model
        win, mask = _pad_left([state["win"]], min_len=self.pad_to)
        cand, side = self._side([cand], None if likes is None else [likes], None if views is None else [views])
        R = len(cand)
        gru_x = m.gru.in_proj(win) if m.cfg.stage2 == "augru" else None  # once per user, not per candidate
        # the window broadcast over the candidates without copies
        logits = m.score_window(win.expand(R, -1, -1), mask.expand(R, -1), m.embedding.items(cand), side, gru_x)
        return torch.sigmoid(logits)


class DMFScorer(_CTRScorer):
    name = "dmf"

    def init_state(self) -> State:
        da = self.model.cfg.attention_dim
        return {"n": torch.zeros(1, dtype=torch.long), "k_id": torch.zeros(1, 0, da), "v_id": torch.zeros(1, 0, da),
                "hist_mm": torch.zeros(1, 0, self.model.mm_unit(torch.zeros(1, dtype=torch.long)).shape[-1])}

    @torch.inference_mode()
    def update(self, states, events):
        events = [_ids(e) for e in events]
        allnew = torch.cat(events)
        k, v = self.model.dta.project_kv(self.model.embedding.id_table(allnew))  # one matmul for every event
        mm = self.model.mm_unit(allnew)
        out, a = [], 0
        for st, e in zip(states, events):
            b = a + len(e)
            out.append({"n": st["n"] + len(e), "k_id": _append(st["k_id"], k[None, a:b], None),
                        "v_id": _append(st["v_id"], v[None, a:b], None),
                        "hist_mm": _append(st["hist_mm"], mm[None, a:b], None)})
            a = b
        return out

    @torch.inference_mode()
    def score(self, states, candidates, likes=None, views=None):
        out = []
        for i, (st, c) in enumerate(zip(states, candidates)):
            lk = likes[i] if likes is not None else torch.zeros_like(c)
            vw = views[i] if views is not None else torch.zeros_like(c)
            k, mask = _pad_left([st["k_id"]], min_len=1)
            user = {"k_id": k, "v_id": _pad_left([st["v_id"]], 1)[0], "hist_mm": _pad_left([st["hist_mm"]], 1)[0],
                    "mask": mask}
            out.append(torch.sigmoid(self.model.score_candidates(user, c[None], lk[None], vw[None])[0]))
        return out


# ------------------------------------------------------------------------------------------------
# Next item
# ------------------------------------------------------------------------------------------------


class _NextItemScorer(IncrementalScorer):
    """States carry ``h`` (the newest output, what is scored) and ``seen`` (for exclude-seen)."""

    task = "next_item"

    def _check_events(self, states) -> None:
        if any(self.events_of(s) == 0 for s in states):
            raise ValueError("a user with no events has no next-item state yet; send an event first")

    @torch.inference_mode()
    def full_scores(self, states) -> Tensor:
        self._check_events(states)
        scores = self.model.full_sort_predict(torch.cat([s["h"] for s in states]))
        scores[:, 0] = float("-inf")  # padding
        return scores[:, :self.n_items]

    @property
    def n_items(self) -> int:
        """Catalogue size including the padding id 0 (BERT4Rec's extra [MASK] row excluded)."""
        return getattr(self.model, "n_items", self.model.item_table.num_embeddings)

    @torch.inference_mode()
    def score(self, states, candidates, likes=None, views=None):
        logp = torch.log_softmax(self.full_scores(states), dim=-1)
        return [logp[i, c].exp() for i, c in enumerate(candidates)]

    @torch.inference_mode()
    def topk(self, states, k, exclude_seen=False, candidates=None, likes=None, views=None):
        scores = self.full_scores(states)
        out = []
        for i, st in enumerate(states):
            s = scores[i]
            if exclude_seen:
                s = s.index_fill(0, st["seen"][0], float("-inf"))
            c = candidates[i] if candidates is not None else None
            if c is not None:
                top = s[c].topk(min(k, len(c)))
                out.append((c[top.indices], top.values))
            else:
                top = s.topk(min(k, self.n_items - 1))
                out.append((top.indices, top.values))
        return out


class Mamba4RecScorer(_NextItemScorer):
    name = "mamba4rec"

    def init_state(self) -> State:
        st = {"n": torch.zeros(1, dtype=torch.long), "seen": torch.zeros(1, 0, dtype=torch.long),
              "h": torch.zeros(1, self.model.cfg.hidden_size)}
        return _put_layer_states(st, self.model.layers.allocate_state(1))

    @torch.inference_mode()
    def prefill(self, history) -> State:
        history = _ids(history)
        if not len(history):
            return self.init_state()
        h, layer_states = self.model.layers.prefill(self.model.embed(history[None], torch.arange(len(history))))
        st = {"n": torch.tensor([len(history)]), "seen": history[None].clone(), "h": h[:, -1].clone()}
        return _put_layer_states(st, layer_states)

    @torch.inference_mode()
    def update(self, states, events):
        events = [_ids(e) for e in events]
        ids, valid = _pad_right(events)
        n0 = torch.cat([s["n"] for s in states])
        layer_states = _stack_layer_states(states, len(self.model.layers))
        h = torch.cat([s["h"] for s in states])
        for t in range(ids.shape[1]):
            m = None if bool(valid[:, t].all()) else valid[:, t]
            y, layer_states = self.model.layers.step(self.model.embed(ids[:, t], n0 + t), layer_states, m)
            h = torch.where(valid[:, t, None], y, h)
        out = []
        for b, (st, e) in enumerate(zip(states, events)):
            new = {"n": st["n"] + len(e), "seen": _append(st["seen"], e[None], None), "h": h[b:b + 1].clone()}
            out.append(_put_layer_states(new, layer_states, b))
        return out


class SASRecScorer(_NextItemScorer):
    """``kv``: per layer, the keys and values of every past position (causal: they never change), so an
    event is one query against L cached keys per layer. ``recompute``: the whole history re-encoded."""

    name = "sasrec"

    def __init__(self, model, mode: str = "kv"):
        super().__init__(model)
        if mode not in ("kv", "recompute"):
            raise ValueError(f"SASRec serving mode must be kv or recompute, got {mode!r}")
        self.mode = mode
        self.layers = list(model.encoder.layers)
        if any(layer.norm_first for layer in self.layers):
            raise ValueError("the KV cache implements post-LN layers only")

    def init_state(self) -> State:
        d = self.model.cfg.hidden_size
        st = {"n": torch.zeros(1, dtype=torch.long), "seen": torch.zeros(1, 0, dtype=torch.long),
              "h": torch.zeros(1, d)}
        if self.mode == "kv":
            for i in range(len(self.layers)):
                st[f"k{i}"], st[f"v{i}"] = torch.zeros(1, 0, d), torch.zeros(1, 0, d)
        return st

    @torch.inference_mode()
    def prefill(self, history) -> State:
        """One causal pass over the history; each layer's input gives that layer's keys and values."""
        history = _ids(history)
        if self.mode == "recompute" or not len(history):
            return super().prefill(history)
        m, L = self.model, len(history)
        pos = torch.arange(L).clamp_max(m.cfg.max_len - 1)
        x = m.dropout(m.norm(m.item_vectors(history[None]) + m.position_table(pos)))
        causal = torch.triu(torch.full((L, L), float("-inf")), diagonal=1)
        st = {"n": torch.tensor([L]), "seen": history[None].clone()}
        d = x.shape[-1]
        for i, layer in enumerate(self.layers):
            kv = F.linear(x, layer.self_attn.in_proj_weight[d:], layer.self_attn.in_proj_bias[d:])
            st[f"k{i}"], st[f"v{i}"] = kv[..., :d].clone(), kv[..., d:].clone()
            x = layer(x, src_mask=causal, is_causal=True)
        st["h"] = x[:, -1].clone()
        return st

    @torch.inference_mode()
    def update(self, states, events):
        events = [_ids(e) for e in events]
        if self.mode == "recompute":
            out = []
            for st, e in zip(states, events):
                seen = torch.cat([st["seen"], e[None]], dim=1)
                h = self.model.encode(SimpleNamespace(item_seq=seen))[:, -1]
                out.append({"n": st["n"] + len(e), "seen": seen, "h": h.clone()})
            return out
        m = self.model
        ids, valid = _pad_right(events)
        n0 = torch.cat([s["n"] for s in states])
        caches = [[_pad_left([s[f"k{i}"] for s in states]) + (_pad_left([s[f"v{i}"] for s in states])[0],)]
                  for i in range(len(self.layers))]  # per layer: [(K, mask, V)] then appended per step
        new_kv = [[[] for _ in self.layers] for _ in states]  # user -> layer -> list of (k, v) rows
        h = torch.cat([s["h"] for s in states])
        for t in range(ids.shape[1]):
            pos = (n0 + t).clamp_max(m.cfg.max_len - 1)
            x = m.dropout(m.norm(m.item_vectors(ids[:, t]) + m.position_table(pos)))
            for i, layer in enumerate(self.layers):
                x, k, v = self._layer_step(layer, x, caches[i], valid[:, t])
                caches[i].append((k[:, None], valid[:, t, None], v[:, None]))
                for b in range(len(states)):
                    if valid[b, t]:
                        new_kv[b][i].append((k[b], v[b]))
            h = torch.where(valid[:, t, None], x, h)
        out = []
        for b, (st, e) in enumerate(zip(states, events)):
            new = {"n": st["n"] + len(e), "seen": _append(st["seen"], e[None], None), "h": h[b:b + 1].clone()}
            for i in range(len(self.layers)):
                ks = torch.stack([kv[0] for kv in new_kv[b][i]])[None]
                vs = torch.stack([kv[1] for kv in new_kv[b][i]])[None]
                new[f"k{i}"], new[f"v{i}"] = _append(st[f"k{i}"], ks, None), _append(st[f"v{i}"], vs, None)
            out.append(new)
        return out

    @staticmethod
    def _layer_step(layer, x, cache, valid_t):
        """One post-LN TransformerEncoderLayer on one new position per row, keys = cache + itself."""
        attn = layer.self_attn
        H, d = attn.num_heads, x.shape[-1]
        q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        K = torch.cat([c[0] for c in cache] + [k[:, None]], dim=1)  # (B, n + 1, d)
        V = torch.cat([c[2] for c in cache] + [v[:, None]], dim=1)
        keep = torch.cat([c[1] for c in cache] + [valid_t[:, None] | True], dim=1)  # (B, n + 1)
        B, n1 = K.shape[:2]
        qh = q.view(B, H, 1, d // H)
        Kh, Vh = K.view(B, n1, H, d // H).transpose(1, 2), V.view(B, n1, H, d // H).transpose(1, 2)
        s = (qh @ Kh.transpose(-1, -2)) / math.sqrt(d // H)
        s = s.masked_fill(~keep[:, None, None, :], float("-inf"))
        o = (torch.softmax(s, dim=-1) @ Vh).reshape(B, d)
        x = layer.norm1(x + layer.dropout1(attn.out_proj(o)))
        x = layer.norm2(x + layer._ff_block(x))
        return x, k, v


# ------------------------------------------------------------------------------------------------
# Any model: recompute from the stored history
# ------------------------------------------------------------------------------------------------


class _HistoryState:
    """The history is the state (the newest ``max_history`` events; all when None)."""

    def __init__(self, model, max_history: int | None = None):
        super().__init__(model)
        self.max_history = max_history

    def init_state(self) -> State:
        return {"n": torch.zeros(1, dtype=torch.long), "seen": torch.zeros(1, 0, dtype=torch.long)}

    def update(self, states, events):
        return [{"n": st["n"] + len(_ids(e)), "seen": _append(st["seen"], _ids(e)[None], self.max_history)}
                for st, e in zip(states, events)]


class RecomputeCTRScorer(_HistoryState, _CTRScorer):
    """Every request runs ``forward`` on one row per (user, candidate), each re-encoding the history,
    as batch evaluation does."""

    name = "recompute"

    @torch.inference_mode()
    def score(self, states, candidates, likes=None, views=None):
        from ssmrec.data.mmctr import CTRBatch

        sizes = [len(c) for c in candidates]
        seq, mask = _pad_left([s["seen"] for s in states], min_len=1)
        user = torch.repeat_interleave(torch.arange(len(states)), torch.tensor(sizes))
        cand = torch.cat(candidates)
        zeros = torch.zeros_like(cand)
        batch = CTRBatch(user_id=user, item_seq=seq[user], mask=mask[user], item_id=cand,
                         likes_level=torch.cat(likes) if likes is not None else zeros,
                         views_level=torch.cat(views) if views is not None else zeros)
        return list(torch.sigmoid(self.model(batch)["logit"]).split(sizes))


class RecomputeNextItemScorer(_HistoryState, _NextItemScorer):
    """Every request runs ``forward`` on each user's whole history (BERT4Rec: followed by [MASK])."""

    name = "recompute"

    @torch.inference_mode()
    def full_scores(self, states):
        from ssmrec.tasks.next_item import SeqBatch

        self._check_events(states)
        seqs = [s["seen"][0] for s in states]
        if getattr(self.model, "cloze", False):
            seqs = [torch.cat([q, torch.tensor([self.n_items])]) for q in seqs]
        lengths = torch.tensor([len(q) for q in seqs])
        item_seq = torch.zeros(len(seqs), int(lengths.max()), dtype=torch.long)
        for i, q in enumerate(seqs):
            item_seq[i, :len(q)] = q
        scores = self.model(SeqBatch(item_seq, lengths))["logits"]
        scores[:, 0] = float("-inf")
        return scores[:, :self.n_items]


def build_scorer(task: str, model: torch.nn.Module, mode: str = "auto", max_history: int | None = None,
                 max_len: int = DEFAULT_MAX_LEN) -> IncrementalScorer:
    """The incremental scorer of ``model`` (``mode="recompute"``: the no-state baseline; ``"kv"``: SASRec's
    key/value cache, which ``auto`` picks for SASRec). ``max_len``: the training history length (the
    checkpoint's ``feature_map``), which MambaCTR's whole-history Stage II pads short histories to."""
    from ssmrec.models.ctr.dmf import DMF
    from ssmrec.models.ctr.mambactr import MambaCTR
    from ssmrec.models.seq.mamba4rec import Mamba4Rec
    from ssmrec.models.seq.sasrec import SASRec

    if mode not in SCORER_MODES:
        raise ValueError(f"serving mode must be one of {', '.join(SCORER_MODES)}, got {mode!r}")
    recompute = RecomputeCTRScorer if task == "ctr" else RecomputeNextItemScorer
    if mode == "kv" and not isinstance(model, SASRec):
        raise ValueError(f"serving mode 'kv' is SASRec's; {type(model).__name__} has no key/value cache")
    if mode == "recompute" and not isinstance(model, SASRec):
        return recompute(model, max_history)
    if isinstance(model, MambaCTR):
        return MambaCTRScorer(model, max_len)
    if isinstance(model, DMF):
        return DMFScorer(model)
    if isinstance(model, Mamba4Rec):
        return Mamba4RecScorer(model)
    if isinstance(model, SASRec):
        return SASRecScorer(model, "recompute" if mode == "recompute" else "kv")
    return recompute(model, max_history)
