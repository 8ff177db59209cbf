"""Running the step benchmark's rows: timed steps, root errors, step costs and solver floors.

:func:`run_rows` runs each row of :mod:`~distributed_shampoo_dash.benchmarks.step_rows` on a
preset (fresh optimizer, same parameters and seeded gradients): ``warmup`` untimed steps, then
``steps`` device-synchronised timed ones, then, unless ``costs`` is off, one step without and one
with root computation counted by :func:`distributed_shampoo_dash.step_costs.measure` and priced
on each GPU of :data:`distributed_shampoo_dash.gpu_time_model.GPUS` (:func:`measure_and_model`),
and the root errors right after a root computation. :func:`meta_costs` counts and prices a row
(DASH, upstream or ``DashGpu``) on the ``meta`` device (shapes only) for presets too large to run.
Needs upstream ``distributed_shampoo``.
"""

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from distributed_shampoo import CoupledNewtonConfig, DistributedShampoo
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig

import distributed_shampoo_dash as dash
from distributed_shampoo_dash import gpu_time_model, step_costs
from distributed_shampoo_dash.benchmarks import peer_dashgpu
from distributed_shampoo_dash.benchmarks.presets import Preset
from distributed_shampoo_dash.benchmarks.solver_messages import (
    collected_solver_messages,
    failure_description,
    message_count,
    messages_note,
)
from distributed_shampoo_dash.benchmarks.step_rows import (
    AnyRow,
    PeerRow,
    Row,
    make_any_optimizer,
    make_optimizer,
    make_parameters,
    row_computes_roots,
    set_gradients,
)
from distributed_shampoo_dash.examples.training import synchronize
from distributed_shampoo_dash.integration.dispatch import batched_solver
from distributed_shampoo_dash.integration.preconditioner_list import (
    BatchedRootInvShampooPreconditionerList,
)

#: The chunk budget DASH rows get on ``meta``: the automatic one of a CUDA device with the first
#: modelled GPU's memory (on ``meta`` there is no device memory to size it from).
MODELLED_STACK_BUDGET = BatchedRootInvShampooPreconditionerList.device_stack_budget(
    gpu_time_model.GPUS[0].memory_bytes
)


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


#: Phases of a step with their own tracked peak bytes: methods of the Shampoo preconditioner list
#: (where DASH's stacks and solver work space live).
PHASES = {"factor update and roots": "update_preconditioners", "preconditioning": "precondition"}


#: The costliest ops of a modelled step kept in the results.
MODELLED_OPS_KEPT = 10


def modelled_dict(modelled: gpu_time_model.ModelledTime) -> dict[str, object]:
    """A ``ModelledTime`` as a dict, with its :data:`MODELLED_OPS_KEPT` costliest ops only."""
    costliest = dict(list(modelled.seconds_by_op.items())[:MODELLED_OPS_KEPT])
    return modelled._asdict() | {"seconds_by_op": costliest}


def measure_and_model(
    call: Callable[[], object], phases: Sequence[step_costs.Phase] = ()
) -> dict[str, object]:
    """``step_costs.measure(call, phases)`` as a dict, with ``"modelled"``: the call's modelled
    time on each GPU of ``gpu_time_model.GPUS`` (:func:`modelled_dict`), by name."""
    with gpu_time_model.OpCostTrace() as trace:
        costs = step_costs.measure(call, phases)
    modelled = {gpu.name: modelled_dict(trace.modelled(gpu)) for gpu in gpu_time_model.GPUS}
    return costs._asdict() | {"modelled": modelled}


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
        without_roots = measure_and_model(optimizer.step, phases)
    steps_done = advance_to(roots=True)
    new_gradients()
    with_roots = measure_and_model(optimizer.step, phases)
    return without_roots, with_roots, steps_done


def not_on_meta(row: AnyRow) -> str | None:
    """Why a row is not traced on the ``meta`` device, or None: upstream's coupled Newton stops at
    a tolerance read on the host per block, which reads as "not converged" there
    (``step_costs.MetaHostReads``), so it would trace its 100-iteration cap for every factor."""
    if isinstance(row, Row) and not row.use_dash and isinstance(row.solver, CoupledNewtonConfig):
        return "its per-block tolerance loop would run to its 100-iteration cap on meta"
    return None


def meta_costs(row: AnyRow, preset: Preset, precondition_frequency: int) -> dict[str, object]:
    """Step costs, modelled GPU times and solver floor of a row counted on the ``meta`` device
    (shapes only; host reads answered by ``step_costs.meta_scaffolding``; DASH chunks within
    :data:`MODELLED_STACK_BUDGET`): for presets too large to run here. ``DashGpu`` rows run its
    Triton kernel as an aten product (``peer_dashgpu.aten_kernels``) and have no solver floor."""
    reason = not_on_meta(row)
    if reason is not None:
        raise ValueError(f"{row.label}: {reason}")
    with contextlib.ExitStack() as stack:
        stack.enter_context(step_costs.meta_scaffolding())
        params = [torch.nn.Parameter(torch.empty(shape, device="meta")) for shape in preset.shapes]
        optimizer: torch.optim.Optimizer
        if isinstance(row, PeerRow):
            peer, why = peer_dashgpu.load(triton_stand_ins=True)
            if peer is None:
                raise RuntimeError(why)
            stack.enter_context(peer_dashgpu.aten_kernels(peer))
            optimizer = peer_dashgpu.make_optimizer(
                peer, params, row.setting, preset.max_preconditioner_dim, precondition_frequency
            )
        else:
            optimizer = make_optimizer(
                params, row, preset, precondition_frequency, max_stack_bytes=MODELLED_STACK_BUDGET
            )

        def new_gradients() -> None:
            for param in params:
                param.grad = torch.empty(param.shape, device="meta")

        for _ in range(precondition_frequency):  # a first root computation warms the caches
            new_gradients()
            optimizer.step()
        without_roots, with_roots, _ = count_step_costs(
            optimizer, new_gradients, row, precondition_frequency, precondition_frequency
        )
        result: dict[str, object] = {
            "label": row.label,
            "costs_without_roots": without_roots,
            "costs_with_roots": with_roots,
            "num_factors": None,
            "floor_flops_by_precision": {},
            "floor_flops": None,
        }
        if isinstance(optimizer, DistributedShampoo) and isinstance(row, Row):
            floor = solver_floor_flops(optimizer, row.solver)
            result |= {
                "num_factors": len(list(dash.inverse_factors(optimizer))),
                "floor_flops_by_precision": floor,
                "floor_flops": sum(floor.values()) or None,
            }
        return result


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
