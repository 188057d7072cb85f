"""`ssmrec bench seq`: next-item models side by side on one dataset, split, seed and budget.

Every (model, training mode) runs ``ssmrec train`` in its own process (so peak RSS is that run's,
read with ``os.wait4``) from the built-in config ``seq/<dataset>_<model>`` (``--data`` names one of
synth / beauty / games / ml100k / ml50k, or is a folder/file read with that dataset's settings from
``--preset``), with ``--epochs``, ``--seed``, ``--threads`` and ``--set`` applied to all alike.
With ``--item-features PARQUET`` (``ssmrec embed``'s item vectors) every run is made twice, with ID
embeddings only and with the frozen vectors added (or ``--item-feature-mode replace``), so the
table shows what the item content is worth for each model.

Reported per run (the layout of Mamba4Rec's Tables 1 and 3, the paper's numbers beside ours where
the dataset is one of its): test HR / NDCG / MRR @10 at the best valid epoch under both evaluation
protocols (``unmasked``: history items rankable, RecBole's and the paper's; ``masked``: the whole
history excluded, S3-Rec / BSARec's), the protocol validation selected with, train s/epoch (min /
median), (prefix, next) pairs per second, inference ms per 4,096 users, peak RSS, epochs to best,
parameters. Writes ``results.json``, ``results.md`` and ``results.png`` (NDCG@10 against train time
per epoch, and the valid NDCG@10 curves).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ssmrec.bench.common import machine_info, markdown_table, pyplot, save_figure_atomic, write_json_atomic, \
    write_text_atomic
from ssmrec.errors import SsmrecError, one_line

DATASETS = {"synth": "synth", "beauty": "beauty", "amazon-beauty": "beauty", "games": "games",
            "amazon-video-games": "games", "ml100k": "ml100k", "ml-100k": "ml100k", "ml50k": "ml50k",
            "microlens50k": "ml50k", "microlens-50k": "ml50k"}
PRESETS = ("beauty", "games", "ml100k", "ml50k", "synth")
MODELS = ("mamba4rec", "sasrec", "gru4rec", "bert4rec")
# Mamba4Rec Table 1 (reference doc §10.2): test HR@10, NDCG@10, MRR@10.
PAPER = {
    "beauty": {"mamba4rec": (.0812, .0451, .0362), "sasrec": (.0847, .0425, .0296), "gru4rec": (.0606, .0332, .0249),
               "bert4rec": (.0760, .0393, .0282)},
    "games": {"mamba4rec": (.1152, .0603, .0438), "sasrec": (.1168, .0571, .0390), "gru4rec": (.1030, .0536, .0380),
              "bert4rec": (.1053, .0538, .0381)},
}


def _preset(data: str, preset: str | None) -> tuple[str, list[str]]:
    """(config dataset name, extra overrides) for ``--data``."""
    key = DATASETS.get(data)
    if key is not None:
        return key, []
    if not Path(data).exists():
        raise SsmrecError(f"--data {data!r}: not a dataset name ({', '.join(sorted(DATASETS))}) or an existing path")
    if preset not in PRESETS:
        raise SsmrecError(f"--data is a path: say whose settings to use with --preset {'|'.join(PRESETS)}")
    return preset, [f"data.source={Path(data).resolve()}"]


def _run(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run ``cmd`` with stdout/stderr into ``log``; return (exit code, peak RSS MB of that process)."""
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, usage.ru_maxrss / 1024.0


def cmd_bench_seq(args) -> int:
    from ssmrec.config import load_config
    from ssmrec.io import check_output_dir

    if args.quality:
        from ssmrec.bench.seq_quality import cmd_bench_seq_quality

        args.quality_epochs, args.out = args.epochs, args.out or "runs/bench-seq-quality"
        return cmd_bench_seq_quality(args)
    args.epochs = 20 if args.epochs is None else args.epochs
    args.out = args.out or "runs/bench-seq"

    dataset, extra = _preset(args.data, args.preset)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if _base_model(m) not in MODELS]
    if bad or not models:
        raise SsmrecError(f"--models: unknown model '{bad[0] if bad else ''}' (choose from {', '.join(MODELS)}, "
                          f"each optionally with :KEY=VALUE model parameters)")
    for m in models:
        for kv in m.split(":")[1:]:
            if "=" not in kv or not kv.split("=", 1)[0]:
                raise SsmrecError(f"--models: '{m}': '{kv}' is not KEY=VALUE (e.g. mamba4rec:lowpass=true)")
    modes = {"both": ["all_positions", "prefixes"], "config": [None]}.get(args.mode, [args.mode])
    if args.epochs < 1:
        raise SsmrecError(f"--epochs must be >= 1, got {args.epochs}")
    variants = ["id"]
    if args.item_features:
        features = Path(args.item_features)
        if not features.is_file():
            raise SsmrecError(f"--item-features {features}: file not found (ssmrec embed writes item_emb.parquet)")
        variants.append("id+vectors")
    out = check_output_dir(args.out, "bench output")
    runs = []
    for model in models:
        base = _base_model(model)
        config = f"seq/{dataset}_{base}"
        for mode in (["cloze"] if base == "bert4rec" else modes):
            mode = mode or load_config(config, extra).data.train_mode  # --mode config: the config's own
            for variant in variants:
                run_name = (f"{model}-{mode}" + ("-vectors" if variant != "id" else "")).replace(":", "-").replace("=", "-")
                sets = extra + [f"train.epochs={args.epochs}", f"train.seed={args.seed}", "train.progress=false",
                                f"out_dir={out / 'runs'}", f"name={run_name}"]
                if args.mode != "config":  # batch counts samples: users in all_positions, prefixes else
                    batch = args.prefix_batch_size if mode == "prefixes" else args.user_batch_size
                    sets += [f"data.train_mode={mode}", f"train.batch_size={batch}"]
                if variant != "id":
                    sets += [f"data.item_features={features.resolve()}",
                             f"data.item_feature_mode={args.item_feature_mode}"]
                if args.threads > 0:
                    sets.append(f"train.threads={args.threads}")
                if args.protocol:
                    sets.append(f"data.protocol={args.protocol}")
                sets += list(args.set or [])
                sets += [f"model_params.{kv}" for kv in model.split(":")[1:]]  # after --set: a variant wins
                load_config(config, sets)  # every config is validated before anything trains
                runs.append((model, mode, variant, run_name, config, sets))
    results = []
    for model, mode, variant, run_name, config, sets in runs:
        print(f"[bench seq] {_label(model, mode, variant)} ...", flush=True)
        cmd = [sys.executable, "-m", "ssmrec.cli", "train", "--config", config, "--overwrite"]
        for s in sets:
            cmd += ["--set", s]
        t0 = time.perf_counter()
        code, rss = _run(cmd, out / f"{run_name}.log")
        rec = {"model": model, "mode": mode, "items": variant, "config": config, "exit_code": code,
               "peak_rss_mb": rss, "wall_s": time.perf_counter() - t0}
        run_dir = out / "runs" / run_name
        if code == 0 and (run_dir / "summary.json").exists():
            s = json.loads((run_dir / "summary.json").read_text())
            hist = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
            times = [h["train_s"] for h in hist]
            rec.update(status="ok", params=s["params"], best_epoch=s["best_epoch"], epochs=s["epochs"],
                       protocol=s.get("protocol", "unmasked"),
                       **{k: s.get(f"test_{k}") for k in ("hr@10", "ndcg@10", "mrr@10")},
                       **{f"{p}_{k}": s.get(f"test_{p}_{k}") for p in ("unmasked", "masked")
                          for k in ("hr@10", "ndcg@10", "mrr@10")},
                       train_s_min=min(times), train_s_median=statistics.median(times),
                       pairs_per_s=s.get("train_pairs", 0) / statistics.median(times),
                       infer_ms_per_4096_users=s.get("infer_ms_per_4096_users"),
                       oracle_ndcg10=s.get("oracle_ndcg@10_test"), popularity_ndcg10=s.get("popularity_ndcg@10_test"),
                       popularity_masked_ndcg10=s.get("popularity_masked_ndcg@10_test"),
                       popularity_unmasked_ndcg10=s.get("popularity_unmasked_ndcg@10_test"),
                       curve=[h.get("valid_ndcg@10") for h in hist])
        else:
            tail = (out / f"{run_name}.log").read_text().strip().splitlines()[-1:] or [""]
            rec.update(status="failed", error=one_line(tail[0], 300))
        results.append(rec)
        _write(out, dataset, args, results)
    failed = [r for r in results if r["status"] != "ok"]
    print((out / "results.md").read_text())
    if failed:
        raise SsmrecError(f"{len(failed)} of {len(results)} runs failed: "
                          + "; ".join(f"{_label(r['model'], r['mode'], r['items'])}: {r['error']}" for r in failed))
    return 0


def _base_model(spec: str) -> str:
    """``mamba4rec:lowpass=true`` -> ``mamba4rec`` (a --models entry: a model and model_params overrides)."""
    return spec.split(":", 1)[0]


def _label(model: str, mode: str, items: str) -> str:
    return f"{model} ({mode}" + (", + item vectors)" if items != "id" else ")")


def _fmt(v, spec=".4f"):
    return "n/a" if v is None else format(v, spec)


def _write(out: Path, dataset: str, args, results: list[dict]) -> None:
    meta = {"dataset": dataset, "data": args.data, "epochs": args.epochs, "seed": args.seed,
            "threads": args.threads, "set": list(args.set or []), "item_features": args.item_features,
            "item_feature_mode": args.item_feature_mode if args.item_features else None,
            "machine": machine_info()}
    write_json_atomic(out / "results.json", {"meta": meta, "records": results})
    ok = [r for r in results if r["status"] == "ok"]
    paper = PAPER.get(dataset, {})
    rows = []
    for r in ok:
        p = paper.get(_base_model(r["model"]))
        rows.append([r["model"], r["mode"], r["items"], f"{r['params']:,}", r["protocol"],
                     *(_fmt(r[f"{p}_{k}"]) for p in ("unmasked", "masked") for k in ("hr@10", "ndcg@10")),
                     _fmt(r["mrr@10"]),
                     " / ".join(_fmt(x) for x in p) if p else "n/a",
                     f"{r['train_s_min']:.1f} / {r['train_s_median']:.1f}", f"{r['pairs_per_s']:,.0f}",
                     _fmt(r["infer_ms_per_4096_users"], ".0f"), f"{r['peak_rss_mb']:.0f}",
                     f"{r['best_epoch']} / {r['epochs']}"])
    lines = [f"# `ssmrec bench seq` — {dataset}", "",
             f"Test metrics at the best valid NDCG@10 epoch (validation under the 'selected on' protocol); "
             f"{args.epochs} epoch(s) at most, seed {args.seed}; each run its own process. Full ranking over all "
             f"items, ties ranked pessimistically; unmasked = history items rankable (RecBole, the paper), "
             f"masked = the user's whole history excluded (S3-Rec / BSARec). MRR@10 under the selection protocol.", "",
             markdown_table(["model", "mode", "items", "params", "selected on", "HR@10 unmasked", "NDCG@10 unmasked",
                             "HR@10 masked", "NDCG@10 masked", "MRR@10",
                             "paper (unmasked) HR / NDCG / MRR @10",
                             "train s/epoch (min / median)", "pairs/s", "infer ms / 4,096 users",
                             "peak RSS MB", "best / epochs"], rows)]
    with_vectors = {(r["model"], r["mode"]): r for r in ok if r["items"] != "id"}
    pairs = [(r, with_vectors[(r["model"], r["mode"])]) for r in ok
             if r["items"] == "id" and (r["model"], r["mode"]) in with_vectors]
    if pairs:
        lines += ["", f"Item vectors ({args.item_features}, `{args.item_feature_mode}`): test NDCG@10 "
                  "with ID embeddings only and with the frozen vectors.", "",
                  markdown_table(["model", "mode", "NDCG@10 ids", "NDCG@10 + vectors", "change", "params added"],
                                 [[a["model"], a["mode"], _fmt(a["ndcg@10"]), _fmt(b["ndcg@10"]),
                                   f"{(b['ndcg@10'] / a['ndcg@10'] - 1) * 100:+.1f} %" if a["ndcg@10"] else "n/a",
                                   f"{b['params'] - a['params']:,}"] for a, b in pairs])]
    if ok and ok[0].get("oracle_ndcg10") is not None:
        lines += ["", f"Oracle test NDCG@10 (the true next-item law, {ok[0]['protocol']}): **{ok[0]['oracle_ndcg10']:.4f}**."]
    if ok:
        lines += ["", f"Popularity baseline test NDCG@10: {_fmt(ok[0].get('popularity_unmasked_ndcg10'))} "
                  f"unmasked, {_fmt(ok[0].get('popularity_masked_ndcg10'))} masked."]
    failed = [r for r in results if r["status"] != "ok"]
    if failed:
        lines += ["", "**Failed:** " + "; ".join(f"{_label(r['model'], r['mode'], r['items'])}: {r['error']}"
                                                 for r in failed)]
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n")
    if ok:
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for r in ok:
            label = _label(r["model"], r["mode"], r["items"])
            axes[0].scatter(r["train_s_median"], r["ndcg@10"], label=label)
            axes[1].plot(range(1, len(r["curve"]) + 1), r["curve"], "o-", ms=3, label=label)
        axes[0].set_xlabel("train s / epoch (median)"), axes[0].set_ylabel("test NDCG@10"), axes[0].legend(fontsize=7)
        axes[1].set_xlabel("epoch"), axes[1].set_ylabel("valid NDCG@10"), axes[1].legend(fontsize=7)
        fig.suptitle(f"ssmrec bench seq — {dataset}")
        save_figure_atomic(fig, out / "results.png")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("seq", help="next-item models side by side: HR/NDCG/MRR@10, time, memory, params",
                              description="Train next-item models on one dataset with the same split, seed and "
                                          "budget (each in its own process); write results.json, results.md "
                                          "and results.png.")
    p.add_argument("--data", default="synth",
                   help="synth | beauty | games | ml100k | ml50k (MicroLens-50K), or a dataset path (+ --preset)")
    p.add_argument("--preset", help=f"whose settings a --data path uses: {' | '.join(PRESETS)}")
    p.add_argument("--models", default="mamba4rec,sasrec",
                   help=f"comma-separated, from {', '.join(MODELS)}; an entry may add model parameters as "
                        f":KEY=VALUE (e.g. mamba4rec,mamba4rec:lowpass=true: the same model with and without)")
    p.add_argument("--mode", default="config", choices=["config", "all_positions", "prefixes", "both"],
                   help="training mode of the causal models: config (default) = each config's own mode and batch "
                        "size; BERT4Rec always trains with cloze")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs at most (early stopping may end sooner); default 20, with --quality each config's own")
    p.add_argument("--prefix-batch-size", type=int, default=2048,
                   help="prefixes per step when --mode sets prefixes (the paper's 2048)")
    p.add_argument("--user-batch-size", type=int, default=256,
                   help="users per step when --mode sets all_positions (≈ 7 pairs each on Amazon)")
    p.add_argument("--item-features", metavar="PARQUET",
                   help="ssmrec embed's item_emb.parquet: run every model with and without these item vectors")
    p.add_argument("--item-feature-mode", default="add", choices=["add", "replace"],
                   help="how the projected vectors join the ID embeddings (default add)")
    p.add_argument("--protocol", choices=("unmasked", "masked"),
                   help="the evaluation protocol validation selects with (default: each config's own, unmasked); "
                        "test metrics are reported under both")
    p.add_argument("--seed", type=int, default=2020, help="train.seed for every run (RecBole's default)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (0 = torch default)")
    p.add_argument("--out", help="output folder (default runs/bench-seq, with --quality runs/bench-seq-quality)")
    q = p.add_argument_group("quality table (--quality): rows x seeds from a plan, mean ± std, published anchors")
    q.add_argument("--quality", action="store_true",
                   help="train the plan's rows (configs x selection protocol) on several seeds; write quality.json/md/png")
    q.add_argument("--plan", default="bench/seq_quality", help="plan YAML or built-in name (default bench/seq_quality)")
    q.add_argument("--datasets", help="comma-separated datasets of the plan (default all)")
    q.add_argument("--rows", help="comma-separated rows of the plan, named <config stem>-<protocol> (default all)")
    q.add_argument("--seeds", type=int, help="seeds per row (default the plan's)")
    q.add_argument("--seed-index", metavar="I[,J]",
                   help="train only these seeds of each row (0-based, below --seeds); the report reads every finished seed")
    q.add_argument("--records", metavar="DIR",
                   help="where each finished run's numbers and config are kept as one small JSON (default OUT/records); "
                        "the table is rebuilt from them when the run folders are gone (the repository keeps its own "
                        "in benchmarks/results/seq-quality)")
    q.add_argument("--jobs", type=int, default=1, help="runs at once (each with --threads threads)")
    q.add_argument("--rerun", action="store_true", help="retrain runs that already finished with the same config")
    q.add_argument("--dry-run", action="store_true", help="list the runs and whether each is kept or trained")
    q.add_argument("--report-only", action="store_true",
                   help="write the tables from the runs that have finished; train nothing (the rest listed as not trained)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for every run")
    p.set_defaults(func=cmd_bench_seq)
