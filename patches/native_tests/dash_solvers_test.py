"""Tests of the DASH batched inverse-root solvers against an fp64 eigendecomposition."""

import unittest

import torch
from distributed_shampoo.preconditioner.dash.solvers import (
    chebyshev_inverse_root,
    coupled_newton_inverse_root,
    eigh_inverse_root,
    IterationControl,
    MULTI_POWER_ITERATION_SCALING,
    newton_db_inverse_root,
)
from torch import Tensor
from torch.testing._internal.common_utils import (
    instantiate_parametrized_tests,
    parametrize,
)


def _spd_stack(num_blocks: int, dim: int, condition: float) -> Tensor:
    """``(N, d, d)`` float64 blocks with log-spaced eigenvalues in ``[1 / condition, 1]``."""
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(
        torch.randn(num_blocks, dim, dim, generator=generator, dtype=torch.float64)
    )
    eigenvalues = torch.logspace(
        0, -torch.log10(torch.tensor(condition)).item(), dim, dtype=torch.float64
    )
    return (basis * eigenvalues) @ basis.mT


def _reference(A: Tensor, root: int, shift: Tensor | float) -> Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(
        A
        + torch.as_tensor(shift, dtype=A.dtype).reshape(-1, 1, 1)
        * torch.eye(A.shape[-1], dtype=A.dtype)
    )
    return (eigenvectors * eigenvalues.pow(-1.0 / root).unsqueeze(-2)) @ eigenvectors.mT


def _relative_errors(X: Tensor, reference: Tensor) -> Tensor:
    return torch.linalg.norm((X.double() - reference).flatten(1), dim=1) / torch.linalg.norm(
        reference.flatten(1), dim=1
    )


@instantiate_parametrized_tests
class InverseRootSolversTest(unittest.TestCase):
    @parametrize("root", (1, 2, 4))
    def test_newton_db_matches_eigendecomposition(self, root: int) -> None:
        A = _spd_stack(num_blocks=5, dim=32, condition=1e2).float()
        result = newton_db_inverse_root(
            A, root, iteration=IterationControl(num_iterations=20, tolerance=1e-6)
        )
        errors = _relative_errors(result.inverse_root, _reference(A.double(), root, 0.0))
        self.assertLess(errors.max().item(), 1e-4)
        self.assertTrue(bool(result.is_finite.all()))

    @parametrize("root", (2, 3, 4))
    def test_coupled_newton_matches_eigendecomposition(self, root: int) -> None:
        A = _spd_stack(num_blocks=5, dim=32, condition=1e2).float()
        result = coupled_newton_inverse_root(A, root)
        errors = _relative_errors(result.inverse_root, _reference(A.double(), root, 0.0))
        self.assertLess(errors.max().item(), 1e-4)

    @parametrize("root", (2, 4, 6))
    def test_eigh_matches_eigendecomposition(self, root: int) -> None:
        A = _spd_stack(num_blocks=5, dim=32, condition=1e3).float()
        result = eigh_inverse_root(A, root, epsilon=1e-6)
        errors = _relative_errors(result.inverse_root, _reference(A.double(), root, 1e-6))
        self.assertLess(errors.max().item(), 1e-4)

    def test_chebyshev_is_the_root_of_its_regularised_matrix(self) -> None:
        A = _spd_stack(num_blocks=5, dim=32, condition=1e2).float()
        result = chebyshev_inverse_root(A, 4, degree=60, rel_epsilon=1e-2)
        scale = MULTI_POWER_ITERATION_SCALING.upper_bound(A).double()
        errors = _relative_errors(result.inverse_root, _reference(A.double(), 4, 1e-2 * scale))
        self.assertLess(errors.max().item(), 1e-4)

    def test_batched_call_equals_per_block_calls(self) -> None:
        A = _spd_stack(num_blocks=4, dim=16, condition=1e3).float()
        batched = newton_db_inverse_root(A, 4).inverse_root
        single = torch.cat([newton_db_inverse_root(A[i], 4).inverse_root for i in range(4)])
        torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)

    def test_newton_db_rejects_roots_that_are_not_powers_of_two(self) -> None:
        with self.assertRaisesRegex(ValueError, "Invalid root 3 for Newton-DB"):
            newton_db_inverse_root(torch.eye(3), 3)
