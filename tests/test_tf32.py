"""TF32 on any device: the rounding tensor cores apply, its emulation, the 3xTF32 product, and
the tensor-core tier of the minimax iteration on real factors under emulation."""

import pytest
import torch

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.solvers import MatmulPrecision
from distributed_shampoo_dash.solvers.minimax import minimax_products
from distributed_shampoo_dash.solvers.precision import (
    batched_addmm,
    batched_matmul,
    fp32_matmul_precision,
    prepared,
    round_to_tf32,
    tf32_high_part,
)
from distributed_shampoo_dash.solvers.tf32 import EmulatedTF32
from tests.real_factors import RealFactors
from tests.solver_helpers import reference_inverse_root, relative_errors, top_of_roots


def tf32_reference(a: torch.Tensor) -> torch.Tensor:
    """Round to nearest, ties to even, on 10 mantissa bits, computed in float64 arithmetic."""
    x = a.double()
    exponent = torch.floor(torch.log2(x.abs().clamp_min(1e-300)))
    unit = torch.exp2(exponent - 10)
    scaled = x / unit
    nearest = torch.round(scaled)  # torch.round rounds half to even
    return torch.where(x == 0, x, nearest * unit).float()


def test_rounding_to_tf32_is_round_to_nearest_even() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(100_000, generator=generator) * torch.logspace(-20, 20, 100_000)
    ties = torch.tensor([1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-11), 2**-11 * (1 + 2**-10)])

    for values in (a, ties):
        assert torch.equal(round_to_tf32(values), tf32_reference(values))
    assert round_to_tf32(ties[:2]).tolist() == [1.0, 1 + 2**-9]


def test_tf32_values_are_left_alone_and_rounding_is_idempotent() -> None:
    a = round_to_tf32(torch.randn(1000, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(round_to_tf32(a), a)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf")])
    assert torch.equal(round_to_tf32(special), special)


def test_the_emulation_rounds_float32_products_only_while_tf32_is_requested() -> None:
    generator = torch.Generator().manual_seed(2)
    a, b = torch.randn(3, 16, 16, generator=generator), torch.randn(3, 16, 16, generator=generator)
    tf32_product = round_to_tf32(a) @ round_to_tf32(b)

    with EmulatedTF32() as emulation:
        with fp32_matmul_precision("tf32"):
            emulated = a @ b
            emulated_2d = a[0] @ b[0]
            float64 = a.double() @ b.double()
        with fp32_matmul_precision("ieee"):
            ieee = a @ b
    assert torch.equal(emulated, tf32_product)
    assert torch.equal(emulated_2d, tf32_product[0])
    assert torch.equal(float64, a.double() @ b.double())
    assert torch.equal(ieee, a @ b)
    assert emulation.products == 2


def test_products_request_tf32_through_torchs_switch_and_restore_it() -> None:
    before = torch.backends.cuda.matmul.fp32_precision
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 32, 32, generator=generator), torch.randn(2, 32, 32, generator=generator)

    with EmulatedTF32() as emulation:
        tf32 = batched_matmul(a, b, MatmulPrecision.TF32)
        fp32 = batched_matmul(a, b, MatmulPrecision.FP32)
    assert torch.backends.cuda.matmul.fp32_precision == before
    assert torch.equal(tf32, round_to_tf32(a) @ round_to_tf32(b))
    assert torch.equal(fp32, a @ b)
    assert emulation.products == 1


def test_a_3xtf32_product_is_as_accurate_as_fp32_and_tf32_is_not() -> None:
    generator = torch.Generator().manual_seed(4)
    a, b = (
        torch.randn(8, 128, 128, generator=generator),
        torch.randn(8, 128, 128, generator=generator),
    )
    exact = a.double() @ b.double()

    def error(precision: MatmulPrecision) -> float:
        with EmulatedTF32():
            product = batched_matmul(a, b, precision)
        return float((product.double() - exact).norm() / exact.norm())

    assert error(MatmulPrecision.TF32X3) <= 2 * error(MatmulPrecision.FP32)
    assert error(MatmulPrecision.TF32) >= 20 * error(MatmulPrecision.FP32)


def test_the_high_part_is_tf32_and_the_split_is_exact() -> None:
    a = torch.randn(100_000, generator=torch.Generator().manual_seed(5)) * torch.logspace(
        -30, 30, 100_000
    )
    hi = tf32_high_part(a)
    lo = a - hi
    assert torch.equal(round_to_tf32(hi), hi)
    assert torch.equal(hi.view(torch.int32) & 0x1FFF, torch.zeros_like(a, dtype=torch.int32))
    assert torch.equal((hi.double() + lo.double()).float(), a)
    assert torch.equal(hi.double() + lo.double(), a.double())
    assert bool((lo.abs() < 2.0**-10 * a.abs()).all())


@pytest.mark.parametrize("precision", list(MatmulPrecision), ids=lambda p: p.name)
@pytest.mark.parametrize("shape", [(3, 24, 24), (24, 24)], ids=["stack", "matrix"])
def test_a_product_with_an_addend_is_the_sum_at_the_products_precision(
    precision: MatmulPrecision, shape: tuple[int, ...]
) -> None:
    generator = torch.Generator().manual_seed(6)
    a, b, c = (torch.randn(shape, generator=generator) for _ in range(3))
    with EmulatedTF32():
        for left, right in ((a, b), (a, a)):
            result = batched_addmm(c, left, right, precision)
            exact = c.double() + left.double() @ right.double()
            plain = c + batched_matmul(left, right, precision)
            assert result.dtype == torch.float32 and result.shape == c.shape
            tolerance = 4 * float((plain.double() - exact).abs().max()) + 1e-6
            assert float((result.double() - exact).abs().max()) <= tolerance


def test_an_operand_split_in_advance_gives_the_same_products_bitwise() -> None:
    """A :class:`SplitOperand` (``prepared``), transposed or not, on either side or both, computes
    exactly the 3xTF32 product of the plain operands, under emulation too; at other precisions
    ``prepared`` returns the tensor itself."""
    generator = torch.Generator().manual_seed(5)
    a, b, c = (torch.randn(3, 32, 32, generator=generator) for _ in range(3))
    split_a, split_b = prepared(a, MatmulPrecision.TF32X3), prepared(b, MatmulPrecision.TF32X3)
    with EmulatedTF32():
        for left, right, plain_left, plain_right in (
            (split_a, b, a, b),
            (a, split_b, a, b),
            (split_a, split_b, a, b),
            (split_a.mT, split_b, a.mT, b),
            (split_a, split_a, a, a),
        ):
            expected = batched_addmm(c, plain_left, plain_right, MatmulPrecision.TF32X3, beta=0.5)
            result = batched_addmm(c, left, right, MatmulPrecision.TF32X3, beta=0.5)
            assert torch.equal(result, expected)
    for precision in (MatmulPrecision.FP32, MatmulPrecision.TF32, MatmulPrecision.BF16):
        assert prepared(a, precision) is a
        assert torch.equal(batched_matmul(split_a, b, precision), batched_matmul(a, b, precision))


def test_every_product_of_the_accelerator_default_runs_on_tensor_cores() -> None:
    config = dash.default_root_inv_config("cuda")
    assert isinstance(config, dash.MinimaxRootInvConfig)
    for root in (2, 4):
        counts = minimax_products(root, config.rel_epsilon, config.precision)
        gemms = {precision: count * precision.gemms for precision, count in counts.items()}
        assert all(precision.uses_tensor_cores for precision in counts)
        assert counts[MatmulPrecision.TF32] > 0 and counts[MatmulPrecision.TF32X3] > 0
        assert sum(gemms.values()) == counts.total() + 2 * counts[MatmulPrecision.TF32X3]


@pytest.mark.parametrize("root", [2, 4])
def test_the_tensor_core_tier_converges_on_every_real_factor_under_emulation(
    real_factor_set: RealFactors, root: int
) -> None:
    """The accelerator default, emulated: every real factor accepted, within 1e-3 of the fp64
    root of ``A + r I``, no eigenvalue of ``X^p (A + r I)`` above 1.05."""
    config = dash.default_root_inv_config("cuda")
    assert isinstance(config, dash.MinimaxRootInvConfig)
    for (_, recorded_root), stack in real_factor_set.stacks().items():
        if recorded_root != root:
            continue
        with EmulatedTF32() as emulation:
            roots = dash.inverse_roots(stack, root, config, epsilon=real_factor_set.epsilon)
        assert emulation.products > 0
        assert bool(roots.accepted.all())
        reference = reference_inverse_root(stack, root, roots.regularization.double())
        assert float(relative_errors(roots.inverse_root, reference).max()) <= 1e-3
        top = top_of_roots(stack.double(), roots.inverse_root, roots.regularization, root)
        assert float(top.max()) <= 1.05
