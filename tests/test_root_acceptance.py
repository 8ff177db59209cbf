"""Which roots DASH accepts: every supported root of the minimax iteration on real factors, root 3
on the scale of the even roots, no over-inverted root, and the dtypes and roots upstream accepts
computed instead of raising."""

import pytest
import torch

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.solvers import MatmulPrecision, eigh_inverse_root
from distributed_shampoo_dash.solvers.minimax import MINIMAX_ROOTS, minimax_inverse_root
from distributed_shampoo_dash.solvers.scaling import rayleigh_lambda_max
from tests.real_factors import RealFactors
from tests.solver_helpers import top_of_roots


def log_spaced_stack(d: int, condition: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    eigenvalues = torch.logspace(0, -float(torch.log10(torch.tensor(condition))), d)
    return ((Q * eigenvalues.double()) @ Q.T)[None]


@pytest.mark.parametrize("root", MINIMAX_ROOTS)
def test_every_minimax_root_is_accepted_on_the_real_factors(
    real_factor_set: RealFactors, root: int
) -> None:
    config = dash.MinimaxRootInvConfig()
    for (dim, _), stack in real_factor_set.stacks().items():
        roots = dash.inverse_roots(stack, root, config, epsilon=real_factor_set.epsilon)
        assert bool(roots.accepted.all()), (dim, roots.residual.max())


@pytest.mark.parametrize("condition", [1e2, 1e4, 1e8])
def test_root_3_has_a_residual_on_the_scale_of_the_even_roots(condition: float) -> None:
    stack = log_spaced_stack(64, condition, seed=0).float()
    residuals = {root: float(minimax_inverse_root(stack, root).residual[0]) for root in (2, 3, 4)}

    assert residuals[3] < dash.MinimaxRootInvConfig().max_residual
    assert residuals[3] < 100 * max(residuals[2], residuals[4])


def stack_hiding_lambda_max(d: int, gaps: torch.Tensor, seed: int) -> torch.Tensor:
    """Blocks with ``lambda_max = 1`` whose top eigenvector is orthogonal to the spectral bound's
    start vectors, the rest of the spectrum log-spaced in ``gap * [1e-3, 1]``: the power iteration
    sees only the rest, so the bound ``2 rho`` comes out near ``2 gap``, below ``lambda_max`` for
    ``gap < 1/2``."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.linalg.qr(
        torch.randn((d, 16), generator=torch.Generator().manual_seed(0x5EED)).double()
    )[0]
    top = torch.randn(d, generator=generator, dtype=torch.float64)
    top = top - start @ (start.T @ top)
    top = top / top.norm()
    rest = torch.randn(d, d - 1, generator=generator, dtype=torch.float64)
    rest = torch.linalg.qr(rest - torch.outer(top, top @ rest))[0]
    blocks = []
    for gap in gaps.tolist():
        eigenvalues = gap * torch.logspace(-3, 0, d - 1, dtype=torch.float64)
        block = torch.outer(top, top) + (rest * eigenvalues) @ rest.T
        blocks.append((block + block.T) / 2)
    return torch.stack(blocks)


def test_the_default_recomputes_an_over_inverted_root_its_residual_would_accept() -> None:
    """At d = 256 a root that over-inverts its top direction by 9% has a residual of 5e-3: the
    overshoot, not the residual, rejects it."""
    A = stack_hiding_lambda_max(256, torch.linspace(0.4675, 0.4725, 21), seed=0)
    config = dash.MinimaxRootInvConfig()
    assert float(rayleigh_lambda_max(A.float(), 10, 16).max()) < 0.51

    result = minimax_inverse_root(A.float(), 4)
    roots = dash.inverse_roots(A.float(), 4, config)

    over_inverted = top_of_roots(A, result.inverse_root, result.regularization, 4) > 1.05
    accepted_by_residual = result.is_finite & (result.residual <= config.max_residual)
    assert bool((over_inverted & accepted_by_residual).any())
    assert not bool((roots.accepted & over_inverted).any())
    assert bool(roots.recomputed[over_inverted].all())
    returned_top = top_of_roots(A, roots.inverse_root, roots.regularization, 4)
    assert float(returned_top.max()) <= 1 + config.max_overshoot


@pytest.mark.parametrize("root", [2, 3, 4])
def test_the_overshoot_bounds_the_largest_eigenvalue_of_the_root_times_the_matrix(
    root: int,
) -> None:
    """Bounds from 0.9 to 1.0 lambda_max, residual check off: the overshoot is at least the
    over-inversion of every finite root (up to rounding; equal to it for even roots), so none
    above ``max_overshoot`` is accepted."""
    A = stack_hiding_lambda_max(128, torch.linspace(0.45, 0.5, 401), seed=root)
    config = dash.MinimaxRootInvConfig(max_residual=None)

    result = minimax_inverse_root(A.float(), root)
    roots = dash.inverse_roots(A.float(), root, config)

    finite = result.is_finite
    over_inversion = top_of_roots(A, result.inverse_root, result.regularization, root) - 1
    assert bool((finite & (over_inversion > config.max_overshoot)).any())
    rounding = 2e-3 + 1e-3 * over_inversion.abs()
    assert bool((result.overshoot.double() >= over_inversion - rounding)[finite].all())
    if root % 2 == 0:
        moderate = finite & (over_inversion < 1)
        assert bool(
            ((result.overshoot.double() - over_inversion).abs() <= rounding)[moderate].all()
        )
    returned_top = top_of_roots(A, roots.inverse_root, roots.regularization, root)
    assert float(returned_top[roots.accepted].max()) <= 1 + config.max_overshoot


def test_eigh_keeps_the_other_blocks_of_a_stack_with_a_non_finite_block() -> None:
    stack = log_spaced_stack(8, 1e2, seed=1).float().expand(3, 8, 8).clone()
    stack[1, 2, 3] = float("nan")

    result = eigh_inverse_root(stack, 2)

    assert result.is_finite.tolist() == [True, False, True]
    assert torch.equal(result.inverse_root[0], eigh_inverse_root(stack[:1], 2).inverse_root[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_eigh_fallback_of_a_half_precision_stack_is_computed(dtype: torch.dtype) -> None:
    stack = log_spaced_stack(16, 1e3, seed=2).to(dtype)

    roots = dash.inverse_roots(stack, 4, dash.MinimaxRootInvConfig(max_residual=0.0))

    assert not bool(roots.accepted.any())
    assert bool(roots.recomputed.all())
    assert roots.inverse_root.dtype == dtype


def test_a_chebyshev_root_with_no_small_fraction_goes_to_batched_eigh() -> None:
    root = 1 / 0.29
    stack = log_spaced_stack(16, 1e2, seed=3).float()

    roots = dash.inverse_roots(stack, root, dash.ChebyshevRootInvConfig())

    expected = eigh_inverse_root(stack, root).inverse_root
    assert bool(roots.accepted.all())
    assert torch.equal(roots.inverse_root, expected)


def test_the_cost_model_checks_its_fields() -> None:
    with pytest.raises(ValueError, match=r"default_products=-61"):
        dash.InverseRootCostModel(default_products=-61)
    with pytest.raises(TypeError, match=r"default_products='61'"):
        dash.InverseRootCostModel(default_products="61")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"block_overhead=nan"):
        dash.InverseRootCostModel(block_overhead=float("nan"))
    with pytest.raises(TypeError, match=r"config=None"):
        dash.InverseRootCostModel(config=None)  # type: ignore[arg-type]


def test_upstream_coupled_newton_iterates_in_float64_for_float64_factors() -> None:
    from distributed_shampoo import CoupledNewtonConfig

    from distributed_shampoo_dash.integration.dispatch import batched_solver

    solver = batched_solver(CoupledNewtonConfig(), 2.0, 1e-12, torch.float64)
    assert solver is not None
    assert set(solver.product_counts) == {MatmulPrecision.FP64}


@pytest.mark.parametrize("root", [2, 4, 8])
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_the_default_accepts_no_over_inverted_root_of_a_nearly_rank_one_factor(
    rank: int, root: int
) -> None:
    """First-step factors are sums of a few outer products: at every scale from 1e-6 to 1e6 the
    default's accepted roots have no eigenvalue of ``X^p (A + r I)`` above ``1 + max_overshoot``."""
    generator = torch.Generator().manual_seed(100 * rank + root)
    scales = torch.logspace(-3, 3, 20, dtype=torch.float64)[:, None, None]
    gradients = torch.randn(20, 128, rank, generator=generator, dtype=torch.float64) * scales
    A = gradients @ gradients.mT
    config = dash.MinimaxRootInvConfig()

    roots = dash.inverse_roots(A.float(), root, config, epsilon=1e-10)

    top = top_of_roots(A, roots.inverse_root, roots.regularization, root)
    assert bool(roots.usable.all())
    assert float(top[roots.accepted].max()) <= 1 + config.max_overshoot
