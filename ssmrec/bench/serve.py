"""``ssmrec bench serve``: online serving cost, Mamba against the Transformer baseline.

Two parts, one run, same models (freshly initialised checkpoints at the chosen catalogue size: serving
cost depends on the architecture and sizes, not on trained weight values):

* **HTTP** (``--skip-http`` to leave out): each model is served by ``ssmrec serve`` in its own process on
  loopback and driven by an asyncio load generator (httpx, ``--concurrency`` connections, a bounded
  count and duration per phase). ``--users`` users get a ``--history``-event history first; then the
  phases: ``events`` (one event to a random user), the main request with the state cache (CTR:
  ``/score`` of ``--candidates`` candidates; next-item: ``/recommend`` k = 10 over the catalogue), the same
  without the cache (the history in the request, the state built per request), and the main request at
  concurrency 1 (latency with no queue). Then the server is stopped (SIGTERM: the cache is saved),
  restarted from its state file, and the main request is run again. p50 / p95 / p99 latency (client
  side, so it includes HTTP and queueing), requests/s and errors (non-2xx or dropped connections).
* **History length** (``--skip-scaling`` to leave out): in-process, per model and history length
  (``--lengths``), the cost of one event's state update, of one request from the cached state, of one
  request that first rebuilds the state from the history (no cache) and, for CTR, of the batch form
  (``forward`` on every (user, candidate) row); plus the state's bytes. Speed-ups are ratios measured
  in this run.

Writes ``results.json``, ``results.md``, ``serve-latency.png`` and ``serve-history.png``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ssmrec.bench.common import (machine_info, markdown_table, pyplot, save_figure_atomic, summarize_times,
                                 write_json_atomic, write_text_atomic)
from ssmrec.errors import SsmrecError

# name -> (task, registered model, model params, serving mode, label)
MODELS = {
    "mambactr": ("ctr", "mambactr", {}, "auto", "MambaCTR (Mamba-2 state)"),
    "mambactr_transformer": ("ctr", "mambactr", {"stage1": "transformer", "stage1_layers": 2}, "auto",
                             "MambaCTR Transformer twin (re-encode per event)"),
    "mambactr_cosine": ("ctr", "mambactr", {"variant": "paper"}, "auto",
                        "MambaCTR paper variant (cosine GRU over the window)"),
    "mamba4rec": ("next_item", "mamba4rec", {}, "auto", "Mamba4Rec (state)"),
    "sasrec": ("next_item", "sasrec", {}, "auto", "SASRec (KV cache)"),
    "sasrec_recompute": ("next_item", "sasrec", {}, "recompute", "SASRec (re-encode per event)"),
}
DEFAULT_MODELS = "mambactr,mambactr_transformer,mambactr_cosine,mamba4rec,sasrec,sasrec_recompute"
MAX_LEN = {"ctr": 64, "next_item": 200}


# ------------------------------------------------------------------------------------------------
# load generator
# ------------------------------------------------------------------------------------------------


def _percentiles(lat: list[float]) -> dict:
    if not lat:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    s = sorted(lat)

    def q(p):
        return 1e3 * s[min(len(s) - 1, int(round(p * (len(s) - 1))))]

    return {"p50_ms": q(0.50), "p95_ms": q(0.95), "p99_ms": q(0.99), "max_ms": 1e3 * s[-1],
            "mean_ms": 1e3 * statistics.fmean(s)}


async def _drive(url: str, path: str, make_body, n: int, concurrency: int, duration: float, progress=None) -> dict:
    """``n`` POSTs (bodies from ``make_body(i)``) over ``concurrency`` keep-alive connections (aiohttp: its
    client costs the shared CPU about a fifth of httpx's per request), stopping early after ``duration``
    seconds. Latency is measured per request, client side, body read included."""
    import aiohttp

    lat: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(n))
    t_end = time.perf_counter() + duration

    async def worker(session):
        for i in counter:
            if time.perf_counter() > t_end:
                return
            body = make_body(i)
            t0 = time.perf_counter()
            try:
                async with session.post(path, json=body) as r:
                    await r.read()
                    code = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                code = type(e).__name__
            dt = time.perf_counter() - t0
            if code == 200:
                lat.append(dt)
            else:
                errors[str(code)] = errors.get(str(code), 0) + 1
            if progress is not None:
                progress.update(1)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def open_connection():
            async with session.get("/health") as r:
                await r.read()

        await asyncio.gather(*(open_connection() for _ in range(concurrency)))  # connections opened, not timed
        t_end = time.perf_counter() + duration
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    done = len(lat) + sum(errors.values())
    return {"requests": done, "ok": len(lat), "errors": errors, "n_errors": sum(errors.values()),
            "concurrency": concurrency, "wall_s": wall, "rps": len(lat) / wall if wall > 0 else None,
            "complete": done == n, **_percentiles(lat)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, ckpt: Path, state_file: Path, mode: str, threads: int, log: Path):
        self.ckpt, self.state_file, self.mode, self.threads, self.log = ckpt, state_file, mode, threads, log
        self.proc = None

    def start(self, timeout: float = 180.0) -> str:
        import httpx

        port = _free_port()
        self._log = open(self.log, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ssmrec.cli", "serve", "--checkpoint", str(self.ckpt), "--port", str(port),
             "--mode", self.mode, "--threads", str(self.threads), "--state-file", str(self.state_file),
             "--max-candidates", "5000"], stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise SsmrecError(f"ssmrec serve exited with {self.proc.returncode} (log: {self.log})")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise SsmrecError(f"ssmrec serve did not answer /health within {timeout:.0f} s (log: {self.log})")

    def health(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/health", timeout=10).json()

    def engine_stats(self) -> dict:
        """Per request kind, from /metrics: batched calls, mean requests per call, mean ms per call."""
        import httpx

        from prometheus_client.parser import text_string_to_metric_families

        sums: dict[tuple, float] = {}
        for fam in text_string_to_metric_families(httpx.get(f"{self.url}/metrics", timeout=10).text):
            for smp in fam.samples:
                if smp.name.endswith(("_sum", "_count")) and fam.name in ("ssmrec_batch_seconds",
                                                                          "ssmrec_batch_requests"):
                    sums[(fam.name, smp.name.rsplit("_", 1)[1], smp.labels["kind"])] = smp.value
        out = {}
        for kind in {k[2] for k in sums}:
            calls = sums.get(("ssmrec_batch_seconds", "count", kind), 0)
            if calls:
                out[kind] = {"calls": int(calls),
                             "requests_per_call": sums.get(("ssmrec_batch_requests", "sum", kind), 0) / calls,
                             "ms_per_call": 1e3 * sums.get(("ssmrec_batch_seconds", "sum", kind), 0) / calls}
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._log.close()


def _http_model(name: str, ckpt: Path, args, out: Path, bar) -> dict:
    task = MODELS[name][0]
    mode = MODELS[name][3]
    state_file = out / f"{name}.states.pt"
    state_file.unlink(missing_ok=True)
    server = _Server(ckpt, state_file, mode, args.threads, out / f"{name}.serve.log")
    rng = random.Random(0)
    n_items = args.n_items
    histories = {f"u{u}": [rng.randrange(1, n_items) for _ in range(args.history)] for u in range(args.users)}
    users = list(histories)
    cand_sets = [[rng.randrange(1, n_items) for _ in range(args.candidates)] for _ in range(64)]
    if task == "ctr":
        main_path = "/score"

        def main_body(i):
            return {"user": users[i % len(users)], "candidates": cand_sets[i % 64]}

        def nocache_body(i):
            return {"history": histories[users[i % len(users)]], "candidates": cand_sets[i % 64]}
    else:
        main_path = "/recommend"

        def main_body(i):
            return {"user": users[i % len(users)], "k": 10}

        def nocache_body(i):
            return {"history": histories[users[i % len(users)]], "k": 10}

    def run(label, path, body, n, conc):
        bar.set_description(f"{name}: {label}")
        r = asyncio.run(_drive(server.url, path, body, n, conc, args.duration, bar))
        r.update(phase=label, path=path)
        return r

    phases = []
    server.start()
    try:
        phases.append(run("seed histories", "/events", lambda i: {"user": users[i], "items": histories[users[i]]},
                          len(users), min(8, args.concurrency)))
        phases.append(run("events", "/events", lambda i: {"user": users[rng.randrange(len(users))],
                                                         "items": [rng.randrange(1, n_items)]},
                          args.requests, args.concurrency))
        phases.append(run(f"{main_path} cached", main_path, main_body, args.requests, args.concurrency))
        phases.append(run(f"{main_path} no cache", main_path, nocache_body, max(1, args.requests // 10),
                          args.concurrency))
        phases.append(run(f"{main_path} cached, concurrency 1", main_path, main_body,
                          max(1, args.requests // 10), 1))
        health = server.health()
        engine = server.engine_stats()
    finally:
        server.stop()
    server.start()  # from the state file written at shutdown
    try:
        restored = server.health()["restored_users"]
        phases.append(run(f"{main_path} cached, after restart", main_path, main_body, args.requests,
                          args.concurrency))
    finally:
        server.stop()
    return {"model": name, "label": MODELS[name][4], "task": task, "phases": phases,
            "users_before_restart": health["users"], "restored_users": restored, "engine": engine,
            "state_cache_bytes": health["state_cache_bytes"]}


# ------------------------------------------------------------------------------------------------
# history length, in-process
# ------------------------------------------------------------------------------------------------


def _history_study(name: str, ckpt: Path, args, bar) -> list[dict]:
    import torch

    from ssmrec.checkpoint import load_model
    from ssmrec.serve.adapter import ServingAdapter

    task, _, _, mode, _ = MODELS[name]
    model, cfg, _, ck = load_model(ckpt)
    scorer = ServingAdapter(model, mode)
    rowwise = ServingAdapter(model, "recompute") if task == "ctr" else None
    g = torch.Generator().manual_seed(0)
    cands = torch.randint(1, args.n_items, (args.candidates,), generator=g)
    out = []
    for L in args.lengths:
        bar.set_description(f"{name}: history {L}")
        hist = torch.randint(1, args.n_items, (L,), generator=g)
        st = scorer.prefill(hist)
        ev = torch.randint(1, args.n_items, (1,), generator=g)
        if task == "ctr":
            feats = [{"likes_level": torch.zeros_like(cands), "views_level": torch.zeros_like(cands)}]

            def request(s):
                return scorer.score([s], [cands], feats)
        else:
            def request(s):
                return scorer.topk([s], 10)
        reps = args.repeats
        rec = {"model": name, "history": L, "state_bytes": st.state.nbytes,
               "update": _time(lambda: scorer.update([st], [ev]), reps),
               "request_cached": _time(lambda: request(st), reps),
               "request_no_cache": _time(lambda: request(scorer.prefill(hist)), max(3, reps // 3))}
        if rowwise is not None:
            hs = rowwise.prefill(hist)
            rec["request_rowwise"] = _time(lambda: rowwise.score([hs], [cands], feats), 3)
        out.append(rec)
        bar.update(1)
    return out


def _time(fn, repeats: int) -> dict:
    fn()  # warm-up (allocations, kernel load)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    s = summarize_times(times)
    return {"min_ms": 1e3 * s["min"], "median_ms": 1e3 * s["median"], "repeats": s["repeats"]}


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def _fmt(v, spec=".2f"):
    return "n/a" if v is None else format(v, spec)


def _speedups(hist: list[dict]) -> list[dict]:
    """Ratios within this run: cache vs no cache per model; Mamba vs its Transformer twin per op."""
    by = {(r["model"], r["history"]): r for r in hist}
    rows = []
    pairs = (("mambactr", "mambactr_transformer"), ("mamba4rec", "sasrec"), ("mamba4rec", "sasrec_recompute"))
    for r in hist:
        row = {"model": r["model"], "history": r["history"],
               "cache_vs_no_cache": r["request_no_cache"]["median_ms"] / r["request_cached"]["median_ms"]}
        if "request_rowwise" in r:
            row["cache_vs_rowwise"] = r["request_rowwise"]["median_ms"] / r["request_cached"]["median_ms"]
        rows.append(row)
    for mamba, tf in pairs:
        for L in sorted({r["history"] for r in hist}):
            a, b = by.get((mamba, L)), by.get((tf, L))
            if a and b:
                rows.append({"model": f"{mamba} vs {tf}", "history": L,
                             "update": b["update"]["median_ms"] / a["update"]["median_ms"],
                             "request_cached": b["request_cached"]["median_ms"] / a["request_cached"]["median_ms"],
                             "state_bytes": b["state_bytes"] / a["state_bytes"]})
    return rows


def _write(out: Path, args, http: list[dict], hist: list[dict]) -> None:
    speed = _speedups(hist)
    write_json_atomic(out / "results.json", {"bench": "serve", "machine": machine_info(), "args": {
        k: v for k, v in vars(args).items() if k != "func"}, "http": http, "history": hist, "speedups": speed})
    md = [f"# ssmrec bench serve\n\n{machine_info()['cpu']}, {os.cpu_count()} cores; catalogue {args.n_items} items, "
          f"{args.candidates} candidates per /score, server threads {args.threads}.\n"]
    if http:
        rows = []
        for m in http:
            for p in m["phases"]:
                rows.append([m["label"], p["phase"], p["requests"], p["concurrency"], _fmt(p["p50_ms"]),
                             _fmt(p["p95_ms"]), _fmt(p["p99_ms"]), _fmt(p["rps"], ".0f"), p["n_errors"]])
        md.append("## HTTP (client-side latency, ms)\n\n" + markdown_table(
            ["model", "phase", "requests", "conc.", "p50", "p95", "p99", "req/s", "errors"], rows))
        md.append("\n" + "\n".join(f"- {m['label']}: {m['users_before_restart']} users cached "
                                   f"({m['state_cache_bytes'] / 1e6:.1f} MB), {m['restored_users']} restored after "
                                   f"the restart; server-side per batched call: " + ", ".join(
                                       f"{k} {v['ms_per_call']:.2f} ms for {v['requests_per_call']:.1f} requests"
                                       for k, v in sorted(m["engine"].items())) for m in http))
    if hist:
        rows = [[r["model"], r["history"], _fmt(r["update"]["median_ms"], ".3f"),
                 _fmt(r["request_cached"]["median_ms"]), _fmt(r["request_no_cache"]["median_ms"]),
                 _fmt(r.get("request_rowwise", {}).get("median_ms")), f"{r['state_bytes'] / 1024:.1f}"] for r in hist]
        md.append("\n## History length, in-process (median ms; min in results.json)\n\n" + markdown_table(
            ["model", "history", "update / event", "request, cached", "request, no cache", "request, row-wise",
             "state KiB"], rows))
        rows = [[s["model"], s["history"]] + [_fmt(s.get(k), ".1f") for k in
                                             ("cache_vs_no_cache", "cache_vs_rowwise", "update", "request_cached",
                                              "state_bytes")] for s in speed]
        md.append("\n## Speed-ups (ratios of medians, same run)\n\n" + markdown_table(
            ["model", "history", "no cache / cache", "row-wise / cache", "update: TF / Mamba",
             "request: TF / Mamba", "state bytes: TF / Mamba"], rows))
    write_text_atomic(out / "results.md", "\n".join(md) + "\n")
    _plot(out, http, hist)


def _plot(out: Path, http: list[dict], hist: list[dict]) -> None:
    plt = pyplot()
    if http:
        fig, ax = plt.subplots(figsize=(11, 4.5))
        labels, p50, p99 = [], [], []
        for m in http:
            for p in m["phases"]:
                if p["phase"] == "seed histories" or p["p99_ms"] is None:
                    continue
                labels.append(f"{m['model']}\n{p['phase']} (c{p['concurrency']})")
                p50.append(p["p50_ms"])
                p99.append(p["p99_ms"])
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], p50, 0.4, label="p50")
        ax.bar([i + 0.2 for i in x], p99, 0.4, label="p99")
        ax.axhline(20, color="red", lw=0.8, ls="--", label="20 ms target")
        ax.set_yscale("log")
        ax.set_ylabel("latency, ms (client side)")
        ax.set_xticks(list(x), labels, rotation=70, ha="right", fontsize=7)
        ax.legend()
        ax.set_title("ssmrec serve over HTTP")
        save_figure_atomic(fig, out / "serve-latency.png")
    if hist:
        fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
        axes = axes.ravel()
        for name in sorted({r["model"] for r in hist}):
            rs = sorted((r for r in hist if r["model"] == name), key=lambda r: r["history"])
            L = [r["history"] for r in rs]
            axes[0].plot(L, [r["update"]["median_ms"] for r in rs], "o-", label=name)
            axes[1].plot(L, [r["request_no_cache"]["median_ms"] / r["request_cached"]["median_ms"] for r in rs],
                         "o-", label=f"{name}: no cache / cached")
            if rs and "request_rowwise" in rs[0]:
                axes[1].plot(L, [r["request_rowwise"]["median_ms"] / r["request_cached"]["median_ms"] for r in rs],
                             "s--", label=f"{name}: row-wise forward / cached")
            axes[3].plot(L, [r["state_bytes"] / 1024 for r in rs], "o-", label=name)
        pairs = sorted({s_["model"] for s_ in _speedups(hist) if " vs " in s_["model"]})
        for pair in pairs:
            rs = sorted((s_ for s_ in _speedups(hist) if s_["model"] == pair), key=lambda r: r["history"])
            axes[2].plot([r["history"] for r in rs], [r["update"] for r in rs], "o-", label=f"{pair}: update")
            axes[2].plot([r["history"] for r in rs], [r["request_cached"] for r in rs], "s--",
                         label=f"{pair}: cached request")
        axes[2].axhline(1, color="grey", lw=0.8)
        for ax, title in zip(axes, ("state update per event, ms (median)",
                                    "speed-up of the state cache (ratio of medians)",
                                    "Transformer / Mamba cost (ratio of medians)", "state per user, KiB")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(sorted({r["history"] for r in hist}), [str(v) for v in sorted({r["history"] for r in hist})])
            ax.set_xlabel("history length (events)")
            ax.set_title(title)
            ax.legend(fontsize=7)
        save_figure_atomic(fig, out / "serve-history.png")


# ------------------------------------------------------------------------------------------------
# command
# ------------------------------------------------------------------------------------------------


def cmd_bench_serve(args) -> int:
    from tqdm import tqdm

    from ssmrec.io import check_output_dir
    from ssmrec.serve.untrained import write_untrained_checkpoint

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in names if m not in MODELS]
    if bad or not names:
        raise SsmrecError(f"--models: unknown model {bad[0] if bad else '(none)'!r}; choose from {', '.join(MODELS)}")
    try:
        args.lengths = [int(x) for x in str(args.lengths).split(",") if x.strip()]
    except ValueError:
        raise SsmrecError(f"--lengths must be comma-separated integers, got {args.lengths!r}") from None
    for flag, v in (("--requests", args.requests), ("--concurrency", args.concurrency), ("--users", args.users),
                    ("--history", args.history), ("--candidates", args.candidates), ("--repeats", args.repeats),
                    ("--threads", args.threads)):
        if v < 1:
            raise SsmrecError(f"{flag} must be >= 1, got {v}")
    if args.n_items < 2 or any(L < 1 for L in args.lengths):
        raise SsmrecError("--n-items must be >= 2 and --lengths positive")
    if not args.skip_http:
        try:
            import aiohttp  # noqa: F401
            import fastapi  # noqa: F401
            import httpx  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError as e:
            raise SsmrecError(f"bench serve needs the serve extra ({e.name} is missing): pip install 'ssmrec[serve]'") \
                from None
    out = check_output_dir(args.out, "bench serve results")
    import torch

    torch.set_num_threads(args.threads)
    ckpts = {}
    for name in names:
        task, model, params, _, _ = MODELS[name]
        ckpts[name] = write_untrained_checkpoint(out / "checkpoints" / f"{name}.pt", task, model, params,
                                                 n_items=args.n_items, max_len=MAX_LEN[task])
    hist: list[dict] = []
    if not args.skip_scaling:
        with tqdm(total=len(names) * len(args.lengths), unit="case", desc="history study") as bar:
            for name in names:
                hist += _history_study(name, ckpts[name], args, bar)
                _write(out, args, [], hist)
    http: list[dict] = []
    if not args.skip_http:
        import gc

        gc.collect()
        gc.freeze()  # the load generator's own full GC passes would show up as latency (as in the server)
        per_model = args.users + 3 * args.requests + 2 * max(1, args.requests // 10)
        with tqdm(total=len(names) * per_model, unit="req", desc="http") as bar:
            for name in names:
                http.append(_http_model(name, ckpts[name], args, out, bar))
                _write(out, args, http, hist)
    _write(out, args, http, hist)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.json'}, results.md, serve-latency.png, serve-history.png")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="online serving: HTTP latency / throughput of ssmrec serve and the cost "
                                            "of per-event state updates against history length, Mamba vs Transformer",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--n-items", type=int, default=12_102, help="catalogue size (default: Amazon Beauty's 12,101 + padding)")
    p.add_argument("--requests", type=int, default=10_000, help="requests per HTTP phase (no-cache phases: a tenth)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=300.0, help="cap in seconds per HTTP phase")
    p.add_argument("--users", type=int, default=256, help="users seeded with a history before the HTTP phases")
    p.add_argument("--history", type=int, default=200, help="events per seeded user")
    p.add_argument("--candidates", type=int, default=100, help="candidates per CTR /score request")
    p.add_argument("--lengths", default="50,200,1000", help="history lengths of the in-process study")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats per in-process measurement")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the server (and of the in-process study)")
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--out", default="runs/bench-serve")
    p.set_defaults(func=cmd_bench_serve)
