"""Core solver properties: each batched solver matches the fp64 reference and never syncs."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from distributed_shampoo_dash.solvers import (
    MULTI_POWER_ITERATION_SCALING,
    IterationControl,
    chebyshev_inverse_root,
    coupled_newton_inverse_root,
    eigh_inverse_root,
    newton_db_inverse_root,
)
from tests.solver_cases import ACCURACY_CASES, ENTRY_CASES, VARIANT_CASES, SolverCase, case_names


def spd_stack(num_blocks: int, dim: int, condition: float, seed: int = 0) -> torch.Tensor:
    """``(N, d, d)`` float64 SPD stack with log-uniform eigenvalues in ``[1 / condition, 1]``."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(
        torch.randn(num_blocks, dim, dim, generator=generator, dtype=torch.float64)
    )
    eigenvalues = torch.logspace(0, -math.log10(condition), dim, dtype=torch.float64)
    return (basis * eigenvalues) @ basis.mT


def reference_inverse_root(
    A: torch.Tensor, root: float, epsilon: float | torch.Tensor
) -> torch.Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(
        A.double() + epsilon * torch.eye(A.shape[-1], dtype=torch.float64)
    )
    return (eigenvectors * eigenvalues.pow(-1.0 / root).unsqueeze(-2)) @ eigenvectors.mT


def relative_errors(X: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return torch.linalg.norm((X.double() - reference).flatten(1), dim=1) / torch.linalg.norm(
        reference.flatten(1), dim=1
    )


@pytest.mark.parametrize("solver", ACCURACY_CASES, ids=case_names(ACCURACY_CASES))
@pytest.mark.parametrize("root", [2, 4])
def test_solver_matches_fp64_reference_at_condition_1e3(solver: SolverCase, root: int) -> None:
    """Each solver at its defaults, with the case's ``default_overrides``."""
    A = spd_stack(num_blocks=3, dim=48, condition=1e3)
    result = solver(A.float(), root, **solver.default_overrides)
    # The root of A + r I, r the ridge each block got (0 here but for the relative ridges).
    reference = reference_inverse_root(A, root, result.regularization.double().reshape(-1, 1, 1))
    assert relative_errors(result.inverse_root, reference).max() < 1e-4
    assert bool(result.is_finite.all())


def test_chebyshev_matches_the_root_of_its_shifted_matrix() -> None:
    A = spd_stack(num_blocks=2, dim=32, condition=10.0)
    delta = 1e-2
    result = chebyshev_inverse_root(A.float(), 4, degree=60, rel_epsilon=delta)
    scale = MULTI_POWER_ITERATION_SCALING.upper_bound(A.float()).double()
    references = torch.stack(
        [
            reference_inverse_root(A[i : i + 1], 4, delta * float(scale[i]))[0]
            for i in range(A.shape[0])
        ]
    )
    assert relative_errors(result.inverse_root, references).max() < 1e-4


def test_newton_db_residual_flags_unconverged_blocks() -> None:
    A = spd_stack(num_blocks=2, dim=48, condition=1e6)
    result = newton_db_inverse_root(A.float(), 4, iteration=IterationControl(num_iterations=4))
    errors = relative_errors(result.inverse_root, reference_inverse_root(A, 4, 0.0))
    assert bool((errors > 0.1).all()) and bool((result.residual > 0.1).all())


def test_zero_block_gives_epsilon_root() -> None:
    zero = torch.zeros(1, 5, 5)
    for solve in (
        lambda: eigh_inverse_root(zero, 4, epsilon=1e-4),
        lambda: newton_db_inverse_root(
            zero, 4, epsilon=1e-4, iteration=IterationControl(num_iterations=5)
        ),
        lambda: coupled_newton_inverse_root(zero, 4, epsilon=1e-4),
    ):
        torch.testing.assert_close(
            solve().inverse_root, 10.0 * torch.eye(5).unsqueeze(0), rtol=1e-4, atol=1e-4
        )


class _SyncCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


#: The matmul-only solvers (a ``precision`` option: every step a product) and their variants.
MATMUL_CASES = tuple(
    case for case in (*ENTRY_CASES, *VARIANT_CASES) if "precision" in case.solver.options
)


@pytest.mark.parametrize("solver", MATMUL_CASES, ids=case_names(MATMUL_CASES))
def test_solvers_never_synchronise_with_the_host(solver: SolverCase) -> None:
    A = spd_stack(num_blocks=2, dim=16, condition=100.0).float()
    with _SyncCounter() as counter:
        solver(A, 4)
    assert counter.count == 0
