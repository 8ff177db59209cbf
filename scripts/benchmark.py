r"""Times ``DistributedShampoo.step()`` for upstream and for DASH on a Llama-shaped parameter set,
and counts what each step dispatches.

Every row builds a fresh optimizer over the same parameters, feeds the same random gradients,
runs ``--warmup`` steps and then times ``--steps`` steps (device-synchronised), and reports the
median step time, the mean step time, the median of the steps that computed no inverse roots
(with ``--precondition-frequency`` > 1: the factor update and preconditioning alone), the peak
memory, the speedups against upstream ``EigenConfig`` measured in the same run, and the accuracy
of the inverse roots (right after a root computation, up to ``--root-error-sample`` factor
matrices, evenly spread): the relative Frobenius error of each inverse factor against the fp64
root of the matrix its solver targets, ``(A + r I)^{-1/p}`` with ``A`` the bias-corrected factor
matrix and ``r`` the ridge the solver added (``epsilon``, or eigh's shift, or the relative ridge
of the DASH configs; ``distributed_shampoo_dash.inverse_roots`` gives it).

Then, unless ``--no-costs``, it counts one step without root computation and one with (extra steps
after the timed ones; ``distributed_shampoo_dash.step_costs``): dispatched aten ops and those that
launch work, host reads of tensor values (device synchronisations on a GPU), ``d x d`` products,
FLOPs (``torch.utils.flop_counter``'s formulas), the FLOP floor of the row's solver (its ``d x d``
products per factor, as ``BatchedSolver.product_counts`` counts them, times ``2 d^3``, summed over
the factor matrices) and the ratio of the root step's FLOPs to it, and the peak bytes of the
tensors a step creates (stacks and solver work space included). These counts are the same on every
device. Both steps are also priced by the GPU time model
(``distributed_shampoo_dash.gpu_time_model``: a roofline per aten op plus a launch cost) on an H100
SXM and an H200: modelled, not measured, times; on the ``anchor`` preset beside the step times
recorded on an H100.

With ``--memory`` every row is also run in a fresh process (one thread,
``MALLOC_MMAP_THRESHOLD_=65536`` so freed memory goes back to the OS at once) that measures the
transient memory of its steps: after ``--warmup`` steps, for a root step and the steps up to the
next one, the peak resident set during ``optimizer.step()`` minus the resident set before it
(CUDA: peak allocated minus allocated), reported with its ratio to upstream ``EigenConfig``.

When the DASH authors' package is importable (``pip install --no-deps ista-daslab-optimizers``, see
``distributed_shampoo_dash.benchmarks.peer_dashgpu``), its ``DashGpu`` runs on the same parameters
and gradients as two more rows (coupled Newton fp16, Newton-DB fp32): time and peak memory only (no
root errors, and no step costs: its Triton kernels are not aten ops).

``--on-meta`` runs nothing timed: it counts and models one step without and one with roots of every
row on the ``meta`` device (shapes only, so presets far too large for the machine run in minutes):
DASH's and upstream's rows (``upstream CoupledNewtonConfig`` excepted, whose per-block tolerance
loop would run to its iteration cap there) and, when importable, every ``DashGpu`` setting recorded
on an H100 (eigh, Newton-DB fp32 and bf16, coupled Newton fp32 and fp16, Chebyshev), its Triton
kernel run as an aten product.

What the solvers log while a row runs (the loggers of ``distributed_shampoo_dash`` and
``distributed_shampoo``: roots rejected and recomputed by eigh, Newton iterations that did not
converge) is collected instead of printed: each row reports how many messages there were and a
one-line summary by kind. A row that raises is listed as failed, in one line: the exception's type,
the first sentence of its message and, where known, why (e.g. a non-finite inverse root, on which
upstream raises).

Writes ``<out>.json`` (every measurement) and ``<out>.png`` (median step times; needs matplotlib),
``--out`` being a file stem.

Presets: ``--preset`` takes a name of ``distributed_shampoo_dash.benchmarks.presets.PRESETS``
(gpu, anchor, cpu, many-blocks, layers, smoke; their shapes are listed in that module).

The rows, how they run and their tables are ``distributed_shampoo_dash.benchmarks``' ``step_rows``,
``step_runs`` and ``step_tables``; this script adds the memory measurement in fresh processes.

Usage:
    python3 scripts/benchmark.py --preset cpu --out bench_out/step_cpu   # bench_out/step_cpu.json
    python3 scripts/benchmark.py --preset many-blocks --precondition-frequency 4 \
        --out bench_out/step_blocks
    python3 scripts/benchmark.py --preset layers --memory --steps 2 --out bench_out/step_layers
    python3 scripts/benchmark.py --preset gpu --precondition-frequency 10 --steps 30 --only Eigen \
        --out bench_out/step_gpu_every10
    python3 scripts/benchmark.py --preset anchor --on-meta --precondition-frequency 10 \
        --out bench_out/step_anchor_model   # the GPU time model against the recorded H100 steps
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from distributed_shampoo import DistributedShampoo

from distributed_shampoo_dash.benchmarks import peer_dashgpu
from distributed_shampoo_dash.benchmarks.cli import HelpFormatter, device_name, write_json
from distributed_shampoo_dash.benchmarks.presets import PRESETS, Preset
from distributed_shampoo_dash.benchmarks.recorded_h100 import RECORDED_H100, RecordedStep
from distributed_shampoo_dash.benchmarks.step_rows import (
    Row,
    make_optimizer,
    make_parameters,
    peer_rows,
    rows,
    select_rows,
    set_gradients,
)
from distributed_shampoo_dash.benchmarks.step_runs import (
    StepSettings,
    meta_costs,
    not_on_meta,
    run_rows,
)
from distributed_shampoo_dash.benchmarks.step_tables import (
    costs_table,
    floor_table,
    modelled_table,
    plot,
    results_table,
)
from distributed_shampoo_dash.examples.training import synchronize

# ---------------------------------------------------------------------------------------------
# Transient memory of a step, each row in a fresh process.

#: Environment of a memory measurement: one thread, and freed memory returned to the OS at once.
MEMORY_ENVIRONMENT = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} is not in /proc/self/status")


def transient_step_memory(optimizer: DistributedShampoo, device: torch.device) -> int:
    """Peak memory ``optimizer.step()`` allocates on top of what is allocated before it.

    CUDA: ``max_memory_allocated`` after a reset minus ``memory_allocated`` before. CPU: peak
    resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) minus ``VmRSS`` before.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        optimizer.step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    optimizer.step()
    return _status_bytes("VmHWM") - before


def measure_memory_here(
    row: Row, preset: Preset, args: argparse.Namespace, device: torch.device
) -> int:
    """Largest transient memory over a root step and the steps up to the next one (this process)."""
    params, generator = make_parameters(preset, device)
    optimizer = make_optimizer(params, row, preset, args.precondition_frequency)
    peaks = []
    for step in range(args.warmup + args.precondition_frequency):
        set_gradients(params, generator)
        if step < args.warmup:
            optimizer.step()
        else:
            peaks.append(transient_step_memory(optimizer, device))
    return max(peaks)


def measure_memory(row: Row, args: argparse.Namespace) -> int:
    """:func:`measure_memory_here` in a fresh process with :data:`MEMORY_ENVIRONMENT`."""
    command = [
        sys.executable,
        __file__,
        "--memory-of",
        row.label,
        "--preset",
        args.preset,
        "--device",
        args.device,
        "--precondition-frequency",
        str(args.precondition_frequency),
        "--warmup",
        str(args.warmup),
    ]
    completed = subprocess.run(
        command,
        env={**os.environ, **MEMORY_ENVIRONMENT},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(json.loads(completed.stdout.strip().splitlines()[-1])["transient_memory_bytes"])


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="gpu" if torch.cuda.is_available() else "cpu",
        help="parameter set and block size, see Presets above; gpu when CUDA is available",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device of the parameters and the optimizer; cuda when available",
    )
    parser.add_argument(
        "--precondition-frequency",
        type=int,
        default=1,
        metavar="N",
        help="compute inverse roots every this many steps",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        metavar="N",
        help="untimed steps before the timed ones, per row",
    )
    parser.add_argument("--steps", type=int, default=5, metavar="N", help="timed steps per row")
    parser.add_argument(
        "--only",
        nargs="*",
        metavar="LABEL",
        help="labels (substrings) of the rows to run (default: all); upstream Eigen always runs",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench_out/step"),
        help="file stem of the outputs: writes <out>.json and <out>.png",
    )
    parser.add_argument("--no-costs", action="store_true", help="do not count step costs")
    parser.add_argument(
        "--root-error-sample",
        type=int,
        metavar="N",
        help="measure root errors on at most this many factor matrices (default: all)",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also measure each row's transient step memory, in a fresh process per row",
    )
    parser.add_argument("--memory-of", metavar="LABEL", help=argparse.SUPPRESS)
    parser.add_argument(
        "--on-meta",
        action="store_true",
        help="only count and model every row's steps on the meta device (no timing; see above)",
    )
    return parser


def recorded_for(preset_name: str) -> dict[str, RecordedStep]:
    """The H100 step times recorded with ``preset_name``'s parameter set (only ``anchor``'s)."""
    return RECORDED_H100 if preset_name == "anchor" else {}


def modelled_heading(preset_name: str) -> str:
    """The line above the modelled-time table."""
    against = (
        "; in parentheses the step time measured on one H100 and model / measured - 1"
        if recorded_for(preset_name)
        else ""
    )
    return (
        "\nmodelled GPU step times (distributed_shampoo_dash.gpu_time_model: modelled, not "
        f"measured{against})\n"
    )


def main() -> None:
    args = build_parser().parse_args()

    preset, device = PRESETS[args.preset], torch.device(args.device)
    if args.memory_of is not None:
        row = next(row for row in rows() if row.label == args.memory_of)
        print(
            json.dumps({"transient_memory_bytes": measure_memory_here(row, preset, args, device)})
        )
        return
    if args.on_meta:
        peers, peer_reason = peer_rows(peer_dashgpu.RECORDED_SETTINGS, triton_stand_ins=True)
        if peer_reason:
            print(f"DashGpu rows: not counted ({peer_reason})")
        counted, skipped = [], []
        for row in select_rows([*rows(), *peers], args.only):
            reason = not_on_meta(row)
            if reason is not None:
                skipped.append(f"{row.label}: not traced on meta ({reason})")
                continue
            start = time.perf_counter()
            try:
                counted.append(meta_costs(row, preset, args.precondition_frequency))
                print(f"{row.label}: counted ({time.perf_counter() - start:.0f} s)", flush=True)
            except RuntimeError as error:  # a host read meta cannot answer
                skipped.append(
                    f"{row.label}: not countable on meta ({str(error).splitlines()[0][:80]})"
                )
        written = write_json(
            args.out.with_suffix(".json"), {"preset": args.preset, "results": counted}, indent=2
        )
        print(
            f"\npreset {args.preset} on the meta device, "
            f"roots every {args.precondition_frequency} step(s)\n"
        )
        print(
            costs_table(counted)
            + "\n\n"
            + floor_table(counted)
            + "\n"
            + modelled_heading(args.preset)
            + "\n"
            + modelled_table(counted, recorded_for(args.preset))
            + "".join(f"\n{line}" for line in skipped)
        )
        print(f"\nwrote {written}")
        return
    settings = StepSettings(
        precondition_frequency=args.precondition_frequency,
        warmup=args.warmup,
        steps=args.steps,
        costs=not args.no_costs,
        root_error_sample=args.root_error_sample,
    )
    peers, peer_reason = peer_rows()
    if peer_reason:
        print(f"DashGpu rows: not run ({peer_reason})")
    selected = select_rows([*rows(), *peers], args.only)
    results, failures = run_rows(selected, preset, settings, device)
    if args.memory:
        for result in results:
            measured = next(r for r in selected if r.label == result["label"])
            if isinstance(measured, Row):
                result["transient_memory_bytes"] = measure_memory(measured, args)

    print(
        f"\npreset {args.preset} on {device_name(device)}, torch {torch.__version__}, "
        f"roots every {args.precondition_frequency} step(s), "
        f"{results[0]['num_factors']} factor matrices\n"
    )
    print(results_table(results, failures))
    if settings.costs:
        print(
            "\nstep costs (one step without and one with root computation; "
            "ratios against upstream EigenConfig)\n"
        )
        print(costs_table(results))
        print(modelled_heading(args.preset))
        print(modelled_table(results, recorded_for(args.preset)))
    written = [
        write_json(
            args.out.with_suffix(".json"),
            {
                "preset": args.preset,
                "device": device_name(device),
                "torch": torch.__version__,
                "settings": settings.__dict__,
                "precondition_frequency": args.precondition_frequency,
                "results": results,
                "failures": failures,
            },
            indent=2,
        )
    ]
    if plot(results, args.out.with_suffix(".png")):
        written.append(args.out.with_suffix(".png"))
    print(f"\nwrote {' and '.join(map(str, written))}")


if __name__ == "__main__":
    main()
