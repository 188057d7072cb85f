"""The README's "Adding a model" example works as written: one registered class + one short YAML,
trained by the shared Trainer through the CLI (the class is loaded with SSMREC_PLUGINS)."""

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _example():
    text = README.read_text()
    block = text.split("<!-- add-a-model example")[1].split("<!-- end of add-a-model example -->")[0]
    code = re.search(r"```python\n(.*?)```", block, re.S).group(1)
    conf = re.search(r"```yaml\n(.*?)```", block, re.S).group(1)
    return code, conf


@pytest.mark.slow
def test_readme_model_example_trains(tmp_path, tiny_world):
    code, conf = _example()
    (tmp_path / "my_models.py").write_text(code)
    d = yaml.safe_load(conf)
    assert len(conf.strip().splitlines()) <= 6  # "one short YAML"
    d["data"]["dir"] = str(tiny_world)
    d["out_dir"] = str(tmp_path / "runs")
    d["train"].update(epochs=1, max_steps_per_epoch=5, progress=False)
    (tmp_path / "mean_pool.yaml").write_text(yaml.safe_dump(d))
    env = {"SSMREC_PLUGINS": "my_models", "PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parents[1]}"}
    r = run_cli("train", "--config", tmp_path / "mean_pool.yaml", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["model"] == "mean_pool" and summary["valid_auc"] > 0.5
    # Its config is validated like every built-in model's.
    r = run_cli("train", "--config", tmp_path / "mean_pool.yaml", "--set", "model_params.hidden=[0]",
                "--overwrite", env=env)
    assert r.returncode == 2 and "'model_params.hidden.0' must be > 0" in r.stderr
    # The CTRModel mixin makes it servable: its served score equals forward on its window.
    script = ("import sys, torch; from ssmrec.checkpoint import load_model; from ssmrec.serve.adapter import ServingAdapter;"
              "m, *_ = load_model(sys.argv[1]); a = ServingAdapter(m); e = a.prefill(torch.tensor([3, 1, 4]));"
              "c = torch.tensor([2, 5]); f = [{'likes_level': c * 0, 'views_level': c * 0}];"
              "print(a.score([e], [c], f)[0].tolist() == m.offline_score([torch.tensor([3, 1, 4])], [c], f)[0].tolist())")
    import subprocess
    import sys

    ckpt = next((tmp_path / "runs").glob("*/best.pt"))
    out = subprocess.run([sys.executable, "-c", script, str(ckpt)], capture_output=True, text=True,
                         env={**__import__("os").environ, **env})
    assert out.stdout.strip() == "True", out.stderr[-2000:]
    # Without the plugin the name is unknown, in one line that lists the known models.
    r = run_cli("train", "--config", tmp_path / "mean_pool.yaml", "--overwrite",
                env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert r.returncode == 2 and "unknown model 'mean_pool' for task 'ctr'" in r.stderr
