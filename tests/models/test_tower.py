"""FT-Mamba / FT-Transformer two-towers: tokenizer, parameter counts, ranking metrics, training."""

import math

import numpy as np
import pytest
import torch

from ssmrec.models.tower.ft import FTMamba, FTMambaConfig, FTTransformer, FTTransformerConfig, PairBatch
from ssmrec.nn.tokenizer import FeatureTokenizer
from ssmrec.metrics import relevance_metrics

SCHEMA = {"user": {"numeric": [f"g{j}" for j in range(20)], "cardinalities": []},
          "item": {"numeric": [], "cardinalities": [51]}}


def test_embedders_reproduce_the_papers_parameter_counts():
    """FT-Mamba §III: 479,232 (Mamba) and 1,186,048 (Transformer) trainable parameters per tower's embedder."""
    mamba = FTMamba(FTMambaConfig(), SCHEMA)
    transformer = FTTransformer(FTTransformerConfig(), SCHEMA)
    assert mamba.embedder_parameters("user") == mamba.embedder_parameters("item") == 479_232
    assert transformer.embedder_parameters("user") == transformer.embedder_parameters("item") == 1_186_048
    # separate weights per tower
    assert mamba.user_tower.embedder[0].mamba.in_proj.weight.data_ptr() != \
        mamba.item_tower.embedder[0].mamba.in_proj.weight.data_ptr()


def test_tokenizer_numeric_categorical_and_cls_last():
    tok = FeatureTokenizer(2, [3, 5], d_token=4)
    x_num = torch.tensor([[1.5, -2.0]])
    x_cat = torch.tensor([[2, 4]])
    t = tok(x_num, x_cat)
    assert t.shape == (1, 5, 4)
    w, b = tok.num_weight, tok.num_bias
    torch.testing.assert_close(t[0, 0], 1.5 * w[0] + b[0])
    torch.testing.assert_close(t[0, 1], -2.0 * w[1] + b[1])
    torch.testing.assert_close(t[0, 2], tok.cat_table.weight[2] + tok.cat_bias[0])
    torch.testing.assert_close(t[0, 3], tok.cat_table.weight[3 + 4] + tok.cat_bias[1])  # offset of feature 2
    torch.testing.assert_close(t[0, 4], w[2] + b[2])  # [CLS] = the numeric tokenizer on a constant 1, last
    # parameters: (numeric + CLS) weights and biases, the tables, one bias per categorical feature
    assert sum(p.numel() for p in tok.parameters()) == 2 * 3 * 4 + 8 * 4 + 2 * 4


def test_cls_output_depends_on_every_feature_through_the_causal_mamba():
    """[CLS] is last, so a causal Mamba's [CLS] output sees every feature token."""
    torch.manual_seed(0)
    m = FTMamba(FTMambaConfig(d_token=16, n_layers=2, head_hidden=[8], out_dim=4, out_relu=False),
                {"user": {"numeric": ["a", "b", "c"], "cardinalities": [4]}, "item": SCHEMA["item"]})
    m.eval()
    x_num, x_cat = torch.randn(1, 3), torch.tensor([[1]])
    base = m.encode_users(x_num, x_cat)
    for j in range(3):
        x2 = x_num.clone()
        x2[0, j] += 1.0
        assert not torch.allclose(m.encode_users(x2, x_cat), base)
    assert not torch.allclose(m.encode_users(x_num, torch.tensor([[2]])), base)


def test_score_is_the_inner_product_of_the_towers():
    torch.manual_seed(0)
    m = FTTransformer(FTTransformerConfig(d_token=8, n_layers=1, ffn_hidden=16), SCHEMA)
    b = PairBatch(torch.randn(3, 20), torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 0), torch.tensor([[1], [5], [50]]))
    s = m(b)["score"]
    expect = (m.encode_users(b.user_num, b.user_cat) * m.encode_items(b.item_num, b.item_cat)).sum(-1)
    torch.testing.assert_close(s, expect)
    m2 = FTTransformer(FTTransformerConfig(d_token=8, n_layers=1, ffn_hidden=16, out_relu=True), SCHEMA)
    assert bool((m2(b)["score"] >= 0).all())  # the paper's ReLU on both 32-d outputs: scores >= 0


def test_ranking_metrics_by_hand():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.0],
                           [0.1, 0.9, 0.8, 0.7, 0.6]])
    rel = torch.tensor([[False, True, False, True, False],
                        [True, False, False, False, False]])
    m = relevance_metrics(scores, rel, [1, 2, 5])
    # user 0: ranked 0,1,2,3,4 -> hits at ranks 2 and 4 of 2 relevant
    assert m["p@1"][0] == 0 and m["p@2"][0] == 0.5 and m["p@5"][0] == pytest.approx(2 / 5)
    assert m["r@2"][0] == 0.5 and m["r@5"][0] == 1.0
    assert m["mrr@1"][0] == 0 and m["mrr@2"][0] == 0.5 and m["hr@2"][0] == 1 and m["hr@1"][0] == 0
    assert m["map@12"][0] == pytest.approx((1 / 2 + 2 / 4) / 2)
    # user 1: its one relevant item is ranked last (5th)
    assert m["hr@2"][1] == 0 and m["hr@5"][1] == 1 and m["mrr@5"][1] == pytest.approx(0.2)
    assert m["map@12"][1] == pytest.approx(1 / 5)


def test_ranking_metrics_break_ties_pessimistically_and_skip_users_without_relevant_items():
    scores = torch.zeros(2, 6)  # a constant scorer (e.g. dead ReLU outputs)
    rel = torch.tensor([[True, False, False, False, False, False], [False] * 6])
    m = relevance_metrics(scores, rel, [5])
    assert m["hr@5"][0] == 0 and m["mrr@5"][0] == 0  # the relevant item ranks after all 5 ties
    assert math.isnan(float(m["hr@5"][1]))


@pytest.mark.slow
def test_retrieval_trains_end_to_end_and_beats_chance(tmp_path):
    """A small FT-Mamba on the wide synthetic environment: test HR@5 well above a random ranking's."""
    from ssmrec.config import load_config
    from ssmrec.train.trainer import Trainer

    cfg = load_config("tower/spotify_ft_mamba", [
        "data.env=wide", "data.source=null", "data.n_features=6", "data.n_items=40", "data.n_pairs=6000",
        "data.n_valid=500", "data.n_test_users=200", "data.noise=0.05",
        "model_params={d_token: 16, n_layers: 2, d_conv: 4, out_relu: false}",
        "train.lr=3e-3", "train.batch_size=64", "train.epochs=3", "train.progress=false", f"out_dir={tmp_path}"])
    trainer = Trainer(cfg)
    summary = trainer.fit()
    random_hr5 = 1 - math.comb(35, 5) / math.comb(40, 5)  # 5 relevant of 40 items, a random top-5
    assert summary["test_hr@5"] > random_hr5 + 0.2, (summary["test_hr@5"], random_hr5)
    zero_mse = float((trainer.task.data.valid.target.astype(np.float64) ** 2).mean())  # predicting 0
    assert summary["valid_mse"] < 0.75 * zero_mse, (summary["valid_mse"], zero_mse)
    assert summary["embedder_params_per_tower"] > 0


def test_feature_table_policies_unseen_and_nan():
    from ssmrec.data.tabular import encode_table
    from ssmrec.errors import DataError

    cols = {"age": [20.0, 30.0, float("nan"), 40.0], "club": ["A", None, "B", "C"]}
    fit = np.array([0, 1, 2])
    t = encode_table(cols, ["age"], ["club"], ["u0", "u1", "u2", "u3"], "customers.csv", fit_rows=fit, nan="mean")
    assert t.cat[3, 0] == 0  # "C" was not in the fitting rows: the reserved unknown index
    assert t.cat[1, 0] != 0 and t.vocab["club"][int(t.cat[1, 0]) - 1] == "<missing>"  # missing is its own category
    torch.testing.assert_close(t.num[2, 0], torch.tensor(0.0))  # NaN -> the fitting rows' mean, standardised to 0
    with pytest.raises(DataError, match=r"customers.csv: column 'club', row 3: value 'C' was not seen"):
        encode_table(cols, ["age"], ["club"], ["u0", "u1", "u2", "u3"], "customers.csv", fit_rows=fit, nan="mean",
                     unseen="error")
    with pytest.raises(DataError, match=r"customers.csv: column 'age', row 2: missing"):
        encode_table(cols, ["age"], ["club"], ["u0", "u1", "u2", "u3"], "customers.csv")
    with pytest.raises(DataError, match=r"column 'height'.*missing column|missing column"):
        encode_table(cols, ["height"], [], ["u0", "u1", "u2", "u3"], "customers.csv")


@pytest.mark.slow
def test_train_evaluate_recommend_from_the_cli(tmp_path):
    """The same verbs as the other families: train a tiny tower config, evaluate its checkpoint on the test
    users, write top-k recommendations; the checkpoint alone rebuilds the model."""
    import pyarrow.csv as pacsv

    from tests.conftest import run_cli

    sets = ["--set", "data.env=wide", "--set", "data.source=null", "--set", "data.n_features=5", "--set",
            "data.n_items=30", "--set", "data.n_pairs=800", "--set", "data.n_valid=100", "--set", "data.n_test_users=20",
            "--set", "model_params={d_token: 8, n_layers: 1, d_conv: 4}", "--set", "train.progress=false",
            "--set", f"out_dir={tmp_path}", "--set", "name=t"]
    r = run_cli("train", "--config", "tower/spotify_ft_mamba", *sets)
    assert r.returncode == 0, r.stderr[-2000:]
    ck = tmp_path / "t" / "best.pt"
    fm = torch.load(ck, weights_only=True)["feature_map"]  # encodings travel with the checkpoint, safely loadable
    assert set(fm["user_encoding"]["stats"]) == {f"x{j}" for j in range(5)} and fm["item"]["numeric"]
    r = run_cli("evaluate", "--checkpoint", ck, "--split", "test")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "hr@5" in r.stdout and "map@12" in r.stdout
    out = tmp_path / "rec.csv"
    r = run_cli("recommend", "--checkpoint", ck, "--k", "3", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    table = pacsv.read_csv(out)
    assert table.column_names == ["user_id", "rank", "item_id", "score"] and table.num_rows % 3 == 0
    scores = table["score"].to_numpy().reshape(-1, 3)
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
    r = run_cli("recommend", "--checkpoint", ck, "--k", "3", "--out", out, "--exclude-seen")
    assert r.returncode == 2 and "--exclude-seen" in r.stderr and "Traceback" not in r.stderr


def test_index_recall_and_auto_switch():
    from ssmrec.index import ExactIndex, build_index, recall_at_k

    rng = np.random.default_rng(0)
    items, queries = rng.standard_normal((500, 8)).astype(np.float32), rng.standard_normal((20, 8)).astype(np.float32)
    s, i = ExactIndex(items).search(queries, 5)
    expect = np.argsort(-(queries @ items.T), axis=1)[:, :5]
    np.testing.assert_array_equal(i, expect)
    assert recall_at_k(i, expect) == 1.0 and recall_at_k(i[:, ::-1], expect) == 1.0
    assert recall_at_k(np.zeros_like(i) + 499, expect) <= 0.2
    assert build_index(items, "auto").kind == "exact"  # small catalogue (IVF only past 100k items)
    pytest.importorskip("faiss")
    approx = build_index(items, "hnsw")
    assert recall_at_k(approx.search(queries, 5)[1], expect) > 0.9
