"""train.ema_decay: the trainer keeps the exponential moving average of the weights, validates and
saves it as best.pt, and resumes it exactly; off by default."""

import pytest
import torch

from ssmrec.config import load_config
from ssmrec.train.trainer import Trainer


def _cfg(out, epochs, ema=0.0):
    return load_config("seq/synth_mamba4rec", [
        "data.source=synth-tiny", f"train.epochs={epochs}", "train.patience=5", "train.progress=false",
        "train.checkpoint_every=0", "train.threads=1", "train.batch_size=16", "model_params.hidden_size=16", "model_params.d_state=8",
        f"train.ema_decay={ema}", f"out_dir={out}"])


def _params(model):
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


def test_average_follows_the_ramped_decay_and_is_what_best_pt_keeps(tmp_path):
    decay = 0.8
    tr = Trainer(_cfg(tmp_path, epochs=2, ema=decay))
    expected = _params(tr.model)  # the average starts at the initial weights
    n = [0]

    def after_step():  # the same lerp, written out: e <- d e + (1 - d) p, d = min(decay, (1 + n) / (10 + n))
        d = min(decay, (1 + n[0]) / (10 + n[0]))
        for e, p in zip(expected, _params(tr.model)):
            e.mul_(d).add_(p, alpha=1 - d)
        n[0] += 1

    per_epoch = {}
    tr.step_hooks.append(after_step)
    tr.epoch_hooks.append(lambda epoch, record: per_epoch.update({epoch: [e.clone() for e in expected]}))
    summary = tr.fit()
    assert n[0] > 20
    for e, got in zip(expected, tr._ema):
        torch.testing.assert_close(got, e, rtol=1e-5, atol=1e-6)
    run = tmp_path / tr.cfg.name
    last = torch.load(run / "last.pt", weights_only=True)
    raw = [last["model"][k] for k, p in tr.model.named_parameters() if p.requires_grad]
    assert max(float((a - b).abs().max()) for a, b in zip(raw, expected)) > 1e-4  # raw weights differ
    for a, b in zip(last["ema"], expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    best = torch.load(run / "best.pt", weights_only=True)
    kept = [best["model"][k] for k, p in tr.model.named_parameters() if p.requires_grad]
    for a, b in zip(kept, per_epoch[summary["best_epoch"]]):  # the average of the best epoch
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_resumed_average_equals_the_uninterrupted_one(tmp_path):
    straight = Trainer(_cfg(tmp_path / "a", epochs=2, ema=0.9))
    straight.fit()
    Trainer(_cfg(tmp_path / "b", epochs=1, ema=0.9)).fit()
    resumed = Trainer(_cfg(tmp_path / "b", epochs=2, ema=0.9))
    resumed.fit(resume=True)
    assert len(resumed.history) == 2
    for a, b in zip(resumed._ema, straight._ema):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_off_by_default_keeps_no_average(tmp_path):
    tr = Trainer(_cfg(tmp_path, epochs=1))
    tr.fit()
    assert tr._ema is None and "ema" not in torch.load(tmp_path / tr.cfg.name / "last.pt", weights_only=True)
    with pytest.raises(Exception, match="train.ema_decay"):
        load_config("seq/synth_mamba4rec", ["train.ema_decay=1.0"])
