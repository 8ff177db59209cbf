"""Every GPU measurement of the project in one command: the CUDA tests, the solver benchmark, the
step benchmark against upstream (and the DASH authors' DashGpu when it imports), and where each
target of the docs stands.

    python3 scripts/gpu_report.py --out gpu_report                  # a CUDA machine, <= 8 minutes
    python3 scripts/gpu_report.py --out gpu_report --only step      # rerun parts, keep the others
    python3 scripts/gpu_report.py --device cpu --smoke --out /tmp/r # the same code, tiny shapes

Parts, in this order (``--only`` selects some; the others are kept from ``<out>/report.json``):

* ``tests``: ``pytest -m cuda`` with ``DASH_TEST_DEVICES=<device>`` (the device variants of the
  solver, stacking, step and equivalence tests, the host-sync test), results from its JUnit XML;
* ``step``: the step benchmark's rows (``scripts/benchmark.py``) on the ``gpu`` preset (hidden
  1024, 8 layers, FFN 2816, vocab 32000, block 1024) with roots every step and every 10 steps:
  upstream ``EigenConfig``, DASH with each solver, DashGpu (coupled Newton fp16, Newton-DB fp32) if
  importable; median step, step without roots, peak memory, root error, fallbacks, and at frequency
  10 the step costs (ops, launches, host syncs, FLOPs against the solver's floor, tracked bytes);
* ``solvers``: the solver benchmark's rows (``scripts/benchmark_solvers.py``) on its ``gpu`` preset
  stacks with the fp32/tf32/bf16/fp16 matmul peaks measured in the same run: TFLOP/s, fraction of
  peak, errors.

Then the targets of the docs: each with its value, goal, ratio and status; a target is "not
measured" unless every row it is computed from ran (an anchor measured elsewhere is a goal, never
a measurement). Everything goes to ``<out>/report.md`` and ``<out>/report.json`` (rewritten after
every part, so an interrupted run keeps what it measured), the pytest results to
``<out>/tests.xml``, plots to ``<out>/step_every<f>.png`` and ``<out>/solvers.png`` (with
matplotlib; the report links only the plots that were written). A part that fails is recorded
with its error and the report is still written. Each part has a time budget (rows not started
in time are listed as such), so the whole run fits ``--budget-s`` (default 450 s) plus the last
started row.

The plan, parts, targets and report are ``distributed_shampoo_dash.benchmarks``' ``gpu_plan``,
``gpu_parts``, ``gpu_targets`` (the targets as a table) and ``gpu_markdown``.

``--smoke`` runs every part on tiny shapes (``smoke`` presets, frequencies 1 and 2, a few rows
and tests): under a minute on a CPU with ``--device cpu``; ``tests/test_gpu_report.py`` runs it
in the default suite, so the CUDA run differs from a tested one only in the device and sizes.
"""

import argparse
import dataclasses
import json
import shlex
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from distributed_shampoo_dash.benchmarks.cli import HelpFormatter
from distributed_shampoo_dash.benchmarks.gpu_markdown import (
    environment,
    targets_table,
    write_report,
)
from distributed_shampoo_dash.benchmarks.gpu_parts import (
    run_part,
    solvers_part,
    step_part,
    tests_part,
)
from distributed_shampoo_dash.benchmarks.gpu_plan import FULL, PARTS, SMOKE
from distributed_shampoo_dash.benchmarks.gpu_targets import Target

REPOSITORY = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("gpu_report"),
        help="folder of report.md, report.json, tests.xml and the plots",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device of every part; cuda when available",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, a few rows and tests")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        help="parts to run, the others kept from <out>/report.json (default: all)",
    )
    parser.add_argument(
        "--budget-s", type=float, default=450.0, help="seconds for all parts together"
    )
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()

    start = time.perf_counter()
    deadline = start + args.budget_s
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    plan = SMOKE if args.smoke else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "report.json"
    kept = json.loads(previous.read_text())["parts"] if args.only and previous.exists() else {}
    report: dict[str, Any] = {
        "command": shlex.join([f"scripts/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "smoke": args.smoke,
        "environment": environment(device),
        "plan": dataclasses.asdict(plan),
        "parts": {name: part for name, part in kept.items() if name not in (args.only or ())},
    }
    print(f"{report['environment']}", flush=True)
    for name in args.only or PARTS:
        now = time.perf_counter()
        match name:
            case "tests":
                budget = min(plan.test_budget_s, max(deadline - now, 1.0))
                part = partial(tests_part, device, plan, args.out, budget, REPOSITORY)
            case "step":
                solver_reserve = plan.solver_budget_s if "solvers" in (args.only or PARTS) else 0.0
                part = partial(
                    step_part, device, plan, args.out, max(deadline - solver_reserve, now + 1.0)
                )
            case _:
                part = partial(solvers_part, device, plan, args.out, max(deadline, now + 1.0))
        report["parts"][name] = run_part(name, part)
        write_report(report, args.out)
    report["elapsed_s"] = time.perf_counter() - start
    write_report(report, args.out)
    print("\n" + targets_table([Target(**t) for t in report["targets"]]))
    print(
        f"\nwrote {args.out / 'report.md'} and {args.out / 'report.json'} "
        f"({report['elapsed_s']:.1f} s)"
    )


if __name__ == "__main__":
    main()
