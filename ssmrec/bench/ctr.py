"""`ssmrec bench ctr`: train a list of CTR models on the same data, seed and epoch budget, side by side.

The model list is a YAML file (default ``configs/bench/ctr.yaml``)::

    models:
      - label: mambactr_origin          # name in the table and for --models
        config: mmctr_synth/mambactr_default   # run YAML (path or built-in name under configs/)
        set: {model_params.use_mm_emb: false}  # optional overrides of that config
        reference: mmctr/mambactr       # optional; default configs/mmctr/<config's file name>
        paper: mambactr_origin          # optional; row of PAPER_AUC for the "vs paper" section

Every model runs in its own fresh interpreter (``python -m ssmrec.bench.ctr --worker``) through the
library's :class:`~ssmrec.train.trainer.Trainer`, so peak RSS is per model and memory is returned
between models. The bench then overrides, for every model alike: ``data.dir`` (``--data``),
``train.epochs`` (``--epochs``), ``train.seed`` (``--seed``), and the run folder.

Outputs (``--out``, written atomically after every model, so a crash loses at most the model in
flight): ``results.json``, ``results.md`` (sorted by valid AUC, plus the comparison with the
published MM-CTR numbers) and ``auc_vs_time.png``; per-model training logs in ``logs/`` and run
folders (checkpoints, curves) in ``runs/``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ssmrec.io import check_not_inside, check_output_dir
from ssmrec.bench.common import (format_seconds, machine_info, markdown_table, peak_rss_mb, pyplot,
                                 save_figure_atomic, summarize_times, time_repeats, write_json_atomic,
                                 write_text_atomic)
from ssmrec.config import (apply_overrides, builtin_config_dir, from_dict, load_layers, resolve_config_path,
                           set_dotted)
from ssmrec.errors import ConfigError, DataError, SsmrecError, one_line

DEFAULT_LIST = builtin_config_dir() / "bench" / "ctr.yaml"
DEFAULT_DATA = "data/synth-default"
DEFAULT_SEED = 20242025
DEFAULT_OUT = "runs/bench-ctr"

# Vocabulary sizes of the real MM-CTR data (reference doc §11.1; shared/data/mmctr-microlens1m-vocab):
# item_id 0..91,716 + OOV, item_tags 0..11,738 + OOV, likes/views levels 0..9 + OOV.
REFERENCE_VOCAB = {"item_id": 91_718, "item_tags": 11_740, "levels": 11}

# Published MicroLens-1M numbers (reference doc §10.1): (row, valid AUC, test AUC, source).
PAPER_AUC = {
    "din": ("DIN (official baseline)", 0.8655, 0.8699, "baseline README; MambaCTR Table 2"),
    "qin": ("QIN (re-run by MambaCTR)", 0.9701, 0.9758, "MambaCTR Table 2"),
    "transformer_dcn": ("Transformer-DCN (momo, 1st)", 0.9776, 0.9839, "MambaCTR Table 2"),
    "mambactr_origin": ("MambaCTR origin (Mamba2)", 0.9605, 0.9835, "MambaCTR Table 2"),
    "mambactr_ablated": ("MambaCTR ablated (Transformer)", 0.9803, 0.9865, "MambaCTR Table 2"),
    "mambactr_origin_nomm": ("MambaCTR origin w/o item_emb_d128", None, 0.9672, "MambaCTR Table 5"),
    "mambactr_ablated_nomm": ("MambaCTR ablated w/o item_emb_d128", None, 0.9756, "MambaCTR Table 5"),
}

_ENTRY_KEYS = ("label", "config", "set", "reference", "paper")
_LABEL_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


# ------------------------------------------------------------------------------------------ list
@dataclass
class BenchEntry:
    label: str
    config: str
    set: dict = field(default_factory=dict)
    reference: str | None = None
    paper: str | None = None


def load_entries(path) -> list[BenchEntry]:
    """Parse and validate a bench list YAML (strict keys, unique labels)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: bench model list not found")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or set(doc) != {"models"} or not isinstance(doc["models"], list):
        raise ConfigError(f"{path}: expected a single top-level key 'models' holding a list")
    entries, seen = [], set()
    for i, raw in enumerate(doc["models"]):
        where = f"{path}: models[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping with keys {', '.join(_ENTRY_KEYS)}")
        unknown = [k for k in raw if k not in _ENTRY_KEYS]
        if unknown:
            raise ConfigError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(_ENTRY_KEYS)})")
        for key in ("label", "config"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise ConfigError(f"{where}: '{key}' must be a non-empty string")
        if not _LABEL_RE.match(raw["label"]):
            raise ConfigError(f"{where}: label {raw['label']!r} may only use letters, digits, '_', '.', '-'")
        if raw["label"] in seen:
            raise ConfigError(f"{where}: duplicate label '{raw['label']}'")
        seen.add(raw["label"])
        sets = raw.get("set") or {}
        if not isinstance(sets, dict) or not all(isinstance(k, str) for k in sets):
            raise ConfigError(f"{where}: 'set' must be a mapping of dotted config keys to values")
        if raw.get("paper") is not None and raw["paper"] not in PAPER_AUC:
            raise ConfigError(f"{where}: unknown paper row '{raw['paper']}' (known: {', '.join(PAPER_AUC)})")
        entries.append(BenchEntry(raw["label"], raw["config"], dict(sets), raw.get("reference"), raw.get("paper")))
    if not entries:
        raise ConfigError(f"{path}: the model list is empty")
    return entries


def select_entries(entries: list[BenchEntry], models: str | None, source) -> list[BenchEntry]:
    if not models:
        return entries
    by_label = {e.label: e for e in entries}
    wanted = [m.strip() for m in models.split(",") if m.strip()]
    if not wanted:
        raise SsmrecError("--models: no model label given")
    for m in wanted:
        if m not in by_label:
            raise SsmrecError(f"--models: unknown model '{m}' (in {source}: {', '.join(by_label)})")
    return [by_label[m] for m in dict.fromkeys(wanted)]


def _config_path(name: str) -> Path:
    """The file a bench entry's ``config`` names (resolved like every other config; may not exist)."""
    try:
        return resolve_config_path(name)
    except ConfigError:
        return Path(name)


def run_config_for(entry: BenchEntry, list_path, *, data_dir: str, epochs: int, seed: int, sets: list[str],
                   threads: int, runs_dir: Path) -> tuple[Path, dict]:
    """The validated run config (as a dict) of one entry: its YAML, then the entry's ``set``, then the
    user's ``--set``, then the bench's fixed overrides (data, epochs, seed, run folder)."""
    source = f"{list_path}: model '{entry.label}'"
    path = _config_path(entry.config)
    if not path.is_file():
        raise ConfigError(f"{source}: config '{entry.config}' not found ({path} does not exist)")
    try:
        d, path = load_layers(path)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    for key, value in entry.set.items():
        set_dotted(d, key, value, source)
    d = apply_overrides(d, sets)
    fixed = {"data.dir": data_dir, "train.epochs": epochs, "train.seed": seed, "name": entry.label,
             "out_dir": str(runs_dir)}
    if threads > 0:
        fixed["train.threads"] = threads
    for key, value in fixed.items():
        set_dotted(d, key, value, source)
    try:
        cfg = from_dict(d, source=str(path))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return path, cfg.to_dict()


def reference_config_for(entry: BenchEntry) -> tuple[Path, dict | None]:
    """The real-data config matching an entry (``reference:`` or configs/mmctr/<same file name>), with
    the entry's ``model_params.*`` overrides applied; ``None`` when no such file exists."""
    name = entry.reference or f"mmctr/{Path(entry.config).stem}"
    path = _config_path(name)
    if not path.is_file():
        return path, None
    try:
        d, path = load_layers(path)
    except ConfigError as e:
        raise ConfigError(f"model '{entry.label}' reference: {e}") from None
    for key, value in entry.set.items():
        if key.startswith("model_params."):
            set_dotted(d, key, value, str(path))
    return path, d


# ------------------------------------------------------------------------------------------ worker
def reference_params(config: dict, source: str) -> int:
    """Trainable parameters of the model at a real-data config, with the MM-CTR vocabulary sizes and a
    dummy item table (no data needed)."""
    import torch

    from ssmrec.config import from_dict
    from ssmrec.data.mmctr import ItemInfo
    from ssmrec.data.schema import ITEM_EMB_DIM, LEVEL_VOCAB, N_ITEM_TAGS
    from ssmrec.models.ctr import build_ctr_model

    # The level tables are sized by the library constant; it must equal the real vocabulary.
    assert LEVEL_VOCAB == REFERENCE_VOCAB["levels"], (LEVEL_VOCAB, REFERENCE_VOCAB["levels"])
    cfg = from_dict(config, source=source)
    n = REFERENCE_VOCAB["item_id"]
    info = ItemInfo(tags=torch.zeros((n, N_ITEM_TAGS), dtype=torch.long), emb=torch.zeros((n, ITEM_EMB_DIM)),
                    n_items=n, n_tags=REFERENCE_VOCAB["item_tags"])
    model = build_ctr_model(cfg.model, cfg.model_params, info, source)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def worker(spec_path, result_path) -> int:
    """Child process: train one model with the Trainer, time inference, measure peak RSS, count
    parameters at the reference config; write a result record (also on failure)."""
    import traceback

    spec = json.loads(Path(spec_path).read_text())
    result: dict = {"status": "ok"}
    try:
        import torch

        from ssmrec.config import from_dict
        from ssmrec.tasks.ctr import predict_split
        from ssmrec.train.trainer import Trainer

        cfg = from_dict(spec["run_config"], source=spec["config_path"])
        trainer = Trainer(cfg)
        summary = trainer.fit(resume=False, overwrite=True)  # the bench owns its run folders
        epoch_s = [h["train_s"] for h in trainer.history]
        # Inference timings: the Trainer's own evaluations (one per epoch + the final one), topped
        # up with extra timed passes over the valid split to reach --infer-repeats.
        infer = [h["infer_ms_per_1k"] for h in trainer.history] + [summary["infer_ms_per_1k"]]
        valid = trainer.data.splits["valid"]
        extra = spec["infer_repeats"] - len(infer)
        if extra > 0:
            model, device = trainer.model, trainer.device
            t = time_repeats(lambda: predict_split(model, valid, cfg.train.eval_batch_size, device), extra)
            infer += [s * 1e6 / len(valid) for s in t["times"]]
        train_s, infer_ms = summarize_times(epoch_s), summarize_times(infer)
        result.update(
            model=cfg.model, params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            valid_auc=summary["valid_auc"], valid_logloss=summary["valid_logloss"],
            valid_gauc=summary["valid_gauc"], oracle_auc=summary.get("oracle_auc"),
            popularity_auc=summary["popularity_auc"], epochs_run=summary["epochs"],
            best_epoch=summary["best_epoch"], train_s_per_epoch=sum(epoch_s) / len(epoch_s),
            train_s_per_epoch_min=train_s["min"], train_s_per_epoch_median=train_s["median"],
            train_s_total=sum(epoch_s), infer_ms_per_1k_min=infer_ms["min"],
            infer_ms_per_1k_median=infer_ms["median"], infer_repeats=infer_ms["repeats"],
            n_train=len(trainer.data.splits["train"]), n_valid=len(valid), max_len=cfg.data.max_len,
            batch_size=cfg.train.batch_size, lr=cfg.train.lr, threads=torch.get_num_threads(), torch=torch.__version__,
            device=str(trainer.device), run_dir=str(trainer.run_dir),
            peak_rss_mb=peak_rss_mb())  # before the reference model below is built
        del trainer
    except Exception as e:  # noqa: BLE001 — recorded as this model's failure; the bench goes on
        traceback.print_exc(file=sys.stdout)
        result.update(status="failed", error=one_line(e, 300), peak_rss_mb=peak_rss_mb())
    if spec.get("reference_config") is not None:
        try:
            result["params_ref"] = reference_params(spec["reference_config"], spec["reference_path"])
        except Exception as e:  # noqa: BLE001
            traceback.print_exc(file=sys.stdout)
            result["params_ref"] = None
            result["params_ref_error"] = one_line(e, 300)
    sys.stdout.flush()
    write_json_atomic(result_path, result)
    return 0 if result["status"] == "ok" else 1


# ------------------------------------------------------------------------------------------ parent
def _run_one(entry: BenchEntry, spec: dict, out: Path) -> dict:
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = (logs / f"{entry.label}.spec.json", logs / f"{entry.label}.result.json",
                                        logs / f"{entry.label}.log")
    write_json_atomic(spec_path, spec)
    result_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        # stdout (epoch records, tracebacks) -> log; stderr (the Trainer's tqdm bar) -> the terminal.
        proc = subprocess.run([sys.executable, "-m", "ssmrec.bench.ctr", "--worker", str(spec_path),
                               str(result_path)], stdout=log, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if result_path.is_file():
        rec = json.loads(result_path.read_text())
    else:  # killed (e.g. out of memory) before it could write its record
        rec = {"status": "failed", "error": f"worker exited with code {proc.returncode} without a result "
                                            f"(see {log_path})"}
    rec.update(wall_s=wall, log=str(log_path))
    if rec.get("train_s_total") is not None:
        rec["overhead_s"] = wall - rec["train_s_total"]  # interpreter, data load, evals, params at ref
    return rec


def _fmt(v, spec: str, missing: str = "n/a") -> str:
    return missing if v is None else format(v, spec)


def _sorted_records(records: list[dict]) -> tuple[list[dict], list[dict]]:
    ok = [r for r in records if r.get("status") == "ok"]
    ok.sort(key=lambda r: -(r.get("valid_auc") if r.get("valid_auc") is not None else -1.0))
    return ok, [r for r in records if r.get("status") != "ok"]


def _common_value(records: list[dict], key: str):
    vals = [r.get(key) for r in records if r.get(key) is not None]
    return vals[0] if vals else None


def render_markdown(results: dict) -> str:
    meta, (ok, failed) = results["meta"], _sorted_records(results["records"])
    has_oracle = any(r.get("oracle_auc") is not None for r in ok)
    lines = ["# CTR benchmark (`ssmrec bench ctr`)", "",
             f"Data `{meta['data_dir']}` · {meta['epochs']} epoch(s) · seed {meta['seed']} · torch {meta['torch']} · "
             f"{meta['threads']} thread(s) · {meta['machine']['cpu']} ({meta['machine']['cpu_count']} CPUs) · "
             f"{meta['machine']['date']}", ""]
    if meta.get("oracle_auc") is not None:
        lines.append(f"Oracle AUC (true click probabilities, `truth/`): **{meta['oracle_auc']:.4f}**.")
    if meta.get("popularity_auc") is not None:
        lines.append(f"Popularity baseline AUC (item's train click rate): {meta['popularity_auc']:.4f}.")
    lines.append("")
    headers = ["#", "model", "config", "batch / lr", "params", "params @ reference", "valid AUC", "valid logloss"]
    headers += ["oracle AUC"] if has_oracle else []
    headers += ["train s/epoch", "infer ms / 1k rows (min / median)", "peak RSS MB"]
    rows = []
    for i, r in enumerate(ok, 1):
        ref = r.get("params_ref")
        batch_lr = (f"{r['batch_size']} / {r['lr']:g}" if r.get("batch_size") is not None and r.get("lr") is not None
                    else "n/a")
        row = [i, r["label"], r["config"], batch_lr, f"{r['params']:,}", f"{ref:,}" if ref is not None else "n/a",
               _fmt(r["valid_auc"], ".4f"), _fmt(r["valid_logloss"], ".4f")]
        row += [_fmt(r.get("oracle_auc"), ".4f")] if has_oracle else []
        row += [_fmt(r["train_s_per_epoch"], ".1f"),
                f"{r['infer_ms_per_1k_min']:.0f} / {r['infer_ms_per_1k_median']:.0f}", _fmt(r["peak_rss_mb"], ".0f")]
        rows.append(row)
    lines.append(markdown_table(headers, rows))
    if failed:
        lines += ["", "**Failed:**", "", markdown_table(["model", "config", "error"],
                                                         [[r["label"], r.get("config", ""), r.get("error", "")]
                                                          for r in failed])]
    lines += ["", "Params @ reference: the same model built from its real-data config (`configs/mmctr/`) with the "
              "MM-CTR vocabularies (item_id 91,718, item_tags 11,740, levels 11); n/a = no such config.", ""]
    lines += _paper_section(ok, meta)
    return "\n".join(lines) + "\n"


def _paper_section(ok: list[dict], meta: dict) -> list[str]:
    rows = [r for r in ok if r.get("paper") and r.get("valid_auc") is not None]
    if not rows:
        return []
    our_rank = {r["label"]: i for i, r in enumerate(sorted(rows, key=lambda r: -r["valid_auc"]), 1)}
    paper_test = {r["label"]: PAPER_AUC[r["paper"]][2] for r in rows}
    ranked = sorted(set(paper_test.values()), reverse=True)
    paper_rank = {lab: ranked.index(v) + 1 for lab, v in paper_test.items()}
    table = [[r["label"], f"{r['valid_auc']:.4f} ({our_rank[r['label']]})", PAPER_AUC[r["paper"]][0],
              _fmt(PAPER_AUC[r["paper"]][1], ".4f", "—"), f"{paper_test[r['label']]:.4f} ({paper_rank[r['label']]})",
              PAPER_AUC[r["paper"]][3]] for r in rows]
    flips = [f"{a['label']} vs {b['label']}" for i, a in enumerate(rows) for b in rows[i + 1:]
             if paper_test[a["label"]] != paper_test[b["label"]]
             and (a["valid_auc"] - b["valid_auc"]) * (paper_test[a["label"]] - paper_test[b["label"]]) < 0]
    out = ["## vs the published MicroLens-1M numbers (MambaCTR Table 2 / 5; reference doc §10.1)", "",
           markdown_table(["model", "our valid AUC (rank)", "paper row", "paper valid AUC",
                           "paper test AUC (rank)", "source"], table), ""]
    out.append("Ordering agrees with the paper's test AUC for every pair." if not flips else
               f"Pairs ordered differently from the paper ({len(flips)}): " + "; ".join(flips) + ".")
    out += ["", f"The paper trained to convergence on MicroLens-1M with full-size models on a GPU; these rows "
            f"used `{meta['data_dir']}`, {meta['epochs']} epoch(s) and each config's own size, so compare "
            f"orderings, not absolute AUCs."]
    return out


def plot_auc_vs_time(results: dict, path: Path) -> None:
    plt = pyplot()
    ok, _ = _sorted_records(results["records"])
    fig, ax = plt.subplots(figsize=(7.5, 5))
    meta = results["meta"]
    for r in ok:
        if r.get("valid_auc") is None or r.get("train_s_per_epoch") is None:
            continue
        ax.scatter(r["train_s_per_epoch"], r["valid_auc"], s=36)
        ax.annotate(r["label"], (r["train_s_per_epoch"], r["valid_auc"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    if meta.get("oracle_auc") is not None:
        ax.axhline(meta["oracle_auc"], ls="--", c="gray", label=f"oracle AUC {meta['oracle_auc']:.4f}")
    if meta.get("popularity_auc") is not None:
        ax.axhline(meta["popularity_auc"], ls=":", c="tab:red", label=f"popularity AUC {meta['popularity_auc']:.4f}")
    ax.set_xlabel("train seconds per epoch")
    ax.set_ylabel("valid AUC")
    ax.set_title(f"CTR models on {Path(meta['data_dir']).name}: {meta['epochs']} epoch(s), seed {meta['seed']}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    save_figure_atomic(fig, path)


def write_outputs(results: dict, out: Path) -> None:
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", render_markdown(results))
    plot_auc_vs_time(results, out / "auc_vs_time.png")


def _resolve_data(args) -> Path:
    if args.data is None:
        data = Path(DEFAULT_DATA)
        if not (data / "item_info.parquet").exists():
            from ssmrec.data.synth import synthesize

            print(f"synthesizing the 'default' world into {data} (as `ssmrec demo`) ...", flush=True)
            synthesize(data, preset="default", seed=0, overwrite=True)
        return data
    data = Path(args.data)
    if not data.is_dir():
        raise DataError(data, "data directory not found")
    for name in ("train.parquet", "valid.parquet", "item_info.parquet"):
        if not (data / name).is_file():
            raise DataError(data / name, "file not found (the bench trains on train and evaluates on valid)")
    return data


def cmd_bench_ctr(args) -> int:
    if args.size:
        if args.resume or args.epochs != 1 or args.threads:
            raise SsmrecError("--size measures throughput: --epochs, --threads and --resume do not apply "
                              "(use --thread-counts, --steps)")
        from ssmrec.bench.ctr_size import cmd_bench_ctr_size

        if args.out == DEFAULT_OUT:
            args.out = f"{DEFAULT_OUT}-{args.size}"
        return cmd_bench_ctr_size(args)
    for flag, given in (("--thread-counts", args.thread_counts != "1,2"), ("--processes", args.processes != "1"),
                        ("--steps", args.steps != 0),
                        ("--warmup", args.warmup != -1), ("--fuxictr-python", args.fuxictr_python),
                        ("--no-profile", not args.profile)):
        if given:
            raise SsmrecError(f"{flag} is an option of the throughput mode: add --size microlens1m")
    list_path = Path(args.config_list) if args.config_list else DEFAULT_LIST
    entries = select_entries(load_entries(list_path), args.models, list_path)
    if args.epochs < 1:
        raise SsmrecError(f"--epochs must be >= 1, got {args.epochs}")
    if args.infer_repeats < 1:
        raise SsmrecError(f"--infer-repeats must be >= 1, got {args.infer_repeats}")
    check_not_inside(args.out, args.data or DEFAULT_DATA, "the bench output")  # path checks before any work
    out = check_output_dir(args.out, "bench output")
    data = _resolve_data(args)
    # Cheap checks first (no torch import): every config file exists, --resume settings match.
    for e in entries:
        if not _config_path(e.config).is_file():
            raise ConfigError(f"{list_path}: model '{e.label}': config '{e.config}' not found "
                              f"({_config_path(e.config)} does not exist)")
    settings = {"data_dir": str(data), "epochs": args.epochs, "seed": args.seed, "set": list(args.set or []),
                "threads_requested": args.threads}
    kept: dict[str, dict] = {}
    results_path = out / "results.json"
    if args.resume and results_path.is_file():
        try:
            old = json.loads(results_path.read_text())
            old_settings, old_records = old["meta"]["settings"], old["records"]
        except (ValueError, KeyError, TypeError):
            raise SsmrecError(f"{results_path}: not a results file of `ssmrec bench ctr`; use another --out") from None
        if old_settings != settings:
            diff = ", ".join(f"{k}={old_settings.get(k)!r}" for k in settings if old_settings.get(k) != settings[k])
            raise SsmrecError(f"{results_path}: measured with other settings ({diff}); drop --resume or use "
                              f"another --out")
        kept = {r["label"]: r for r in old_records}

    # Resolve and validate every config before training anything (a typo should not cost an hour).
    runs_dir = (out / "runs").resolve()
    plans = []
    for e in entries:
        path, run_config = run_config_for(e, list_path, data_dir=str(data.resolve()), epochs=args.epochs,
                                          seed=args.seed, sets=args.set or [], threads=args.threads,
                                          runs_dir=runs_dir)
        ref_path, ref_config = reference_config_for(e)
        plans.append((e, {"label": e.label, "config_path": str(path), "run_config": run_config,
                          "reference_path": str(ref_path), "reference_config": ref_config,
                          "infer_repeats": args.infer_repeats}))

    import torch

    meta = {"settings": settings, "data_dir": str(data), "epochs": args.epochs, "seed": args.seed,
            "torch": torch.__version__, "threads": None, "machine": machine_info(), "list": str(list_path),
            "argv": sys.argv[1:],
            "oracle_auc": None, "popularity_auc": None}
    records: dict[str, dict] = dict(kept)
    results = {"meta": meta, "records": []}

    def sync():
        results["records"] = list(records.values())
        ok = [r for r in records.values() if r.get("status") == "ok"]
        meta["oracle_auc"] = _common_value(ok, "oracle_auc")
        meta["popularity_auc"] = _common_value(ok, "popularity_auc")
        meta["threads"] = _common_value(ok, "threads")
        write_outputs(results, out)

    t_bench = time.perf_counter()
    n = len(plans)
    for i, (e, spec) in enumerate(plans, 1):
        prev = kept.get(e.label)
        entry_dict = asdict(e)
        # Kept only if the resolved run config is the same: an edited YAML file re-runs its model.
        if (prev and prev.get("status") == "ok" and prev.get("entry") == entry_dict
                and prev.get("run_config") == spec["run_config"]):
            print(f"[{i}/{n}] {e.label}: kept from {results_path} (valid AUC {_fmt(prev.get('valid_auc'), '.4f')})", flush=True)
            continue
        print(f"[{i}/{n}] {e.label}: training {e.config} (log {out / 'logs' / (e.label + '.log')}) "
              f"· bench elapsed {format_seconds(time.perf_counter() - t_bench)}", flush=True)
        rec = {"label": e.label, "config": e.config, "entry": entry_dict, "run_config": spec["run_config"],
               "paper": e.paper,
               **_run_one(e, spec, out)}
        records[e.label] = rec
        sync()
        if rec["status"] == "ok":
            print(f"[{i}/{n}] {e.label}: valid AUC {_fmt(rec.get('valid_auc'), '.4f')} · {rec['train_s_per_epoch']:.1f} s/epoch · "
                  f"model {format_seconds(rec['wall_s'])} · bench elapsed "
                  f"{format_seconds(time.perf_counter() - t_bench)}", flush=True)
        else:
            print(f"[{i}/{n}] {e.label}: FAILED: {rec['error']}", flush=True)
    sync()
    print()
    print(render_markdown(results))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'auc_vs_time.png'}")
    selected = {e.label for e, _ in plans}
    failed = [r for r in results["records"] if r["label"] in selected and r.get("status") != "ok"]
    if failed:
        raise SsmrecError(f"{len(failed)} of {n} models failed: "
                          + "; ".join(f"{r['label']} ({r['error']})" for r in failed)
                          + f"; the other results are in {out / 'results.json'}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("ctr", help="train CTR models side by side: AUC, logloss, time, memory, params",
                              description="Train every listed CTR model with the same data, seed and epoch "
                                          "budget (each in its own process); write results.json, results.md "
                                          "and auc_vs_time.png.")
    p.add_argument("--data", help=f"MM-CTR directory (default {DEFAULT_DATA}, synthesized if absent)")
    p.add_argument("--models", help="comma-separated labels from the model list (default: all)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per model (overrides train.epochs; default 1)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}, "
                                                      f"{DEFAULT_OUT}-SIZE with --size)")
    p.add_argument("--config-list", help="model list YAML (default: the built-in bench/ctr.yaml)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="train.seed for every model")
    p.add_argument("--threads", type=int, default=0, help="torch threads per model (0 = torch default)")
    p.add_argument("--infer-repeats", type=int, default=3,
                   help="inference timings per model (the Trainer's evaluations count; default 3)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="config override applied to every model (repeatable), e.g. train.max_steps_per_epoch=50")
    p.add_argument("--resume", action="store_true",
                   help="keep models already measured in OUT/results.json with the same settings; run the rest")
    g = p.add_argument_group("throughput at the challenge's real size (--size)")
    g.add_argument("--size", choices=["microlens1m"],
                   help="time training steps and inference of the reference configs on the full-size world "
                        "(ssmrec data synth --size microlens1m) instead of training to AUC")
    g.add_argument("--thread-counts", default="1,2", help="torch threads to measure, comma-separated (default 1,2)")
    g.add_argument("--processes", default="1",
                   help="DDP processes to measure, comma-separated (default 1); N > 1 runs the worker under "
                        "torchrun --standalone --nproc-per-node N with each thread count per process")
    g.add_argument("--steps", type=int, default=0,
                   help="timed training steps per run (default: about 16k samples, at least 5 steps)")
    g.add_argument("--warmup", type=int, default=-1, help="untimed steps first (default: about 640 samples, >= 1)")
    g.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the torch.profiler pass (phase and GEMM shares)")
    g.add_argument("--fuxictr-python",
                   help="python of a throw-away venv with FuxiCTR (benchmarks/fuxictr/README.md): also time the "
                        "official baseline's DIN with the same batch, steps and threads")
    p.set_defaults(func=cmd_bench_ctr)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        sys.exit(worker(sys.argv[2], sys.argv[3]))
    sys.exit("usage: python -m ssmrec.bench.ctr --worker SPEC.json RESULT.json (internal; use `ssmrec bench ctr`)")
