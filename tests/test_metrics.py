"""ssmrec.metrics: monitor direction from the name for any k, non-finite scores never score well, the
masking helper, and the Trainer keeping the best epoch of a monitor outside {5, 10, 20}."""

import json
import math

import numpy as np
import pytest
import torch

from ssmrec.config import from_dict
from ssmrec.errors import ConfigError
from ssmrec.metrics import (auc, ctr_metrics, exclude_items, gauc, logloss, metric_direction, rank_metrics,
                            rank_of_target, relevance_metrics)


@pytest.mark.parametrize("name,direction", [
    ("hr@1", "max"), ("ndcg@50", "max"), ("mrr@3", "max"), ("recall@7", "max"), ("r@100", "max"),
    ("p@12", "max"), ("map@12", "max"), ("hr@10", "max"), ("auc", "max"), ("gauc", "max"),
    ("logloss", "min"), ("mse", "min"), ("loss", "min"), ("ce", "min"), ("train_loss", "min"),
    ("ndcg", None), ("hr@0", None), ("ndcg@x", None), ("accuracy", None), ("", None),
])
def test_monitor_direction_follows_from_the_name(name, direction):
    assert metric_direction(name) == direction


def _next_item_cfg(**train):
    return {"task": "next_item", "model": "mamba4rec",
            "model_params": {"hidden_size": 8, "d_state": 4, "dropout": 0.0},
            "data": {"source": "synth-tiny", "max_len": 10, "ks": [1, 10, 50]},
            "train": {"progress": False, **train}}


@pytest.mark.parametrize("monitor", ["ndcg@50", "hr@1", "mrr@50"])
def test_next_item_monitor_outside_5_10_20_is_maximised(monitor):
    from ssmrec.tasks import make_task

    cfg = from_dict(_next_item_cfg(monitor=monitor))
    assert make_task(cfg).monitor_spec() == (monitor, "max")


@pytest.mark.parametrize("task,monitor,expect", [
    ("ctr", "logloss", ("logloss", "min")), ("ctr", "gauc", ("gauc", "max")), ("ctr", None, ("auc", "max")),
    ("retrieval", None, ("mse", "min")), ("retrieval", "logloss", ("logloss", "min")),
])
def test_every_task_takes_the_direction_from_the_name(task, monitor, expect):
    from ssmrec.tasks import make_task

    d = {"task": task, "train": {"monitor": monitor}}
    if task == "retrieval":
        d["model"], d["data"] = "ft_mamba", {"env": "wide"}
    assert make_task(from_dict(d)).monitor_spec() == expect


@pytest.mark.parametrize("d,match", [
    (_next_item_cfg(monitor="ndcg@5"), r"train.monitor must be one of hr@1, ndcg@1, mrr@1, hr@10"),
    (_next_item_cfg(monitor="accuracy@10"), "got 'accuracy@10'"),
    ({"task": "ctr", "train": {"monitor": "ndcg@10"}}, "must be one of auc, logloss, gauc for task 'ctr'"),
    ({"task": "retrieval", "model": "ft_mamba", "data": {"env": "wide"}, "train": {"monitor": "auc"}},
     "must be one of mse, logloss for task 'retrieval'"),
])
def test_an_unknown_monitor_is_a_one_line_config_error(d, match):
    with pytest.raises(ConfigError, match=match) as e:
        from_dict(d)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_early_stopping_keeps_the_best_epoch_of_ndcg_at_50(tmp_path):
    """The bug this guards against: monitor_spec answered "min" for @k outside {5, 10, 20}, so best.pt
    was the lowest-NDCG epoch."""
    from ssmrec.train.trainer import Trainer

    cfg = from_dict(_next_item_cfg(monitor="ndcg@50", epochs=4, patience=4, lr=5e-3, lr_schedule="constant",
                                   max_steps_per_epoch=3))
    cfg.out_dir = str(tmp_path)
    s = Trainer(cfg).fit()
    hist = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    curve = [h["valid_ndcg@50"] for h in hist]
    assert len(set(curve)) > 1, curve  # the test means something only if the epochs differ
    assert s["best_epoch"] == int(np.argmax(curve)) + 1, (curve, s["best_epoch"])
    assert s["valid_ndcg@50"] == pytest.approx(max(curve), abs=1e-12)


# ------------------------------------------------------------------ non-finite scores


def test_a_nan_or_infinite_target_ranks_last_and_other_non_finite_scores_rank_behind():
    nan, inf = float("nan"), float("inf")
    scores = torch.tensor([[-inf, 0.5, nan, 0.1],   # target 2 NaN -> last (4)
                           [-inf, 0.5, inf, 0.1],   # target 2 +inf -> last
                           [-inf, nan, inf, 0.1],   # target 3: NaN and +inf rank behind it -> 1
                           [-inf, 0.3, 0.2, 0.1]])  # plain: target 3 -> 3
    rank = rank_of_target(scores, torch.tensor([2, 2, 3, 3]))
    assert rank.tolist() == [4, 4, 1, 3]
    m = rank_metrics(rank, [10])
    assert m["hr@10"].tolist() == [1, 1, 1, 1]  # ranks 4 <= 10: the rank is the rule, the metric its formula
    assert float(m["ndcg@10"][0]) == pytest.approx(1 / math.log2(5))
    # With as many columns as k, a NaN target is still a hit at k = N only; never rank 0 (HR 1, NDCG inf).
    assert rank_of_target(torch.tensor([[nan, 0.0]]), torch.tensor([0])).tolist() == [2]


def test_relevance_metrics_rank_a_nan_relevant_item_last():
    scores = torch.tensor([[0.1, float("nan"), 0.3, 0.2]])
    rel = torch.tensor([[False, True, False, False]])
    m = relevance_metrics(scores, rel, [1, 3, 4])
    assert m["hr@3"].item() == 0 and m["hr@4"].item() == 1 and m["mrr@4"].item() == pytest.approx(0.25)


def test_a_non_finite_ctr_prediction_counts_as_the_most_wrong_one(capsys):
    y = np.array([1, 0, 1, 0, 1, 0])
    p = np.array([0.9, 0.2, np.nan, 0.3, 0.7, np.inf])
    worst = np.array([0.9, 0.2, 0.0, 0.3, 0.7, 1.0])  # 1 - label where non-finite
    assert auc(y, p) == pytest.approx(auc(y, worst))
    assert logloss(y, p) == pytest.approx(logloss(y, worst))
    assert math.isfinite(logloss(y, p)) and auc(y, p) < auc(y, np.nan_to_num(p, nan=0.8, posinf=0.1))
    g = np.array([0, 0, 0, 1, 1, 1])
    assert gauc(y, p, g) == pytest.approx(gauc(y, worst, g))
    m = ctr_metrics(y, p, g)
    assert m["auc"] == pytest.approx(auc(y, worst))
    assert "2 of 6 predictions have non-finite scores" in capsys.readouterr().err


def test_evaluate_ranks_a_nan_model_worst(capsys):
    """`ssmrec evaluate` on a damaged checkpoint used to print HR = 1 and NDCG = inf."""
    from ssmrec.tasks.next_item import NextItemTask

    class NaNModel(torch.nn.Module):
        def forward(self, batch):
            return {"logits": torch.full((len(batch), self.n), float("nan"))}

    cfg = from_dict(_next_item_cfg())
    task = NextItemTask(cfg)
    task.setup()
    net = NaNModel()
    net.n = task.data.n_items
    m = task.evaluate(net, "test", 512)
    assert m["hr@50"] == 0 and m["ndcg@10"] == 0 and m["mrr@10"] == 0
    assert f"{task.data.n_users} of {task.data.n_users} test users have non-finite scores" in capsys.readouterr().err


def test_exclude_items_keeps_the_given_column():
    s = torch.zeros(2, 4)
    exclude_items(s, torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 2, 3]), keep=torch.tensor([2, 0]))
    assert torch.isinf(s).tolist() == [[False, True, False, False], [False, False, True, True]]
