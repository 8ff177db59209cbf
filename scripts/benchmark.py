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
FLOPs (``FlopCounterMode``), the FLOP floor of the row's solver (its ``d x d`` products per factor,
as ``BatchedSolver.product_counts`` counts them, times ``2 d^3``, summed over the factor matrices)
and the ratio of the root step's FLOPs to it, and the peak bytes of the tensors a step creates
(stacks and solver work space included). These counts are the same on every device.

With ``--memory`` every row is also run in a fresh process (one thread,
``MALLOC_MMAP_THRESHOLD_=65536`` so freed memory goes back to the OS at once) that measures the
transient memory of its steps: after ``--warmup`` steps, for a root step and the steps up to the
next one, the peak resident set during ``optimizer.step()`` minus the resident set before it
(CUDA: peak allocated minus allocated), reported with its ratio to upstream ``EigenConfig``.

When the DASH authors' package is importable (``pip install --no-deps ista-daslab-optimizers``,
see ``scripts/peer_dashgpu.py``), its ``DashGpu`` runs on the same parameters and gradients as
two more rows (coupled Newton fp16, Newton-DB fp32): time and peak memory only (no root errors,
and no step costs: its Triton kernels are not aten ops).

What the solvers log while a row runs (the loggers of ``distributed_shampoo_dash`` and
``distributed_shampoo``: roots rejected and recomputed by eigh, Newton iterations that did not
converge) is collected instead of printed: each row reports how many messages there were and a
one-line summary by kind. A row that raises is listed as failed, in one line: the exception's type,
the first sentence of its message and, where known, why (e.g. a non-finite inverse root, on which
upstream raises).

Writes ``<out>.json`` (every measurement) and ``<out>.png`` (median step times; needs matplotlib),
``--out`` being a file stem.

Presets:
    gpu: hidden 1024, 8 layers, FFN 2816, vocab 32000, max_preconditioner_dim 1024
    cpu: hidden 128, 2 layers, FFN 352, vocab 512, max_preconditioner_dim 128 (about a minute)
    many-blocks: hidden 128, 4 layers, FFN 352, vocab 512, max_preconditioner_dim 32: many small
        blocks, where per-block overhead dominates on a CPU as it does on a GPU
    layers: 200 weights of 256 x 256, max_preconditioner_dim 256 (many same-shape layers)
    smoke: hidden 32, 1 layer, FFN 64, vocab 64, max_preconditioner_dim 16 (seconds)

Usage:
    python3 scripts/benchmark.py --preset cpu --out bench_out/step_cpu   # bench_out/step_cpu.json
    python3 scripts/benchmark.py --preset many-blocks --precondition-frequency 4 \
        --out bench_out/step_blocks
    python3 scripts/benchmark.py --preset layers --memory --steps 2 --out bench_out/step_layers
    python3 scripts/benchmark.py --preset gpu --precondition-frequency 10 --steps 30 --only Eigen \
        --out bench_out/step_gpu_every10
"""

import argparse
import contextlib
import gc
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cli
import peer_dashgpu
import torch
from distributed_shampoo import (
    CoupledNewtonConfig,
    DistributedShampoo,
    EigenConfig,
    RootInvShampooPreconditionerConfig,
)
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig
from distributed_shampoo.shampoo_types import PreconditionerValueError

import distributed_shampoo_dash as dash
from distributed_shampoo_dash import step_costs
from distributed_shampoo_dash.examples.training import synchronize
from distributed_shampoo_dash.integration.dispatch import batched_solver
from distributed_shampoo_dash.paper_defaults import PAPER_SETTINGS
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
        layer = [(hidden, hidden)] * 4 + [
            (ffn, hidden),
            (ffn, hidden),
            (hidden, ffn),
            (hidden,),
            (hidden,),
        ]
        shapes = [(vocab, hidden), *layer * layers, (hidden,), (vocab, hidden)]
        return cls(tuple(shapes), block)


PRESETS = {
    "gpu": Preset.llama(hidden=1024, layers=8, ffn=2816, vocab=32000, block=1024),
    "cpu": Preset.llama(hidden=128, layers=2, ffn=352, vocab=512, block=128),
    # Many small blocks: per-block overhead dominates on a CPU as it does on a GPU.
    "many-blocks": Preset.llama(hidden=128, layers=4, ffn=352, vocab=512, block=32),
    # Many same-shape layers: 200 weights of 256 x 256, one block each.
    "layers": Preset(((256, 256),) * 200, 256),
    # Seconds on a CPU: what scripts/gpu_report.py --smoke runs.
    "smoke": Preset.llama(hidden=32, layers=1, ffn=64, vocab=64, block=16),
}


@dataclass(frozen=True)
class Row:
    """One benchmarked optimizer: a label, whether DASH is on, and the root-inverse solver."""

    label: str
    use_dash: bool
    solver: RootInvConfig


@dataclass(frozen=True)
class PeerRow:
    """One benchmarked setting of the DASH authors' ``DashGpu`` (``scripts/peer_dashgpu.py``)."""

    label: str
    setting: Any  # peer_dashgpu.DashGpuSetting


AnyRow = Row | PeerRow


def rows() -> list[Row]:
    """Upstream ``EigenConfig`` first (the reference for speedups), then DASH with each solver
    (and upstream ``CoupledNewtonConfig``, to compare the same solver)."""
    return [
        Row("upstream EigenConfig", False, EigenConfig()),
        Row("DASH EigenConfig", True, EigenConfig()),
        Row("upstream CoupledNewtonConfig", False, CoupledNewtonConfig()),
        Row("DASH CoupledNewtonConfig", True, CoupledNewtonConfig()),
        Row("DASH minimax fp32", True, dash.MinimaxRootInvConfig()),
        Row(
            "DASH minimax bf16",
            True,
            dash.MinimaxRootInvConfig(precision=MatmulPrecision.BF16, max_residual=5e-2),
        ),
        Row(
            "DASH minimax fp16",
            True,
            dash.MinimaxRootInvConfig(precision=MatmulPrecision.FP16, max_residual=5e-2),
        ),
        Row("DASH Newton-DB paper fp32 (k=10)", True, dash.NewtonDBRootInvConfig()),
        Row(
            "DASH Newton-DB paper bf16 (k=10, +2 fp32)",
            True,
            dash.NewtonDBRootInvConfig(precision=MatmulPrecision.BF16, iteration=REFINED),
        ),
        Row("DASH Chebyshev fp32 (degree 60)", True, dash.ChebyshevRootInvConfig()),
    ]


def peer_rows() -> tuple[list[PeerRow], str]:
    """The ``DashGpu`` rows if the authors' package imports, else ``([], why not)``."""
    peer, reason = peer_dashgpu.load()
    if peer is None:
        return [], reason
    return [PeerRow(setting.label, setting) for setting in peer_dashgpu.SETTINGS], ""


def select_rows(candidates: Sequence[AnyRow], only: Sequence[str] | None) -> list[AnyRow]:
    """The first row (the reference) and those whose label contains one of ``only`` (all if
    empty).
    """
    return [
        row
        for index, row in enumerate(candidates)
        if index == 0 or not only or any(name in row.label for name in only)
    ]


@dataclass(frozen=True)
class StepSettings:
    """How a row is run.

    Attributes:
        precondition_frequency (int): Roots every this many steps.
        warmup (int): Untimed steps first.
        steps (int): Timed steps.
        costs (bool): Count a step without and one with root computation afterwards.
        root_error_sample (int | None): At most this many factor matrices for the root errors
            (evenly spread; None: all).
    """

    precondition_frequency: int = 1
    warmup: int = 2
    steps: int = 5
    costs: bool = True
    root_error_sample: int | None = None


def make_optimizer(
    params: list[torch.nn.Parameter], row: Row, preset: Preset, precondition_frequency: int
) -> DistributedShampoo:
    """The DASH paper's settings (``PAPER_SETTINGS``: betas 0.9/0.95, Adam grafting 0.95/1e-8,
    epsilon 1e-10) with the preset's block size, lr 1e-3, and the DASH form of the preconditioner
    config for a DASH row."""
    preconditioner_config = RootInvShampooPreconditionerConfig(
        amortized_computation_config=row.solver
    )
    settings = replace(
        PAPER_SETTINGS,
        max_preconditioner_dim=preset.max_preconditioner_dim,
        precondition_frequency=precondition_frequency,
    )
    return DistributedShampoo(
        params,
        lr=1e-3,
        start_preconditioning_step=precondition_frequency,
        preconditioner_config=(
            dash.batched(preconditioner_config) if row.use_dash else preconditioner_config
        ),
        **settings.shampoo_kwargs(),
    )


def make_any_optimizer(
    params: list[torch.nn.Parameter], row: AnyRow, preset: Preset, precondition_frequency: int
) -> torch.optim.Optimizer:
    """:func:`make_optimizer` for Shampoo rows, ``DashGpu`` for peer rows."""
    if isinstance(row, PeerRow):
        peer, reason = peer_dashgpu.load()
        if peer is None:
            raise RuntimeError(reason)
        return peer_dashgpu.make_optimizer(
            peer, params, row.setting, preset.max_preconditioner_dim, precondition_frequency
        )
    return make_optimizer(params, row, preset, precondition_frequency)


def evenly_spread(count: int, sample: int | None) -> list[int]:
    """``sample`` indices of ``range(count)`` spread evenly (all of them if ``sample`` is None)."""
    if sample is None or sample >= count:
        return list(range(count))
    return sorted({round(i * (count - 1) / max(sample - 1, 1)) for i in range(sample)})


def root_errors(
    optimizer: DistributedShampoo, solver: RootInvConfig, sample: int | None = None
) -> list[float]:
    """Relative Frobenius error of inverse factors against the fp64 root of their solver's target.

    The target of a factor matrix ``A`` is ``(A + r I)^{-1/p}``, ``r`` the ridge its solver adds
    (``dash.inverse_roots(...).regularization``: epsilon, eigh's shift, or the relative ridge);
    eigenvalues of ``A + r I`` below ``r`` (an fp32 factor made indefinite by rounding) count as
    ``r``.
    """
    factors = list(dash.inverse_factors(optimizer))
    factors = [factors[i] for i in evenly_spread(len(factors), sample)]
    groups: dict[tuple[int, float, float, torch.dtype], list[int]] = {}
    for index, factor in enumerate(factors):
        key = (factor.matrix.shape[0], factor.root, factor.epsilon, factor.matrix.dtype)
        groups.setdefault(key, []).append(index)
    errors = [0.0] * len(factors)
    for (_, root, epsilon, _), indices in groups.items():
        matrices = torch.stack([factors[i].matrix for i in indices])
        ridge = dash.inverse_roots(matrices, root, solver, epsilon=epsilon).regularization.double()
        shifted = matrices.double() + ridge[:, None, None] * torch.eye(
            matrices.shape[-1], dtype=torch.float64, device=matrices.device
        )
        eigenvalues, eigenvectors = torch.linalg.eigh(shifted)
        # A rank-deficient fp32 factor can be indefinite by rounding: its null space gets r.
        floor = ridge.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
        powers = torch.maximum(eigenvalues, floor).pow(-1.0 / root)
        reference = (eigenvectors * powers.unsqueeze(-2)) @ eigenvectors.mT
        computed = torch.stack([factors[i].inverse_root for i in indices]).double()
        difference = torch.linalg.norm((computed - reference).flatten(1), dim=1)
        relative = difference / torch.linalg.norm(reference.flatten(1), dim=1)
        for index, error in zip(indices, relative.tolist(), strict=True):
            errors[index] = error
    return errors


def solver_floor_flops(optimizer: DistributedShampoo, solver: RootInvConfig) -> dict[str, int]:
    """FLOPs of the solver's ``d x d`` products in one root computation, by precision:
    ``sum over factor matrices of BatchedSolver.product_counts x 2 d^3`` (empty for eigh)."""
    totals: dict[str, int] = {}
    for factor in dash.inverse_factors(optimizer):
        batched = batched_solver(solver, factor.root, factor.epsilon)
        if batched is not None and batched.name != "eigh":
            for precision, count in batched.product_counts.items():
                flops = count * 2 * factor.matrix.shape[0] ** 3
                totals[precision.value] = totals.get(precision.value, 0) + flops
    return totals


def computes_roots(step: int, precondition_frequency: int) -> bool:
    """Whether 1-based ``step`` computes inverse roots (upstream's rule with its default start)."""
    return step % precondition_frequency == 0


def row_computes_roots(row: AnyRow, step: int, precondition_frequency: int) -> bool:
    """:func:`computes_roots`, or ``DashGpu``'s rule for peer rows."""
    if isinstance(row, PeerRow):
        return peer_dashgpu.computes_roots(step, precondition_frequency)
    return computes_roots(step, precondition_frequency)


def make_parameters(
    preset: Preset, device: torch.device
) -> tuple[list[torch.nn.Parameter], torch.Generator]:
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


#: Phases of a step with their own tracked peak bytes: methods of the Shampoo preconditioner list
#: (where DASH's stacks and solver work space live).
PHASES = {"factor update and roots": "update_preconditioners", "preconditioning": "precondition"}


def costs_dict(costs: Any) -> dict[str, object] | None:
    """A ``step_costs.StepCosts`` as a dict (None stays None)."""
    return None if costs is None else costs._asdict()


def count_step_costs(
    optimizer: torch.optim.Optimizer,
    new_gradients: Callable[[], None],
    row: AnyRow,
    precondition_frequency: int,
    steps_done: int,
) -> tuple[dict[str, object] | None, dict[str, object], int]:
    """Counts the next step without root computation (None if every step computes roots) and
    the next step with, running uncounted steps in between; returns both and the steps done."""

    def advance_to(roots: bool) -> int:
        step = steps_done + 1
        while row_computes_roots(row, step, precondition_frequency) != roots:
            new_gradients()
            optimizer.step()
            step += 1
        return step

    phases = [
        (phase, preconditioner_list, method)
        for preconditioner_list in (
            dash.preconditioner_lists(optimizer) if isinstance(row, Row) else []
        )
        for phase, method in PHASES.items()
    ]
    without_roots = None
    if precondition_frequency > 1:
        steps_done = advance_to(roots=False)
        new_gradients()
        without_roots = step_costs.measure(optimizer.step, phases)
    steps_done = advance_to(roots=True)
    new_gradients()
    with_roots = step_costs.measure(optimizer.step, phases)
    return costs_dict(without_roots), costs_dict(with_roots) or {}, steps_done


def meta_costs(row: Row, preset: Preset, precondition_frequency: int) -> dict[str, object]:
    """Step costs and solver floor of a DASH row counted on the ``meta`` device (shapes only):
    for presets too large to run here. Upstream's per-block code reads values and cannot run
    there."""
    if not row.use_dash:
        raise ValueError(f"{row.label}: only DASH rows run on the meta device")
    with step_costs.meta_scaffolding():
        params = [torch.nn.Parameter(torch.empty(shape, device="meta")) for shape in preset.shapes]
        optimizer = make_optimizer(params, row, preset, precondition_frequency)

        def new_gradients() -> None:
            for param in params:
                param.grad = torch.empty(param.shape, device="meta")

        for _ in range(precondition_frequency):  # a first root computation warms the caches
            new_gradients()
            optimizer.step()
        without_roots, with_roots, _ = count_step_costs(
            optimizer, new_gradients, row, precondition_frequency, precondition_frequency
        )
        floor = solver_floor_flops(optimizer, row.solver)
        return {
            "label": row.label,
            "costs_without_roots": without_roots,
            "costs_with_roots": with_roots,
            "num_factors": len(list(dash.inverse_factors(optimizer))),
            "floor_flops_by_precision": floor,
            "floor_flops": sum(floor.values()) or None,
        }


#: Matmul peaks (TFLOP/s) measured earlier on 1 x H100 (fp16 taken as bf16's).
H100_PEAKS_TFLOPS = {"fp32": 51.0, "tf32": 410.0, "bf16": 739.0, "fp16": 739.0}


def floor_table(
    results: list[dict[str, object]], peaks: dict[str, float] = H100_PEAKS_TFLOPS
) -> str:
    """Each row's solver FLOPs per root computation by precision, and their time at ``peaks``."""
    lines = [
        (
            "| optimizer | factor matrices | solver TFLOP per root computation (by precision) | "
            "at 1 x H100 peaks (ms) |"
        ),
        "|---|---|---|---|",
    ]
    for result in results:
        floor: dict[str, int] = result.get("floor_flops_by_precision") or {}  # type: ignore[assignment]
        split = (
            ", ".join(f"{precision} {flops / 1e12:.2f}" for precision, flops in floor.items())
            or "-"
        )
        seconds = sum(flops / (peaks[precision] * 1e12) for precision, flops in floor.items())
        lines.append(
            f"| {result['label']} | {result['num_factors']} | {split} | "
            f"{'-' if not floor else f'{seconds * 1e3:.0f}'} |"
        )
    return "\n".join(lines)


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


def run_row(
    row: AnyRow, preset: Preset, settings: StepSettings, device: torch.device
) -> dict[str, object]:
    """Times one row, then counts its step costs and measures its roots; returns the
    measurements.
    """
    frequency = settings.precondition_frequency
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    params, generator = make_parameters(preset, device)
    optimizer = make_any_optimizer(params, row, preset, frequency)
    times, root_steps = [], []
    for step in range(settings.warmup + settings.steps):
        set_gradients(params, generator)
        synchronize(device)
        start = time.perf_counter()
        optimizer.step()
        synchronize(device)
        if step >= settings.warmup:
            times.append(time.perf_counter() - start)
            root_steps.append(row_computes_roots(row, step + 1, frequency))
    peak_memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    times_without_roots = [t for t, roots in zip(times, root_steps, strict=True) if not roots]
    times_with_roots = [t for t, roots in zip(times, root_steps, strict=True) if roots]
    result: dict[str, object] = {
        "label": row.label,
        "median_step_s": statistics.median(times),
        "mean_step_s": statistics.mean(times),
        "median_step_without_roots_s": statistics.median(times_without_roots)
        if times_without_roots
        else None,
        "median_step_with_roots_s": statistics.median(times_with_roots)
        if times_with_roots
        else None,
        "step_times_s": times,
        "root_steps": root_steps,
        "peak_memory_bytes": peak_memory,
    }
    steps_done = settings.warmup + settings.steps
    costs: tuple[dict[str, object] | None, dict[str, object] | None] = (None, None)
    # DashGpu's Triton kernels are not aten ops: its counts would be partial, so it has none.
    if settings.costs and isinstance(row, Row):
        without_roots, with_roots, steps_done = count_step_costs(
            optimizer, lambda: set_gradients(params, generator), row, frequency, steps_done
        )
        costs = (without_roots, with_roots)
    elif isinstance(row, Row):  # the root errors are measured right after a root computation
        while not row_computes_roots(row, steps_done, frequency):
            set_gradients(params, generator)
            optimizer.step()
            steps_done += 1
    result["costs_without_roots"], result["costs_with_roots"] = costs
    result["finite"] = all(bool(torch.isfinite(p).all()) for p in params)
    if isinstance(row, PeerRow):
        peer, _ = peer_dashgpu.load()
        assert peer is not None
        settings_used = peer_dashgpu.config_fields(
            peer, row.setting, preset.max_preconditioner_dim, frequency
        )
        result |= {
            "peer": {
                "version": peer.version,
                "stubbed": list(peer.stubbed),
                "config": {k: str(v) for k, v in settings_used.items()},
            },
            "root_error_median": None,
            "root_error_p90": None,
            "root_error_max": None,
            "num_factors": None,
            "fallbacks": {},
            "floor_flops_by_precision": {},
            "floor_flops": None,
        }
        return result
    assert isinstance(optimizer, DistributedShampoo)
    errors = root_errors(optimizer, row.solver, settings.root_error_sample)
    floor = solver_floor_flops(optimizer, row.solver)
    result |= {
        "root_error_median": statistics.median(errors),
        "root_error_p90": statistics.quantiles(errors, n=10)[-1] if len(errors) > 1 else errors[0],
        "root_error_max": max(errors),
        "num_factors": len(list(dash.inverse_factors(optimizer))),
        "num_root_errors": len(errors),
        "fallbacks": dict(dash.fallback_counts(optimizer)),
        "floor_flops_by_precision": floor,
        "floor_flops": sum(floor.values()) or None,
    }
    return result


#: Loggers of the solvers' messages: the package's and upstream's (every module logs to a child).
SOLVER_LOGGERS = ("distributed_shampoo_dash", "distributed_shampoo")


class _MessageCollector(logging.Handler):
    """Keeps the message of every record it handles."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def collected_solver_messages() -> Iterator[list[str]]:
    """Collects what :data:`SOLVER_LOGGERS` log inside the block instead of printing it (they do
    not propagate meanwhile); yields the list of messages, filled as they come."""
    collector = _MessageCollector()
    loggers = [logging.getLogger(name) for name in SOLVER_LOGGERS]
    propagate = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(collector)
        logger.propagate = False
    try:
        yield collector.messages
    finally:
        for logger, previous in zip(loggers, propagate, strict=True):
            logger.removeHandler(collector)
            logger.propagate = previous


def message_kind(message: str) -> str:
    """What a message says without its block numbers and values: its first line up to the first
    digit or parenthesis, then ``...`` and its last clause after ``"; "`` if it has one."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    head = re.split(r"[\d(]", line, maxsplit=1)[0].strip() or line[:60]
    if head == line:
        return line
    _, semicolon, tail = line.rpartition("; ")
    return f"{head} ..." + (f" {tail.rstrip('.')}" if semicolon and tail else "")


def message_count(count: int) -> str:
    """``"<count> solver message(s)"``."""
    return f"{count} solver message{'' if count == 1 else 's'}"


def messages_note(messages: Sequence[str]) -> str:
    """``"<n> solver messages: <k> x '<kind>', ..."``, most frequent kind first ("" for none)."""
    if not messages:
        return ""
    kinds = Counter(message_kind(message) for message in messages)
    return f"{message_count(len(messages))}: " + ", ".join(
        f"{count} x '{kind}'" for kind, count in kinds.most_common()
    )


def failure_reason(row: AnyRow, exception: Exception) -> str | None:
    """Why a row raised, where that is known from the exception."""
    if not isinstance(exception, PreconditionerValueError) or not isinstance(row, Row):
        return None
    message = str(exception)
    if message.startswith("Encountered nan or inf values in"):  # upstream's check of a root
        return (
            f"{'DASH' if row.use_dash else 'upstream'}'s {type(row.solver).__name__} produced a "
            "non-finite inverse root from this preset's factors, and upstream raises on that "
            "(docs/usage.md, Fallback rules)"
        )
    if message.startswith("Encountered nan/inf values in factor matrix"):
        return "a factor matrix is not finite (non-finite gradients or a diverged run)"
    return None


def failure_description(row: AnyRow, exception: Exception) -> str:
    """One line: the exception's type, the first sentence of its first line (at most 160
    characters) and, where known, the reason."""
    lines = str(exception).strip().splitlines()
    first = re.split(r"(?<=[.!?])\s", lines[0], maxsplit=1)[0] if lines else ""
    if len(first) > 160:
        first = first[:157] + "..."
    reason = failure_reason(row, exception)
    return f"{type(exception).__name__}: {first}" + (f" Reason: {reason}" if reason else "")


def failure_row(failure: dict[str, object]) -> str:
    """A failed or not-run row as one line of the results table."""
    note = failure.get("solver_message_note")
    return (
        f"| {failure['label']} | {failure['outcome']}: {failure['error']}"
        + (f"; {note}" if note else "")
        + " |"
    )


def run_rows(
    selected: Sequence[AnyRow],
    preset: Preset,
    settings: StepSettings,
    device: torch.device,
    deadline: float | None = None,
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Runs every row; returns the results and the failures: rows that raised (a failure, not an
    error) and rows not started before ``deadline`` (a ``time.perf_counter()`` value), outcome
    "not run". Both carry the solver messages of the row (:func:`collected_solver_messages`):
    ``solver_messages`` (their count) and ``solver_message_note`` (:func:`messages_note`)."""
    results: list[dict[str, object]] = []
    failures: list[dict[str, object]] = []
    for row in selected:
        if deadline is not None and time.perf_counter() > deadline:
            failures.append(
                {"label": row.label, "outcome": "not run", "error": "time budget spent"}
            )
            continue
        start = time.perf_counter()
        result: dict[str, object] | None = None
        with collected_solver_messages() as messages:
            try:
                result = run_row(row, preset, settings, device)
            except Exception as exception:  # noqa: BLE001 - a solver that diverges on this preset is a result too
                error = failure_description(row, exception)
        summary = {"solver_messages": len(messages), "solver_message_note": messages_note(messages)}
        elapsed = f"{time.perf_counter() - start:.1f} s" + (
            f", {message_count(len(messages))}" if messages else ""
        )
        if result is None:
            failures.append({"label": row.label, "outcome": "failed", "error": error, **summary})
            print(f"{row.label}: failed ({elapsed}): {error}", flush=True)
        else:
            results.append(result | summary)
            print(f"{row.label}: {result['median_step_s']:.4f} s/step ({elapsed})", flush=True)
    return results, failures


def _optional(value: object, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(float(value) / scale, spec)  # type: ignore[arg-type]


def markdown_table(results: list[dict[str, object]]) -> str:
    """One row per optimizer; speedups are against the first row (upstream ``EigenConfig``)."""
    reference = results[0]
    lines = [
        (
            "| optimizer | median step (s) | mean step (s) | "
            "median step without / with roots (s) | "
            "speedup: median / mean / without roots / with roots | peak memory (GB) | "
            "transient step memory (MiB) | root error median / p90 / max | fallbacks | finite | "
            "solver messages |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        memory = result["peak_memory_bytes"]
        transient = result.get("transient_memory_bytes")
        transient_cell = "-"
        if transient is not None:
            ratio = transient / reference["transient_memory_bytes"]  # type: ignore[operator]
            transient_cell = f"{transient / 2**20:.1f} ({ratio:.2f}x)"  # type: ignore[operator]
        without_roots, with_roots = (
            result["median_step_without_roots_s"],
            result.get("median_step_with_roots_s"),
        )
        speedups = " / ".join(
            "-"
            if result.get(key) is None or reference.get(key) is None
            else f"{reference[key] / result[key]:.2f}x"  # type: ignore[operator]
            for key in (
                "median_step_s",
                "mean_step_s",
                "median_step_without_roots_s",
                "median_step_with_roots_s",
            )
        )
        errors = (
            "-"
            if result["root_error_median"] is None
            else " / ".join(
                f"{result[key]:.1e}"
                for key in ("root_error_median", "root_error_p90", "root_error_max")
            )
        )
        lines.append(
            f"| {result['label']} | {result['median_step_s']:.4f} | {result['mean_step_s']:.4f} | "
            f"{_optional(without_roots, '.4f')} / {_optional(with_roots, '.4f')} | {speedups} | "
            f"{_optional(memory, '.2f', 1e9)} | {transient_cell} | {errors} | "
            f"{result['fallbacks'] or '-'} | {result['finite']} | "
            f"{result.get('solver_message_note') or '-'} |"
        )
    return "\n".join(lines)


def results_table(results: list[dict[str, object]], failures: list[dict[str, object]]) -> str:
    """:func:`markdown_table` of the rows that ran, then one line per failed or not-run row."""
    lines = [markdown_table(results)] if results else []
    return "\n".join(lines + [failure_row(failure) for failure in failures])


def _scaled(value: float | None, unit: float) -> float | None:
    return None if value is None else value / unit


def _pair(first: object, second: object, spec: str = ",") -> str:
    """``first / second`` (``-`` for a missing value)."""
    return " / ".join("-" if value is None else format(value, spec) for value in (first, second))


def costs_table(results: list[dict[str, object]]) -> str:
    """Step costs of every row that has them; ratios are against upstream ``EigenConfig``."""
    reference = next((r for r in results if r["label"] == "upstream EigenConfig"), {})

    def cost(result: dict[str, object], which: str, key: str) -> int | None:
        costs = result.get(f"costs_{which}")  # None also for a missing reference
        return None if costs is None else costs[key]  # type: ignore[index]

    def fewer(result: dict[str, object], which: str) -> str:
        mine, theirs = cost(result, which, "ops"), cost(reference, which, "ops")
        if mine is None or theirs is None:
            return "-"
        return f"{theirs / mine:.0f}x" if theirs >= 10 * mine else f"{theirs / mine:.2f}x"

    lines = [
        (
            "| optimizer | aten ops: without / with roots | fewer than upstream | "
            "launches: without / with | host syncs: without / with | d x d products (root step) | "
            "GFLOP: without / with roots | solver floor GFLOP | root step / floor | "
            "tracked peak MiB, root step: whole step / factor update and roots / preconditioning |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        if result.get("costs_with_roots") is None:
            continue
        flops_with = cost(result, "with_roots", "flops")
        floor = result.get("floor_flops")
        ratio = "-" if floor is None or flops_with is None else f"{flops_with / floor:.2f}"  # type: ignore[operator]
        with_roots = result["costs_with_roots"]
        phase_peaks = with_roots["phase_peak_bytes"]  # type: ignore[index]
        peaks = [with_roots["peak_bytes"], *(phase_peaks.get(phase) for phase in PHASES)]  # type: ignore[index]
        gflops = [
            _scaled(cost(result, which, "flops"), 1e9) for which in ("without_roots", "with_roots")
        ]
        ops, launches, syncs = (
            _pair(cost(result, "without_roots", key), cost(result, "with_roots", key))
            for key in ("ops", "launches", "syncs")
        )
        lines.append(
            f"| {result['label']} | {ops} | "
            f"{fewer(result, 'without_roots')} / {fewer(result, 'with_roots')} | "
            f"{launches} | {syncs} | "
            f"{cost(result, 'with_roots', 'products'):,} | "
            f"{_pair(gflops[0], gflops[1], '.3f')} | "
            f"{_optional(floor, '.3f', 1e9)} | {ratio} | "
            f"{' / '.join(_optional(peak, '.1f', 2**20) for peak in peaks)} |"
        )
    return "\n".join(lines)


def plot(results: list[dict[str, object]], path: Path) -> bool:
    """Median step time per row as bars, to ``path``; False (and nothing written) without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no PNG written.")
        return False
    labels = [str(result["label"]) for result in results]
    times = [float(result["median_step_s"]) for result in results]  # type: ignore[arg-type]
    figure, axis = plt.subplots(figsize=(8, 0.5 * len(labels) + 1.5))
    axis.barh(labels[::-1], times[::-1])
    axis.set_xlabel("median optimizer step (s)")
    axis.set_title(path.stem)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def device_name(device: torch.device) -> str:
    return (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
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
        help=(
            "only count the DASH rows' step costs and solver floors on the meta device (no timing)"
        ),
    )
    return parser


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
        meta_rows = [
            row for row in select_rows(rows(), args.only) if isinstance(row, Row) and row.use_dash
        ]
        counted, skipped = [], []
        for row in meta_rows:
            try:
                counted.append(meta_costs(row, preset, args.precondition_frequency))
            except RuntimeError as error:  # a solver that reads values on the host (early exit)
                skipped.append(
                    f"{row.label}: not countable on meta ({str(error).splitlines()[0][:80]})"
                )
        print(
            f"preset {args.preset} on the meta device, "
            f"roots every {args.precondition_frequency} step(s)\n"
        )
        print(
            costs_table(counted)
            + "\n\n"
            + floor_table(counted)
            + "".join(f"\n{line}" for line in skipped)
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(
            json.dumps({"preset": args.preset, "results": counted}, indent=2)
        )
        print(f"\nwrote {args.out.with_suffix('.json')}")
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps(
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
    )
    written = [args.out.with_suffix(".json")]
    if plot(results, args.out.with_suffix(".png")):
        written.append(args.out.with_suffix(".png"))
    print(f"\nwrote {' and '.join(map(str, written))}")


if __name__ == "__main__":
    main()
