"""``ssmrec export``: a checkpoint's serving graphs as ``torch.export`` programs, built from the model's
own incremental-inference methods (:mod:`ssmrec.models.incremental`), for models with a fixed-size state.

Two programs and a manifest, loadable without ssmrec (``torch.export.load(path).module()``) and
compilable ahead of time (AOTInductor):

* ``update.pt2``: the model's ``step_tensors``: ``(item (B,), position (B,), *state) -> *state``, one
  event per row, the batch dimension dynamic. ``position`` is the event's 0-based place in the training
  window. Within the window this is exact and O(1); once a user has more events than ``window`` (in the
  manifest) the served model rebuilds the state from the newest ``window`` events (what training reads),
  which ``ssmrec serve`` does and an exported deployment must do too: run ``update`` from a zero state
  over the newest ``window`` items.
* ``score.pt2``: CTR (MambaCTR): ``(out (1, K, D), out_mask (1, K), candidates (C,), likes_level (C,),
  views_level (C,)) -> click probabilities (C,)``, C dynamic; next item: ``h (B, D) -> scores (B,
  n_items)`` (column 0, the padding id, is -inf).
* ``manifest.json``: every input's name, shape and dtype, the state names, the window; a new user's
  state is all zeros (``out_mask`` False). A next-item model trained with ``data.empty_history`` also
  carries ``new_user.h``: the hidden state to score a user with no events by ``score`` (what training
  read for that user: the padding id alone); the first event then updates from the zero state.

The programs use the pure-PyTorch scan (``scan_impl: ref``): the fused C++ kernel is not a registered
operator. Their outputs equal the model's own ``step`` / ``score`` (tests/serve/test_export.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ssmrec.errors import SsmrecError
from ssmrec.models.incremental import IncrementalModel


class _Update(nn.Module):
    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, item, position, *state):
        new = self.model.step_tensors(dict(zip(self.names, state)), item, position)
        return tuple(new[n] for n in self.names)


class _CTRScore(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, out, out_mask, candidates, likes, views):
        return torch.sigmoid(self.model.score_outputs(out, out_mask, candidates, likes, views))


class _CatalogueScore(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, h):
        scores = self.model.full_sort_predict(h)[:, :self.model.catalogue_size]
        return torch.cat([torch.full_like(scores[:, :1], float("-inf")), scores[:, 1:]], dim=1)


def _spec(name, t):
    return {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def exportable(model) -> str | None:
    """Why ``model`` cannot be exported (None: it can)."""
    if not isinstance(model, IncrementalModel) or type(model).step_tensors is IncrementalModel.step_tensors \
            or not getattr(model, "advances", False):
        return (f"export covers models with a fixed-size incremental state (mambactr with a Mamba Stage I, "
                f"mamba4rec, gru4rec); this checkpoint holds {type(model).__name__} (serve it with ssmrec serve)")
    if model.serving_task == "ctr" and not hasattr(model, "score_outputs"):
        return f"export has no candidate-scoring program for {type(model).__name__}"
    return model.serving_refusal()


def export_serving(model: nn.Module, out_dir) -> dict:
    """Export ``model``'s update and score programs to ``out_dir``; returns the manifest."""
    from torch.export import Dim

    from ssmrec.io import atomic_write, write_json_atomic
    from ssmrec.nn.mamba import Mamba, Mamba2

    why = exportable(model)
    if why:
        raise SsmrecError(why)
    model = model.eval()
    for m in model.modules():
        if isinstance(m, (Mamba, Mamba2)):
            m.scan_impl = "ref"
    B = 2  # example batch (export specialises sizes 0 / 1)
    batch = Dim("batch", min=1, max=1 << 16)
    init = model.init_state().tensors
    names = sorted(init)
    state = tuple(torch.cat([init[n]] * B) for n in names)
    update_args = (torch.ones(B, dtype=torch.long), torch.zeros(B, dtype=torch.long), *state)
    update_in = ["item", "position"] + names
    update_dyn = ({0: batch}, {0: batch}, tuple({0: batch} for _ in state))
    if model.serving_task == "ctr":
        K, D = init["out"].shape[1:]
        C = 5
        score = _CTRScore(model)
        score_args = (torch.randn(1, K, D), torch.ones(1, K, dtype=torch.bool), torch.ones(C, dtype=torch.long),
                      torch.zeros(C, dtype=torch.long), torch.zeros(C, dtype=torch.long))
        score_in = ["out", "out_mask", "candidates", "likes_level", "views_level"]
        cand = Dim("candidates", min=1, max=1 << 20)
        score_dyn = ({}, {}, {0: cand}, {0: cand}, {0: cand})
        score_out = ["probabilities"]
    else:
        score = _CatalogueScore(model)
        score_args = (torch.randn(B, init["h"].shape[-1]),)
        score_in, score_out = ["h"], ["scores"]
        score_dyn = ({0: batch},)
    out = Path(out_dir)
    manifest = {"format": "ssmrec-export", "version": 2, "model": type(model).__name__,
                "state_schema": model.state_schema, "window": model.serving_window, "state": names,
                "programs": {"update": {"file": "update.pt2", "inputs": [], "outputs": names},
                             "score": {"file": "score.pt2", "inputs": [], "outputs": score_out}}}
    # traced with autograd on, so QNN takes its plain path (its inference fold caches real tensors)
    for key, mod, args, dyn, names_in in (("update", _Update(model, names), update_args, update_dyn, update_in),
                                          ("score", score, score_args, score_dyn, score_in)):
        try:
            program = torch.export.export(mod, args, dynamic_shapes=dyn, strict=False)
        except Exception as e:  # an operator or shape export cannot trace: one line, not a trace dump
            raise SsmrecError(f"torch.export failed for the {key} program: "
                              f"{str(e).strip().splitlines()[0][:300]}") from None
        atomic_write(out / f"{key}.pt2", lambda tmp, p=program: torch.export.save(p, tmp))
        manifest["programs"][key]["inputs"] = [_spec(n, t) for n, t in zip(names_in, args)]
    if getattr(model, "empty_history_start", False):  # ranked from the padding id alone, as serving does
        manifest["new_user"] = {"h": model.new_user_hidden()[0].tolist()}
    write_json_atomic(out / "manifest.json", manifest)
    return manifest
