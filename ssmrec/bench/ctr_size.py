"""`ssmrec bench ctr --size microlens1m`: training and inference throughput at the challenge's real size.

Each listed model (default ``configs/bench/ctr_microlens1m.yaml``: MambaCTR, DIN, DIN with the literal
attention, QIN, DMF at their reference configs ``configs/mmctr/*``) runs in a fresh interpreter per
thread count (``--thread-counts``, default 1 and 2) on the full-size world that
``ssmrec data synth --size microlens1m`` writes. A worker:

1. builds the library's :class:`~ssmrec.train.trainer.Trainer` (the whole world is read, as ``train``
   reads it), runs warm-up steps, then ``--steps`` timed training steps through ``Trainer.train_epoch``
   (data batching, forward, backward, clip, optimiser: everything a step costs);
2. times inference over the valid split (``--infer-repeats`` passes at the config's eval batch size);
3. with the fewest threads only, profiles more steps (``torch.profiler``): the share of step time in
   the Trainer's named phases (data / forward / backward / optimiser) and in op families (GEMM,
   embedding gather/scatter, the Mamba kernels, the rest).

Samples/s is ``batch / median step``; min and median are both reported. With ``--fuxictr-python``
the official challenge baseline (FuxiCTR's DIN, ``benchmarks/fuxictr/din_harness.py``, run from its
own throw-away virtual environment) is timed with the same batch, steps and threads in the same run,
and the table gives every DIN row's ratio to it. Outputs (``--out``): ``results.json``,
``results.md``, ``throughput.png``, per-worker logs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from ssmrec.bench.common import (format_seconds, machine_info, markdown_table, peak_rss_mb, pyplot,
                                 save_figure_atomic, summarize_times, write_json_atomic, write_text_atomic)
from ssmrec.bench.ctr import _fmt
from ssmrec.errors import DataError, SsmrecError, one_line

SIZES = {"microlens1m": {"data": "data/synth-microlens1m", "list": "ctr_microlens1m.yaml"}}
FUXICTR_HARNESS = Path(__file__).resolve().parents[2] / "benchmarks" / "fuxictr" / "din_harness.py"

# Op families of the profile (self CPU time of aten ops and our autograd kernels).
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::_addmm_activation",
            "aten::mkldnn_rnn_layer", "aten::_mkldnn_matmul"}
EMBEDDING_OPS = {"aten::embedding", "aten::embedding_dense_backward", "aten::index_select", "aten::index",
                 "aten::index_add_", "aten::index_put_", "aten::_index_put_impl_", "aten::gather",
                 "aten::scatter_add_", "aten::index_copy", "aten::index_copy_", "aten::embedding_backward"}
PHASES = ("ssmrec::data", "ssmrec::forward", "ssmrec::backward", "ssmrec::optimizer")


def auto_steps(batch_size: int, steps: int, warmup: int) -> tuple[int, int]:
    """Timed and warm-up steps: given values, or enough for about 16k samples (at least 5 steps) and
    640 warm-up samples (at least 1 step)."""
    timed = steps if steps > 0 else max(5, math.ceil(16384 / batch_size))
    warm = warmup if warmup >= 0 else max(1, math.ceil(640 / batch_size))
    return timed, warm


def op_family(name: str) -> str:
    if name in GEMM_OPS:
        return "gemm"
    if name in EMBEDDING_OPS:
        return "embedding"
    if "Scan" in name or "ConvSilu" in name or "GatedRMSNorm" in name:
        return "mamba_kernels"
    if name.startswith("Optimizer.") or name.startswith("aten::_fused_adam"):
        return "optimizer_kernel"
    return "other"


def profile_summary(prof, step_seconds: list[float]) -> dict:
    """Shares of the profiled steps' wall time by phase and by op family (self time of leaf ops)."""
    wall = sum(step_seconds)
    phases, families = {p: 0.0 for p in PHASES}, {}
    for evt in prof.key_averages():
        if evt.key in phases:
            phases[evt.key] += evt.cpu_time_total / 1e6
        elif not evt.key.startswith("ssmrec::") and not evt.key.startswith("ProfilerStep"):
            fam = op_family(evt.key)
            families[fam] = families.get(fam, 0.0) + evt.self_cpu_time_total / 1e6
    return {"profiled_steps": len(step_seconds), "wall_s": wall,
            "phase_share": {p.split("::")[1]: v / wall for p, v in phases.items()},
            "op_share": {f: v / wall for f, v in sorted(families.items(), key=lambda kv: -kv[1])}}


# ------------------------------------------------------------------------------------------ worker
def worker(spec_path, result_path) -> int:
    """Child process: time training steps and inference of one model at one thread count."""
    import traceback

    from ssmrec.runtime import flush_denormals

    flush_denormals()  # before torch starts its thread pool
    spec = json.loads(Path(spec_path).read_text())
    result: dict = {"status": "ok"}
    try:
        import torch

        torch.set_num_threads(spec["threads"])
        from ssmrec.config import from_dict
        from ssmrec.tasks.ctr import predict_split
        from ssmrec.train.trainer import Trainer

        cfg = from_dict(spec["run_config"], source=spec["config_path"])
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        setup_s = time.perf_counter() - t0
        warm, timed, prof_steps = spec["warmup"], spec["steps"], spec["profile_steps"]
        trainer.train_epoch(0)  # max_steps_per_epoch = warm + timed (set by the parent)
        step_s = trainer.step_seconds[warm:warm + timed]
        if trainer.rank != 0:  # under torchrun: rank 0 measures inference and writes the record
            return 0
        rss_train = peak_rss_mb()
        valid = trainer.data.splits["valid"]
        infer = []
        for _ in range(spec["infer_repeats"]):
            t = time.perf_counter()
            with torch.no_grad():
                predict_split(trainer.model, valid, cfg.train.eval_batch_size, trainer.device)
            infer.append(time.perf_counter() - t)
        profile = None
        if prof_steps > 0 and trainer.world == 1:
            from torch.profiler import ProfilerActivity, profile as torch_profile

            trainer.state["step"] = 0
            trainer.step_seconds.clear()
            cfg.train.max_steps_per_epoch = prof_steps
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                trainer.train_epoch(1)
            profile = profile_summary(prof, trainer.step_seconds[:prof_steps])
        st, it = summarize_times(step_s), summarize_times(infer)
        bs = cfg.train.batch_size
        result.update(
            model=cfg.model, batch_size=bs, eval_batch_size=cfg.train.eval_batch_size, threads=torch.get_num_threads(),
            processes=trainer.world,
            params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            n_train=trainer.task.num_train_samples(), n_valid=len(valid), setup_s=setup_s,
            warmup_steps=warm, step_s=step_s, step_s_min=st["min"], step_s_median=st["median"],
            train_samples_per_s=bs / st["median"], train_samples_per_s_best=bs / st["min"],
            epoch_h_estimate=trainer.task.num_train_samples() / (bs / st["median"]) / 3600,
            infer_s=infer, infer_rows_per_s=len(valid) / it["median"], infer_rows_per_s_best=len(valid) / it["min"],
            peak_rss_mb_train=rss_train, peak_rss_mb=peak_rss_mb(), profile=profile, torch=torch.__version__)
    except Exception as e:  # noqa: BLE001 — recorded as this run's failure; the bench goes on
        traceback.print_exc(file=sys.stdout)
        result.update(status="failed", error=one_line(e, 300), peak_rss_mb=peak_rss_mb())
    sys.stdout.flush()
    write_json_atomic(result_path, result)
    return 0 if result["status"] == "ok" else 1


def _run(cmd: list[str], log_path: Path, result_path: Path) -> dict:
    result_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if result_path.is_file():
        rec = json.loads(result_path.read_text())
        rec.setdefault("status", "ok" if proc.returncode == 0 else "failed")
    else:
        rec = {"status": "failed", "error": f"exited with code {proc.returncode} without a result (see {log_path})"}
    rec.update(wall_s=wall, log=str(log_path))
    return rec


def worker_command(spec_path: Path, result_path: Path, processes: int) -> list[str]:
    """One process, or ``processes`` DDP ranks on this machine through torchrun (gloo on CPU)."""
    module = ["-m", "ssmrec.bench.ctr_size", "--worker", str(spec_path), str(result_path)]
    if processes == 1:
        return [sys.executable, *module]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            *module]


def run_fuxictr(python: str, data: Path, batch: int, steps: int, warmup: int, threads: int, infer_batches: int,
                logs: Path) -> dict:
    """The official baseline's DIN through the throw-away harness (its own interpreter and packages)."""
    result_path = logs / f"fuxictr_din.t{threads}.result.json"
    cmd = [python, str(FUXICTR_HARNESS), "--data", str(data), "--batch-size", str(batch), "--steps", str(steps),
           "--warmup", str(warmup), "--threads", str(threads), "--infer-batches", str(infer_batches),
           "--out", str(result_path)]
    raw = _run(cmd, logs / f"fuxictr_din.t{threads}.log", result_path)
    if raw.get("status") == "failed" and "samples_per_second" not in raw:
        return {"label": "fuxictr_din", "threads": threads, **raw}
    step = raw.get("step_seconds") or []
    st = summarize_times(step) if step else {"min": None, "median": None}
    return {"label": "fuxictr_din", "config": "official baseline (FuxiCTR DIN_Attention)", "status": "ok",
            "threads": threads, "processes": 1, "batch_size": batch, "warmup_steps": warmup, "step_s": step,
            "step_s_min": st["min"], "step_s_median": st["median"],
            "train_samples_per_s": batch / st["median"] if st["median"] else None,
            "train_samples_per_s_best": batch / st["min"] if st["min"] else None,
            "infer_rows_per_s": (raw.get("inference") or {}).get("rows_per_second"), "params": raw.get("param_count"),
            "peak_rss_mb": raw.get("peak_rss_mb"), "fuxictr": raw.get("fuxictr_version"),
            "wall_s": raw["wall_s"], "log": raw["log"], "raw": raw}


# ------------------------------------------------------------------------------------------ report
def render_markdown(results: dict) -> str:
    meta, recs = results["meta"], [r for r in results["records"] if r.get("status") == "ok"]
    failed = [r for r in results["records"] if r.get("status") != "ok"]
    lines = [f"# CTR throughput at `{meta['size']}` size (`ssmrec bench ctr --size {meta['size']}`)", "",
             f"Data `{meta['data_dir']}` ({meta.get('n_train') or '?':,} train rows) · torch {meta['torch']} · "
             f"{meta['machine']['cpu']} ({meta['machine']['cpu_count']} CPUs) · {meta['machine']['date']}", "",
             "Training: samples/s = batch / median step (min step in brackets), every step of the library's "
             "Trainer (batching, forward, backward, clip, optimiser). Inference: rows/s over the valid split.", ""]
    fx = {r["threads"]: r for r in recs if r["label"] == "fuxictr_din"}
    procs = lambda r: r.get("processes", 1)  # noqa: E731
    fewest = min(meta["thread_counts"])
    by_key = {(r["label"], r["threads"], procs(r)): r for r in recs}
    headers = ["model", "batch", "processes x threads", "train samples/s (best)", "step s min / median",
               f"x {fewest} thread", "x 1 process", "vs FuxiCTR DIN", "est. epoch h", "infer rows/s",
               "peak RSS MB", "params"]
    rows = []

    def ratio_to(r, base):
        return (r["train_samples_per_s"] / base["train_samples_per_s"]
                if base and base is not r and base.get("train_samples_per_s") else None)

    for r in sorted(recs, key=lambda r: (r["label"], procs(r), r["threads"])):
        scale = ratio_to(r, by_key.get((r["label"], fewest, procs(r))))
        dist_scale = ratio_to(r, by_key.get((r["label"], r["threads"], 1)))
        # the official baseline is a DIN: only DIN rows (ours, any attention form) get the ratio
        vs = fx.get(r["threads"]) if procs(r) == 1 and r["label"].startswith("din") else None
        ratio = (r["train_samples_per_s"] / vs["train_samples_per_s"]
                 if vs and vs is not r and r.get("batch_size") == vs.get("batch_size")
                 and vs.get("train_samples_per_s") else None)
        epoch_h = r.get("epoch_h_estimate")
        if epoch_h is None and meta.get("n_train") and r.get("train_samples_per_s"):
            epoch_h = meta["n_train"] / r["train_samples_per_s"] / 3600
        rows.append([r["label"], r.get("batch_size"), f"{procs(r)} x {r['threads']}",
                     f"{_fmt(r.get('train_samples_per_s'), ',.0f')} ({_fmt(r.get('train_samples_per_s_best'), ',.0f')})",
                     f"{_fmt(r.get('step_s_min'), '.3f')} / {_fmt(r.get('step_s_median'), '.3f')}",
                     _fmt(scale, '.2f', '—'), _fmt(dist_scale, '.2f', '—'), _fmt(ratio, '.2f', '—'), _fmt(epoch_h, '.2f'),
                     _fmt(r.get('infer_rows_per_s'), ',.0f'), _fmt(r.get('peak_rss_mb'), ',.0f'),
                     _fmt(r.get('params'), ',')])
    lines.append(markdown_table(headers, rows))
    prof = [r for r in recs if r.get("profile")]
    if prof:
        fams = sorted({f for r in prof for f in r["profile"]["op_share"]})
        lines += ["", f"## Where a training step goes ({min(meta['thread_counts'])} thread, torch.profiler)", "",
                  "Phase shares are of the profiled steps' wall time (inclusive); op shares are self time of the "
                  "ops (GEMM = mm / addmm / bmm; embedding = gathers, scatters and their backward).", ""]
        headers = ["model", "steps", "data", "forward", "backward", "optimizer"] + [f"op: {f}" for f in fams]
        lines.append(markdown_table(headers, [
            [r["label"], r["profile"]["profiled_steps"]]
            + [f"{100 * r['profile']['phase_share'][p]:.0f}%" for p in ("data", "forward", "backward", "optimizer")]
            + [f"{100 * r['profile']['op_share'].get(f, 0.0):.0f}%" for f in fams] for r in prof]))
    if failed:
        lines += ["", "**Failed:**", "", markdown_table(["model", "threads", "error"],
                                                         [[r["label"], r.get("threads"), r.get("error", "")]
                                                          for r in failed])]
    return "\n".join(lines) + "\n"


def plot_throughput(results: dict, path: Path) -> None:
    plt = pyplot()
    recs = [r for r in results["records"] if r.get("status") == "ok" and r.get("train_samples_per_s")]
    labels = sorted({r["label"] for r in recs})
    threads = results["meta"]["thread_counts"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(len(threads), 1)
    for j, t in enumerate(threads):
        vals = [next((r["train_samples_per_s"] for r in recs if r["label"] == lab and r["threads"] == t), 0)
                for lab in labels]
        ax.bar([i + j * width for i in range(len(labels))], vals, width, label=f"{t} thread(s)")
    ax.set_xticks([i + width * (len(threads) - 1) / 2 for i in range(len(labels))], labels, rotation=20)
    ax.set_ylabel("training samples / s (median step)")
    ax.set_yscale("log")
    ax.set_title(f"CTR training throughput at {results['meta']['size']} size")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    save_figure_atomic(fig, path)


# ------------------------------------------------------------------------------------------ parent
def cmd_bench_ctr_size(args) -> int:
    from ssmrec.bench.ctr import load_entries, run_config_for, select_entries
    from ssmrec.config import builtin_config_dir
    from ssmrec.io import check_output_dir

    size = SIZES[args.size]
    data = Path(args.data or size["data"])
    if not (data / "train.parquet").is_file():
        raise DataError(data / "train.parquet", f"file not found; write the {args.size} world first: ssmrec data "
                                                f"synth --size {args.size} --out {data} (about 13 minutes)")
    list_path = Path(args.config_list) if args.config_list else builtin_config_dir() / "bench" / size["list"]
    entries = select_entries(load_entries(list_path), args.models, list_path)
    try:
        thread_counts = sorted({int(t) for t in args.thread_counts.split(",") if t.strip()})
    except ValueError:
        raise SsmrecError(f"--thread-counts must be comma-separated positive integers, got {args.thread_counts!r}") \
            from None
    if not thread_counts or thread_counts[0] < 1:
        raise SsmrecError(f"--thread-counts must be comma-separated positive integers, got {args.thread_counts!r}")
    try:
        process_counts = sorted({int(t) for t in args.processes.split(",") if t.strip()})
    except ValueError:
        raise SsmrecError(f"--processes must be comma-separated positive integers, got {args.processes!r}") from None
    if not process_counts or process_counts[0] < 1:
        raise SsmrecError(f"--processes must be comma-separated positive integers, got {args.processes!r}")
    if args.fuxictr_python and not Path(args.fuxictr_python).is_file():
        raise SsmrecError(f"--fuxictr-python: {args.fuxictr_python} not found (see benchmarks/fuxictr/README.md)")
    # processes x threads above the CPU count would time the oversubscription, not the model
    cpus = os.cpu_count() or 1
    combos = [(t, p) for p in process_counts for t in thread_counts if p == 1 or p * t <= cpus]
    skipped = [f"{p} x {t}" for p in process_counts for t in thread_counts if p > 1 and p * t > cpus]
    if skipped:
        print(f"skipping {', '.join(skipped)} processes x threads: more than this machine's {cpus} CPUs", flush=True)
    out = check_output_dir(args.out, "bench output")
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    plans = []
    for e in entries:
        _, probe = run_config_for(e, list_path, data_dir=str(data.resolve()), epochs=1, seed=args.seed,
                                  sets=args.set or [], threads=0, runs_dir=(out / "runs").resolve())
        timed, warm = auto_steps(probe["train"]["batch_size"], args.steps, args.warmup)
        prof = max(2, math.ceil(4096 / probe["train"]["batch_size"])) if args.profile else 0
        for t, n_proc in combos:
            path, rc = run_config_for(e, list_path, data_dir=str(data.resolve()), epochs=1, seed=args.seed,
                                      sets=(args.set or []) + [f"train.max_steps_per_epoch={warm + timed}",
                                                               "train.checkpoint_every=0", "train.progress=false"],
                                      threads=t, runs_dir=(out / "runs").resolve())
            rc["name"] = f"{e.label}.t{t}" + (f".p{n_proc}" if n_proc > 1 else "")
            plans.append((e, t, {"config_path": str(path), "run_config": rc, "threads": t, "steps": timed,
                                 "warmup": warm, "infer_repeats": args.infer_repeats, "processes": n_proc,
                                 "profile_steps": prof if (t == thread_counts[0] and n_proc == 1) else 0}))

    import torch

    meta = {"size": args.size, "data_dir": str(data), "thread_counts": thread_counts,
            "process_counts": process_counts, "torch": torch.__version__,
            "machine": machine_info(), "argv": sys.argv[1:], "list": str(list_path), "n_train": None}
    results = {"meta": meta, "records": []}

    def sync():
        meta["n_train"] = next((r["n_train"] for r in results["records"] if r.get("n_train")), None)
        write_json_atomic(out / "results.json", results)
        write_text_atomic(out / "results.md", render_markdown(results))
        plot_throughput(results, out / "throughput.png")

    t_bench = time.perf_counter()
    jobs = len(plans) + (len(thread_counts) if args.fuxictr_python else 0)
    for i, (e, t, spec) in enumerate(plans, 1):
        n_proc = spec["processes"]
        print(f"[{i}/{jobs}] {e.label} at {n_proc} process(es) x {t} thread(s): {spec['warmup']} + {spec['steps']} steps of "
              f"{spec['run_config']['train']['batch_size']} · bench elapsed "
              f"{format_seconds(time.perf_counter() - t_bench)}", flush=True)
        stem = spec["run_config"]["name"]
        spec_path, result_path = logs / f"{stem}.spec.json", logs / f"{stem}.result.json"
        write_json_atomic(spec_path, spec)
        rec = _run(worker_command(spec_path, result_path, n_proc), logs / f"{stem}.log", result_path)
        rec = {"label": e.label, "config": e.config, "set": e.set, "threads": t, "processes": n_proc, **rec}
        results["records"].append(rec)
        sync()
        if rec["status"] == "ok":
            print(f"    {rec['train_samples_per_s']:,.0f} samples/s · infer {rec['infer_rows_per_s']:,.0f} rows/s · "
                  f"peak RSS {rec['peak_rss_mb']:,.0f} MB", flush=True)
        else:
            print(f"    FAILED: {rec['error']}", flush=True)
    if args.fuxictr_python:
        din = next((s for e, _, s in plans if e.label == "din"), None)
        batch = din["run_config"]["train"]["batch_size"] if din else 8192
        timed, warm = (din["steps"], din["warmup"]) if din else auto_steps(batch, args.steps, args.warmup)
        for j, t in enumerate(thread_counts, len(plans) + 1):
            print(f"[{j}/{jobs}] FuxiCTR DIN (official baseline) at {t} thread(s): {warm} + {timed} steps of {batch}",
                  flush=True)
            rec = run_fuxictr(args.fuxictr_python, data, batch, timed, warm, t, 3, logs)
            results["records"].append(rec)
            sync()
            print(f"    {_fmt(rec.get('train_samples_per_s'), ',.0f')} samples/s" if rec["status"] == "ok"
                  else f"    FAILED: {rec.get('error')}", flush=True)
    sync()
    print()
    print(render_markdown(results))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'throughput.png'}")
    failed = [r for r in results["records"] if r.get("status") != "ok"]
    if failed:
        raise SsmrecError(f"{len(failed)} of {jobs} runs failed: " + "; ".join(
            f"{r['label']} at {r.get('processes', 1)} x {r.get('threads')} thread(s) ({r.get('error')})"
            for r in failed))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        sys.exit(worker(sys.argv[2], sys.argv[3]))
    sys.exit("usage: python -m ssmrec.bench.ctr_size --worker SPEC.json RESULT.json (internal)")
