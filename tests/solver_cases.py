"""The solver cases every solver test runs: one per entry of the registry
(:data:`distributed_shampoo_dash.solvers.SOLVERS`), plus named variants of an entry.

A :class:`SolverCase` holds a registry entry and what the tests need that the registry does not:
the accuracy the tests promise for it in each regime, the settings a user asking for a converged
root would pass, and the options of a partially converged call. :data:`ENTRY_CASES` follows the
registry: an entry without test data here still gets a case (the argument tests run it), whose
test data raise "add a test case for solver X", and ``tests/test_solver_cases.py`` fails until
it is added. Tests that pick solvers by a property select them from the registry's attributes
(``"precision" in case.solver.options``, ``case.solver.supports_root(0.5)``, ...).

Promises are relative Frobenius errors per block against ``(A + r I)^{-1/p}`` computed by an fp64
eigendecomposition of the input as the solver received it (``tests/test_solver_spectra.py`` states
the method), ``r`` the ridge of the solver's target: ``epsilon``, or ``max(delta u, epsilon)`` for a
relative ridge ``delta`` (``u`` the spectral bound of ``A + epsilon I``).
"""

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from distributed_shampoo_dash.solvers import (
    DEFAULT_SOLVER,
    MULTI_POWER_ITERATION_SCALING,
    SOLVERS,
    InverseRootResult,
    IterationControl,
    MatmulPrecision,
    Solver,
    SpectralScaling,
)
from tests.solver_helpers import chebyshev_relative_bound, reference_inverse_root

if TYPE_CHECKING:
    from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig

# --------------------------------------------------------------------------------------------
# Promises: the accuracy a solver keeps in a regime, by working dtype.
# --------------------------------------------------------------------------------------------

#: A block whose residual exceeds this (or that is not finite) counts as flagged. For the
#: iterative solvers ``error <= sqrt(d) * residual`` (``~ sqrt(d) * residual / p`` near convergence;
#: see test_solver_properties.py), so an unflagged block of dimension <= 100 has an error below
#: the best-effort tolerance 0.1.
FLAG_RESIDUAL = 1e-2


class Promise(NamedTuple):
    """Tolerance on the relative error; ``converges=False``: error <= tolerance *or* flagged."""

    tolerance: float
    converges: bool = True


BEST_EFFORT = Promise(tolerance=0.1, converges=False)

#: Promises by regime and working dtype.
Promises = Mapping[str, Mapping[torch.dtype, Promise]]

#: Regimes, by the condition number kappa of the matrix actually inverted (``A + epsilon I``):
#: "well_conditioned" kappa <= 256 (flat, i^-1/2, i^-1, all-zero plus epsilon, scaled copies),
#: "condition_1e3" kappa ~ 1e3 (rank deficient: half the eigenvalues 0, epsilon = 1e-3),
#: "condition_1e6" and "condition_1e8" (log-spaced eigenvalues from 1 down to 1 / kappa).
#: Errors grow like u * kappa / p. In fp32 (u = 6e-8) that is ~3e-2 at kappa = 1e6 for every method,
#: eigh included (a backward-stable fp32 eigh moves an eigenvalue of 1e-6 by ~u); at kappa = 1e8
#: (u * kappa ~ 6) fp32 resolves nothing, so only BEST_EFFORT applies. In fp64 every regime
#: converges.
REGIMES = ("well_conditioned", "condition_1e3", "condition_1e6", "condition_1e8")

EIGH_PROMISES: Promises = {
    "well_conditioned": {torch.float32: Promise(5e-5), torch.float64: Promise(1e-12)},
    "condition_1e3": {torch.float32: Promise(2e-3), torch.float64: Promise(1e-11)},
    "condition_1e6": {torch.float32: Promise(0.5), torch.float64: Promise(1e-9)},
    # fp32 eigh is backward stable only: its residual (the decomposition's) is ~u at any
    # condition, and an eigenvalue of 1e-8 rounded towards 0 takes its root anywhere (errors
    # 0.2 to 1 seen). Promised: no unflagged non-finite root; eigenvalues rounded to <= 0
    # give a non-finite root, which is flagged.
    "condition_1e8": {
        torch.float32: Promise(float("inf"), converges=False),
        torch.float64: Promise(1e-7),
    },
}

#: Coupled Newton and Newton-DB, iterated to their tolerance.
NEWTON_PROMISES: Promises = {
    "well_conditioned": {torch.float32: Promise(2e-5), torch.float64: Promise(1e-11)},
    "condition_1e3": {torch.float32: Promise(5e-4), torch.float64: Promise(1e-11)},
    "condition_1e6": {torch.float32: Promise(5e-2), torch.float64: Promise(1e-9)},
    "condition_1e8": {torch.float32: BEST_EFFORT, torch.float64: Promise(1e-7)},
}

#: Its target has kappa <= (1 + delta) / delta (delta = MINIMAX_REL_EPSILON) whatever the
#: spectrum; fp32 rounding of the first steps bounds it near 1e-3 there (root 1 squares the
#: root-2 result and doubles that), and in fp64 the schedule's own target, |1 - t| <= 1e-4.
#: The first step in fp64 keeps the same promise (at rel_epsilon 1e-5 the later steps' rounding
#: is of the same order); its gain at 1e-6 is tested on the real factors.
MINIMAX_PROMISES: Promises = {
    regime: {torch.float32: Promise(2e-3), torch.float64: Promise(1.1e-4)} for regime in REGIMES
}

#: The rounding floor on top of the interpolation bound ``chebyshev_relative_bound(degree, p,
#: delta)`` of its polynomial; its shifted target has kappa <= (1 + delta) / delta ~ 100 whatever
#: the spectrum, hence one row for all regimes.
CHEBYSHEV_PROMISES: Promises = {
    regime: {torch.float32: Promise(3e-5), torch.float64: Promise(1e-10)} for regime in REGIMES
}

# --------------------------------------------------------------------------------------------
# Converged settings ("sensible" = what a user asking for a converged root would pass).
# --------------------------------------------------------------------------------------------

#: The matmul precision of a solver that works in its input's dtype.
PRECISION = {torch.float32: MatmulPrecision.FP32, torch.float64: MatmulPrecision.FP64}
ITERATION_TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12}
CHEBYSHEV_DEGREE = 60
CHEBYSHEV_RELATIVE_EPSILON = 1e-2
MINIMAX_REL_EPSILON = 1e-5


def coupled_newton_control(dtype: torch.dtype) -> IterationControl:
    """Coupled Newton iterated to the tolerance of ``dtype``.

    ``stop_at_best=False`` (upstream's semantics): with the default True, blocks stop at their
    first iterate on well-posed problems (see test_coupled_newton_default_control_converges...).
    """
    return IterationControl(
        num_iterations=60,
        tolerance=ITERATION_TOLERANCE[dtype],
        stop_at_best=False,
        early_exit_check_interval=1,
    )


def newton_db_control(dtype: torch.dtype) -> IterationControl:
    """Newton-DB iterated to the tolerance of ``dtype``."""
    return IterationControl(
        num_iterations=40,
        tolerance=ITERATION_TOLERANCE[dtype],
        early_exit_check_interval=1,
    )


def default_options(solver: Solver) -> dict[str, Any]:
    """The defaults of the solver's keyword options (:attr:`Solver.options`), from its signature."""
    parameters = inspect.signature(solver.inverse_root).parameters
    return {name: parameters[name].default for name in solver.options}


def ridge(
    A: torch.Tensor,
    epsilon: float,
    dtype: torch.dtype,
    rel_epsilon: float,
    scaling: SpectralScaling = MULTI_POWER_ITERATION_SCALING,
) -> torch.Tensor:
    """``(N,)`` float64 ridge ``max(rel_epsilon u, epsilon)`` of the target matrix, ``u`` the
    ``scaling`` bound of ``A + epsilon I`` in the working dtype of ``dtype``."""
    working_dtype = PRECISION[dtype].working_dtype
    stack = A.to(working_dtype).reshape(-1, A.shape[-1], A.shape[-1])
    shifted = stack + epsilon * torch.eye(A.shape[-1], dtype=working_dtype, device=A.device)
    scale = scaling.upper_bound(shifted).double()
    return torch.clamp(rel_epsilon * scale, min=epsilon)


# --------------------------------------------------------------------------------------------
# Cases.
# --------------------------------------------------------------------------------------------


def missing(name: str) -> AssertionError:
    """The error of a registry entry whose test data this module lacks."""
    return AssertionError(f"add a test case for solver {name!r} in tests/solver_cases.py")


@dataclasses.dataclass(frozen=True, eq=False)
class SolverCase:
    """A registry solver as the tests run it.

    Attributes:
        name (str): The test id: the registry key, or ``<key>_<variant>`` for a variant.
        solver (Solver): The registry entry.
        options (Mapping[str, Any]): Options every call of the case passes (a variant's; empty
            for an entry).
        promises (Promises): The accuracy at :meth:`converged_options`, by regime (see
            :data:`REGIMES`) and working dtype; empty for an entry without test data.
        settings (Mapping[str, Any]): The dtype-independent part of :meth:`converged_options`.
        iteration (Callable[[torch.dtype], IterationControl] | None): The iteration of
            :meth:`converged_options` by dtype, for a solver with an ``iteration`` option.
        interpolation_bound (Callable[[float], float] | None): The method's own error bound at
            :meth:`converged_options` at root ``p`` (a fitted polynomial's), added to the
            promises.
        default_overrides (Mapping[str, Any]): What a test adds to the solver's defaults for a
            converged root at condition ~1e3 (Newton-DB's ten paper iterations stop short there,
            Chebyshev's default fit is a ~0.6% approximation).
        truncated (Callable[[int], Mapping[str, Any]] | None): The options of a partially
            converged call after ``k`` steps (``k`` iterations, or a degree-``3k`` polynomial),
            for a solver with an ``iteration`` or ``degree`` option.
        refinement_gain (float): For a solver with ``iteration`` and ``precision`` options: the
            factor by which five fp32 refinement steps after bf16 iterations at least reduce the
            error (1.0: they do not lose accuracy).
        upstream_config (str): The upstream ``RootInvConfig`` DASH batches with this solver
            (``""``: the solver has a DASH config, whose ``solver`` names it).
    """

    name: str
    solver: Solver
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    promises: Promises = dataclasses.field(default_factory=dict)
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    iteration: Callable[[torch.dtype], IterationControl] | None = None
    interpolation_bound: Callable[[float], float] | None = None
    default_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    truncated: Callable[[int], Mapping[str, Any]] | None = None
    refinement_gain: float = 1.0
    upstream_config: str = ""

    def __call__(self, A: torch.Tensor, root: float, **options: Any) -> InverseRootResult:
        """``solver.inverse_root(A, root, **options)`` with the case's :attr:`options`."""
        return self.solver.inverse_root(A, root, **{**options, **self.options})

    def variant(self, suffix: str, **options: Any) -> "SolverCase":
        """The case ``<name>_<suffix>``: this one with ``options`` fixed."""
        return dataclasses.replace(
            self, name=f"{self.name}_{suffix}", options={**self.options, **options}
        )

    def effective_options(self, **options: Any) -> dict[str, Any]:
        """Every option a call with ``options`` runs with: the defaults, then ``options``, then
        the case's."""
        return {**default_options(self.solver), **options, **self.options}

    def relative_ridge(self, **options: Any) -> float:
        """The relative ridge ``delta`` of a call with ``options`` (0 without one)."""
        return float(self.effective_options(**options).get("rel_epsilon", 0.0))

    def converged_options(self, dtype: torch.dtype) -> dict[str, Any]:
        """What a user asking for a converged root of a ``dtype`` stack passes."""
        if not self.promises:
            raise missing(self.solver.name)
        options = dict(self.settings)
        if "precision" in self.solver.options:
            options["precision"] = PRECISION[dtype]
        if "iteration" in self.solver.options:
            if self.iteration is None:
                raise missing(self.solver.name)
            options["iteration"] = self.iteration(dtype)
        return options

    def promise(self, regime: str, dtype: torch.dtype, root: float) -> Promise:
        """The accuracy at :meth:`converged_options` in ``regime``, its method's bound included."""
        if not self.promises:
            raise missing(self.solver.name)
        promise = self.promises[regime][dtype]
        if self.interpolation_bound is not None:
            return promise._replace(tolerance=promise.tolerance + self.interpolation_bound(root))
        return promise

    def solve(
        self, A: torch.Tensor, root: float, epsilon: float
    ) -> tuple[InverseRootResult, torch.Tensor]:
        """Runs the case at :meth:`converged_options`; returns the result and its fp64 reference,
        the root of the solver's target (the input shifted by its ridge)."""
        options = self.converged_options(A.dtype)
        result = self(A, root, epsilon=epsilon, **options)
        return result, reference_inverse_root(A, root, self.target_ridge(A, epsilon, **options))

    def target_ridge(self, A: torch.Tensor, epsilon: float, **options: Any) -> float | torch.Tensor:
        """The ridge of the matrix whose root a call with ``epsilon`` and ``options`` targets:
        ``epsilon``, or the ``(N,)`` float64 :func:`ridge` for a relative ridge."""
        rel_epsilon = self.relative_ridge(**options)
        if rel_epsilon == 0:
            return epsilon
        scaling = self.effective_options(**options)["scaling"]
        return ridge(A, epsilon, A.dtype, rel_epsilon, scaling)


def _truncated_newton(stop_at_best: bool) -> Callable[[int], Mapping[str, Any]]:
    return lambda steps: {
        "iteration": IterationControl(num_iterations=steps, stop_at_best=stop_at_best)
    }


def _truncated_chebyshev(steps: int) -> Mapping[str, Any]:
    return {"degree": 3 * steps, "rel_epsilon": CHEBYSHEV_RELATIVE_EPSILON}


#: Test data of each registry entry, by registry key.
TESTED_ENTRIES: Mapping[str, SolverCase] = {
    case.name: case
    for case in (
        SolverCase(
            name="eigh",
            solver=SOLVERS["eigh"],
            promises=EIGH_PROMISES,
            upstream_config="EigenConfig",
        ),
        SolverCase(
            name="minimax",
            solver=SOLVERS["minimax"],
            promises=MINIMAX_PROMISES,
            settings={"rel_epsilon": MINIMAX_REL_EPSILON},
        ),
        SolverCase(
            name="newton_db",
            solver=SOLVERS["newton_db"],
            promises=NEWTON_PROMISES,
            iteration=newton_db_control,
            default_overrides={"iteration": IterationControl(num_iterations=20)},
            truncated=_truncated_newton(stop_at_best=True),
            # Re-coupling (Y = B Z) gains 2-4x in one step, then stops at the part of the bf16
            # error that does not commute with A.
            refinement_gain=0.6,
        ),
        SolverCase(
            name="chebyshev",
            solver=SOLVERS["chebyshev"],
            promises=CHEBYSHEV_PROMISES,
            settings={"degree": CHEBYSHEV_DEGREE, "rel_epsilon": CHEBYSHEV_RELATIVE_EPSILON},
            interpolation_bound=lambda root: chebyshev_relative_bound(
                CHEBYSHEV_DEGREE, root, CHEBYSHEV_RELATIVE_EPSILON
            ),
            default_overrides={
                "degree": CHEBYSHEV_DEGREE,
                "rel_epsilon": CHEBYSHEV_RELATIVE_EPSILON,
            },
            truncated=_truncated_chebyshev,
        ),
        SolverCase(
            name="coupled_newton",
            solver=SOLVERS["coupled_newton"],
            promises=NEWTON_PROMISES,
            iteration=coupled_newton_control,
            truncated=_truncated_newton(stop_at_best=False),
            # A coupled iteration does not reduce the part of the bf16 error that does not
            # commute with A: it keeps its bf16 error.
            refinement_gain=1.0,
            upstream_config="CoupledNewtonConfig",
        ),
    )
}

#: One case per registry entry, in the registry's order.
ENTRY_CASES: tuple[SolverCase, ...] = tuple(
    TESTED_ENTRIES.get(name, SolverCase(name=name, solver=solver))
    for name, solver in SOLVERS.items()
)
ENTRIES: Mapping[str, SolverCase] = {case.name: case for case in ENTRY_CASES}

#: Each solver with an fp64 first step, in fp64.
FP64_FIRST_STEP_CASES: tuple[SolverCase, ...] = tuple(
    case.variant("fp64_first_step", first_step_precision=MatmulPrecision.FP64)
    for case in ENTRY_CASES
    if "first_step_precision" in case.solver.options
)
#: The default solver with bf16 products.
BF16_DEFAULT_CASE = ENTRIES[DEFAULT_SOLVER.name].variant("bf16", precision=MatmulPrecision.BF16)
#: The default solver on tensor cores (3xTF32 early steps, TF32 late steps; fp32 on a CPU).
TF32_DEFAULT_CASE = ENTRIES[DEFAULT_SOLVER.name].variant("tf32", precision=MatmulPrecision.TF32)

#: Every solver and its fp64 first step: what the accuracy tests run.
ACCURACY_CASES: tuple[SolverCase, ...] = (*ENTRY_CASES, *FP64_FIRST_STEP_CASES)
#: The variants that must keep their solver's properties (no host sync, its work space).
VARIANT_CASES: tuple[SolverCase, ...] = (
    BF16_DEFAULT_CASE,
    TF32_DEFAULT_CASE,
    *FP64_FIRST_STEP_CASES,
)
#: Every case by name.
CASES: Mapping[str, SolverCase] = {case.name: case for case in (*ENTRY_CASES, *VARIANT_CASES)}


def case_names(cases: tuple[SolverCase, ...]) -> list[str]:
    """The ids of ``cases``, for ``pytest.mark.parametrize(..., ids=...)``."""
    return [case.name for case in cases]


def root_inv_config(case: SolverCase, **fields: Any) -> "RootInvConfig":
    """The ``RootInvConfig`` that runs ``case`` in the adapter, with ``fields``: upstream's config
    for a solver DASH batches from it, else the DASH config naming the solver (needs upstream
    ``distributed_shampoo``).
    """
    from distributed_shampoo.preconditioner import matrix_functions_types

    from distributed_shampoo_dash.integration import DashRootInvConfig

    if case.upstream_config:
        if case.options:
            raise ValueError(f"{case.upstream_config} has no options {sorted(case.options)}")
        return getattr(matrix_functions_types, case.upstream_config)(**fields)
    pending, configs = list(DashRootInvConfig.__subclasses__()), {}
    while pending:
        config_class = pending.pop()
        pending.extend(config_class.__subclasses__())
        if "solver" in vars(config_class):
            configs[config_class.solver] = config_class
    if case.solver.name not in configs:
        raise missing(case.solver.name)
    return configs[case.solver.name](**case.options, **fields)
