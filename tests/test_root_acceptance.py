"""Which roots DASH accepts: every supported root of the minimax iteration on real factors, root 3
on the scale of the even roots, and the dtypes and roots upstream accepts computed instead of
raising."""

import pytest
import torch

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.solvers import MatmulPrecision, eigh_inverse_root
from distributed_shampoo_dash.solvers.minimax import MINIMAX_ROOTS, minimax_inverse_root
from tests.real_factors import RealFactors


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
