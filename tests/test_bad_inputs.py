"""Bad input never escapes as a traceback or a silent accept: configs, --set overrides, CLI arguments,
checkpoints and output paths each fail with one line that names the key / file and what is allowed.

``CONFIG_CASES`` run in-process (fast); ``CLI_CASES`` run the real CLI in a subprocess. Malformed
data files are covered by tests/data/test_mmctr_io.py, ``ssmrec embed`` by
tests/embed/test_embed_bad_inputs.py, resume states and run folders by tests/train/test_pipeline.py.
"""

import os
import pickle

import pytest
import yaml

from ssmrec.config import load_config
from ssmrec.errors import ConfigError
from tests.conftest import run_cli

BASE = {"name": "run", "model": "mambactr",
        "data": {"dir": "data/x", "max_len": 32},
        "model_params": {"embedding_dim": 8, "headdim": 16, "stage2": "cosine_gru"},
        "train": {"batch_size": 64, "epochs": 1, "max_steps_per_epoch": 2, "progress": False,
                  "checkpoint_every": 0}}

# (--set overrides, text the one error line must contain)
CONFIG_CASES = [
    (["train.batch_size=0"], "'train.batch_size' must be > 0, got 0"),
    (["train.batch_size=-5"], "'train.batch_size' must be > 0, got -5"),
    (["train.batch_size=2.5"], "'train.batch_size' must be an integer, got 2.5"),
    (["train.eval_batch_size=0"], "'train.eval_batch_size' must be > 0"),
    (["train.lr=-0.01"], "'train.lr' must be > 0"),
    (["train.lr=.inf"], "'train.lr' must be a finite number"),
    (["train.lr=fast"], "'train.lr' must be a number, got 'fast'"),
    (["train.epochs=0"], "'train.epochs' must be > 0"),
    (["train.epochs=-1"], "'train.epochs' must be > 0"),
    (["train.patience=-1"], "'train.patience' must be > 0"),
    (["train.threads=-1"], "'train.threads' must be >= 0"),
    (["train.checkpoint_every=-1"], "'train.checkpoint_every' must be >= 0"),
    (["train.grad_clip=.nan"], "'train.grad_clip' must be a finite number"),
    (["train.weight_decay=-1"], "'train.weight_decay' must be >= 0"),
    (["train.optimizer=sgd"], "train.optimizer must be one of 'adam' or 'adamw', got 'sgd'"),
    (["train.lr_schedule=cosine"], "train.lr_schedule must be one of 'plateau' or 'constant'"),
    (["train.monitor=accuracy"], "train.monitor must be one of auc, logloss, gauc"),
    (["train.progress=maybe"], "'train.progress' must be true or false, got 'maybe'"),
    (["train.drop_last=1"], "'train.drop_last' must be true or false, got 1"),
    (["train.batch_sise=3"], "unknown key 'train.batch_sise'"),
    (["train=5"], "'train' must be a mapping"),
    (["model_params.net_dropout=1.5"], "'model_params.net_dropout' must be < 1"),
    (["model_params.embedding_dim=abc"], "'model_params.embedding_dim' must be an integer, got 'abc'"),
    (["model_params.embedding_dim=-4"], "'model_params.embedding_dim' must be > 0, got -4"),
    (["model_params.embedding_dim=0"], "'model_params.embedding_dim' must be > 0, got 0"),
    (["model_params.window=0"], "'model_params.window' must be > 0, got 0"),
    (["model_params.variant=paper", "model_params.stage1=transformer"],
     "variant 'paper' sets stage1, stage1_prenorm_residual, stage2, head; it conflicts with stage1='transformer'"),
    (["model_params.headdim=40"], "model_params.headdim (40) must divide the Mamba-2 inner width"),
    (["model_params.stage1=rnn"], "stage1 must be one of 'mamba2', 'mamba1' or 'transformer', got 'rnn'"),
    (["model_params.scan_impl=gpu"], "scan_impl must be one of"),
    (["model_params.stage_one=mamba2"], "unknown key 'model_params.stage_one' for model 'mambactr'"),
    (["model_params.batch_norm=yes please"], "'model_params.batch_norm' must be true or false"),
    (["model=din", "model_params={attention_hidden: [64, 0]}"], "'model_params.attention_hidden.1' must be > 0"),
    (["model=din", "model_params={dnn_hidden: []}"], "'model_params.dnn_hidden' must have at least 1 element"),
    (["model=transformer_dcn", "model_params={num_heads: 3}"], "num_heads (3) must divide the encoder width"),
    (["model=dmf", "model_params={alpha: 2.0}"], "'model_params.alpha' must be <= 1"),
    (["model=qin", "model_params={attention_norm: sparsemax}"], "attention_norm must be one of 'relu' or 'softmax'"),
    (["model=gpt"], "unknown model 'gpt' for task 'ctr' (choose from din, dmf, mambactr, qin, transformer_dcn)"),
    (["task=vision"], "task must be one of 'ctr', 'next_item' or 'retrieval', got 'vision'"),
    (["name=../escape"], "'name' must use only letters, digits"),
    (["name=[a]"], "'name' must be a string"),
    (["out_dir=[1,2]"], "'out_dir' must be a string"),
    (["data.max_len=0"], "'data.max_len' must be > 0"),
    (["data.dir=[x]"], "'data.dir' must be a string"),
    (["data.colour=red"], "unknown key 'data.colour'"),
    (["colour=red"], "unknown key 'colour'"),
    (["train.lr"], "--set 'train.lr': expected key=value"),
    (["train..lr=1"], "empty key segment"),
]


@pytest.fixture
def config_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(BASE))
    return p


@pytest.mark.parametrize("overrides,needle", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_bad_config_value_is_one_config_error_line(config_file, overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(config_file, overrides)
    msg = str(e.value)
    assert needle in msg, msg
    assert "\n" not in msg and msg.startswith(str(config_file)) or msg.startswith("--set")


@pytest.mark.parametrize("text,needle", [
    ("model: [unclosed", "invalid YAML"),
    ("- a\n- b\n", "top level must be a mapping, got list"),
    ("base: itself.yaml\n", "'base' chain loops back to itself"),
    ("base: 5\n", "'base' must be a config path or built-in name"),
    ("base: no/such/config\n", "no/such/config: config file not found"),
])
def test_bad_config_file_is_one_line(tmp_path, text, needle):
    p = tmp_path / "itself.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_good_values_still_pass(config_file):
    cfg = load_config(config_file, ["train.lr=2e-3", "name=5", "train.optimizer=adamw", "train.monitor=logloss"])
    assert cfg.train.lr == 2e-3 and cfg.name == "5" and cfg.train.optimizer == "adamw"


# ------------------------------------------------------------------ through the CLI
@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    """A tiny trained DIN checkpoint and its config file."""
    from ssmrec.config import from_dict
    from ssmrec.train.trainer import Trainer

    root = tmp_path_factory.mktemp("bad_inputs")
    d = {**BASE, "model": "din", "model_params": {"embedding_dim": 8, "attention_hidden": [16], "dnn_hidden": [16]},
         "data": {"dir": str(tiny_world), "max_len": 16}, "out_dir": str(root / "runs")}
    (root / "c.yaml").write_text(yaml.safe_dump(d))
    Trainer(from_dict(d)).fit()
    return root, root / "runs" / "run" / "best.pt", root / "c.yaml"


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/ssmrec-pwned",))


def _setup(name, root, tiny_world, ckpt):
    """Build the bad input for CLI case ``name``; returns the argv."""
    bad = root / "bad"
    bad.mkdir(exist_ok=True)
    afile = bad / "afile"
    afile.write_text("x")
    if name == "ckpt_empty":
        (bad / "empty.pt").write_bytes(b"")
        return ["evaluate", "--checkpoint", bad / "empty.pt", "--data", tiny_world]
    if name == "ckpt_truncated":
        (bad / "cut.pt").write_bytes(ckpt.read_bytes()[:2000])
        return ["evaluate", "--checkpoint", bad / "cut.pt", "--data", tiny_world]
    if name == "ckpt_text":
        (bad / "text.pt").write_text("not a checkpoint\n")
        return ["evaluate", "--checkpoint", bad / "text.pt", "--data", tiny_world]
    if name == "ckpt_pickle":  # a torch file whose pickle would call os.system
        import torch

        torch.save({"model": Evil()}, bad / "evil.pt")
        return ["evaluate", "--checkpoint", bad / "evil.pt", "--data", tiny_world]
    if name == "ckpt_raw_pickle":
        with open(bad / "evil.pkl", "wb") as f:
            pickle.dump(Evil(), f)
        return ["evaluate", "--checkpoint", bad / "evil.pkl", "--data", tiny_world]
    if name == "ckpt_not_dict":
        import torch

        torch.save([1, 2], bad / "list.pt")
        return ["evaluate", "--checkpoint", bad / "list.pt", "--data", tiny_world]
    if name == "ckpt_dir":
        return ["evaluate", "--checkpoint", bad, "--data", tiny_world]
    if name == "ckpt_missing":
        return ["evaluate", "--checkpoint", bad / "nope.pt"]
    if name == "eval_split":
        return ["evaluate", "--checkpoint", ckpt, "--split", "tset"]
    if name == "eval_data_missing":
        return ["evaluate", "--checkpoint", ckpt, "--data", bad / "nowhere"]
    if name == "eval_other_world":
        other = bad / "other"
        if not other.exists():
            from dataclasses import replace

            from ssmrec.data.synth import PRESETS, synthesize

            synthesize(other, seed=1, config=replace(PRESETS["tiny"], n_items=150))
        return ["evaluate", "--checkpoint", ckpt, "--data", other]
    if name == "predict_out_dir":
        return ["predict", "--checkpoint", ckpt, "--data", tiny_world, "--out", bad]
    if name == "predict_out_below_file":
        return ["predict", "--checkpoint", ckpt, "--data", tiny_world, "--out", afile / "sub.csv"]
    if name == "predict_column":
        return ["predict", "--checkpoint", ckpt, "--data", tiny_world, "--out", bad / "p.csv", "--column", "a,b"]
    if name == "train_resume_overwrite":
        return ["train", "--config", root / "c.yaml", "--resume", "--overwrite"]
    if name == "train_out_dir_below_file":
        return ["train", "--config", root / "c.yaml", "--set", f"out_dir={afile}"]
    if name == "train_data_missing":
        return ["train", "--config", root / "c.yaml", "--set", f"data.dir={bad / 'nowhere'}", "--set",
                f"out_dir={bad / 'runs'}"]
    if name == "train_bad_set":
        return ["train", "--config", root / "c.yaml", "--set", "train.batch_size=0"]
    if name == "train_config_missing":
        return ["train", "--config", "mmctr_synth/no_such_model"]
    if name == "train_unknown_flag":
        return ["train", "--config", root / "c.yaml", "--epochs", "3"]
    if name == "predict_into_input":
        return ["predict", "--checkpoint", ckpt, "--data", tiny_world, "--out", tiny_world / "prediction.csv"]
    if name == "train_into_input":
        return ["train", "--config", root / "c.yaml", "--set", f"out_dir={tiny_world / 'runs'}"]
    if name == "bench_into_input":
        return ["bench", "ctr", "--epochs", "1", "--data", tiny_world, "--out", tiny_world / "bench"]
    if name == "demo_preset":
        return ["demo", "--preset", "huge"]
    if name == "demo_bad_set":
        return ["demo", "--preset", "tiny", "--set", "train.lr=-1", "--data-dir", tiny_world]
    if name == "data_check_missing":
        return ["data", "check", bad / "nowhere"]
    if name == "bench_ctr_epochs":
        return ["bench", "ctr", "--epochs", "0", "--data", tiny_world, "--out", bad / "b"]
    if name == "bench_ctr_out_below_file":
        return ["bench", "ctr", "--epochs", "1", "--data", tiny_world, "--out", afile / "b"]
    raise KeyError(name)


CLI_CASES = [
    ("ckpt_empty", "checkpoint is empty (0 bytes"),
    ("ckpt_truncated", "cannot load checkpoint"),
    ("ckpt_text", "cannot load checkpoint"),
    ("ckpt_pickle", "refused: the file needs arbitrary code to load"),
    ("ckpt_raw_pickle", "cannot load checkpoint (not a complete torch checkpoint file"),
    ("ckpt_not_dict", "not an ssmrec checkpoint (holds a list"),
    ("ckpt_dir", "is a directory, expected a checkpoint file"),
    ("ckpt_missing", "checkpoint not found"),
    ("eval_split", "--split must be one of train, valid, test, got 'tset'"),
    ("eval_data_missing", "data directory not found"),
    ("eval_other_world", "checkpoint was trained with n_items="),
    ("predict_out_dir", "is a directory, expected a file path"),
    ("predict_out_below_file", "afile: cannot write predictions (exists and is not a folder)"),
    ("predict_column", "--column must be a plain column name"),
    ("train_resume_overwrite", "--resume and --overwrite exclude each other"),
    ("train_out_dir_below_file", "a parent is a regular file, not a folder"),
    ("train_data_missing", "data directory not found"),
    ("train_bad_set", "'train.batch_size' must be > 0, got 0"),
    ("train_config_missing", "mmctr_synth/no_such_model: config file not found"),
    ("train_unknown_flag", "unrecognized arguments: --epochs 3"),
    ("predict_into_input", "would be written into the input data folder"),
    ("train_into_input", "would be written into the input data folder"),
    ("bench_into_input", "would be written into the input data folder"),
    ("demo_preset", "argument --preset: invalid choice: 'huge'"),
    ("demo_bad_set", "'train.lr' must be > 0"),
    ("data_check_missing", "data directory not found"),
    ("bench_ctr_epochs", "--epochs must be >= 1, got 0"),
    ("bench_ctr_out_below_file", "a parent is a regular file, not a folder"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,needle", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_cli_input_is_one_line(trained, tiny_world, name, needle):
    root, ckpt, _ = trained
    argv = _setup(name, root, tiny_world, ckpt)
    before = sorted(p.name for p in (root / "runs" / "run").iterdir())
    r = run_cli(*argv, cwd=root)
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith("ssmrec: building")]
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("ssmrec: error: ") and needle in lines[0], lines[0]
    assert sorted(p.name for p in (root / "runs" / "run").iterdir()) == before  # nothing written or removed
    assert not os.path.exists("/tmp/ssmrec-pwned")
    assert sorted(p.name for p in tiny_world.iterdir()) == INPUT_FILES  # the input folder is untouched


INPUT_FILES = sorted(["covers", "item_feature.parquet", "item_info.parquet", "test.parquet", "train.parquet",
                      "truth", "valid.parquet", "world.json"])
