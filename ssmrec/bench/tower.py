"""`ssmrec bench tower`: FT-Mamba vs FT-Transformer two-towers, side by side (FT-Mamba §III, §IV).

``--env spotify|vaccine|hm``: for every seed the environment is built once (``data.seed`` = seed) and
both embedders train on it with the same training seed, from the built-in configs
``tower/<env>_ft_mamba`` / ``tower/<env>_ft_transformer`` (the paper's regime: 160,000 pairs,
batch 32, 5,000 steps, MSE; ``--steps`` caps the steps for a quick look, ``--set`` overrides any
config key for both). Reported per embedder: test P / R / MRR / HR @ {1, 5, 10} and MAP@12, mean ±
std over seeds, with the paper's Tables I-II beside ours; embedder parameters per tower; training
seconds and ranking milliseconds per test user (min / median over seeds). Writes ``results.json``,
``results.md`` and ``results.png``.

``--scaling``: the paper's case for Mamba is that a Transformer's cost grows quadratically with the
number of features (tokens) and a Mamba's linearly; the paper itself measures no timing. For
synthetic users of 8 .. 2,048 numeric features (``--features``; same token width, the paper's
embedders) this times one training step (batch ``--batch``, forward + backward + Adam) and inference
per user row (batch ``--infer-batch``, no grad), min / median of ``--repeats``, and counts the
activation memory a training step keeps for backward (bytes of every tensor autograd saves — the
part of training memory that grows with the number of tokens) plus the parameters. Writes
``scaling.json``, ``scaling.md`` and ``scaling.png``, and says where the two curves cross. Each case
runs in its own process, whose peak RSS is reported too.

``--index``: exact top-k against faiss (HNSW and IVF, :mod:`ssmrec.index`) on synthetic catalogues of
``--catalogue`` sizes (32-d item vectors around 256 cluster centres, as trained item towers are
clustered; 1,000 queries drawn the same way): build seconds, query ms per user (min / median) and
recall@10 against exact search. Writes ``index.json``, ``index.md`` and ``index.png``.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from ssmrec.bench.common import machine_info, markdown_table, pyplot, save_figure_atomic, write_json_atomic, \
    write_text_atomic
from ssmrec.errors import SsmrecError

ENVS = ("spotify", "vaccine", "hm")
MODELS = ("ft_mamba", "ft_transformer")
LABEL = {"ft_mamba": "FT-Mamba", "ft_transformer": "FT-Transformer"}
METRICS = ("p@5", "p@10", "r@5", "r@10", "mrr@5", "mrr@10", "hr@1", "hr@5", "hr@10")
# The paper's Table I (Spotify, H&M; 100 seeds) and Table II (vaccine, k = 25 and 25 messages), in
# METRICS order; reference doc §10.3. H&M MAP@12: Mamba .0342, Transformer .0335.
PAPER = {
    "spotify": {"ft_mamba": (.952, .906, .374, .671, .985, .985, .977, .996, .998),
                "ft_transformer": (.803, .759, .303, .551, .882, .887, .841, .949, .983)},
    "hm": {"ft_mamba": (.1566, .1283, .1207, .1979, .3335, .3569, .2155, .5567, .7326),
           "ft_transformer": (.1584, .1279, .1223, .1974, .3416, .3646, .2260, .5609, .7341)},
    "vaccine": {"ft_mamba": (.1794, .0977, .897, .977, .6738, .6848, .5351, .897, .977),
                "ft_transformer": (.1362, .0912, .681, .9119, .3925, .4236, .2355, .681, .9119)},
}
PAPER_MAP12 = {"hm": {"ft_mamba": .0342, "ft_transformer": .0335}}
PAPER_PARAMS = {"ft_mamba": 479_232, "ft_transformer": 1_186_048}


def _configs(env: str, models, overrides: list[str]):
    from ssmrec.config import load_config

    return {m: load_config(f"tower/{env}_{m}", overrides) for m in models}


def run_seed(env: str, seed: int, models, overrides: list[str], out: Path, steps: int | None, threads: int) -> list[dict]:
    """Train every model on the environment of ``seed``; one record per model."""
    import torch

    from ssmrec.tasks.retrieval import RetrievalTask
    from ssmrec.train.trainer import Trainer

    sets = list(overrides) + [f"data.seed={seed}", f"train.seed={seed}", "train.progress=true",
                              f"out_dir={out / 'runs'}", "train.checkpoint_every=0"]
    if steps:
        sets.append(f"train.max_steps_per_epoch={steps}")
    if threads > 0:
        sets.append(f"train.threads={threads}")
    cfgs = _configs(env, models, sets)
    first = cfgs[models[0]]
    task0 = RetrievalTask(first)
    task0.setup()
    data = task0.data  # one environment per seed, shared by both embedders
    records = baseline_records(data, env, seed)
    for m in models:
        cfg = cfgs[m]
        cfg.name = f"{env}-{m}-seed{seed}"
        trainer = Trainer(cfg, task=RetrievalTask(cfg, data))
        summary = trainer.fit(overwrite=True)
        model = trainer.model
        test = {k[len("test_"):]: v for k, v in summary.items() if k.startswith("test_")}
        t0 = time.perf_counter()
        with torch.no_grad():
            trainer.task.rank_test_users(model)
        records.append({"env": env, "seed": seed, "model": m, "train_s": summary.get("train_s_per_epoch"),
                        "steps": math.ceil(len(data.train) / cfg.train.batch_size) if not steps else steps,
                        "embedder_params": model.embedder_parameters(),
                        "params": sum(p.numel() for p in model.parameters()),
                        "rank_ms_per_user": 1000.0 * (time.perf_counter() - t0) / max(len(data.test_users), 1),
                        "valid_mse": summary.get("valid_mse"), "info": data.info, **test})
    return records


BASELINES = ("popularity", "random")
LABEL.update({"popularity": "popularity (train positives)", "random": "random ranking"})


def baseline_records(data, env: str, seed: int) -> list[dict]:
    """Non-personalised references on the same test users: items ranked by their count of positive
    training pairs, and a random ranking (seeded)."""
    import numpy as np
    import torch

    from ssmrec.metrics import relevance_metrics

    rel = data.relevance_matrix()
    pos = data.train.target > 0
    counts = torch.from_numpy(np.bincount(data.train.item[pos], minlength=len(data.items)).astype(np.float32))
    g = torch.Generator().manual_seed(seed)
    out = []
    for name, scores in (("popularity", counts[None].expand(rel.shape[0], -1)), ("random", torch.rand(rel.shape, generator=g))):
        m = relevance_metrics(scores, rel, [1, 5, 10])
        valid = ~torch.isnan(m["map@12"])
        out.append({"env": env, "seed": seed, "model": name, **{k: float(v[valid].mean()) for k, v in m.items()}})
    return out


def aggregate(records: list[dict], models) -> dict:
    """mean / std over seeds of every metric, min / median of the times, per model."""
    out = {}
    for m in models:
        rs = [r for r in records if r["model"] == m]
        if not rs:
            continue
        agg = {"seeds": len(rs), "embedder_params": rs[0].get("embedder_params"), "params": rs[0].get("params")}
        for k in (*METRICS, "map@12", "valid_mse"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                agg[k] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
        for k in ("train_s", "rank_ms_per_user"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                agg[k] = {"min": min(vals), "median": statistics.median(vals)}
        out[m] = agg
    return out


def _pm(a: dict | None, digits: int = 3) -> str:
    return "n/a" if not a else f"{a['mean']:.{digits}f} ± {a['std']:.{digits}f}"


def write_results(out: Path, env: str, args, records: list[dict], models) -> dict:
    agg = aggregate(records, models)
    digits = 4 if env == "hm" else 3
    rows = []
    for m in models:
        if m not in agg:
            continue
        a = agg[m]
        rows.append([f"{LABEL[m]} (ours, {a['seeds']} seed{'s' if a['seeds'] != 1 else ''})"] + [_pm(a.get(k), digits) for k in METRICS]
                    + [_pm(a.get("map@12"), 4)])
        paper = PAPER.get(env, {}).get(m)
        if paper:
            rows.append([f"{LABEL[m]} (paper, 100 seeds)"] + [f"{v:.{digits}f}" for v in paper]
                        + [f"{PAPER_MAP12.get(env, {}).get(m, float('nan')):.4f}" if env in PAPER_MAP12 else "n/a"])
    for b in BASELINES:
        base = aggregate([r for r in records if r["model"] == b], [b]).get(b)
        if base:
            rows.append([f"{LABEL[b]} (ours)"] + [_pm(base.get(k), digits) for k in METRICS] + [_pm(base.get("map@12"), 4)])
    cost = [[LABEL[m], agg[m]["embedder_params"], PAPER_PARAMS[m], agg[m]["params"],
             f"{agg[m]['train_s']['min']:.1f} / {agg[m]['train_s']['median']:.1f}",
             f"{agg[m]['rank_ms_per_user']['min']:.3f} / {agg[m]['rank_ms_per_user']['median']:.3f}"]
            for m in models if m in agg]
    info = next((r["info"] for r in records if "info" in r), {})
    md = [f"# ssmrec bench tower — {env}", "",
          f"Seeds: {', '.join(str(s) for s in sorted(set(r['seed'] for r in records)))}; "
          f"steps per run: {next((r['steps'] for r in records if 'steps' in r), 'n/a')}; environment facts (seed "
          f"{records[0]['seed'] if records else '-'}): "
          + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()), "",
          "Test metrics over held-out users ranked against every item (mean ± std over seeds), with two "
          "non-personalised references on the same users: items by their count of positive training pairs, "
          "and a random ranking; "
          + ("the paper's Table II (k = 25, 25 messages) beside ours." if env == "vaccine" else
             "the paper's Table I beside ours."), "",
          markdown_table(["embedder", *(k.upper() for k in METRICS), "MAP@12"], rows), "",
          "Cost (embedder parameters per tower: ours and the paper's; train s per run and ranking ms per test "
          "user including the catalogue's encoding, min / median over seeds):", "",
          markdown_table(["embedder", "embedder params", "paper", "all params (2 towers + tokenizers + heads)",
                          "train s", "rank ms / user"], cost), "",
          f"Machine: {machine_info()}"]
    agg.update({b: a for b, a in aggregate(records, BASELINES).items()})
    result = {"env": env, "args": {k: v for k, v in vars(args).items() if k != "func"}, "records": records,
              "aggregate": agg, "paper": PAPER.get(env), "machine": machine_info()}
    write_json_atomic(out / "results.json", result)
    write_text_atomic(out / "results.md", "\n".join(md) + "\n")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.8))
    width = 0.2
    xs = range(len(METRICS))
    for j, m in enumerate(m for m in models if m in agg):
        means = [agg[m][k]["mean"] if k in agg[m] else float("nan") for k in METRICS]
        stds = [agg[m][k]["std"] if k in agg[m] else 0.0 for k in METRICS]
        ax.bar([x + (2 * j - 1.5) * width for x in xs], means, width, yerr=stds, capsize=2, label=f"{LABEL[m]} (ours)")
        paper = PAPER.get(env, {}).get(m)
        if paper:
            ax.bar([x + (2 * j - 0.5) * width for x in xs], paper, width, alpha=0.45, label=f"{LABEL[m]} (paper)")
    ax.set_xticks(list(xs), [k.upper() for k in METRICS])
    ax.set_title(f"FT-Mamba vs FT-Transformer — {env} (mean ± std over seeds)")
    ax.legend(fontsize=7, ncol=2)
    save_figure_atomic(fig, out / "results.png")
    return result


# ---------------------------------------------------------------------------------------------- scaling
def saved_activation_bytes(model, batch) -> int:
    """Bytes of every tensor autograd saves for backward in one training forward (storage counted once)."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        except RuntimeError:
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(batch)["score"].sum()
    del out
    return sum(seen.values())


def scaling_case(model_name: str, n_features: int, batch: int, infer_batch: int, repeats: int,
                 peak_rss: bool = False) -> dict:
    """Time one embedder at one width; ``peak_rss``: also this process's peak RSS (meaningful in a
    process that ran nothing else, as ``--scaling`` arranges)."""
    import torch

    from ssmrec.bench.common import time_repeats
    from ssmrec.models.tower.ft import PairBatch
    from ssmrec.nn.mamba import prepare_kernels
    from ssmrec.registry import get_model

    torch.manual_seed(0)
    spec = get_model("retrieval", model_name)
    schema = {"user": {"numeric": [f"x{j}" for j in range(n_features)], "cardinalities": []},
              "item": {"numeric": [f"f{j}" for j in range(8)], "cardinalities": []}}
    model = spec.cls(spec.config({}), schema)
    prepare_kernels(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    empty = torch.zeros(batch, 0, dtype=torch.long)
    b = PairBatch(torch.randn(batch, n_features), empty, torch.randn(batch, 8), empty, torch.randn(batch))

    def train_step():
        loss = ((model(b)["score"] - b.target) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    xu = torch.randn(infer_batch, n_features)
    eu = torch.zeros(infer_batch, 0, dtype=torch.long)

    def infer():
        with torch.no_grad():
            model.encode_users(xu, eu)

    model.train()
    t_train = time_repeats(train_step, repeats, warmup=2)
    act = saved_activation_bytes(model, b)
    model.eval()
    t_inf = time_repeats(infer, repeats, warmup=1)
    row = {"model": model_name, "n_features": n_features, "tokens": n_features + 1, "batch": batch,
           "train_step_ms": {"min": t_train["min"] * 1e3, "median": t_train["median"] * 1e3},
           "infer_ms_per_row": {"min": t_inf["min"] * 1e3 / infer_batch, "median": t_inf["median"] * 1e3 / infer_batch},
           "activation_mb": act / 2**20, "params": sum(p.numel() for p in model.parameters())}
    if peak_rss:
        import resource

        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return row


def _scaling_in_subprocess(model: str, n_features: int, args) -> dict:
    """One scaling case in a fresh process, so its peak RSS is that case's alone."""
    import json
    import subprocess
    import sys

    threads = f"torch.set_num_threads({args.threads}); " if args.threads > 0 else ""
    code = ("import json, torch; from ssmrec.bench.tower import scaling_case; " + threads
            + f"print('RESULT ' + json.dumps(scaling_case({model!r}, {n_features}, {args.batch}, "
            f"{args.infer_batch}, {args.repeats}, peak_rss=True)))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if p.returncode != 0:
        raise SsmrecError(f"bench tower --scaling: {model} at {n_features} features failed: "
                          f"{(p.stderr.strip().splitlines() or ['?'])[-1][:200]}")
    return json.loads(next(line[7:] for line in p.stdout.splitlines() if line.startswith("RESULT ")))


def crossing(rows: list[dict], key: str) -> str:
    """Where FT-Transformer's cost passes FT-Mamba's along the feature counts (medians)."""
    by = {(r["model"], r["n_features"]): r for r in rows}
    feats = sorted({r["n_features"] for r in rows})
    val = lambda r: r[key]["median"] if isinstance(r[key], dict) else r[key]  # noqa: E731
    ratio = [(f, val(by[("ft_transformer", f)]) / val(by[("ft_mamba", f)])) for f in feats
             if ("ft_transformer", f) in by and ("ft_mamba", f) in by]
    if not ratio:
        return "n/a"
    if all(r > 1 for _, r in ratio):
        return f"FT-Mamba is cheaper at every measured width ({ratio[0][0]}..{ratio[-1][0]} features)"
    if all(r <= 1 for _, r in ratio):
        return f"FT-Transformer is cheaper at every measured width ({ratio[0][0]}..{ratio[-1][0]} features)"
    for (f0, r0), (f1, r1) in zip(ratio, ratio[1:]):
        if (r0 <= 1) != (r1 <= 1):
            # log-linear interpolation of the ratio between the two widths
            t = (0 - math.log(r0)) / (math.log(r1) - math.log(r0))
            at = math.exp(math.log(f0) + t * (math.log(f1) - math.log(f0)))
            cheaper = "FT-Mamba" if r1 > 1 else "FT-Transformer"
            return f"the curves cross between {f0} and {f1} features (≈ {at:.0f}); {cheaper} is cheaper above"
    return "n/a"


def cmd_scaling(args, out: Path) -> int:
    from tqdm import tqdm

    feats = _int_list(args.features, "--features")
    models = _models(args.models)
    rows = []
    cases = [(m, f) for f in feats for m in models]
    for m, f in tqdm(cases, desc="scaling (model, features)", unit="case"):
        rows.append(_scaling_in_subprocess(m, f, args))
    table = [[LABEL[r["model"]], r["n_features"], f"{r['train_step_ms']['min']:.1f} / {r['train_step_ms']['median']:.1f}",
              f"{r['infer_ms_per_row']['min']:.4f} / {r['infer_ms_per_row']['median']:.4f}",
              f"{r['activation_mb']:.1f}", f"{r['peak_rss_mb']:.0f}", r["params"]] for r in rows]
    cross = {k: crossing(rows, k) for k in ("train_step_ms", "infer_ms_per_row", "activation_mb", "peak_rss_mb")}
    md = ["# ssmrec bench tower --scaling", "",
          f"Synthetic users of n numeric features (n + 1 tokens with [CLS]), items of 8; the paper's embedders "
          f"(token width 128). Training step: batch {args.batch}, forward + backward + Adam; inference: batch "
          f"{args.infer_batch}, user tower, no grad; min / median of {args.repeats}. Activation MB: bytes autograd "
          f"saves for backward in one training forward. Peak RSS MB: the peak resident memory of the process that "
          f"ran the case alone (torch itself is ~300 MB of it).", "",
          markdown_table(["embedder", "features", "train step ms", "infer ms / row", "activation MB", "peak RSS MB",
                          "params"], table),
          "", "Where the curves cross (FT-Transformer / FT-Mamba, medians):", "",
          *(f"- {k}: {v}" for k, v in cross.items()), "", f"Machine: {machine_info()}"]
    write_json_atomic(out / "scaling.json", {"rows": rows, "crossing": cross, "machine": machine_info(),
                                             "args": {k: v for k, v in vars(args).items() if k != "func"}})
    write_text_atomic(out / "scaling.md", "\n".join(md) + "\n")
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, key, title in zip(axes, ("train_step_ms", "infer_ms_per_row", "activation_mb", "peak_rss_mb"),
                              ("training step (ms, median)", "inference per row (ms, median)",
                               "activations saved for backward (MB)", "peak RSS of the case's process (MB)")):
        for m in models:
            rs = [r for r in rows if r["model"] == m]
            ax.plot([r["n_features"] for r in rs],
                    [r[key]["median"] if isinstance(r[key], dict) else r[key] for r in rs], "o-", label=LABEL[m])
        ax.set_xscale("log", base=2), ax.set_yscale("log")
        ax.set_xlabel("features (tokens - 1)"), ax.set_title(title), ax.legend(fontsize=8)
    fig.suptitle("FT-Mamba vs FT-Transformer: cost against the number of features", y=1.04)
    save_figure_atomic(fig, out / "scaling.png")
    print((out / "scaling.md").read_text())
    return 0


# ---------------------------------------------------------------------------------------------- index
def clustered_vectors(rng, n: int, d: int = 32, centres: int = 256):
    import numpy as np

    c = rng.standard_normal((centres, d)).astype(np.float32)
    return (c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32))


def cmd_index(args, out: Path) -> int:
    import numpy as np
    from tqdm import tqdm

    from ssmrec.bench.common import time_repeats
    from ssmrec.index import ExactIndex, FaissIndex, faiss_available, recall_at_k

    if not faiss_available():
        raise SsmrecError("bench tower --index needs faiss: pip install 'ssmrec[ann]' (faiss-cpu)")
    sizes = _int_list(args.catalogue, "--catalogue")
    rng = np.random.default_rng(0)
    queries = clustered_vectors(rng, 1000)
    rows = []
    for n in tqdm(sizes, desc="index (catalogue sizes)", unit="size"):
        items = clustered_vectors(rng, n)
        exact = ExactIndex(items)
        _, truth = exact.search(queries, 10)
        t = time_repeats(lambda: exact.search(queries, 10), args.repeats, warmup=1)
        rows.append({"items": n, "kind": "exact", "build_s": 0.0, "query_ms_per_user": {
            "min": t["min"] * 1e3 / len(queries), "median": t["median"] * 1e3 / len(queries)}, "recall@10": 1.0})
        for kind in ("hnsw", "ivf"):
            t0 = time.perf_counter()
            idx = FaissIndex(items, kind)
            build = time.perf_counter() - t0
            _, got = idx.search(queries, 10)
            t = time_repeats(lambda: idx.search(queries, 10), args.repeats, warmup=1)
            rows.append({"items": n, "kind": kind, "build_s": build, "query_ms_per_user": {
                "min": t["min"] * 1e3 / len(queries), "median": t["median"] * 1e3 / len(queries)},
                "recall@10": recall_at_k(got, truth)})
    table = [[r["items"], r["kind"], f"{r['build_s']:.2f}",
              f"{r['query_ms_per_user']['min']:.4f} / {r['query_ms_per_user']['median']:.4f}", f"{r['recall@10']:.4f}"]
             for r in rows]
    md = ["# ssmrec bench tower --index", "",
          "Top-10 by inner product for 1,000 queries against synthetic catalogues of 32-d item vectors (256 "
          f"clusters); query time min / median of {args.repeats}; recall@10 against exact search.", "",
          markdown_table(["items", "index", "build s", "query ms / user", "recall@10"], table), "",
          f"Machine: {machine_info()}"]
    write_json_atomic(out / "index.json", {"rows": rows, "machine": machine_info()})
    write_text_atomic(out / "index.md", "\n".join(md) + "\n")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for kind in ("exact", "hnsw", "ivf"):
        rs = [r for r in rows if r["kind"] == kind]
        axes[0].plot([r["items"] for r in rs], [r["query_ms_per_user"]["median"] for r in rs], "o-", label=kind)
        axes[1].plot([r["items"] for r in rs], [r["recall@10"] for r in rs], "o-", label=kind)
    for ax, title in zip(axes, ("query ms per user (median)", "recall@10 vs exact")):
        ax.set_xscale("log"), ax.set_xlabel("catalogue items"), ax.set_title(title), ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    save_figure_atomic(fig, out / "index.png")
    print((out / "index.md").read_text())
    return 0


# ---------------------------------------------------------------------------------------------- CLI
def _int_list(text: str, flag: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SsmrecError(f"{flag} must be comma-separated positive integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise SsmrecError(f"{flag} must be comma-separated positive integers, got {text!r}")
    return vals


def _models(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise SsmrecError(f"--models: unknown model '{bad[0] if bad else ''}' (choose from {', '.join(MODELS)})")
    return models


def cmd_bench_tower(args) -> int:
    from tqdm import tqdm

    from ssmrec.io import check_output_dir

    for flag in ("seeds", "repeats", "batch", "infer_batch"):
        if getattr(args, flag) < 1:
            raise SsmrecError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.steps is not None and args.steps < 1:
        raise SsmrecError(f"--steps must be >= 1, got {args.steps}")
    out = check_output_dir(args.out, "bench output")
    if args.scaling or args.index:
        if args.threads > 0:
            import torch

            torch.set_num_threads(args.threads)
        return cmd_scaling(args, out) if args.scaling else cmd_index(args, out)
    models = _models(args.models)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    overrides = list(args.set or [])
    _configs(args.env, models, overrides)  # every config is validated before anything trains
    records = []
    for seed in tqdm(seeds, desc=f"bench tower {args.env}: seeds", unit="seed"):
        records += run_seed(args.env, seed, models, overrides, out, args.steps, args.threads)
        write_results(out, args.env, args, records, models)
    print((out / "results.md").read_text())
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("tower", help="FT-Mamba vs FT-Transformer two-towers: ranking metrics over seeds, "
                                            "params, time; --scaling: cost against the number of features",
                              description="Train both embedders on one environment over several seeds (the "
                                          "paper's regime by default) and write results.json / .md / .png with "
                                          "the paper's tables beside ours; or, with --scaling, time both against "
                                          "the number of features.")
    p.add_argument("--env", default="spotify", choices=ENVS, help="environment (default spotify)")
    p.add_argument("--seeds", type=int, default=5, help="seeds (environment and training), default 5")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="cap the training steps per run (default: the config's "
                                                            "full epoch, 5,000 steps)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--threads", type=int, default=2, help="torch threads (0 = torch default)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for every run")
    p.add_argument("--scaling", action="store_true", help="time both embedders against the number of features")
    p.add_argument("--features", default="8,32,128,512,2048", help="--scaling: feature counts")
    p.add_argument("--batch", type=int, default=32, help="--scaling: training batch (the paper's 32)")
    p.add_argument("--infer-batch", type=int, default=256, help="--scaling: inference batch")
    p.add_argument("--repeats", type=int, default=5, help="--scaling / --index: timed repeats")
    p.add_argument("--index", action="store_true", help="exact top-k vs faiss HNSW / IVF: time and recall@10")
    p.add_argument("--catalogue", default="10000,100000,300000", help="--index: catalogue sizes")
    p.add_argument("--out", default="runs/bench-tower", help="output folder")
    p.set_defaults(func=cmd_bench_tower)
