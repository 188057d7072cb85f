"""`ssmrec tune`: hyper-parameter search over a declared search space, with Optuna.

A search space is a YAML file (validated; one error line naming the file and key)::

    metric: ndcg@10            # the task's metric to maximise/minimise (default: the task's monitor)
    pruner: median             # median | none: stop a trial whose validation curve is below the median
    warmup_epochs: 3           # epochs every trial runs before it may be pruned
    startup_trials: 3          # trials that are never pruned (the median needs a population)
    sampler: tpe               # tpe | random
    seed: 0                    # the sampler's seed
    params:                    # dotted config keys, as `--set` takes them
      train.lr: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}
      model_params.dropout: {type: float, low: 0.2, high: 0.6}
      model_params.num_layers: {type: int, low: 1, high: 3}
      train.batch_size: {type: categorical, choices: [256, 512, 1024]}

Every trial is one run of the library's Trainer on the base config plus the sampled values, with the
metric as ``train.monitor`` (so early stopping, the kept weights and the trial's value agree) and
``train.evaluate_test: false``: a search selects on the validation split and never reads the test
split. Each epoch's validation value is reported to the study; the pruner may end a trial there.

The study lives in ``OUT/study.db`` (SQLite): rerunning the same command resumes it and runs trials
until ``--trials`` have finished (completed or pruned); a trial left running by a killed search is
marked failed and not counted. After every trial ``trials.csv``, ``best.yaml`` (the base config with
the best trial's values written in: a config to commit and train with) and ``history.png`` are
rewritten atomically.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from ssmrec.errors import ConfigError, SsmrecError
from ssmrec.params import STRICT, NonNegInt, validation_error_line


class ParamSpec(BaseModel):
    model_config = STRICT

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[bool | int | float | str] | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical parameter takes 'choices', not low/high")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes low/high, not 'choices'")
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type} parameter needs low < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got {self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"an int parameter needs integer bounds, got {self.low}, {self.high}")
        return self

    def suggest(self, trial, name: str):
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        value = trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)
        return round(value, 12) if self.step else value  # 0.30000000000000004 -> 0.3 in configs

    def candidates(self) -> list:
        """Values every trial config is validated with before the search starts."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


class SearchSpace(BaseModel):
    model_config = STRICT

    params: dict[str, ParamSpec] = Field(min_length=1)
    metric: str | None = None
    pruner: Literal["median", "none"] = "median"
    warmup_epochs: NonNegInt = 3
    startup_trials: NonNegInt = 3
    sampler: Literal["tpe", "random"] = "tpe"
    seed: NonNegInt = 0


def load_space(path) -> SearchSpace:
    """A space file, or a built-in name such as ``tune/seq_mamba4rec`` (in ``ssmrec/configs``)."""
    from ssmrec.config import resolve_config_path

    path = resolve_config_path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'params' (and optionally metric, pruner, ...)")
    try:
        return SearchSpace.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: {validation_error_line(e, '')}") from None


def _trial_config(base: dict, values: dict, source: str):
    """The validated RunConfig of ``base`` (a merged config dict) with ``values`` at dotted keys."""
    import copy

    from ssmrec.config import from_dict, set_dotted

    d = copy.deepcopy(base)
    for key, value in values.items():
        set_dotted(d, key, value, source)
    return from_dict(d, source=source)


def _finished(study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def run_tune(config: str, space_path, n_trials: int, out, overrides: list[str] | None = None,
             timeout: float | None = None, study_name: str | None = None) -> dict:
    """Run (or resume) the search; return ``{"best_value", "best_params", "trials", ...}``."""
    try:
        import optuna
    except ImportError:
        raise SsmrecError("ssmrec tune needs Optuna: pip install 'ssmrec[tune]'") from None
    from optuna.trial import TrialState

    from ssmrec.config import apply_overrides, load_layers
    from ssmrec.io import check_output_dir
    from ssmrec.metrics import metric_direction
    from ssmrec.tasks import task_class

    if n_trials < 1:
        raise SsmrecError(f"--trials must be >= 1, got {n_trials}")
    space = load_space(space_path)
    base_dict, path = load_layers(config)
    base_dict = apply_overrides(base_dict, overrides)
    base = _trial_config(base_dict, {}, str(path))
    task = task_class(base.task)
    metric = space.metric or base.train.monitor or task.monitor[0]
    allowed = task.monitor_names(base)
    mode = metric_direction(metric)
    if metric not in allowed or mode is None:
        raise ConfigError(f"{space_path}: metric must be one of {', '.join(allowed)}, got {metric!r}")
    base_dict = apply_overrides(base_dict, [f"train.monitor={metric}", "train.evaluate_test=false",
                                            "train.progress=false"])
    # Every value the space can take must make a valid config before anything trains.
    for key, spec in space.params.items():
        for value in spec.candidates():
            _trial_config(base_dict, {key: value}, f"{space_path}: params.{key}")
    out = check_output_dir(out, "tune output")
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=space.startup_trials, n_warmup_steps=space.warmup_epochs)
              if space.pruner == "median" else optuna.pruners.NopPruner())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name or base.name, storage=storage, pruner=pruner,
                                direction="maximize" if mode == "max" else "minimize", load_if_exists=True)
    # A resumed search must not replay the first search's draws: the sampler's seed moves on with the
    # number of trials already in the study (same space + seed + history -> same next trials).
    seed = space.seed + len(study.trials)
    study.sampler = (optuna.samplers.TPESampler(seed=seed) if space.sampler == "tpe"
                     else optuna.samplers.RandomSampler(seed=seed))
    stale = [t for t in study.trials if t.state == TrialState.RUNNING]
    for t in stale:  # left running by a killed search: not resumable mid-trial, not counted
        study.tell(t.number, state=TrialState.FAIL)
    if stale:
        print(f"[tune] marked {len(stale)} trial(s) left running by an earlier search as failed", flush=True)

    def objective(trial):
        from ssmrec.train.trainer import Trainer

        values = {key: spec.suggest(trial, key) for key, spec in space.params.items()}
        name = f"trial-{trial.number:04d}"
        cfg = _trial_config(base_dict, {**values, "out_dir": str(out / "trials"), "name": name},
                            f"{space_path}: trial {trial.number}")
        trainer = Trainer(cfg)

        def report(epoch: int, record: dict) -> None:
            value = record.get(f"valid_{metric}")
            if value is None or not math.isfinite(value):
                return
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: valid {metric} {value:.5f} below the median")

        trainer.epoch_hooks.append(report)
        summary = trainer.fit(overwrite=True)
        trial.set_user_attr("epochs", summary["epochs"])
        trial.set_user_attr("best_epoch", summary["best_epoch"])
        best = trainer.state["best"]
        if best is None or not math.isfinite(best):
            raise SsmrecError(f"trial {trial.number}: the validation {metric} never had a finite value")
        return float(best)

    def after_trial(study, trial):
        _write_outputs(study, out, base_dict, space, metric)
        value = "pruned" if trial.state == TrialState.PRUNED else (
            f"{trial.value:.5f}" if trial.value is not None else trial.state.name.lower())
        best = study.best_trial if any(t.state == TrialState.COMPLETE for t in study.trials) else None
        print(f"[tune] trial {trial.number}: valid {metric} {value}  {trial.params}"
              + (f"  (best so far: trial {best.number}, {best.value:.5f})" if best else ""), flush=True)

    remaining = n_trials - len(_finished(study))
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, timeout=timeout, callbacks=[after_trial],
                       catch=(SsmrecError,))
    else:
        print(f"[tune] the study already holds {len(_finished(study))} finished trials (--trials {n_trials})", flush=True)
    _write_outputs(study, out, base_dict, space, metric)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise SsmrecError(f"tune: no trial completed ({len(study.trials)} tried; see {out / 'trials.csv'})")
    return {"best_value": study.best_value, "best_params": study.best_params, "best_trial": study.best_trial.number,
            "metric": metric, "trials": len(study.trials), "complete": len(complete),
            "pruned": sum(t.state == TrialState.PRUNED for t in study.trials), "out": str(out)}


def _write_outputs(study, out: Path, base_dict: dict, space: SearchSpace, metric: str) -> None:
    import copy

    from optuna.trial import TrialState

    from ssmrec.bench.common import pyplot, save_figure_atomic
    from ssmrec.config import set_dotted
    from ssmrec.io import write_text_atomic

    keys = list(space.params)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", "state", f"valid_{metric}", "epochs", "best_epoch", *keys])
    for t in study.trials:
        w.writerow([t.number, t.state.name.lower(), "" if t.value is None else f"{t.value:.6f}",
                    t.user_attrs.get("epochs", len(t.intermediate_values)), t.user_attrs.get("best_epoch", ""),
                    *(t.params.get(k, "") for k in keys)])
    write_text_atomic(out / "trials.csv", buf.getvalue())
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        return
    best = study.best_trial
    d = copy.deepcopy(base_dict)
    for key, value in best.params.items():
        set_dotted(d, key, value, "best.yaml")
    d["name"] = f"{d.get('name', 'run')}_tuned"
    d.setdefault("train", {}).pop("evaluate_test", None)  # the final runs read the test split once
    d["train"].pop("progress", None)
    header = (f"# Found by `ssmrec tune` (study '{study.study_name}', {out / 'study.db'}): trial {best.number} of "
              f"{len(study.trials)}, valid {metric} {best.value:.5f}.\n")
    write_text_atomic(out / "best.yaml", header + yaml.safe_dump(d, sort_keys=False))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    done = [t for t in study.trials if t.value is not None]
    ax.scatter([t.number for t in done], [t.value for t in done], s=14, label="completed trial")
    for t in study.trials:
        if t.state == TrialState.PRUNED and t.intermediate_values:
            ax.scatter(t.number, t.intermediate_values[max(t.intermediate_values)], marker="x", color="grey", s=14)
    sign = 1 if study.direction.name == "MAXIMIZE" else -1
    running, xs, ys = None, [], []
    for t in sorted(done, key=lambda t: t.number):
        running = t.value if running is None or sign * t.value > sign * running else running
        xs.append(t.number), ys.append(running)
    ax.step(xs, ys, where="post", color="C1", label="best so far")
    ax.set_xlabel("trial (x = pruned, at its last reported epoch)"), ax.set_ylabel(f"valid {metric}")
    ax.legend(fontsize=7)
    fig.suptitle(f"ssmrec tune — {study.study_name}")
    save_figure_atomic(fig, out / "history.png")


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="hyper-parameter search (Optuna, SQLite study, resumable, pruning on validation)",
                       description="Search a declared space (YAML) around a config; every trial trains with the "
                                   "library's Trainer and is judged on the validation split only.")
    p.add_argument("--config", required=True, help="base config: YAML path or built-in name (e.g. seq/beauty_mamba4rec)")
    p.add_argument("--space", required=True, help="search space YAML (e.g. configs/tune/seq_mamba4rec.yaml)")
    p.add_argument("--trials", type=int, default=20, help="finished trials the study should hold (resumes count)")
    p.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    p.add_argument("--out", help="study folder (default runs/tune/<config name>): study.db, trials/, trials.csv, "
                                 "best.yaml, history.png")
    p.add_argument("--study", help="study name inside study.db (default the config's name)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base-config key (repeatable)")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    import json

    from ssmrec.config import load_config

    out = args.out or str(Path("runs") / "tune" / load_config(args.config, args.set).name)
    result = run_tune(args.config, args.space, args.trials, out, args.set, args.timeout, args.study)
    print(json.dumps(result))
    return 0
