"""Every built-in run config resolves (``base:`` chains included) and its model parameters validate."""

import pytest

from ssmrec.config import builtin_config_dir, load_config

ROOT = builtin_config_dir()
NAMES = sorted(p.relative_to(ROOT).with_suffix("").as_posix() for p in ROOT.rglob("*.yaml")
               if p.parent.name != "bench")  # bench/ holds bench settings, not run configs


def test_the_builtin_configs_are_found():
    assert {"seq/beauty_mamba4rec", "seq/ml50k_sasrec", "mmctr_synth/mambactr"} <= set(NAMES)
    assert {f"tower/{env}_{m}" for env in ("spotify", "vaccine", "hm") for m in ("ft_mamba", "ft_transformer")} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_builtin_config_resolves_and_its_model_params_validate(name):
    from ssmrec.registry import get_model

    cfg = load_config(name)
    get_model(cfg.task, cfg.model).config(cfg.model_params)
    if cfg.task == "next_item" and cfg.data.train_mode == "prefixes":
        assert cfg.train.batch_size == 2048  # the paper's prefixes per step
    if cfg.task == "retrieval":  # FT-Mamba's regime: 160,000 pairs, batch 32, one epoch of 5,000 steps, MSE
        assert (cfg.data.n_pairs, cfg.train.batch_size, cfg.train.epochs, cfg.data.loss) == (160_000, 32, 1, "mse")
        assert cfg.train.lr == (1e-5 if cfg.data.env == "vaccine" else 1e-4)
