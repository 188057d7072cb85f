"""`ssmrec bench seq --quality`: the sequential quality table, several seeds per row, with its cost.

A plan (YAML, default the built-in ``bench/seq_quality``) lists per dataset the rows to train — a
config (a named variant under ``configs/seq``) and the protocol validation selects with — the number
of seeds, and the published anchors to print beside them::

    seeds: 3                      # per row: the config's train.seed, +1, +2
    datasets:
      beauty:
        rows:
          - {config: seq/beauty_mamba4rec, protocol: unmasked}
          - {config: seq/beauty_mamba4rec_b256, protocol: masked, label: Mamba4Rec tuned}
        anchors:
          - {name: BSARec (AAAI'24), protocol: masked, hr@10: 0.1008, ndcg@10: 0.0611}

Every (row, seed) is one ``ssmrec train`` in its own process (peak RSS from ``os.wait4``), ``--jobs``
at a time with ``--threads`` each, in ``OUT/runs/<dataset>/<row>-s<seed>``. A run whose
``summary.json`` exists and whose saved config equals the one the plan asks for is kept, not
retrained, and a run of that config interrupted mid-way continues from its ``last.pt`` (``ssmrec
train --resume``, from its last finished epoch): the bench resumes, and a run trained by hand with
exactly that config counts (its RSS is then unknown; a resumed run's RSS is that of its last part). Validation selects the epoch (early stopping on the row's protocol); the test split is
read once per run, at its end. Reported per row: test HR / NDCG / MRR @10 and @20 under the
selection protocol as mean ± sample std over the seeds, NDCG@10 / HR@10 under the other protocol
(same weights), epochs to best / run, train s per epoch (median over the runs' epochs), total train
time, peak RSS, parameters. Writes ``quality.json``, ``quality.md`` and ``quality.png`` (test NDCG@10
against total train time, per dataset, anchors as lines).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from ssmrec.bench.common import machine_info, markdown_table, pyplot, save_figure_atomic, write_json_atomic, \
    write_text_atomic
from ssmrec.errors import ConfigError, SsmrecError, one_line
from ssmrec.params import STRICT, PosInt, validation_error_line

PROTOCOLS = ("unmasked", "masked")
KS = (10, 20)
METRICS = tuple(f"{m}@{k}" for k in KS for m in ("hr", "ndcg", "mrr"))


class Row(BaseModel):
    model_config = STRICT

    config: str
    protocol: Literal["unmasked", "masked"]
    label: str | None = None
    set: dict[str, bool | int | float | str | list] = Field(default_factory=dict)

    def name(self) -> str:
        base = Path(self.config).stem
        return f"{base}-{self.protocol}"


class Anchor(BaseModel):
    model_config = STRICT

    name: str
    protocol: Literal["unmasked", "masked"]
    hr10: float | None = Field(None, alias="hr@10")
    ndcg10: float | None = Field(None, alias="ndcg@10")


class DatasetPlan(BaseModel):
    model_config = STRICT

    rows: list[Row] = Field(min_length=1)
    anchors: list[Anchor] = Field(default_factory=list)
    note: str | None = None


class Plan(BaseModel):
    model_config = STRICT

    seeds: PosInt = 3
    datasets: dict[str, DatasetPlan] = Field(min_length=1)


def load_plan(name_or_path) -> tuple[Plan, Path]:
    from ssmrec.config import read_yaml, resolve_config_path

    path = resolve_config_path(name_or_path)
    try:
        return Plan.model_validate(read_yaml(path)), path
    except ValidationError as e:
        raise ConfigError(f"{path}: {validation_error_line(e)}") from None


def _overrides(row: Row) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in row.set.items()]


def select(plan: Plan, datasets: list[str] | None, rows: list[str] | None) -> Plan:
    """The plan restricted to ``datasets`` and to rows named ``rows`` (``<config stem>-<protocol>``)."""
    names = datasets or list(plan.datasets)
    unknown = [d for d in names if d not in plan.datasets]
    if unknown:
        raise SsmrecError(f"--datasets: '{unknown[0]}' is not in the plan (choose from {', '.join(plan.datasets)})")
    picked = {}
    for d in names:
        keep = [r for r in plan.datasets[d].rows if rows is None or r.name() in rows]
        if keep:
            picked[d] = plan.datasets[d].model_copy(update={"rows": keep})
    every = {r.name() for d in names for r in plan.datasets[d].rows}
    missing = sorted(set(rows or []) - every)
    if missing or not picked:
        raise SsmrecError(f"--rows: '{missing[0] if missing else ''}' is not a row of the selected datasets "
                          f"(choose from {', '.join(sorted(every))})")
    return plan.model_copy(update={"datasets": picked})


def plan_runs(plan: Plan, out: Path, epochs: int | None, threads: int, extra: list[str],
              records: Path | None = None) -> list[dict]:
    """Every (dataset, row, seed) of ``plan`` (restricted beforehand by :func:`select`) as ``{dataset,
    row, seed, config, sets, run_dir, resolved}``; every config is validated before anything trains.
    Seed-major order (every row's first seed, then every row's second, ...): a bench stopped early
    leaves one seed of every row rather than all seeds of the first rows."""
    from ssmrec.config import load_config

    runs = []
    for dataset in plan.datasets:
        for row in plan.datasets[dataset].rows:
            sets = _overrides(row) + [f"data.protocol={row.protocol}"] + list(extra)
            base_seed = load_config(row.config, sets).train.seed
            for i in range(plan.seeds):
                run_name = f"{row.name()}-s{i}"
                run_sets = sets + [f"train.seed={base_seed + i}", f"out_dir={out / 'runs' / dataset}",
                                   f"name={run_name}", "train.progress=false"]
                if epochs:
                    run_sets.append(f"train.epochs={epochs}")
                if threads > 0:
                    run_sets.append(f"train.threads={threads}")
                cfg = load_config(row.config, run_sets)
                runs.append({"dataset": dataset, "row": row, "seed": base_seed + i, "seed_index": i,
                             "config": row.config,
                             "sets": run_sets, "run_dir": out / "runs" / dataset / run_name,
                             "records": records or out / "records",
                             "resolved": cfg.resolved()})
    return sorted(runs, key=lambda r: r["seed_index"])  # stable: dataset and row order kept per seed


def _config_matches(saved: dict, run: dict) -> bool:
    """Is ``saved`` (a resolved config) exactly this run's config (bookkeeping keys aside)?"""
    from ssmrec.config import resume_incompatibilities

    return not resume_incompatibilities(saved, run["resolved"]) and saved["train"]["epochs"] == run["resolved"]["train"]["epochs"]


def _saved_matches(run: dict) -> bool:
    """Does ``run_dir/config.yaml`` hold exactly this run's config (budget keys aside)?"""
    path = run["run_dir"] / "config.yaml"
    return path.is_file() and _config_matches(yaml.safe_load(path.read_text()), run)


def _record_path(run: dict) -> Path:
    return run["records"] / run["dataset"] / f"{run['run_dir'].name}.json"


def _stored_record(run: dict) -> dict | None:
    """The kept record of a finished run of exactly this config (see :func:`_store_record`), or None."""
    path = _record_path(run)
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SsmrecError(f"{path}: not a readable run record ({one_line(str(e), 120)}); delete it to retrain") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("config"), dict) or rec.get("status") != "ok":
        raise SsmrecError(f"{path}: not a run record of `ssmrec bench seq --quality` (no 'config' / 'status: ok'); "
                          "delete it to retrain")
    return rec if _config_matches(rec["config"], run) else None


def _store_record(run: dict, rec: dict, saved: dict) -> None:
    """Keep a finished run's numbers (metrics, epochs, per-epoch times, RSS, its resolved config) as one
    small JSON under ``--records``: the table regenerates from the records alone after the run folders
    (checkpoints, GBs) are gone — commit the records folder to keep a table reproducible from a clone.
    ``saved`` is the run's resolved config (its config.yaml)."""
    write_json_atomic(_record_path(run), {**rec, "config": saved})


def _same_run(run: dict) -> bool:
    """Has this run finished with exactly this config (its run folder, or where that is gone a kept record)?"""
    if run["run_dir"].is_dir():  # the folder, finished or interrupted, outranks a record
        return (run["run_dir"] / "summary.json").is_file() and _saved_matches(run)
    return _stored_record(run) is not None


def _resumable(run: dict) -> bool:
    """An interrupted run of exactly this config, with a last.pt to continue from."""
    return (run["run_dir"] / "last.pt").is_file() and not (run["run_dir"] / "summary.json").is_file() \
        and _saved_matches(run)


def _execute(todo: list[dict], jobs: int) -> None:
    """Train ``todo`` with at most ``jobs`` processes at once; each run's exit code and peak RSS
    (``os.wait4``, that process alone) go to ``run_dir/bench.json``."""
    pending = list(todo)
    running: dict[int, tuple] = {}
    while pending or running:
        while pending and len(running) < jobs:
            run = pending.pop(0)
            run["run_dir"].parent.mkdir(parents=True, exist_ok=True)
            # an interrupted run of the same config continues from its last.pt (epoch boundary)
            resume = run.get("resume", False)
            cmd = [sys.executable, "-m", "ssmrec.cli", "train", "--config", run["config"],
                   "--resume" if resume else "--overwrite"]
            for s in run["sets"]:
                cmd += ["--set", s]
            log = open(run["run_dir"].parent / f"{run['run_dir'].name}.log", "a" if resume else "w")
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            # keep the Popen referenced: a collected, still-running Popen is reaped by subprocess's own
            # cleanup at the next Popen, and os.wait4 below would never see it
            running[p.pid] = (run, time.perf_counter(), log, p)
            print(f"[bench seq --quality] {'resume' if resume else 'start'} {run['dataset']} {run['run_dir'].name}",
                  flush=True)
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        run, t0, log, proc = running.pop(pid)
        log.close()
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code  # reaped here: Popen must not wait for it again
        info = {"exit_code": code, "peak_rss_mb": usage.ru_maxrss / 1024.0, "wall_s": time.perf_counter() - t0,
                "jobs": jobs, "threads": run["resolved"]["train"].get("threads")}
        if run["run_dir"].is_dir():
            write_json_atomic(run["run_dir"] / "bench.json", info)
        run["exit_code"] = code
        print(f"[bench seq --quality] done  {run['dataset']} {run['run_dir'].name}: exit {code}, "
              f"{info['wall_s']:.0f} s, {info['peak_rss_mb']:.0f} MB", flush=True)


def _collect(run: dict) -> dict:
    d = run["run_dir"]
    rec = {"dataset": run["dataset"], "row": run["row"].name(), "seed": run["seed"]}
    if not d.is_dir():  # the run folder is gone (another machine, cleaned up): its kept record
        kept = _stored_record(run)
        if kept is not None:
            return {k: v for k, v in kept.items() if k != "config"}
    if not (d / "summary.json").is_file():
        log = d.parent / f"{d.name}.log"
        tail = log.read_text().strip().splitlines()[-1:] if log.is_file() else []
        rec.update(status="failed", error=one_line(tail[0] if tail else "no summary.json", 300))
        return rec
    s = json.loads((d / "summary.json").read_text())
    hist = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
    bench = json.loads((d / "bench.json").read_text()) if (d / "bench.json").is_file() else {}
    saved = yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").is_file() else {}
    rec.update(status="ok", params=s["params"], best_epoch=s["best_epoch"], epochs=s["epochs"],
               threads=(saved.get("train") or {}).get("threads"), jobs=bench.get("jobs"),
               epoch_s=[h["train_s"] for h in hist], peak_rss_mb=bench.get("peak_rss_mb"),
               curve=[h.get("valid_ndcg@10") for h in hist])
    for p in PROTOCOLS:
        for m in METRICS:
            rec[f"{p}_{m}"] = s.get(f"test_{p}_{m}")
    if saved:  # a record without its config could never be matched to a plan's run
        _store_record(run, rec, saved)
    return rec


def _mean_std(xs: list[float]) -> tuple[float, float | None]:
    """(mean, sample std); the std is None for a single value (one seed has no spread to report)."""
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def aggregate(plan: Plan, records: list[dict]) -> list[dict]:
    """One entry per (dataset, row): mean ± std over its finished seeds."""
    out = []
    for dataset, dp in plan.datasets.items():
        for row in dp.rows:
            ok = [r for r in records if r["dataset"] == dataset and r["row"] == row.name() and r["status"] == "ok"]
            if not ok:
                continue
            agg = {"dataset": dataset, "row": row.name(), "label": row.label or row.name(), "config": row.config,
                   "protocol": row.protocol, "seeds": len(ok), "params": ok[0]["params"]}
            for p in PROTOCOLS:
                for m in METRICS:
                    vals = [r[f"{p}_{m}"] for r in ok if r.get(f"{p}_{m}") is not None]
                    if vals:
                        agg[f"{p}_{m}"] = _mean_std(vals)
            all_epochs = [t for r in ok for t in r["epoch_s"]]
            agg.update(best_epoch=_mean_std([r["best_epoch"] for r in ok]), epochs=_mean_std([r["epochs"] for r in ok]),
                       epoch_s_median=statistics.median(all_epochs) if all_epochs else None,
                       epoch_s_min=min(all_epochs) if all_epochs else None,
                       train_s=_mean_std([sum(r["epoch_s"]) for r in ok]),
                       peak_rss_mb=max((r["peak_rss_mb"] for r in ok if r["peak_rss_mb"] is not None), default=None))
            out.append(agg)
    return out


def _pm(v, spec=".4f") -> str:
    if v is None:
        return "n/a"
    m, s = v
    return f"{m:{spec}}" if s is None else f"{m:{spec}} ± {s:{spec}}"


def write_report(out: Path, plan: Plan, plan_path: Path, records: list[dict], rows: list[dict], meta: dict) -> None:
    write_json_atomic(out / "quality.json", {"meta": meta, "rows": rows, "runs": records})
    ok = [r for r in records if r["status"] == "ok"]

    def seen(key: str) -> str:  # the distinct values the finished runs recorded ("?" where none)
        return ", ".join(sorted({"?" if r.get(key) is None else str(r[key]) for r in ok})) or "n/a"

    lines = ["# `ssmrec bench seq --quality`", "",
             f"Plan `{plan_path}`; {meta['seeds']} seed(s) per row (the config's train.seed, +1, ...), mean ± sample "
             "std. Test metrics of the epoch with the best validation value of the row's monitor (NDCG@10 unless "
             "its config sets train.monitor) under the row's protocol (the test "
             "split is read once per run, at its end); the other protocol's columns are the same weights. Full "
             "ranking over all items, ties pessimistic. Train s/epoch: min / median over every epoch of the row's runs, "
             f"as each run recorded it (threads per run: {seen('threads')}; runs at a time: {seen('jobs')}, "
             "and other work may have shared the machine), so times are comparable within this table only; "
             "`ssmrec bench seq` measures speed alone.", ""]
    for dataset, dp in plan.datasets.items():
        drows = [r for r in rows if r["dataset"] == dataset]
        if not drows and not dp.anchors:
            continue
        lines += [f"## {dataset}", ""] + ([dp.note, ""] if dp.note else [])
        table = []
        for r in drows:
            sel, other = r["protocol"], PROTOCOLS[1 - PROTOCOLS.index(r["protocol"])]
            table.append([r["label"], sel, r["seeds"], *(_pm(r.get(f"{sel}_{m}")) for m in METRICS),
                          f"{_pm(r.get(f'{other}_hr@10'))} / {_pm(r.get(f'{other}_ndcg@10'))}",
                          f"{r['best_epoch'][0]:.0f} / {r['epochs'][0]:.0f}",
                          "n/a" if r["epoch_s_median"] is None else f"{r['epoch_s_min']:.1f} / {r['epoch_s_median']:.1f}",
                          f"{r['train_s'][0]:.0f}",
                          "n/a" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}", f"{r['params']:,}"])
        for a in dp.anchors:
            table.append([f"*{a.name}* (published)", a.protocol, "–",
                          "n/a" if a.hr10 is None else f"{a.hr10:.4f}", "n/a" if a.ndcg10 is None else f"{a.ndcg10:.4f}",
                          "–", "–", "–", "–", "–", "–", "–", "–", "–", "–"])
        lines += [markdown_table(["row", "selected on", "seeds", *(m.upper().replace("@", "@") for m in METRICS),
                                  "other protocol HR@10 / NDCG@10", "best / epochs (mean)", "train s/epoch (min / median)",
                                  "train s per run (mean)", "peak RSS MB", "params"], table), ""]
    missing = [r for r in records if r["status"] == "missing"]
    if missing:
        seeds_by_row: dict[str, list[str]] = {}
        for r in missing:  # one entry per row (its missing seeds), not one per run
            seeds_by_row.setdefault(f"{r['dataset']} {r['row']}", []).append(str(r["seed"]))
        lines += ["Not trained yet: " + "; ".join(f"{row} (seeds {', '.join(seeds)})"
                                                                 for row, seeds in seeds_by_row.items()), ""]
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        lines += ["**Failed:** " + "; ".join(f"{r['dataset']} {r['row']} seed {r['seed']}: {r['error']}" for r in failed), ""]
    write_text_atomic(out / "quality.md", "\n".join(lines))
    if not rows:
        return
    plt = pyplot()
    shown = [d for d in plan.datasets if any(r["dataset"] == d for r in rows)]
    # legends go under the panels (they list up to a dozen rows and anchors): the figure grows to fit
    entries = max(sum(r["dataset"] == d for r in rows)
                  + sum(a.ndcg10 is not None for a in plan.datasets[d].anchors) for d in shown)
    legend_in = 0.16 * entries + 0.6
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4 + legend_in), squeeze=False)
    fig.subplots_adjust(bottom=(legend_in + 0.5) / (4 + legend_in), top=1 - 0.6 / (4 + legend_in), wspace=0.3)
    for ax, dataset in zip(axes[0], shown):
        for r in (r for r in rows if r["dataset"] == dataset):
            m, s = r[f"{r['protocol']}_ndcg@10"]
            ax.errorbar(r["train_s"][0], m, yerr=s or 0.0, fmt="o" if r["protocol"] == "masked" else "s", capsize=3,
                        label=f"{r['label']} ({r['protocol']})")
        for i, a in enumerate(plan.datasets[dataset].anchors):
            if a.ndcg10 is not None:
                ax.axhline(a.ndcg10, ls="--" if a.protocol == "masked" else ":", color=f"C{(i + 5) % 10}", lw=1,
                           label=f"{a.name} ({a.protocol})")
        ax.set_xlabel("train time per run, s (mean over seeds)"), ax.set_ylabel("test NDCG@10 (selection protocol)")
        ax.set_title(dataset)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.17), borderaxespad=0)
    fig.suptitle("ssmrec bench seq --quality: quality vs train time (error bars: std over seeds)")
    save_figure_atomic(fig, out / "quality.png")


def cmd_bench_seq_quality(args) -> int:
    from ssmrec.io import check_output_dir

    plan, plan_path = load_plan(args.plan)
    if args.jobs < 1:
        raise SsmrecError(f"--jobs must be >= 1, got {args.jobs}")
    if args.seeds is not None and args.seeds < 1:
        raise SsmrecError(f"--seeds must be >= 1, got {args.seeds}")
    if args.quality_epochs is not None and args.quality_epochs < 1:
        raise SsmrecError(f"--epochs must be >= 1, got {args.quality_epochs}")
    split = (lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None)
    plan = select(plan, split(args.datasets), split(args.rows))
    if args.seeds:
        plan = plan.model_copy(update={"seeds": args.seeds})
    out = check_output_dir(args.out, "bench output")
    records_dir = check_output_dir(args.records, "--records") if args.records else None
    runs = plan_runs(plan, out, args.quality_epochs, args.threads, list(args.set or []), records_dir)
    todo = [r for r in runs if args.rerun or not _same_run(r)]
    finished = len(runs) - len(todo)
    if args.seed_index:  # train only these seeds of each row; the report still reads every finished one
        try:
            picked = {int(x) for x in args.seed_index.split(",") if x.strip()}
        except ValueError:
            picked = {-1}
        if not picked or min(picked) < 0 or max(picked) >= plan.seeds:
            raise SsmrecError(f"--seed-index must be comma-separated integers in 0..{plan.seeds - 1} "
                              f"(--seeds {plan.seeds}), got '{args.seed_index}'")
        for r in todo:
            r["skipped"] = r["seed_index"] not in picked
        todo = [r for r in todo if not r["skipped"]]
    for r in todo:
        r["resume"] = not args.rerun and _resumable(r)
    print(f"[bench seq --quality] {len(runs)} runs planned, {finished} already finished with the same "
          f"config, {len(todo)} to train ({args.jobs} at a time)", flush=True)
    if args.dry_run and not args.report_only:
        for r in runs:
            print(f"  {('resume' if r['resume'] else 'train ') if r in todo else 'skip  ' if r.get('skipped') else 'keep  '} {r['dataset']} {r['run_dir'].name}: {r['config']} "
                  + " ".join(s for s in r["sets"] if not s.startswith(("out_dir=", "name="))))
        return 0
    if args.report_only:  # tables of what has finished; nothing trains
        todo = []
    _execute(todo, args.jobs)
    records = [_collect(r) for r in runs]
    for run, rec in zip(runs, records):  # not asked to train: missing, not failed
        if rec["status"] == "failed" and (args.report_only or run.get("skipped")):
            rec.update(status="missing", error="not trained (--report-only)" if args.report_only else "not trained (--seed-index)")
    rows = aggregate(plan, records)
    meta = {"plan": str(plan_path), "seeds": plan.seeds, "jobs": args.jobs, "threads": args.threads,
            "epochs": args.quality_epochs, "set": list(args.set or []), "machine": machine_info()}
    write_report(out, plan, plan_path, records, rows, meta)
    print((out / "quality.md").read_text())
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        raise SsmrecError(f"{len(failed)} of {len(records)} runs failed: {failed[0]['dataset']} {failed[0]['row']} "
                          f"seed {failed[0]['seed']}: {failed[0]['error']}")
    return 0
