"""``ssmrec export``: the serving graphs of a Mamba checkpoint as ``torch.export`` programs.

Two programs and a manifest, loadable without ssmrec (``torch.export.load(path).module()``) and
compilable ahead of time (AOTInductor):

* ``update.pt2``: one event per row -> the new state. MambaCTR: ``(item, conv_0, ssm_0, ..., window,
  window_mask) -> (conv_0, ssm_0, ..., window, window_mask)``; Mamba4Rec: ``(item, position, conv_0,
  ssm_0, ...) -> (h, conv_0, ssm_0, ...)``. The batch dimension is dynamic.
* ``score.pt2``: MambaCTR: ``(window (1, K, D), window_mask (1, K), candidates (C,), likes (C,), views
  (C,)) -> click probabilities (C,)`` with C dynamic; Mamba4Rec: ``h (B, D) -> scores (B, n_items)``
  (column 0, the padding id, is -inf).
* ``manifest.json``: every input's name, shape and dtype; a new user's state is all zeros (window
  mask False).

The programs use the pure-PyTorch scan (``scan_impl: ref``): the fused C++ kernel is not a registered
operator. Their outputs equal the eager scorer's (tests/serve/test_export.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ssmrec.errors import SsmrecError


class _MambaCTRUpdate(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.n_layers = model, len(model.encoder.layers)

    def forward(self, item, *state):
        layer_states = [(state[2 * i], state[2 * i + 1]) for i in range(self.n_layers)]
        win, win_mask = state[-2], state[-1]
        y, layer_states = self.model.encoder.layers.step(self.model.embedding.items(item), layer_states)
        win = torch.cat([win[:, 1:], y[:, None]], dim=1)
        win_mask = torch.cat([win_mask[:, 1:], torch.ones_like(win_mask[:, :1])], dim=1)
        return (*[t for s in layer_states for t in s], win, win_mask)


class _MambaCTRScore(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, win, win_mask, candidates, likes, views):
        m = self.model
        R = candidates.shape[0]
        emb = m.embedding
        side = torch.cat([emb.likes_table(likes), emb.views_table(views)], dim=-1)
        gru_x = m.gru.in_proj(win)
        logits = m.score_window(win.expand(R, -1, -1), win_mask.expand(R, -1), emb.items(candidates), side, gru_x)
        return torch.sigmoid(logits)


class _Mamba4RecUpdate(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.n_layers = model, len(model.layers)

    def forward(self, item, position, *state):
        layer_states = [(state[2 * i], state[2 * i + 1]) for i in range(self.n_layers)]
        h, layer_states = self.model.layers.step(self.model.embed(item, position), layer_states)
        return (h, *[t for s in layer_states for t in s])


class _Mamba4RecScore(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, h):
        scores = self.model.full_sort_predict(h)
        return torch.cat([torch.full_like(scores[:, :1], float("-inf")), scores[:, 1:]], dim=1)


def _spec(name, t):
    return {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def export_serving(model: nn.Module, out_dir) -> dict:
    """Export ``model``'s update and score programs to ``out_dir``; returns the manifest."""
    from torch.export import Dim

    from ssmrec.io import atomic_write, write_json_atomic
    from ssmrec.models.ctr.mambactr import MambaCTR
    from ssmrec.models.seq.mamba4rec import Mamba4Rec
    from ssmrec.nn.mamba import Mamba, Mamba2

    model = model.eval()
    for m in model.modules():
        if isinstance(m, (Mamba, Mamba2)):
            m.scan_impl = "ref"
    B = 2  # example batch (export specialises sizes 0 / 1)
    batch = Dim("batch", min=1, max=1 << 16)
    if isinstance(model, MambaCTR):
        if not model.encoder.recurrent or model.cfg.stage2 != "augru":
            raise SsmrecError("export covers MambaCTR with a Mamba Stage I and the AUGRU Stage II (the defaults)")
        states = [t for s in model.encoder.layers.allocate_state(B) for t in s]
        K, D = model.cfg.window, model.embedding.item_dim
        names = [f"{k}_{i}" for i in range(len(model.encoder.layers)) for k in ("conv", "ssm")] + ["window",
                                                                                                 "window_mask"]
        state = (*states, torch.zeros(B, K, D), torch.zeros(B, K, dtype=torch.bool))
        update_args = (torch.ones(B, dtype=torch.long), *state)
        update_in = ["item"] + names
        update_out = names
        update, score = _MambaCTRUpdate(model), _MambaCTRScore(model)
        C = 5
        score_args = (torch.randn(1, K, D), torch.ones(1, K, dtype=torch.bool), torch.ones(C, dtype=torch.long),
                      torch.zeros(C, dtype=torch.long), torch.zeros(C, dtype=torch.long))
        score_in = ["window", "window_mask", "candidates", "likes_level", "views_level"]
        cand = Dim("candidates", min=1, max=1 << 20)
        score_dyn = ({}, {}, {0: cand}, {0: cand}, {0: cand})
        score_out = ["probabilities"]
    elif isinstance(model, Mamba4Rec):
        states = [t for s in model.layers.allocate_state(B) for t in s]
        names = [f"{k}_{i}" for i in range(len(model.layers)) for k in ("conv", "ssm")]
        update_args = (torch.ones(B, dtype=torch.long), torch.zeros(B, dtype=torch.long), *states)
        update_in = ["item", "position"] + names
        update_out = ["h"] + names
        update, score = _Mamba4RecUpdate(model), _Mamba4RecScore(model)
        score_args = (torch.randn(B, model.cfg.hidden_size),)
        score_in, score_out = ["h"], ["scores"]
        score_dyn = ({0: batch},)
    else:
        raise SsmrecError(f"export covers the Mamba scorers (mambactr, mamba4rec); this checkpoint holds "
                          f"{type(model).__name__} (serve it with ssmrec serve)")
    n_lead = 1 if isinstance(model, MambaCTR) else 2  # (item[, position], *state): forward's *state is one tuple
    update_dyn = tuple({0: batch} for _ in range(n_lead)) + (tuple({0: batch} for _ in update_args[n_lead:]),)
    out = Path(out_dir)
    manifest = {"format": "ssmrec-export", "version": 1, "model": type(model).__name__,
                "programs": {"update": {"file": "update.pt2", "inputs": [], "outputs": update_out},
                             "score": {"file": "score.pt2", "inputs": [], "outputs": score_out}}}
    # traced with autograd on, so QNN takes its plain path (its inference fold caches real tensors)
    for key, mod, args, dyn, names_in in (("update", update, update_args, update_dyn, update_in),
                                          ("score", score, score_args, score_dyn, score_in)):
        try:
            program = torch.export.export(mod, args, dynamic_shapes=dyn, strict=False)
        except Exception as e:  # an operator or shape export cannot trace: one line, not a trace dump
            raise SsmrecError(f"torch.export failed for the {key} program: "
                              f"{str(e).strip().splitlines()[0][:300]}") from None
        atomic_write(out / f"{key}.pt2", lambda tmp, p=program: torch.export.save(p, tmp))
        manifest["programs"][key]["inputs"] = [_spec(n, t) for n, t in zip(names_in, args)]
    write_json_atomic(out / "manifest.json", manifest)
    return manifest
