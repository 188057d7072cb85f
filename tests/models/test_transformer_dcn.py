"""Transformer-DCN: reference size (doc §3), target concatenated to every slot, correct masking by
default, and the inverted-mask flag reproducing the reference code's behaviour."""

import torch

from ssmrec.models.ctr.transformer_dcn import TransformerDCN, TransformerDCNConfig
from tests.models.zoo import build, mixed_batch


def test_reference_size():
    """At the reference config: ~2.68e8 parameters, CrossNetV2 3 x (9088^2 + 9088), encoder 2.6 M,
    embeddings 6.6 M (built on the meta device: no memory)."""
    tags = torch.zeros(91_718, 5, dtype=torch.long)
    with torch.device("meta"):
        model = TransformerDCN(TransformerDCNConfig(), tags, torch.zeros(91_718, 128), 11_740)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(model.cross) == 3 * (9088 * 9088 + 9088)
    assert n(model.encoder) == 2_631_168
    assert n(model.embedding) == 6_639_104
    assert n(model) == 267_898_881
    assert model.deep.d_out == 256 and model.head.net[0].in_features == 9088 + 256


def test_inverted_mask_flag_changes_output_and_hides_real_history(tiny_data):
    torch.manual_seed(0)
    correct = build("transformer_dcn", tiny_data).eval()
    inverted = build("transformer_dcn", tiny_data, inverted_padding_mask=True).eval()
    inverted.load_state_dict(correct.state_dict())
    batch = mixed_batch(tiny_data)
    with torch.no_grad():
        assert not torch.allclose(correct(batch)["logit"], inverted(batch)["logit"], atol=1e-4)
    # Reference quirk: on a row that is not full, real items are ignored as keys and zero-filled, so
    # the score no longer depends on the history; with correct masking it does.
    short = batch.mask.sum(1) < 10
    seq = batch.item_seq.clone()
    real = batch.mask & short.unsqueeze(1)
    seq[real] = (seq[real] % (tiny_data.item_info.n_items - 1)) + 1
    changed = batch.replace(item_seq=seq)
    with torch.no_grad():
        d_inv = (inverted(batch)["logit"] - inverted(changed)["logit"]).abs()[short]
        d_cor = (correct(batch)["logit"] - correct(changed)["logit"]).abs()[short]
    assert d_inv.max() < 1e-5 and d_cor.max() > 1e-4
