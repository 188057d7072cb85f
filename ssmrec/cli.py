"""Command-line interface: `ssmrec data synth|check`, `train`, `evaluate`, `predict`, `demo`.

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

    out = synthesize(args.out, preset=args.preset, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote synthetic MM-CTR world to {out}")
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
