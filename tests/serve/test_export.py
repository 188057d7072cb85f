"""`ssmrec export`: the exported update / score programs, loaded without ssmrec's classes, give the eager
scorer's answers (parity), with dynamic batch and candidate counts; unsupported models are one line."""

import json

import pytest
import torch

from ssmrec.serve.scorers import build_scorer
from ssmrec.serve.untrained import write_untrained_checkpoint
from ssmrec.train.trainer import load_model
from tests.conftest import run_cli


def _run_update(program, first, states, items, extra=None):
    """Feed events one step at a time (batch of users) through the exported update program."""
    for t in range(items.shape[1]):
        args = (items[:, t],) + ((extra(t),) if extra else ()) + tuple(states)
        out = program(*args)
        states = out[first:]
        head = out[:first]
    return (head, states) if first else states


@pytest.mark.slow
@pytest.mark.equivalence
def test_exported_mambactr_programs_equal_the_eager_scorer(tmp_path):
    ckpt = write_untrained_checkpoint(tmp_path / "m.pt", "ctr", "mambactr", {"embedding_dim": 16, "headdim": 16},
                                      n_items=300, spread=0.06)
    r = run_cli("export", "--checkpoint", ckpt, "--out", tmp_path / "exp")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    update = torch.export.load(tmp_path / "exp" / "update.pt2").module()
    score = torch.export.load(tmp_path / "exp" / "score.pt2").module()
    spec = manifest["programs"]["update"]["inputs"][1:]
    B, T = 3, 20  # 3 users (the example batch was 2: the dimension is dynamic)
    states = [torch.zeros([B] + s["shape"][1:], dtype=getattr(torch, s["dtype"])) for s in spec]
    items = torch.randint(1, 300, (B, T), generator=torch.Generator().manual_seed(0))
    states = _run_update(update, 0, states, items)
    model, *_ = load_model(ckpt)
    scorer = build_scorer("ctr", model)
    cands = torch.randint(1, 300, (7,))
    likes, views = torch.randint(0, 10, (7,)), torch.randint(0, 10, (7,))
    for b in range(B):
        want = scorer.score([scorer.prefill(items[b])], [cands], [likes], [views])[0]
        got = score(states[-2][b:b + 1], states[-1][b:b + 1], cands, likes, views)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    # a user with fewer events than the window (mask partly False) and a single candidate
    short = _run_update(update, 0, [torch.zeros([1] + s["shape"][1:], dtype=getattr(torch, s["dtype"]))
                                    for s in spec], items[:1, :5])
    want = scorer.score([scorer.prefill(items[0, :5])], [cands], [likes], [views])[0]
    torch.testing.assert_close(score(short[-2], short[-1], cands, likes, views), want, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(score(short[-2], short[-1], cands[:1], likes[:1], views[:1]), want[:1],
                               atol=2e-5, rtol=1e-4)  # one candidate: the dimension is dynamic down to 1


@pytest.mark.slow
@pytest.mark.equivalence
def test_exported_mamba4rec_programs_equal_the_eager_scorer(tmp_path):
    ckpt = write_untrained_checkpoint(tmp_path / "s.pt", "next_item", "mamba4rec",
                                      {"hidden_size": 16, "d_state": 8, "num_layers": 2}, n_items=90,
                                      spread=0.3)
    run = run_cli("export", "--checkpoint", ckpt, "--out", tmp_path / "exp")
    assert run.returncode == 0, run.stderr
    manifest = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    update = torch.export.load(tmp_path / "exp" / "update.pt2").module()
    score = torch.export.load(tmp_path / "exp" / "score.pt2").module()
    spec = manifest["programs"]["update"]["inputs"][2:]
    B, T = 4, 9
    states = [torch.zeros([B] + s["shape"][1:]) for s in spec]
    items = torch.randint(1, 90, (B, T), generator=torch.Generator().manual_seed(1))
    (h,), states = _run_update(update, 1, states, items, extra=lambda t: torch.full((B,), t, dtype=torch.long))
    model, *_ = load_model(ckpt)
    scorer = build_scorer("next_item", model)
    got = score(h)
    want = scorer.full_scores([scorer.prefill(items[b]) for b in range(B)])
    torch.testing.assert_close(got[:, 1:], want[:, 1:], atol=1e-4, rtol=1e-4)
    assert torch.isinf(got[:, 0]).all()


def test_export_refuses_models_without_a_recurrent_state_in_one_line(tmp_path):
    ckpt = write_untrained_checkpoint(tmp_path / "d.pt", "ctr", "dmf", {"embedding_dim": 16}, n_items=50)
    r = run_cli("export", "--checkpoint", ckpt, "--out", tmp_path / "exp")
    assert r.returncode == 2 and "export covers the Mamba scorers" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
