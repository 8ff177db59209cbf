"""Writes ``distributed_shampoo_dash/solvers/minimax_schedules.py``: the minimax polynomial
schedules of the coupled inverse-root iteration, one per root and relative ridge, as
``distributed_shampoo_dash.minimax_schedule_generator`` computes them (its docstring has the math).

Usage::

    python3 scripts/generate_minimax_schedules.py            # rewrite the module
    python3 scripts/generate_minimax_schedules.py --check    # compare with the stored module
"""

import argparse
import sys
from pathlib import Path

from distributed_shampoo_dash.benchmarks.cli import HelpFormatter
from distributed_shampoo_dash.minimax_schedule_generator import module_source

REPOSITORY = Path(__file__).resolve().parents[1]


MODULE = REPOSITORY / "distributed_shampoo_dash" / "solvers" / "minimax_schedules.py"


def build_parser() -> argparse.ArgumentParser:
    """The command line: rewrite :data:`MODULE`, or only compare with it."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare with the stored module only, exit 1 if it differs (without: rewrite it)",
    )
    return parser


def main() -> int:
    args = build_parser().parse_args()
    source = module_source()
    if args.check:
        if MODULE.read_text() != source:
            print(f"{MODULE} differs from what the generator writes", file=sys.stderr)
            return 1
        print(f"{MODULE} is up to date")
        return 0
    MODULE.write_text(source)
    print(f"wrote {MODULE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
