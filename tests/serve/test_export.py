"""`ssmrec export`: the exported update / score programs, loaded without ssmrec's classes, give the model's
own step / score answers (parity), with dynamic batch and candidate counts; unsupported models are one
line."""

import json

import pytest
import torch

from ssmrec.checkpoint import load_model
from ssmrec.serve.untrained import write_untrained_checkpoint
from tests.conftest import run_cli


def _load(out):
    manifest = json.loads((out / "manifest.json").read_text())
    return (manifest, torch.export.load(out / "update.pt2").module(), torch.export.load(out / "score.pt2").module())


def _run_update(program, manifest, items):
    """Events one step at a time (a batch of users, all starting empty) through the exported program."""
    spec = manifest["programs"]["update"]["inputs"][2:]
    B = items.shape[0]
    states = [torch.zeros([B] + s["shape"][1:], dtype=getattr(torch, s["dtype"])) for s in spec]
    for t in range(items.shape[1]):
        states = program(items[:, t], torch.full((B,), t, dtype=torch.long), *states)
    return dict(zip(manifest["state"], states))


@pytest.mark.slow
@pytest.mark.equivalence
def test_exported_mambactr_programs_equal_the_model(tmp_path):
    ckpt = write_untrained_checkpoint(tmp_path / "m.pt", "ctr", "mambactr", {"embedding_dim": 16, "headdim": 16},
                                      n_items=300, spread=0.06, max_len=24)
    r = run_cli("export", "--checkpoint", ckpt, "--out", tmp_path / "exp")
    assert r.returncode == 0, r.stderr
    manifest, update, score = _load(tmp_path / "exp")
    assert manifest["window"] == 24
    B, T = 3, 20  # 3 users (the example batch was 2: the dimension is dynamic); T within the window
    items = torch.randint(1, 300, (B, T), generator=torch.Generator().manual_seed(0))
    st = _run_update(update, manifest, items)
    model, *_ = load_model(ckpt)
    cands = torch.randint(1, 300, (7,))
    feats = {"likes_level": torch.randint(0, 10, (7,)), "views_level": torch.randint(0, 10, (7,))}
    for b in range(B):
        want = model.score([model.prefill(items[b])], [cands], [feats])[0]
        got = score(st["out"][b:b + 1], st["out_mask"][b:b + 1], cands, feats["likes_level"], feats["views_level"])
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    # a user with fewer events than Stage II's slots (mask partly False) and a single candidate
    short = _run_update(update, manifest, items[:1, :5])
    want = model.score([model.prefill(items[0, :5])], [cands], [feats])[0]
    torch.testing.assert_close(score(short["out"], short["out_mask"], cands, *feats.values()), want,
                               atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(score(short["out"], short["out_mask"], cands[:1], feats["likes_level"][:1],
                                     feats["views_level"][:1]), want[:1], atol=2e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.equivalence
@pytest.mark.parametrize("extra,data", [({}, {}), ({"lowpass": True, "lowpass_period": 16},
                                                {"empty_history": True, "train_mode": "prefixes"})],
                         ids=["plain", "lowpass_empty_history"])
def test_exported_mamba4rec_programs_equal_the_model(tmp_path, extra, data):
    """Users stepped through update.pt2 score as the model scores them; a model trained with
    data.empty_history also exports new_user.h, and score.pt2 on it ranks a user with no events as
    serving does (the padding id alone); without the option there is no such entry."""
    ckpt = write_untrained_checkpoint(tmp_path / "s.pt", "next_item", "mamba4rec",
                                      {"hidden_size": 16, "d_state": 8, "num_layers": 2, **extra}, n_items=90,
                                      spread=0.3, max_len=16, data_params=data)
    run = run_cli("export", "--checkpoint", ckpt, "--out", tmp_path / "exp")
    assert run.returncode == 0, run.stderr
    manifest, update, score = _load(tmp_path / "exp")
    B, T = 4, 9
    items = torch.randint(1, 90, (B, T), generator=torch.Generator().manual_seed(1))
    st = _run_update(update, manifest, items)
    model, *_ = load_model(ckpt)
    got = score(st["h"])
    want = model.score_all([model.prefill(items[b]) for b in range(B)])
    torch.testing.assert_close(got[:, 1:], want[:, 1:], atol=1e-4, rtol=1e-4)
    assert torch.isinf(got[:, 0]).all()
    if not data:
        assert "new_user" not in manifest
        return
    assert model.empty_history_start
    new_user = score(torch.tensor([manifest["new_user"]["h"]]))
    served = model.score_all([model.init_state()])
    torch.testing.assert_close(new_user[:, 1:], served[:, 1:], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(new_user[:, 1:], got[:1, 1:], atol=1e-3)  # not some user's ranking


def test_export_refuses_models_without_a_fixed_size_state_in_one_line(tmp_path):
    ckpt = write_untrained_checkpoint(tmp_path / "d.pt", "ctr", "dmf", {"embedding_dim": 16}, n_items=50)
    r = run_cli("export", "--checkpoint", ckpt, "--out", tmp_path / "exp")
    assert r.returncode == 2 and "export covers models with a fixed-size incremental state" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
