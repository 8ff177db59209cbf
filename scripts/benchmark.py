"""Times ``DistributedShampoo.step()`` for upstream and for DASH on a Llama-shaped parameter set.

Every row builds a fresh optimizer over the same parameters, feeds the same random gradients,
runs ``--warmup`` steps and then times ``--steps`` steps (device-synchronised), and reports the
median step time, the mean step time, the median of the steps that computed no inverse roots
(with ``--precondition-frequency`` > 1: the factor update and preconditioning alone), the peak
memory, the speedups against upstream ``EigenConfig`` measured in the same run, and the accuracy
of the inverse roots it computed: the relative Frobenius error of
every inverse factor against the fp64 root of its bias-corrected factor matrix (median, 90th
percentile and max; rank-deficient factors, e.g. of 1-D blocks after a few steps, have a null
space that fp32 cannot resolve at epsilon 1e-10, so their error is ~1 for every fp32 solver).

With ``--memory`` every row is also run in a fresh process (one thread,
``MALLOC_MMAP_THRESHOLD_=65536`` so freed memory goes back to the OS at once) that measures the
transient memory of its steps: after ``--warmup`` steps, for a root step and the steps up to the
next one, the peak resident set during ``optimizer.step()`` minus the resident set before it
(CUDA: peak allocated minus allocated), reported with its ratio to upstream ``EigenConfig``.

Presets (DESIGN.md section 4):
    gpu: hidden 1024, 8 layers, FFN 2816, vocab 32000, max_preconditioner_dim 1024
    cpu: hidden 128, 2 layers, FFN 352, vocab 512, max_preconditioner_dim 128 (about a minute)
    layers: 200 weights of 256 x 256, max_preconditioner_dim 256 (many same-shape layers)

Usage:
    python3 scripts/benchmark.py --preset cpu --out bench_out/step_cpu
    python3 scripts/benchmark.py --preset layers --memory --steps 2 --out bench_out/step_layers
    python3 scripts/benchmark.py --preset gpu --precondition-frequency 10 --steps 30 --only Eigen \
        --out bench_out/step_gpu_every10
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from distributed_shampoo import (
    AdamPreconditionerConfig,
    CoupledNewtonConfig,
    DistributedShampoo,
    EigenConfig,
    RootInvShampooPreconditionerConfig,
)
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.solvers import IterationControl, MatmulPrecision

#: Ten iterations at the reduced precision, then two in fp32.
REFINED = IterationControl(num_iterations=10, refinement_iterations=2)


@dataclass(frozen=True)
class Preset:
    """A parameter set and the optimizer's block size."""

    shapes: tuple[tuple[int, ...], ...]
    max_preconditioner_dim: int

    @classmethod
    def llama(cls, hidden: int, layers: int, ffn: int, vocab: int, block: int) -> "Preset":
        """Embedding, per layer (4 attention, 3 MLP, 2 norm weights), final norm, untied head."""
        layer = [(hidden, hidden)] * 4 + [(ffn, hidden), (ffn, hidden), (hidden, ffn), (hidden,), (hidden,)]
        shapes = [(vocab, hidden), *layer * layers, (hidden,), (vocab, hidden)]
        return cls(tuple(shapes), block)


PRESETS = {
    "gpu": Preset.llama(hidden=1024, layers=8, ffn=2816, vocab=32000, block=1024),
    "cpu": Preset.llama(hidden=128, layers=2, ffn=352, vocab=512, block=128),
    # Many same-shape layers: 200 weights of 256 x 256, one block each.
    "layers": Preset(((256, 256),) * 200, 256),
}


@dataclass(frozen=True)
class Row:
    """One benchmarked optimizer: a label, whether DASH is on, and the root-inverse solver."""

    label: str
    use_dash: bool
    solver: RootInvConfig


def rows() -> list[Row]:
    """Upstream ``EigenConfig`` first (the reference for speedups), then DASH with each solver
    (and upstream ``CoupledNewtonConfig``, to compare the same solver)."""
    return [
        Row("upstream EigenConfig", False, EigenConfig()),
        Row("DASH EigenConfig", True, EigenConfig()),
        Row("upstream CoupledNewtonConfig", False, CoupledNewtonConfig()),
        Row("DASH CoupledNewtonConfig", True, CoupledNewtonConfig()),
        Row("DASH Newton-DB minimax fp32", True, dash.NewtonDBRootInvConfig()),
        Row(
            "DASH Newton-DB minimax bf16",
            True,
            dash.NewtonDBRootInvConfig(precision=MatmulPrecision.BF16, max_residual=5e-2),
        ),
        Row(
            "DASH Newton-DB minimax fp16",
            True,
            dash.NewtonDBRootInvConfig(precision=MatmulPrecision.FP16, max_residual=5e-2),
        ),
        Row("DASH Newton-DB paper fp32 (k=10)", True, dash.NewtonDBRootInvConfig.paper()),
        Row(
            "DASH Newton-DB paper bf16 (k=10, +2 fp32)",
            True,
            dash.NewtonDBRootInvConfig.paper(precision=MatmulPrecision.BF16, iteration=REFINED),
        ),
        Row("DASH Chebyshev fp32 (degree 60)", True, dash.ChebyshevRootInvConfig()),
    ]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_optimizer(
    params: list[torch.nn.Parameter], row: Row, preset: Preset, precondition_frequency: int
) -> DistributedShampoo:
    """The DESIGN.md section 1 defaults (betas 0.9/0.95, Adam grafting 0.95/1e-8, epsilon 1e-10).

    DASH is switched on or off for the row and stays so while the row's steps run.
    """
    dash.enable() if row.use_dash else dash.disable()
    return DistributedShampoo(
        params,
        lr=1e-3,
        betas=(0.9, 0.95),
        epsilon=1e-10,
        max_preconditioner_dim=preset.max_preconditioner_dim,
        precondition_frequency=precondition_frequency,
        start_preconditioning_step=precondition_frequency,
        grafting_config=AdamPreconditionerConfig(beta2=0.95, epsilon=1e-8),
        preconditioner_config=RootInvShampooPreconditionerConfig(
            amortized_computation_config=row.solver
        ),
    )


def root_errors(optimizer: DistributedShampoo) -> list[float]:
    """Relative Frobenius error of every inverse factor against the fp64 root of its factor."""
    errors = []
    for factor in dash.inverse_factors(optimizer):
        matrix = factor.matrix.double()
        identity = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix + factor.epsilon * identity)
        eigenvalues = eigenvalues.clamp_min(factor.epsilon)
        reference = (eigenvectors * eigenvalues.pow(-1.0 / factor.root)) @ eigenvectors.T
        difference = factor.inverse_root.double() - reference
        errors.append(float(torch.linalg.norm(difference) / torch.linalg.norm(reference)))
    return errors


def computes_roots(step: int, precondition_frequency: int) -> bool:
    """Whether 1-based ``step`` computes inverse roots (upstream's rule with its default start)."""
    return step % precondition_frequency == 0


def make_parameters(preset: Preset, device: torch.device) -> tuple[list[torch.nn.Parameter], torch.Generator]:
    """The preset's parameters (seeded) and the generator that draws their gradients."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(shape, generator=generator).mul_(0.02).to(device))
        for shape in preset.shapes
    ]
    return params, generator


def set_gradients(params: list[torch.nn.Parameter], generator: torch.Generator) -> None:
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator).to(param.device)


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


def measure_memory_here(row: Row, preset: Preset, args: argparse.Namespace, device: torch.device) -> int:
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
        command, env={**os.environ, **MEMORY_ENVIRONMENT}, capture_output=True, text=True, check=True
    )
    return int(json.loads(completed.stdout.strip().splitlines()[-1])["transient_memory_bytes"])


def run_row(
    row: Row, preset: Preset, args: argparse.Namespace, device: torch.device
) -> dict[str, object]:
    """Times one row; returns its measurements."""
    params, generator = make_parameters(preset, device)
    optimizer = make_optimizer(params, row, preset, args.precondition_frequency)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, root_steps = [], []
    for step in range(args.warmup + args.steps):
        set_gradients(params, generator)
        synchronize(device)
        start = time.perf_counter()
        optimizer.step()
        synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            root_steps.append(computes_roots(step + 1, args.precondition_frequency))
    errors = root_errors(optimizer)
    times_without_roots = [t for t, roots in zip(times, root_steps, strict=True) if not roots]
    return {
        "label": row.label,
        "median_step_s": statistics.median(times),
        "mean_step_s": statistics.mean(times),
        "median_step_without_roots_s": statistics.median(times_without_roots) if times_without_roots else None,
        "step_times_s": times,
        "root_steps": root_steps,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "root_error_median": statistics.median(errors),
        "root_error_p90": statistics.quantiles(errors, n=10)[-1],
        "root_error_max": max(errors),
        "num_factors": len(errors),
        "fallbacks": dict(dash.fallback_counts(optimizer)),
        "finite": all(bool(torch.isfinite(p).all()) for p in params),
    }


def markdown_table(results: list[dict[str, object]]) -> str:
    """One row per optimizer; speedups are against the first row (upstream ``EigenConfig``)."""
    reference = results[0]
    lines = [
        (
            "| optimizer | median step (s) | mean step (s) | median step without roots (s) | "
            "speedup: median / mean / without roots | peak memory (GB) | transient step memory (MiB) | "
            "root error median / p90 / max | fallbacks | finite |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        memory = result["peak_memory_bytes"]
        transient = result.get("transient_memory_bytes")
        transient_cell = "-"
        if transient is not None:
            ratio = transient / reference["transient_memory_bytes"]
            transient_cell = f"{transient / 2**20:.1f} ({ratio:.2f}x)"
        without_roots = result["median_step_without_roots_s"]
        speedups = " / ".join(
            "-" if result[key] is None else f"{reference[key] / result[key]:.2f}x"
            for key in ("median_step_s", "mean_step_s", "median_step_without_roots_s")
        )
        lines.append(
            f"| {result['label']} | {result['median_step_s']:.4f} | {result['mean_step_s']:.4f} | "
            f"{'-' if without_roots is None else f'{without_roots:.4f}'} | {speedups} | "
            f"{'-' if memory is None else f'{memory / 1e9:.2f}'} | {transient_cell} | "
            f"{result['root_error_median']:.1e} / {result['root_error_p90']:.1e} / {result['root_error_max']:.1e} | "
            f"{result['fallbacks'] or '-'} | {result['finite']} |"
        )
    return "\n".join(lines)


def plot(results: list[dict[str, object]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no PNG written.")
        return
    labels = [str(result["label"]) for result in results]
    times = [float(result["median_step_s"]) for result in results]
    figure, axis = plt.subplots(figsize=(8, 0.5 * len(labels) + 1.5))
    axis.barh(labels[::-1], times[::-1])
    axis.set_xlabel("median optimizer step (s)")
    axis.set_title(path.stem)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precondition-frequency", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="labels (substrings) of the rows to run; upstream Eigen always runs")
    parser.add_argument("--out", type=Path, default=Path("bench_out/step"))
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also measure each row's transient step memory, in a fresh process per row",
    )
    parser.add_argument("--memory-of", metavar="LABEL", help=argparse.SUPPRESS)
    args = parser.parse_args()

    preset, device = PRESETS[args.preset], torch.device(args.device)
    if args.memory_of is not None:
        row = next(row for row in rows() if row.label == args.memory_of)
        print(json.dumps({"transient_memory_bytes": measure_memory_here(row, preset, args, device)}))
        return
    selected = [
        row
        for index, row in enumerate(rows())
        if index == 0 or not args.only or any(name in row.label for name in args.only)
    ]
    results: list[dict[str, object]] = []
    failures: list[dict[str, str]] = []
    for row in selected:
        start = time.perf_counter()
        try:
            results.append(run_row(row, preset, args, device))
            if args.memory:
                results[-1]["transient_memory_bytes"] = measure_memory(row, args)
        except Exception as exception:  # noqa: BLE001 - a solver that diverges on this preset is a result too
            print(f"{row.label}: failed with {type(exception).__name__}", flush=True)
            failures.append({"label": row.label, "error": f"{type(exception).__name__}: {str(exception)[:160]}"})
            continue
        finally:
            torch.set_printoptions(profile="default")
        print(f"{row.label}: {results[-1]['median_step_s']:.4f} s/step ({time.perf_counter() - start:.1f} s)", flush=True)

    table = markdown_table(results)
    print(f"\npreset {args.preset} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"torch {torch.__version__}, roots every {args.precondition_frequency} step(s), "
          f"{results[0]['num_factors']} factor matrices\n")
    print(table)
    for failure in failures:
        print(f"| {failure['label']} | failed: {failure['error'].splitlines()[0]} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps(
            {
                "preset": args.preset,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "torch": torch.__version__,
                "precondition_frequency": args.precondition_frequency,
                "results": results,
                "failures": failures,
            },
            indent=2,
        )
    )
    plot(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
