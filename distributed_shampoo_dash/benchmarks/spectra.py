"""Input spectra of the solver benchmark and their fp64 reference roots.

Bases: QR of a seeded Gaussian in fp64; the fp64 stack is rounded to fp32 once and every solver
gets that fp32 stack (:func:`make_case`). Spectra (:data:`SPECTRA`): Wishart ``X X^T / n`` with
``X`` of shape ``(d, 2d)`` (condition ~34), eigenvalues ``i^-1/2`` (condition ``sqrt(d)``) and
``i^-1`` (condition ``d``). Reference: fp64 ``eigh`` of the same fp32 stack,
``X_ref = Q diag((L + r)^{-1/p}) Q^T`` (:meth:`SpectrumCase.reference`). Torch only.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from distributed_shampoo_dash.benchmarks.presets import Shape
from distributed_shampoo_dash.solvers import InverseRootResult

#: Builds an ``(N, d, d)`` float64 SPD stack from ``(N, d, generator)``.
StackBuilder = Callable[[int, int, torch.Generator], Tensor]


def random_bases(num_blocks: int, dim: int, generator: torch.Generator) -> Tensor:
    """``(N, d, d)`` float64 orthogonal bases: Q of the QR of a seeded Gaussian stack."""
    gaussian = torch.randn(
        num_blocks, dim, dim, generator=generator, device=generator.device, dtype=torch.float64
    )
    return torch.linalg.qr(gaussian).Q


def with_eigenvalues(eigenvalues: Callable[[int], Tensor]) -> StackBuilder:
    """A builder of stacks ``Q diag(L) Q^T`` with ``L = eigenvalues(d)`` in random bases ``Q``."""

    def build(num_blocks: int, dim: int, generator: torch.Generator) -> Tensor:
        basis = random_bases(num_blocks, dim, generator)
        stack = (basis * eigenvalues(dim).to(basis.device)) @ basis.mT
        return (stack + stack.mT) / 2

    return build


def wishart(num_blocks: int, dim: int, generator: torch.Generator) -> Tensor:
    """``X X^T / n`` with ``X`` a ``(d, n)`` Gaussian, ``n = 2d`` (condition ~34)."""
    samples = torch.randn(
        num_blocks, dim, 2 * dim, generator=generator, device=generator.device, dtype=torch.float64
    )
    stack = samples @ samples.mT / (2 * dim)
    return (stack + stack.mT) / 2


def power_decay(exponent: float) -> Callable[[int], Tensor]:
    """Eigenvalues ``i^-exponent``, ``i = 1 .. d`` (condition ``d^exponent``)."""
    return lambda dim: torch.arange(1, dim + 1, dtype=torch.float64).pow(-exponent)


def flat(dim: int) -> Tensor:
    """Eigenvalues evenly spaced in ``[0.5, 1]``."""
    return torch.linspace(0.5, 1.0, dim, dtype=torch.float64)


SPECTRA: dict[str, StackBuilder] = {
    "wishart": wishart,
    "i^-1/2": with_eigenvalues(power_decay(0.5)),
    "i^-1": with_eigenvalues(power_decay(1.0)),
}


STUDY_SPECTRA: dict[str, StackBuilder] = {
    "flat [0.5, 1]": with_eigenvalues(flat),
    "i^-1/2": with_eigenvalues(power_decay(0.5)),
}


@dataclass(frozen=True)
class SpectrumCase:
    """An fp32 input stack and the fp64 eigendecomposition of exactly that stack."""

    name: str
    stack: Tensor
    eigenvalues: Tensor
    eigenvectors: Tensor

    @property
    def condition(self) -> float:
        """Median ``lambda_max / lambda_min`` over the blocks."""
        return float((self.eigenvalues[:, -1] / self.eigenvalues[:, 0]).median())

    def reference(self, root: int, shift: Tensor | float) -> Tensor:
        """``(A + shift I)^{-1/p}`` per block in float64; ``shift`` is a scalar or ``(N,)``."""
        shift = torch.as_tensor(shift, dtype=torch.float64, device=self.eigenvalues.device).reshape(
            -1, 1
        )
        roots = (self.eigenvalues + shift).pow(-1.0 / root)
        return (self.eigenvectors * roots.unsqueeze(-2)) @ self.eigenvectors.mT


def make_case(name: str, build: StackBuilder, shape: Shape, device: torch.device) -> SpectrumCase:
    """Builds the stack in fp64 from a fixed seed, rounds it to fp32 and decomposes that in fp64."""
    num_blocks, dim, _ = shape
    stack = build(num_blocks, dim, torch.Generator(device=device).manual_seed(0)).float()
    eigenvalues, eigenvectors = torch.linalg.eigh(stack.double())
    return SpectrumCase(name, stack, eigenvalues, eigenvectors)


def relative_errors(X: Tensor, reference: Tensor) -> Tensor:
    """``(N,)`` float64 ``||X_i - R_i||_F / ||R_i||_F``; a non-finite block counts as ``inf``."""
    difference = (X.double() - reference).flatten(1)
    errors = torch.linalg.norm(difference, dim=1) / torch.linalg.norm(reference.flatten(1), dim=1)
    return torch.where(torch.isfinite(errors), errors, math.inf)


@dataclass(frozen=True)
class ErrorSummary:
    """Errors of one row on one spectrum: against the row's target and against ``A^{-1/p}``."""

    median: float
    max: float
    plain_median: float
    plain_max: float
    flagged_fraction: float


def error_summary(case: SpectrumCase, result: InverseRootResult, root: int) -> ErrorSummary:
    """Median/max errors per block and the fraction flagged (residual > 1 or not finite)."""
    plain = relative_errors(result.inverse_root, case.reference(root, 0.0))
    target = relative_errors(
        result.inverse_root, case.reference(root, result.regularization.double())
    )
    flagged = ~result.is_finite | (result.residual > 1.0)
    return ErrorSummary(
        median=float(target.median()),
        max=float(target.max()),
        plain_median=float(plain.median()),
        plain_max=float(plain.max()),
        flagged_fraction=float(flagged.float().mean()),
    )
