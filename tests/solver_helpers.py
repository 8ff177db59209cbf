"""Shared helpers of the solver tests: test stacks with a chosen spectrum and the fp64 reference.

Everything here works in float64 and is independent of the solvers under test (the reference is
one ``torch.linalg.eigh`` per stack, the Chebyshev bound uses ``numpy``'s own interpolant).
"""

import math
from collections.abc import Callable

import numpy as np
import torch

#: Eigenvalues of a ``d``-dimensional test spectrum, given a seeded generator; largest is <= 1.
Spectrum = Callable[[int, torch.Generator], torch.Tensor]


def random_orthogonal(num_blocks: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """``(N, d, d)`` float64 orthogonal bases: Q of the QR of a seeded Gaussian stack."""
    basis, _ = torch.linalg.qr(
        torch.randn(num_blocks, dim, dim, generator=generator, dtype=torch.float64)
    )
    return basis


def stack_with_eigenvalues(eigenvalues: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``Q diag(L) Q^T`` per block, exactly symmetrised; ``eigenvalues`` is ``(d,)`` or
    ``(N, d)``.
    """
    stack = (basis * eigenvalues.unsqueeze(-2)) @ basis.mT
    return (stack + stack.mT) / 2


def stack_with_spectrum(
    spectrum: Spectrum, num_blocks: int, dim: int, seed: int = 0
) -> torch.Tensor:
    """``(N, d, d)`` float64 stack whose blocks share ``spectrum`` in independent random bases."""
    generator = torch.Generator().manual_seed(seed)
    eigenvalues = spectrum(dim, generator)
    return stack_with_eigenvalues(eigenvalues, random_orthogonal(num_blocks, dim, generator))


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
    """``(A + epsilon I)^{-1/p}`` per block by an fp64 eigendecomposition of ``A`` as given.

    ``epsilon`` is a scalar or an ``(N,)`` tensor of per-block shifts; the result is on ``A``'s
    device.
    """
    A = A.double()
    if A.ndim == 2:
        A = A.unsqueeze(0)
    shift = torch.as_tensor(epsilon, dtype=torch.float64, device=A.device).reshape(-1, 1, 1)
    identity = torch.eye(A.shape[-1], dtype=torch.float64, device=A.device)
    eigenvalues, eigenvectors = torch.linalg.eigh(A + shift * identity)
    return (eigenvectors * eigenvalues.pow(-1.0 / root).unsqueeze(-2)) @ eigenvectors.mT


def relative_errors(X: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``(N,)`` float64 relative Frobenius errors ``||X_i - R_i||_F / ||R_i||_F``."""
    X = X.double().reshape(reference.shape).to(reference.device)
    return torch.linalg.norm((X - reference).flatten(1), dim=1) / torch.linalg.norm(
        reference.flatten(1), dim=1
    )


def condition_numbers(A: torch.Tensor, epsilon: float = 0.0) -> torch.Tensor:
    """``(N,)`` float64 ``lambda_max / lambda_min`` of ``A + epsilon I`` (inf if not positive)."""
    eigenvalues = torch.linalg.eigvalsh(
        A.double() + epsilon * torch.eye(A.shape[-1], dtype=torch.float64)
    )
    smallest = eigenvalues[..., 0]
    return torch.where(
        smallest > 0, eigenvalues[..., -1] / smallest, torch.full_like(smallest, math.inf)
    )


def chebyshev_relative_bound(degree: int, root: float, rel_epsilon: float) -> float:
    """Max relative error ``|q(t) / g(t) - 1|`` on ``t in [l, 1]`` of the degree-``n`` interpolant
    ``q`` of ``g(t) = t^{-1/p}`` at Chebyshev points of the first kind, ``l = delta / (1 + delta)``
    (the smallest eigenvalue of the scaled, regularised problem).

    It bounds the relative Frobenius error of ``q(B)`` against ``g(B)`` for any symmetric ``B``
    with spectrum in ``[l, 1]`` (the matrix error is a weighted mean of the scalar ones). Computed
    by ``numpy`` alone, independently of the solver's own coefficients.
    """
    lower = rel_epsilon / (1.0 + rel_epsilon)
    g = lambda t: t ** (-1.0 / root)
    interpolant = np.polynomial.Chebyshev.interpolate(g, degree, domain=[lower, 1.0])
    # Dense near the lower end, where g varies fastest, and uniform elsewhere.
    t = np.unique(np.concatenate([np.linspace(lower, 1.0, 20001), np.geomspace(lower, 1.0, 20001)]))
    return float(np.max(np.abs(interpolant(t) / g(t) - 1.0)))


def largest_eigenvalue_of_root_times(A: torch.Tensor, X: torch.Tensor, root: int) -> torch.Tensor:
    """``(N,)`` largest eigenvalue of ``X^p A`` in float64 (NaN for a non-finite ``X``), from the
    similar symmetric ``W^T A W``, ``W = X^{p/2}``, for even ``p`` and ``A^{1/2} X^p A^{1/2}``
    (``X`` symmetric, ``A`` PSD) for odd ``p``."""
    if root % 2 == 0:
        W = torch.linalg.matrix_power(X, root // 2)
        gram = W.mT @ A @ W
    else:
        eigenvalues, eigenvectors = torch.linalg.eigh(A)
        A_half = (eigenvectors * eigenvalues.clamp_min(0).sqrt()[..., None, :]) @ eigenvectors.mT
        gram = A_half @ torch.linalg.matrix_power(X.nan_to_num(), root) @ A_half
    finite = X.isfinite().all(dim=(-2, -1))
    values = torch.linalg.eigvalsh(torch.where(finite[:, None, None], gram, 0.0)).amax(dim=-1)
    return torch.where(finite, values, torch.nan)


def top_of_roots(
    A: torch.Tensor, roots: torch.Tensor, ridge: torch.Tensor, root: int
) -> torch.Tensor:
    """``(N,)`` largest eigenvalue of ``X^p (A + r I)`` for float32 roots ``X`` and ridges ``r``."""
    ridged = A + ridge.double()[:, None, None] * torch.eye(A.shape[-1], dtype=A.dtype)
    return largest_eigenvalue_of_root_times(ridged, roots.double(), root)
