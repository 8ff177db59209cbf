"""How evenly upstream's DDP distributor spreads batched inverse-root work over ranks.

For each Llama preset of the step benchmark (``distributed_shampoo_dash.benchmarks.presets``),
world size and cost model, the script builds upstream's real ``DDPDistributor`` once per rank under
a fake process group (``init_process_group("fake", ...)``) over meta-device parameters, so nothing
is allocated, and reads back the blocks each rank owns. Per rank it reports:

* estimated solver FLOPs. A block of order ``n`` has ``n`` factors, one per dim ``d``, each with
  upstream's default inverse root ``p = 2n``; one factor costs ``products(p) * 2 d^3`` FLOPs, with
  the product counts of the default solver, the minimax iteration at ``rel_epsilon = 1e-5``
  (``minimax_products``): ``products(2) = 23``, ``products(4) = 24``, ``products(6) = 29``. This is
  ``InverseRootCostModel().cost`` with no per-block constant; other solvers change the counts
  (the paper's Newton-DB 31 and 61, coupled Newton 43, Chebyshev 62 for ``p = 4``) but not the
  ``d^3`` shape. Reported: max over mean (1.0 is perfect).
* ``(dim, root)`` groups: the distinct keys of its factors. Each group is at least one sequential
  batched solver call (more if a stack is chunked), so the group count is the rank's serial
  depth. Reported: max and mean.
* blocks and communication bytes (max over mean), to show what a FLOP-balanced split costs in
  all-gather balance: the DDP all-gather buffer is padded to the largest rank's bytes.

Cost models: ``memory`` is upstream's default ``AlignedMemoryCostModel``; ``poly-d3`` is upstream's
``PolynomialComputationalCostModel(coefficients=(0, 0, 0, 1))`` (``sum_d d^3``, root-blind);
``inverse-root`` is DASH's ``InverseRootCostModel`` (root-aware FLOPs, see its module).

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
