"""Helpers shared by the CTR model-zoo tests: narrow per-model configs, a mixed batch, a short
training loop on the tiny synthetic world."""

import torch
from sklearn.metrics import roc_auc_score

from ssmrec.models.ctr import build_ctr_model

# Narrow versions of each reference architecture (same shapes, small widths) so a test runs in seconds.
SMALL = {
    "din": {"embedding_dim": 8, "attention_hidden": [32, 16], "dnn_hidden": [64, 32]},
    "din_dice": {"embedding_dim": 8, "attention_hidden": [32, 16], "dnn_hidden": [64, 32],
                 "attention_activation": "dice"},
    "qin": {"embedding_dim": 8, "qnn_layers": 2, "qnn_rows": 2},
    "transformer_dcn": {"embedding_dim": 8, "use_mm_emb": False, "dim_feedforward": 32, "first_k_cols": 4,
                        "dcn_cross_layers": 2, "dcn_hidden": [64, 32], "mlp_hidden": [16, 8]},
    "dmf": {"embedding_dim": 8, "attention_dim": 16, "path_hidden": [32, 16], "dnn_hidden": [64, 32]},
    "mambactr": {"embedding_dim": 8, "headdim": 16, "stage2": "cosine_gru"},
    "mambactr_transformer": {"embedding_dim": 8, "stage1": "transformer", "stage1_layers": 2,
                             "transformer_ffn": 32, "stage2": "cosine_gru"},
}
REGISTRY_NAME = {"din_dice": "din", "mambactr_transformer": "mambactr"}


def build(variant, tiny_data, **overrides):
    params = {**SMALL[variant], **overrides}
    return build_ctr_model(REGISTRY_NAME.get(variant, variant), params, tiny_data.item_info)


def mixed_batch(data, n=24, split="train"):
    """Rows with short histories and rows with full 64-slot windows."""
    s = data.splits[split]
    lengths = s.batch(torch.arange(len(s))).mask.sum(1)
    idx = torch.cat([torch.nonzero(lengths < 10).flatten()[: n // 2],
                     torch.nonzero(lengths == lengths.max()).flatten()[: n // 2]])
    assert len(idx) == n, "tiny world should have both short and full histories"
    return s.batch(idx)


def crop(batch, k):
    """Keep the newest ``k`` history slots (cheaper steps; the newest items carry most signal)."""
    return batch.newest(k)


def train_briefly(model, data, epochs=1, batch_size=128, lr=3e-3, seed=0, max_len=16):
    """Adam on BCE (+ aux loss) for a few epochs over histories cropped to ``max_len``; returns valid AUC."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train = data.splits["train"]
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(train)).split(batch_size):
            batch = crop(train.batch(idx), max_len)
            out = model(batch)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logit"], batch.label)
            loss = loss + out.get("aux_loss", 0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    valid = data.splits["valid"]
    with torch.no_grad():
        logits = torch.cat([model(crop(valid.batch(i), max_len))["logit"]
                            for i in torch.arange(len(valid)).split(256)])
    return roc_auc_score(valid.label.numpy(), logits.numpy())
