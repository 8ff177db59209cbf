"""How evenly upstream's DDP distributor spreads batched inverse-root work over ranks.

For each Llama preset, world size and cost model, the measurement of
``distributed_shampoo_dash.benchmarks.stack_balance`` (whose docstring says what it builds and
reports: solver FLOPs, ``(dim, root)`` groups, blocks and communication bytes per rank), as
tables and JSON.

Usage (CPU only, about a second; ``OMP_NUM_THREADS=1`` is enough)::

    python3 scripts/stack_balance.py                      # both presets, W = 2 4 8, all models
    python3 scripts/stack_balance.py --preset gpu --world-sizes 8 --cost-model memory inverse-root
    python3 scripts/stack_balance.py --out bench_out/stack_balance   # writes <out>.json
"""

import argparse
from pathlib import Path

from distributed_shampoo_dash.benchmarks.cli import HelpFormatter, write_json
from distributed_shampoo_dash.benchmarks.presets import PRESETS
from distributed_shampoo_dash.benchmarks.stack_balance import (
    COST_MODELS,
    FLOP_MODEL,
    markdown_table,
    measure,
)


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--preset",
        nargs="+",
        choices=sorted(PRESETS),
        default=["gpu", "cpu"],
        help="parameter sets of scripts/benchmark.py",
    )
    parser.add_argument(
        "--world-sizes",
        nargs="+",
        type=int,
        default=[2, 4, 8],
        metavar="W",
        help="numbers of DDP ranks",
    )
    parser.add_argument(
        "--cost-model",
        nargs="+",
        choices=list(COST_MODELS),
        default=list(COST_MODELS),
        help="load-balancing cost models, see Cost models above",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench_out/stack_balance"),
        help="file stem of the output: writes <out>.json",
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()

    balances = [
        measure(name, PRESETS[name], world_size, model)
        for name in args.preset
        for world_size in args.world_sizes
        for model in args.cost_model
    ]
    print(markdown_table(balances))
    written = write_json(
        args.out.with_suffix(".json"),
        {"flop_model": repr(FLOP_MODEL), "results": [b.summary() for b in balances]},
        indent=2,
    )
    print(f"\nwrote {written}")


if __name__ == "__main__":
    main()
