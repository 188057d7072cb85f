"""`ssmrec bench block`: Mamba blocks vs their GEMM floor and GEMM-only time vs an equal-width Transformer layer.

Everything is timed in one process; for each (L, mode) the implementations run in turns (A, B, C,
A, B, C, ...), so load from other processes spreads over all of them instead of hitting one. For each L (default 64, 200, 1024) at a fixed token budget per batch
(``--tokens``, default 8192 = batch 128 at L=64; batch = tokens // L), and two modes:

* ``fwd``   -- forward only, ``torch.no_grad()`` (inference);
* ``train`` -- forward + backward + Adam step (one training step).

Implementations (``--impls``):

* ``mamba1_ref`` / ``mamba2_ref`` -- the blocks with the pure-PyTorch sequential reference scan;
* ``mamba2_chunked`` -- Mamba-2 with the pure-PyTorch SSD chunked scan (the best non-fused path);
* ``mamba1_fused`` / ``mamba2_fused`` -- the fused C++ CPU kernel (:mod:`ssmrec.nn.fused_scan`);
* ``mamba1_floor`` / ``mamba2_floor`` -- the GEMM floor: the same block (projections, conv, gate,
  norm) with the scan replaced by an identity that still consumes delta/B/C, so every projection's
  backward still runs; no scan can make the block faster than this;
* ``mamba1_gemm`` / ``mamba2_gemm`` -- GEMM only: the block's own ``nn.Linear`` layers alone, on
  pre-made inputs of their real shapes, with no conv, gate, norm or other elementwise work between
  them (train: their forward, dX and dW matmuls, then Adam). This is what the CPU's matmul library
  does with the block's matmuls, so every other figure can be read as a multiple of it;
* ``transformer`` -- ``nn.TransformerEncoderLayer(d_model, 1 head, FFN d_model, no dropout)``.

Each (impl, L, mode) is also run once more, untimed, under ``torch.utils.flop_counter.FlopCounterMode``:
``counted_gflop`` is the *matmul* FLOPs of one call (matmuls, attention, convolutions; the fused C++
kernels -- scan and causal conv -- are invisible to it, while the PyTorch reference scans are partly
counted because their einsums lower to bmm), and ``gflops_per_s_median`` = counted / median time. For
the impls that run a scan, ``scan_gflop_est`` is an analytic estimate of the recurrence's own
arithmetic (:func:`scan_gflop_est`), which the counter misses for the fused kernel.

Also timed: ``step()`` latency for one token of one user (batch 1) with the fused and the
reference recurrence, i.e. the online-serving update, and optionally (``--ctr-data DIR``) MambaCTR
training throughput vs its Transformer twin (the paper's ablated model: Stage I = 2 encoder
layers) on real batches (samples/s).

Outputs: printed tables (times; ratios; FLOPs and time as a multiple of GEMM only), ``--json`` (one
record per impl x L x mode with ``impl``, ``L``, ``mode``, ``ms_median``, ``ms_min``, ``counted_gflop``,
``gflops_per_s_median``, ``scan_gflop_est`` ...) and ``--plot`` (PNG, time vs L per mode).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from ssmrec.bench.common import (machine_info, markdown_table, pyplot, save_figure_atomic, summarize_times,
                                 write_json_atomic)
from ssmrec.errors import ConfigError

ALL_IMPLS = ("mamba1_ref", "mamba1_fused", "mamba1_floor", "mamba1_gemm", "mamba2_ref", "mamba2_chunked",
             "mamba2_fused", "mamba2_floor", "mamba2_gemm", "transformer")
DEFAULT_IMPLS = ALL_IMPLS
SLOW_IMPLS = ("mamba1_ref", "mamba2_ref")  # sequential Python loops: fewer repeats, skipped past --ref-max-len

# Analytic arithmetic of the selective-scan recurrence alone, per token, per channel (d_inner) and
# per state element (d_state), an exp counted as one flop:
#   Mamba-1: dA = exp(delta * A) (2), h = dA * h + (delta * u) * B (3; delta * u is per channel),
#            y += C * h (2)                                                                  -> 7
#   Mamba-2: A is one scalar per head, so exp(delta * A) is per head, not per state element:
#            h = dA * h + (delta * u) * B (3), y += C * h (2)                                -> 5
# Per-channel terms (the D skip, the z gate) are O(d_inner), not O(d_inner * d_state), and left out.
# Training ~ 3x forward: the forward, then a backward that recomputes the states and runs the adjoint
# recurrence (dh plus the du / ddelta / dA / dB / dC terms, ~ 2x the forward's arithmetic).
# It is the sequential recurrence's work whatever the algorithm: the chunked SSD does more (its
# within-chunk quadratic form), and those einsums are already in counted_gflop.
SCAN_FLOPS_PER_STATE = {"mamba1": 7, "mamba2": 5}
SCAN_TRAIN_FACTOR = 3
SCAN_KINDS = ("ref", "chunked", "fused")


def _identity_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, head=1, need_last=True):
    """GEMM-floor stand-in for ``scan_channel_last``: y = u (gated like the real scan), plus a
    zero-weighted term that keeps delta, B and C in the autograd graph (so x_proj / dt_proj / conv
    backward still run) at the cost of a few elementwise reductions."""
    import torch
    import torch.nn.functional as F

    keep = (delta.sum(-1, keepdim=True) + B.sum((-2, -1)).unsqueeze(-1) + C.sum((-2, -1)).unsqueeze(-1)) * 0
    y = u + keep
    if z is not None:
        y = y * F.silu(z)
    return y, (torch.zeros(u.shape[0], u.shape[2], B.shape[-1], dtype=u.dtype) if need_last else None)


@contextlib.contextmanager
def _gemm_floor():
    from ssmrec.nn import fused_scan

    real = fused_scan.scan_channel_last
    fused_scan.scan_channel_last = _identity_scan
    try:
        yield
    finally:
        fused_scan.scan_channel_last = real


def build_impl(impl: str, d_model: int, d_state: int, expand: int, headdim: int):
    """(module, context manager factory) for an implementation name. ``*_gemm`` builds the real block
    (its scan never runs, so the pure-PyTorch one is picked: no kernel build) for its Linear layers."""
    import torch.nn as nn

    from ssmrec.nn.mamba import Mamba, Mamba2

    if impl == "transformer":
        return nn.TransformerEncoderLayer(d_model, 1, dim_feedforward=d_model, dropout=0.0, batch_first=True), \
            contextlib.nullcontext
    version, kind = impl.split("_")
    scan = {"ref": "ref", "chunked": "chunked", "fused": "fused", "floor": "fused", "gemm": "ref"}[kind]
    if version == "mamba1":
        block = Mamba(d_model, d_state=d_state, expand=expand, scan_impl=scan)
    else:
        block = Mamba2(d_model, d_state=d_state, expand=expand, headdim=headdim, scan_impl=scan)
    return block, (_gemm_floor if kind == "floor" else contextlib.nullcontext)


def gemm_linears(block) -> list:
    """The block's ``nn.Linear`` layers in registration order (Mamba-1: in_proj, x_proj, dt_proj,
    out_proj; Mamba-2: in_proj, out_proj): the matmuls the GEMM-only impl runs."""
    import torch.nn as nn

    return [m for m in block.modules() if isinstance(m, nn.Linear)]


def make_gemm_runner(block, L, batch, mode):
    """GEMM only: each of the block's Linear layers on a pre-made (batch, L, in_features) input, and
    nothing else. In ``train`` the inputs are leaves that require grad and the output gradients are
    pre-made, so ``autograd.backward`` runs exactly each Linear's dX and dW matmuls (no loss, no
    elementwise chain), then the same Adam step + zero_grad as the block impls on the parameters that
    got gradients (the Linears'; Adam skips the others anyway). The first Linear (in_proj) reads the
    block's input, which needs no gradient in this bench (:func:`make_runner`), so it gets no dX
    here either: the same matmuls as the block's training step, no more."""
    import torch

    linears = gemm_linears(block)
    train = mode == "train"
    xs = [torch.randn(batch, L, lin.in_features, requires_grad=train and k > 0) for k, lin in enumerate(linears)]
    if not train:
        def run():
            with torch.no_grad():
                for lin, x in zip(linears, xs):
                    lin(x)

        return run
    grads = [torch.randn(batch, L, lin.out_features) for lin in linears]
    opt = torch.optim.Adam([p for lin in linears for p in lin.parameters()], lr=1e-4)

    def run():
        torch.autograd.backward([lin(x) for lin, x in zip(linears, xs)], grads)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for x in xs[1:]:  # dX is handed over fresh each call, as in the block, not accumulated
            x.grad = None

    return run


def make_runner(impl, L, batch, mode, args):
    """A zero-argument callable running one forward (``fwd``) or one training step (``train``)."""
    import torch

    torch.manual_seed(0)
    block, ctx = build_impl(impl, args.d_model, args.d_state, args.expand, args.headdim)
    if impl.endswith("_gemm"):
        return make_gemm_runner(block, L, batch, mode)
    x = torch.randn(batch, L, args.d_model)
    opt = torch.optim.Adam(block.parameters(), lr=1e-4)

    def run():
        with ctx():
            if mode == "fwd":
                with torch.no_grad():
                    block(x)
            else:
                y = block(x)
                y.square().mean().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

    return run


def time_round_robin(runners: dict, repeats: dict, warmup: int, bar=None) -> dict:
    """Warm every runner up, then time them in turns (impl A, B, C, A, B, C, ...), so a burst of
    load from other processes spreads over all implementations instead of hitting one."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in runners}
    for rep in range(max(repeats.values())):
        for name, run in runners.items():
            if rep >= repeats[name]:
                continue
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
            if bar is not None:
                bar.update(1)
    return {name: summarize_times(t) for name, t in times.items()}


def _flop_mapping() -> dict:
    """FLOP formulas for the CPU attention kernel, which torch's counter does not map (it maps the
    CUDA flash / efficient ones): without them the Transformer's QK^T and AV would count as zero."""
    import torch
    from torch.utils import flop_counter

    def fwd(q, k, v, *args, out_shape=None, **kwargs):  # the counter passes shapes, not tensors
        return flop_counter.sdpa_flop_count(q, k, v)

    def bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_backward_flop_count(grad_out, q, k, v)

    aten = torch.ops.aten
    out = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        out[aten._scaled_dot_product_flash_attention_for_cpu] = fwd
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        out[aten._scaled_dot_product_flash_attention_for_cpu_backward] = bwd
    return out


def count_flops(run) -> int:
    """Matmul FLOPs of one call of ``run`` (untimed: the counter intercepts every op). Counts
    matmuls, attention and convolutions; custom C++ kernels (the fused scan and causal conv) are
    not seen."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
        run()
    return counter.get_total_flops()


def scan_gflop_est(impl, L, batch, mode, args):
    """Analytic GFLOP of the scan recurrence in one call (see SCAN_FLOPS_PER_STATE); None for impls
    that run no scan (floor, GEMM only, Transformer)."""
    version, _, kind = impl.partition("_")
    if kind not in SCAN_KINDS:
        return None
    flops = batch * L * args.expand * args.d_model * args.d_state * SCAN_FLOPS_PER_STATE[version]
    return flops * (SCAN_TRAIN_FACTOR if mode == "train" else 1) / 1e9


def time_step(impl, args, n_steps=200):
    """Median/min latency of one step() for one user (batch 1), state carried across calls."""
    import torch

    from ssmrec.nn.mamba import Mamba, Mamba2

    torch.manual_seed(0)
    version, scan = impl.split("_")
    block = (Mamba(args.d_model, d_state=args.d_state, expand=args.expand, scan_impl=scan) if version == "mamba1"
             else Mamba2(args.d_model, d_state=args.d_state, expand=args.expand, headdim=args.headdim, scan_impl=scan))
    xs = torch.randn(n_steps + 20, 1, args.d_model)
    times = []
    with torch.no_grad():
        state = block.allocate_state(1)
        for i, x in enumerate(xs):
            t0 = time.perf_counter()
            _, state = block.step(x, state)
            if i >= 20:  # first calls warm caches / allocator
                times.append(time.perf_counter() - t0)
    return summarize_times(times)


def time_ctr(data_dir, config, steps, repeats, warmup):
    """Training samples/s of MambaCTR and its Transformer twin on real batches of ``data_dir``."""
    import torch

    from ssmrec.config import load_config
    from ssmrec.data.mmctr import load_mmctr
    from ssmrec.models.ctr import build_ctr_model
    from ssmrec.tasks.ctr import ctr_loss

    cfg = load_config(config)
    data = load_mmctr(data_dir, cfg.data.max_len, splits=("train",))
    split = data.splits["train"]
    bs = cfg.train.batch_size
    runners, params = {}, {}
    # the twin is the paper's "ablated" model (reference doc §5.2): Stage I = 2 encoder layers,
    # 1 head, FFN 256 (configs/mmctr/mambactr_transformer.yaml); everything else unchanged
    twin = {"stage1": "transformer", "stage1_layers": 2}
    for label, extra in (("mambactr", {}), ("mambactr_transformer_twin", twin)):
        torch.manual_seed(0)
        model = build_ctr_model(cfg.model, {**cfg.model_params, **extra}, data.item_info)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
        g = torch.Generator().manual_seed(0)
        batches = [split.batch(torch.randint(0, len(split), (bs,), generator=g)) for _ in range(steps)]
        params[label] = sum(p.numel() for p in model.parameters())

        def run(model=model, opt=opt, batches=batches):
            for batch in batches:
                o = model(batch)
                loss = ctr_loss(o, batch)["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        runners[label] = run
    stats = time_round_robin(runners, {k: repeats for k in runners}, warmup)
    out = {}
    for label, s in stats.items():
        n = steps * bs
        out[label] = {"samples_per_s_median": n / s["median"], "samples_per_s_max": n / s["min"],
                      "s_per_step_median": s["median"] / steps, "params": params[label],
                      "batch_size": bs, "steps": steps, "repeats": repeats}
    out["config"] = str(config)
    out["ratio_mamba_over_transformer"] = (out["mambactr"]["samples_per_s_median"]
                                           / out["mambactr_transformer_twin"]["samples_per_s_median"])
    return out


def _ratio(a, b):
    return None if a is None or b is None else a / b


def summarize(records):
    """Ratios per (L, mode) from the median times."""
    by = {}
    for r in records:
        by.setdefault((r["L"], r["mode"]), {})[r["impl"]] = r["ms_median"]
    rows = []
    for (L, mode), t in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        for v in ("mamba1", "mamba2"):
            fused = t.get(f"{v}_fused")
            if fused is None:
                continue
            rows.append({"L": L, "mode": mode, "block": v, "fused_ms": fused,
                         "speedup_vs_ref": _ratio(t.get(f"{v}_ref"), fused),
                         "speedup_vs_chunked": _ratio(t.get(f"{v}_chunked"), fused),
                         "fused_over_gemm_only": _ratio(fused, t.get(f"{v}_gemm")),
                         "fused_over_gemm_floor": _ratio(fused, t.get(f"{v}_floor")),
                         "transformer_over_fused": _ratio(t.get("transformer"), fused)})
    return rows


def flop_rows(records, lengths, modes, impls):
    """Rows of the FLOP table; "x GEMM-only time" divides by the same version's ``*_gemm`` median
    (n/a for the Transformer, which has no Mamba GEMM-only counterpart)."""
    ms = {(r["impl"], r["L"], r["mode"]): r["ms_median"] for r in records}
    rows = []
    for L in lengths:
        for mode in modes:
            for r in (r for i in impls for r in records if r["impl"] == i and r["L"] == L and r["mode"] == mode):
                version = r["impl"].split("_")[0]
                gemm = ms.get((f"{version}_gemm", L, mode)) if version.startswith("mamba") else None
                rows.append([L, mode, r["impl"], _fmt(r["ms_median"]), _fmt(r["counted_gflop"], 3),
                             _fmt(r["gflops_per_s_median"]), _fmt(r["scan_gflop_est"], 3),
                             _fmt(_ratio(r["ms_median"], gemm), 2)])
    return rows


def plot(records, path):
    plt = pyplot()
    modes = sorted({r["mode"] for r in records})
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for impl in ALL_IMPLS:
            pts = sorted((r["L"], r["ms_median"], r["ms_min"]) for r in records if r["impl"] == impl and r["mode"] == mode)
            if not pts:
                continue
            Ls, med, mn = zip(*pts)
            style = ("--" if impl.endswith("floor") else "-." if impl.endswith("gemm")
                     else ":" if impl.endswith(("ref", "chunked")) else "-")
            ax.plot(Ls, med, style, marker="o", label=impl)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L (batch = tokens / L)")
        ax.set_ylabel("ms per call (median)")
        ax.set_title({"fwd": "forward (no grad)", "train": "forward + backward + Adam"}.get(mode, mode))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    save_figure_atomic(fig, path)


def _fmt(v, digits=1):
    return "n/a" if v is None else f"{v:.{digits}f}"


def cmd_bench_block(args) -> int:
    import torch
    from tqdm import tqdm

    from ssmrec.io import check_output_dir
    from ssmrec.nn import fused_scan

    check_output_dir(args.out, "bench output")  # before anything is measured
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    bad = [i for i in impls if i not in ALL_IMPLS]
    if bad:
        raise ConfigError(f"bench block: unknown --impls entry '{bad[0]}' (choose from {', '.join(ALL_IMPLS)})")
    try:
        lengths = [int(s) for s in args.lengths.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"bench block: --lengths must be comma-separated integers, got '{args.lengths}'") from None
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not lengths or any(L < 1 for L in lengths) or not set(modes) <= {"fwd", "train"} or not modes:
        raise ConfigError("bench block: --lengths must be positive and --modes a subset of fwd,train")
    if args.threads:
        torch.set_num_threads(args.threads)
    needs_fused = [i for i in impls if i.endswith(("fused", "floor"))]
    if needs_fused and not fused_scan.fused_available():
        raise ConfigError(f"bench block: the fused CPU kernel is unavailable ({fused_scan.fused_unavailable_reason()})"
                          f"; drop {', '.join(needs_fused)} from --impls")

    cases = [(L, max(1, args.tokens // L), mode) for L in lengths for mode in modes]
    case_impls = {(L, mode): [i for i in impls if not (i in SLOW_IMPLS and L > args.ref_max_len)]
                  for L, _, mode in cases}
    reps = {i: (args.ref_repeats if i in SLOW_IMPLS else args.repeats) for i in impls}
    records = []
    bar = tqdm(total=sum(reps[i] for L, _, m in cases for i in case_impls[(L, m)]), desc="bench block",
               unit="run")
    for L, batch, mode in cases:
        bar.set_postfix_str(f"L={L} B={batch} {mode}")
        names = case_impls[(L, mode)]
        runners = {i: make_runner(i, L, batch, mode, args) for i in names}
        stats = time_round_robin(runners, {i: reps[i] for i in names}, args.warmup, bar)
        for impl in names:
            s = stats[impl]
            gflop = count_flops(runners[impl]) / 1e9  # one more, untimed call
            records.append({"impl": impl, "L": L, "batch": batch, "mode": mode, "ms_median": s["median"] * 1e3,
                            "ms_min": s["min"] * 1e3, "times_ms": [t * 1e3 for t in s["times"]],
                            "repeats": s["repeats"], "tokens_per_s_median": batch * L / s["median"],
                            "counted_gflop": gflop, "gflops_per_s_median": gflop / s["median"],
                            "scan_gflop_est": scan_gflop_est(impl, L, batch, mode, args)})
    bar.close()

    step_records = []
    for impl in ("mamba1_fused", "mamba1_ref", "mamba2_fused", "mamba2_ref"):
        if impl.endswith("fused") and not fused_scan.fused_available():
            continue
        if not args.no_step:
            s = time_step(impl, args)
            step_records.append({"impl": impl, "L": 1, "batch": 1, "mode": "step", "ms_median": s["median"] * 1e3,
                                 "ms_min": s["min"] * 1e3, "repeats": s["repeats"]})

    ratios = summarize(records)
    result = {"machine": {**machine_info(), "torch": torch.__version__, "threads": torch.get_num_threads()},
              "settings": {"d_model": args.d_model, "d_state": args.d_state, "expand": args.expand,
                           "headdim": args.headdim, "tokens_per_batch": args.tokens, "lengths": lengths,
                           "repeats": args.repeats, "ref_repeats": args.ref_repeats, "warmup": args.warmup,
                           "scan_flops_per_state": SCAN_FLOPS_PER_STATE, "scan_train_factor": SCAN_TRAIN_FACTOR},
              "records": records + step_records, "ratios": ratios, "ctr_throughput": None}
    out = Path(args.out)
    json_path = Path(args.json) if args.json else out / "block.json"
    png_path = Path(args.plot) if args.plot else out / "block.png"
    write_json_atomic(json_path, result)  # saved before the (optional, slower) CTR timing
    plot(records, png_path)

    ctr = None
    if args.ctr_data:
        print(f"MambaCTR vs its Transformer twin: training throughput on {args.ctr_data} ...", flush=True)
        ctr = result["ctr_throughput"] = time_ctr(args.ctr_data, args.ctr_config, args.ctr_steps,
                                                  args.ctr_repeats, 1)
        write_json_atomic(json_path, result)

    # printed summary
    print(f"\nssmrec bench block: d_model={args.d_model} d_state={args.d_state} expand={args.expand} "
          f"headdim={args.headdim}, {args.tokens} tokens per batch, threads={torch.get_num_threads()}, "
          f"median (min) ms over {args.repeats} repeats ({args.ref_repeats} for *_ref)")
    rows = []
    for L in lengths:
        for mode in modes:
            cells = [L, next(r["batch"] for r in records if r["L"] == L), mode]
            for impl in impls:
                r = next((r for r in records if r["impl"] == impl and r["L"] == L and r["mode"] == mode), None)
                cells.append("skipped" if r is None else f"{r['ms_median']:.1f} ({r['ms_min']:.1f})")
            rows.append(cells)
    print(markdown_table(["L", "batch", "mode", *impls], rows))
    print()
    print(markdown_table(["L", "mode", "block", "fused ms", "x vs ref", "x vs chunked", "fused / GEMM only",
                          "fused / GEMM floor", "Transformer / fused"],
                         [[r["L"], r["mode"], r["block"], _fmt(r["fused_ms"]), _fmt(r["speedup_vs_ref"]),
                           _fmt(r["speedup_vs_chunked"]), _fmt(r["fused_over_gemm_only"], 2),
                           _fmt(r["fused_over_gemm_floor"], 2), _fmt(r["transformer_over_fused"], 2)]
                          for r in ratios]))
    print("\nmatmul FLOPs of one call (torch FlopCounterMode: matmuls, attention, convs; the fused C++ "
          "scan / conv are not counted), the scan's own GFLOP estimated analytically, and time as a "
          "multiple of the same block's GEMM-only time")
    print(markdown_table(["L", "mode", "impl", "ms", "counted GFLOP", "GFLOP/s", "scan GFLOP (est)",
                          "x GEMM-only time"], flop_rows(records, lengths, modes, impls)))
    if step_records:
        print("\nstep() for one token, batch 1: " + ", ".join(
            f"{r['impl']} {r['ms_median']:.3f} ms (min {r['ms_min']:.3f})" for r in step_records))
    if ctr:
        m, t = ctr["mambactr"], ctr["mambactr_transformer_twin"]
        print(f"\nMambaCTR training ({ctr['config']}, batch {m['batch_size']}): {m['samples_per_s_median']:.0f} "
              f"samples/s vs Transformer twin {t['samples_per_s_median']:.0f} samples/s "
              f"(ratio {ctr['ratio_mamba_over_transformer']:.2f})")
    print(f"\nwrote {json_path} and {png_path}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("block", help="Mamba blocks (reference / fused / GEMM floor / GEMM only) vs a "
                              "Transformer layer",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="64,200,1024", help="sequence lengths (default 64,200,1024)")
    p.add_argument("--tokens", type=int, default=8192, help="tokens per batch; batch = tokens // L (default 8192)")
    p.add_argument("--modes", default="fwd,train", help="fwd and/or train (default both)")
    p.add_argument("--impls", default=",".join(DEFAULT_IMPLS), help="comma-separated, from: " + ", ".join(ALL_IMPLS))
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--expand", type=int, default=2)
    p.add_argument("--headdim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ref-repeats", type=int, default=2, help="repeats for the slow sequential references")
    p.add_argument("--ref-max-len", type=int, default=1024, help="skip *_ref impls above this L")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--no-step", action="store_true", help="skip the step() latency measurement")
    p.add_argument("--ctr-data", help="also time MambaCTR vs its Transformer twin training on this MM-CTR dir")
    p.add_argument("--ctr-config", default="mmctr_synth/mambactr", help="run config for --ctr-data")
    p.add_argument("--ctr-steps", type=int, default=8)
    p.add_argument("--ctr-repeats", type=int, default=3)
    p.add_argument("--out", default="runs/bench-block")
    p.add_argument("--json", help="JSON path (default OUT/block.json)")
    p.add_argument("--plot", help="PNG path (default OUT/block.png)")
    p.set_defaults(func=cmd_bench_block)
