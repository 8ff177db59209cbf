"""Solvers on real Shampoo factor matrices: a root the residual accepts is an accurate root.

The factors are the real sets of :mod:`tests.real_factors` (bias-corrected Kronecker factors of
small byte-level Llamas trained with upstream Shampoo, epsilon 1e-10, conditions up to ~1e10).
Only the factors recorded at step 300 are used, to keep the file fast.
"""

import pytest
import torch

from distributed_shampoo_dash.solvers import InverseRootResult, IterationControl
from tests.real_factors import RealFactors
from tests.solver_cases import ENTRY_CASES, SolverCase, case_names
from tests.solver_helpers import reference_inverse_root, relative_errors

STEP = 300
#: A block is accepted when its residual is at most this (``max_residual`` of the adapter configs).
MAX_RESIDUAL = 1e-3
#: Accuracy promised for accepted blocks (measured: at most 1.5e-4 for Newton-DB, 1.5e-5 for
#: coupled Newton on all 195 factors).
ACCEPTED_TOLERANCE = 1e-3

#: The iterative solvers (an ``iteration`` option) at their defaults (Newton-DB's: the paper's ten
#: iterations) and, for those whose default is a fixed number of iterations, iterated to a
#: tolerance.
ITERATIVE_CASES = tuple(case for case in ENTRY_CASES if "iteration" in case.solver.options)
CONVERGED = IterationControl(num_iterations=30, tolerance=1e-5, early_exit_check_interval=5)
CASES = (
    *ITERATIVE_CASES,
    *(
        case.variant("converged", iteration=CONVERGED)
        for case in ITERATIVE_CASES
        if case.effective_options()["iteration"].tolerance == 0
    ),
)


@pytest.mark.parametrize("solver", CASES, ids=case_names(CASES))
def test_accepted_roots_of_real_factors_are_accurate(
    solver: SolverCase, real_factor_set: RealFactors
) -> None:
    epsilon, groups = real_factor_set.epsilon, real_factor_set.stacks(step=STEP)
    accepted_errors, num_blocks = [], 0
    for (dim, root), stack in groups.items():
        result: InverseRootResult = solver(stack, root, epsilon=epsilon)
        assert result.inverse_root.shape == stack.shape
        # Blocks whose fp64 A + epsilon I is not positive definite have no reference root.
        defined = (
            torch.linalg.eigvalsh(stack.double() + epsilon * torch.eye(dim, dtype=torch.float64))[
                :, 0
            ]
            > 0
        )
        accepted = result.is_finite & (result.residual <= MAX_RESIDUAL) & defined
        reference = reference_inverse_root(stack[accepted], root, epsilon)
        accepted_errors.append(relative_errors(result.inverse_root[accepted], reference))
        num_blocks += stack.shape[0]
    errors = torch.cat(accepted_errors)
    assert errors.numel() > 0, f"{solver.name} accepted none of the {num_blocks} factors"
    assert errors.max().item() <= ACCEPTED_TOLERANCE, (
        solver.name,
        errors.numel(),
        errors.max().item(),
    )
