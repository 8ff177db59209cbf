"""The minimax coupled iteration: its stored schedules, its product count, its damped side, and
its accuracy on real Shampoo factors (:mod:`tests.real_factors`)."""

import collections
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from distributed_shampoo_dash import minimax_schedule_generator as generator
from distributed_shampoo_dash.solvers import MatmulPrecision, SpectralScaling
from distributed_shampoo_dash.solvers import minimax as minimax_module
from distributed_shampoo_dash.solvers.minimax import (
    MINIMAX_ROOTS,
    minimax_inverse_root,
    minimax_products,
    minimax_schedule,
)
from distributed_shampoo_dash.solvers.minimax_schedules import MARGIN, SCHEDULES, TARGET
from distributed_shampoo_dash.solvers.result import OVERSHOOT_POWER_STEPS, OVERSHOOT_VECTORS
from tests.real_factors import RealFactors
from tests.solver_helpers import reference_inverse_root, relative_errors, spd_stack

# --------------------------------------------------------------------------------------------
# Schedules.
# --------------------------------------------------------------------------------------------


def test_stored_schedules_are_what_the_generator_produces() -> None:
    """Coefficients within 1e-6 relative (near-converged steps solve ill-conditioned 4 x 4 systems,
    whose last digits depend on the floating-point library; the polynomials agree to 1e-15)."""
    assert (TARGET, MARGIN) == (generator.TARGET, generator.MARGIN)
    assert set(SCHEDULES) == set(generator.ROOTS)
    for p, schedules in SCHEDULES.items():
        assert tuple(schedules) == generator.REL_EPSILONS
        for rel_epsilon, stored in schedules.items():
            regenerated = generator.schedule(rel_epsilon, p)
            assert len(stored) == len(regenerated), (p, rel_epsilon)
            for stored_step, step in zip(stored, regenerated, strict=True):
                expected = (*step.coefficients, step.half_width)
                assert stored_step == pytest.approx(expected, rel=1e-6, abs=1e-12), (p, rel_epsilon)


@pytest.mark.parametrize("p", sorted(SCHEDULES))
def test_every_schedule_reaches_its_target_from_the_guaranteed_interval(p: int) -> None:
    """Applying the scalar maps to the whole interval ``[l^{1/p}, 1 + margin]`` ends within the
    target, and every value below the interval stays below 1 (damped, never over-inverted)."""
    for rel_epsilon, steps in SCHEDULES[p].items():
        lower = (rel_epsilon / (1 + rel_epsilon)) ** (1 / p)
        t = torch.linspace(lower, 1.0 + MARGIN * (1 - lower), 2001, dtype=torch.float64)
        below = torch.linspace(0.0, lower, 501, dtype=torch.float64)[1:]
        for a, b, c, _ in steps:
            t = t * (a + b * t**p + c * t ** (2 * p))
            below = below * (a + b * below**p + c * below ** (2 * p))
        assert float((t - 1).abs().max()) <= TARGET * (1 + 1e-9), (p, rel_epsilon)
        assert float(below.max()) <= 1 + TARGET, (p, rel_epsilon)


def test_an_untabulated_ridge_uses_the_schedule_of_the_next_smaller_tabulated_one() -> None:
    assert minimax_schedule(4, 4e-4) == SCHEDULES[4][3e-4]
    assert minimax_schedule(4, 1e-5) == SCHEDULES[4][1e-5]
    assert minimax_schedule(1, 1e-5) == SCHEDULES[2][1e-5]


# --------------------------------------------------------------------------------------------
# Products.
# --------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("root", MINIMAX_ROOTS)
@pytest.mark.parametrize(
    "precision", [MatmulPrecision.FP32, MatmulPrecision.BF16], ids=lambda p: p.value
)
@pytest.mark.parametrize(
    "first_step_precision", [MatmulPrecision.FP32, MatmulPrecision.FP64], ids=lambda p: p.value
)
def test_flops_are_the_documented_product_count(
    root: int,
    precision: MatmulPrecision,
    first_step_precision: MatmulPrecision,
    device: torch.device,
) -> None:
    """``FlopCounterMode`` FLOPs = products x 2 d^3 x N plus the power iterations' ``(k + 1)``
    products of ``(N, d, d) @ (N, d, m)``: the spectral bound's and the overshoot's."""
    num_blocks, dim = 3, 16
    A = spd_stack(num_blocks, dim, condition=100.0).float().to(device)
    scaling = SpectralScaling()
    with FlopCounterMode(display=False) as counter:
        minimax_inverse_root(
            A,
            root,
            rel_epsilon=1e-5,
            precision=precision,
            scaling=scaling,
            first_step_precision=first_step_precision,
        )
    products = minimax_products(root, 1e-5, precision, first_step_precision).total()
    power_iteration = (
        (scaling.num_iterations + 1) * scaling.num_vectors
        + (OVERSHOOT_POWER_STEPS + 1) * OVERSHOOT_VECTORS
    ) * (2 * dim * dim * num_blocks)
    assert counter.get_total_flops() == products * 2 * dim**3 * num_blocks + power_iteration


def test_products_at_the_default_ridge_are_within_the_budget() -> None:
    budgets = {(4, 1e-5): 56, (2, 1e-5): 32, (4, 1e-6): 72}
    counts = {key: minimax_products(*key).total() for key in budgets}
    assert counts == {(4, 1e-5): 24, (2, 1e-5): 23, (4, 1e-6): 29}
    assert all(counts[key] <= budget for key, budget in budgets.items())


@pytest.mark.parametrize(("root", "first_step"), [(1, 3), (2, 3), (3, 4), (4, 4), (6, 5), (8, 5)])
def test_an_fp64_first_step_moves_only_the_first_steps_products(root: int, first_step: int) -> None:
    """The first step runs ``M^2`` and ``P^p M`` (no ``X`` product yet): ``1 + P(p) + 1``."""
    fp32 = minimax_products(root, 1e-6)
    fp64 = minimax_products(root, 1e-6, first_step_precision=MatmulPrecision.FP64)
    assert fp64 == collections.Counter(
        {MatmulPrecision.FP64: first_step, MatmulPrecision.FP32: fp32.total() - first_step}
    )


# --------------------------------------------------------------------------------------------
# An eigenvalue below the design interval is damped, and the residual says so.
# --------------------------------------------------------------------------------------------


def test_a_spectrum_below_the_design_interval_is_under_inverted_and_flagged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The schedule of ``rel_epsilon = 1e-3`` on a matrix whose ridge is ``1e-6``: the smallest
    eigenvalues are not reached, and ``X^p B`` stays below ``1 + E`` (no direction is amplified
    beyond its true inverse root)."""
    monkeypatch.setattr(
        minimax_module, "minimax_schedule", lambda root, rel_epsilon: SCHEDULES[4][1e-3]
    )
    A = spd_stack(4, 32, condition=1e8).float()
    result = minimax_inverse_root(A, 4, rel_epsilon=1e-6)
    matrix = A.double() + result.regularization.double()[:, None, None] * torch.eye(
        32, dtype=torch.float64
    )
    X = result.inverse_root.double()
    eigenvalues = torch.linalg.eigvalsh(X @ X @ matrix @ X @ X)
    assert float(eigenvalues.max()) <= 1 + 1e-3
    assert float(eigenvalues.min()) < 0.5  # the smallest directions are damped
    assert bool((result.residual > 1e-2).all())  # and the default max_residual rejects it


def test_a_spectral_bound_far_below_lambda_max_is_flagged_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a quarter of the bound (about half of ``lambda_max``), ``B``'s top eigenvalues lie far
    above the schedule's interval:
    the iteration diverges there, and every such block comes back non-finite or flagged."""
    A = spd_stack(4, 32, condition=10.0).float()
    scaling = SpectralScaling()
    result = minimax_inverse_root(A, 4, rel_epsilon=1e-5, scaling=scaling)
    assert bool(result.is_finite.all()) and float(result.residual.max()) < 1e-2
    bound = SpectralScaling.normalized_upper_bound
    monkeypatch.setattr(
        SpectralScaling, "normalized_upper_bound", lambda self, stack: bound(self, stack) / 4
    )
    broken = minimax_inverse_root(A, 4, rel_epsilon=1e-5, scaling=scaling)
    assert bool((~broken.is_finite | (broken.residual > 1e-2)).all())


# --------------------------------------------------------------------------------------------
# Real factors.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel_epsilon", "precision", "max_error", "max_residual"),
    [
        (1e-5, MatmulPrecision.FP32, 1e-3, 1e-2),
        (1e-4, MatmulPrecision.FP32, 1e-3, 1e-2),
        (1e-3, MatmulPrecision.FP32, 1e-3, 1e-2),
        (1e-4, MatmulPrecision.BF16, 2e-3, 5e-2),
        (1e-4, MatmulPrecision.FP16, 2e-3, 5e-2),
        (1e-5, MatmulPrecision.FP16, 2e-3, 5e-2),
    ],
    ids=["fp32-1e-5", "fp32-1e-4", "fp32-1e-3", "bf16-1e-4", "fp16-1e-4", "fp16-1e-5"],
)
def test_every_real_factor_converges_to_the_root_of_its_regularised_matrix(
    real_factor_set: RealFactors,
    rel_epsilon: float,
    precision: MatmulPrecision,
    max_error: float,
    max_residual: float,
) -> None:
    epsilon, groups = real_factor_set.epsilon, real_factor_set.stacks()
    for (dim, root), stack in groups.items():
        result = minimax_inverse_root(
            stack, root, epsilon=epsilon, rel_epsilon=rel_epsilon, precision=precision
        )
        reference = reference_inverse_root(stack, root, result.regularization.double())
        errors = relative_errors(result.inverse_root, reference)
        assert float(errors.max()) <= max_error, (dim, root, float(errors.max()))
        assert bool(result.is_finite.all()) and float(result.residual.max()) <= max_residual, (
            dim,
            root,
        )
        ridge = result.regularization.double()
        lambda_max = torch.linalg.eigvalsh(stack.double())[:, -1]
        # The ridge is rel_epsilon times the spectral bound, which lies in
        # [lambda_max, 2 lambda_max].
        assert bool((ridge >= rel_epsilon * lambda_max * (1 - 1e-6)).all())
        assert bool((ridge <= (2 * rel_epsilon * lambda_max + epsilon) * (1 + 1e-6)).all())


@pytest.mark.parametrize(
    ("first_step_precision", "max_error"),
    [(MatmulPrecision.FP32, {2: 4e-3, 4: 2e-3}), (MatmulPrecision.FP64, {2: 1.5e-3, 4: 1e-3})],
    ids=lambda value: getattr(value, "value", ""),
)
def test_real_factors_at_rel_epsilon_1e6_need_the_first_step_in_fp64(
    real_factor_set: RealFactors,
    first_step_precision: MatmulPrecision,
    max_error: dict[int, float],
) -> None:
    """At 1e-6 the first step's fp32 rounding (not the iteration count) limits the error: in fp32
    root 4 stays within 2e-3, root 2 within 4e-3 (measured 1.7e-3 and 3.6e-3); with that step in
    fp64 within 1e-3 and 1.5e-3 (measured 5.1e-4 and 1.0e-3), every residual under the default
    ``max_residual`` (docs/solvers.md)."""
    epsilon, groups = real_factor_set.epsilon, real_factor_set.stacks()
    for (dim, root), stack in groups.items():
        result = minimax_inverse_root(
            stack,
            root,
            epsilon=epsilon,
            rel_epsilon=1e-6,
            first_step_precision=first_step_precision,
        )
        errors = relative_errors(
            result.inverse_root, reference_inverse_root(stack, root, result.regularization.double())
        )
        assert float(errors.max()) <= max_error[root], (dim, root, float(errors.max()))
        assert result.inverse_root.dtype == torch.float32
        if first_step_precision is MatmulPrecision.FP64:
            assert float(result.residual.max()) <= 1e-2, (dim, root)


def test_a_block_gets_the_same_root_in_any_stack(
    real_factor_set: RealFactors,
) -> None:
    """Real factors mixed with Wishart, zero and huge blocks: each block's root alone equals its
    root in the stack."""
    epsilon, groups = real_factor_set.epsilon, real_factor_set.stacks()
    real = groups[(128, 4)][:6]
    wishart = torch.randn(2, 128, 256, generator=torch.Generator().manual_seed(0))
    stack = torch.cat([real, wishart @ wishart.mT / 256, torch.zeros(1, 128, 128), 1e30 * real[:1]])
    together = minimax_inverse_root(stack, 4, epsilon=epsilon)
    for index in range(stack.shape[0]):
        alone = minimax_inverse_root(stack[index], 4, epsilon=epsilon)
        torch.testing.assert_close(
            together.inverse_root[index], alone.inverse_root[0], rtol=1e-5, atol=0.0
        )
    assert bool(together.is_finite.all())


def test_arguments_are_checked_by_name() -> None:
    A = torch.eye(3)
    with pytest.raises(
        ValueError, match=r"Invalid rel_epsilon=1e-09\. Must be a finite number >= 1e-08"
    ):
        minimax_inverse_root(A, 4, rel_epsilon=1e-9)
    with pytest.raises(
        ValueError, match=r"Invalid root 5 for the minimax iteration\. Must be one of"
    ):
        minimax_inverse_root(A, 5)
    with pytest.raises(
        ValueError, match=r"Invalid first_step_precision=bf16\. Must be fp32 or fp64"
    ):
        minimax_inverse_root(A, 4, first_step_precision=MatmulPrecision.BF16)
    assert not math.isnan(float(minimax_inverse_root(A, 8).residual))
