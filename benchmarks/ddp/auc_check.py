"""Valid AUC of one process against N DDP processes at the same global batch (issue: torchrun scaling).

    .venv/bin/python benchmarks/ddp/auc_check.py --data data/synth-microlens1m --steps 1000

Runs ``ssmrec train`` twice with the same config, seed and number of global steps: once as one
process with ``--threads`` threads, once under ``torchrun --standalone --nproc-per-node N`` with
``--threads`` per process. With N ranks each rank takes ``batch/N`` rows of the same global shuffle, so
both runs see the same global batches; they differ by dropout streams and float reduction order.
Prints and writes (``--out``/auc_check.json) both summaries, the AUC difference, and the train
throughput of each run (global samples / train seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def train(cmd_prefix: list[str], args, name: str) -> dict:
    cmd = cmd_prefix + ["-m", "ssmrec.cli", "train", "--config", args.config, "--overwrite",
                        "--set", f"data.dir={args.data}", "--set", "train.epochs=1",
                        "--set", f"train.max_steps_per_epoch={args.steps}", "--set", f"train.threads={args.threads}",
                        "--set", "train.checkpoint_every=0", "--set", f"out_dir={args.out}", "--set", f"name={name}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"auc_check: {name} failed with exit code {proc.returncode}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith('{"model"')][-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synth-microlens1m")
    p.add_argument("--config", default="mmctr/mambactr")
    p.add_argument("--steps", type=int, default=1000, help="global training steps of both runs")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--out", default="runs/ddp-auc-check")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    one = train([sys.executable], args, "p1")
    many = train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc)],
                 args, f"p{args.nproc}")
    result = {"config": args.config, "data": args.data, "steps": args.steps, "threads_per_process": args.threads,
              "nproc": args.nproc, "one_process": one, "ddp": many,
              "valid_auc_diff": many["valid_auc"] - one["valid_auc"],
              "train_s_ratio": one["train_s_per_epoch"] / many["train_s_per_epoch"]}
    Path(args.out, "auc_check.json").write_text(json.dumps(result, indent=2))
    print(f"valid AUC: 1 process {one['valid_auc']:.4f}, {args.nproc} processes {many['valid_auc']:.4f} "
          f"(diff {result['valid_auc_diff']:+.4f}); train seconds {one['train_s_per_epoch']:.1f} vs "
          f"{many['train_s_per_epoch']:.1f} ({result['train_s_ratio']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
