"""Every built-in run config resolves (``base:`` chains included) and its model parameters validate."""

import pytest

from ssmrec.config import builtin_config_dir, load_config

ROOT = builtin_config_dir()
NAMES = sorted(p.relative_to(ROOT).with_suffix("").as_posix() for p in ROOT.rglob("*.yaml")
               if p.parent.name not in ("bench", "tune"))  # bench settings and search spaces, not run configs


def test_the_builtin_configs_are_found():
    assert {"seq/beauty_mamba4rec", "seq/ml50k_sasrec", "mmctr_synth/mambactr"} <= set(NAMES)
    assert {f"tower/{env}_{m}" for env in ("spotify", "vaccine", "hm") for m in ("ft_mamba", "ft_transformer")} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_builtin_config_resolves_and_its_model_params_validate(name):
    from ssmrec.registry import get_model

    cfg = load_config(name)
    get_model(cfg.task, cfg.model).config(cfg.model_params)
    if cfg.task == "next_item" and cfg.data.train_mode == "prefixes" and name.count("_") == 1:
        assert cfg.train.batch_size == 2048  # the paper's prefixes per step (named variants may differ)
    if cfg.task == "retrieval":  # FT-Mamba's regime: 160,000 pairs, batch 32, one epoch of 5,000 steps, MSE
        assert (cfg.data.n_pairs, cfg.train.batch_size, cfg.train.epochs, cfg.data.loss) == (160_000, 32, 1, "mse")
        assert cfg.train.lr == (1e-5 if cfg.data.env == "vaccine" else 1e-4)


def test_the_seq_quality_plan_resolves_every_row(tmp_path):
    """Every row of the built-in `bench seq --quality` plan is a valid run config (with its protocol)."""
    from ssmrec.bench.seq_quality import load_plan, plan_runs

    plan, _ = load_plan("bench/seq_quality")
    runs = plan_runs(plan, tmp_path, None, 1, [])
    assert len(runs) == plan.seeds * sum(len(d.rows) for d in plan.datasets.values())
    assert {r["resolved"]["data"]["protocol"] for r in runs} == {"masked", "unmasked"}
    assert len({r["run_dir"] for r in runs}) == len(runs)  # no two runs share a folder


@pytest.mark.parametrize("space", sorted(p.stem for p in (ROOT / "tune").glob("*.yaml")))
def test_builtin_search_spaces_load(space):
    from ssmrec.train.tune import load_space

    assert load_space(f"tune/{space}").params
