"""Checks shared by every CTR model of the zoo: registry, output shapes and gradients, padding
invariance (content of padded slots, extra left padding), config validation, learning on the tiny
synthetic world."""

import pytest
import torch

from ssmrec.errors import ConfigError
from ssmrec.models.ctr import CTR_MODELS, build_ctr_model
from tests.models.zoo import SMALL, build, crop, mixed_batch, train_briefly

ZOO = list(SMALL)


def test_registry_has_the_zoo():
    assert {"din", "qin", "transformer_dcn", "dmf", "mambactr"} <= set(CTR_MODELS)


@pytest.mark.parametrize("variant", ZOO)
def test_forward_shapes_and_backward(tiny_data, variant):
    torch.manual_seed(0)
    model = build(variant, tiny_data)
    batch = mixed_batch(tiny_data)
    out = model(batch)
    assert out["logit"].shape == (24,) and torch.isfinite(out["logit"]).all()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logit"], batch.label)
    (loss + out.get("aux_loss", 0.0)).backward()
    grads = [p.grad for p in model.parameters()]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.8 * len(grads)


@pytest.mark.parametrize("variant", ZOO)
@pytest.mark.equivalence
def test_padding_content_and_left_padding_do_not_change_logits(tiny_data, variant):
    torch.manual_seed(0)
    model = build(variant, tiny_data).eval()
    batch = mixed_batch(tiny_data)
    pad = ~batch.mask
    seq = batch.item_seq.clone()
    seq[pad] = torch.randint(1, tiny_data.item_info.n_items, (int(pad.sum()),))
    garbage = batch.replace(item_seq=seq)  # mask unchanged: these slots are still padding
    short = batch.mask.sum(1) < 10
    b1 = batch.rows(short)
    seq2 = torch.cat([torch.zeros_like(b1.item_seq[:, :8]), b1.item_seq], 1)
    b2 = b1.replace(item_seq=seq2, mask=seq2 > 0)  # same histories behind 8 more padding slots
    with torch.no_grad():
        torch.testing.assert_close(model(batch)["logit"], model(garbage)["logit"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(b1)["logit"], model(b2)["logit"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,params,needle", [
    ("din", {"attention_activation": "swish"}, "attention_activation"),
    ("din", {"dnn_hidden": [64, 0]}, "dnn_hidden"),
    ("qin", {"qnn_rows": 0}, "qnn_rows"),
    ("qin", {"attention_norm": "sparsemax"}, "attention_norm"),
    ("transformer_dcn", {"net_dropout": 1.5}, "net_dropout"),
    ("transformer_dcn", {"num_heads": 3}, "num_heads"),
    ("dmf", {"alpha": 2.0}, "alpha"),
    ("dmf", {"n_buckets": "many"}, "n_buckets"),
    ("dmf", {"attnetion_dim": 8}, "attnetion_dim"),
])
def test_bad_model_params_are_one_line_config_errors(tiny_data, name, params, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        build_ctr_model(name, params, tiny_data.item_info)
    assert "\n" not in str(e.value)


def _valid_auc(model, data, max_len=16):
    """Valid AUC as train_briefly measures it (histories cropped to the same ``max_len``)."""
    from sklearn.metrics import roc_auc_score

    model.eval()
    valid = data.splits["valid"]
    with torch.no_grad():
        logits = torch.cat([model(crop(valid.batch(i), max_len))["logit"] for i in torch.arange(len(valid)).split(256)])
    return roc_auc_score(valid.label.numpy(), logits.numpy())


# MambaCTR's learning on the tiny world is covered by tests/train/test_trainer.py (through the Trainer).
@pytest.mark.parametrize("variant", [v for v in ZOO if not v.startswith("mambactr")])
def test_learns_on_tiny_world(tiny_data, variant):
    """One epoch lifts the valid AUC well above the same model's before training (both measured here,
    so no number from another machine is pinned). Measured: 0.40-0.57 untrained, 0.72-0.86 trained,
    gains 0.24-0.40 against the 0.1 asked; a different CPU rounding (ATEN_CPU_CAPABILITY=default) moved
    a trained AUC by up to 0.03. (The popularity baseline, 0.75 here, is no bar: QIN and
    Transformer-DCN need more than one epoch to pass it.)"""
    torch.manual_seed(0)  # the initial weights do not depend on which tests ran before
    model = build(variant, tiny_data, net_dropout=0.0)
    start = _valid_auc(model, tiny_data)
    auc = train_briefly(model, tiny_data, epochs=1)
    assert auc > start + 0.1, (start, auc)
