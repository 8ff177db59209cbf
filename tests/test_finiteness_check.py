"""The amortized computation's finiteness check read from the stored factor matrices: never
"finite" where a bias-corrected (and trace-scaled) matrix has a NaN or an infinity, and exactly
upstream's check away from the top of the dtype's range."""

import math
import types

import pytest
import torch

pytestmark = pytest.mark.upstream
pytest.importorskip("distributed_shampoo")

from distributed_shampoo_dash.integration.preconditioner_list import (
    bias_corrected_factor_stack,
    bias_corrected_factors_finite,
)
from distributed_shampoo_dash.stacking.packing import pack_stack

DTYPES = (torch.float32, torch.float64, torch.bfloat16)
CASES = 400


def random_case(generator: torch.Generator, dtype: torch.dtype) -> dict[str, object]:
    """Symmetric factor matrices over the dtype's whole range, some with a NaN or an infinity, a
    bias correction, and trace scaling on or off, packed or not."""

    def draw(choices: tuple[object, ...]) -> object:
        return choices[int(torch.randint(len(choices), (), generator=generator))]

    d, n = int(draw((1, 3, 8))), int(draw((1, 2, 5)))
    top = torch.finfo(dtype).max
    exponent = float(
        torch.empty((), dtype=torch.float64).uniform_(
            -30.0, math.log10(top) + 1.0, generator=generator
        )
    )
    samples = torch.randn(n, d, d + 2, dtype=torch.float64, generator=generator)
    matrices = (
        (samples @ samples.mT) / (d + 2) * torch.tensor(10.0, dtype=torch.float64) ** exponent
    )
    if bool(draw((True, False))):
        flat = matrices.view(n, -1)
        flat[int(draw(tuple(range(n)))), int(draw(tuple(range(d * d))))] = float(
            draw((float("nan"), float("inf"), -float("inf")))  # type: ignore[arg-type]
        )
        matrices = (flat.view(n, d, d) + flat.view(n, d, d).mT) / 2
    settings = types.SimpleNamespace(
        use_symmetric_packing=bool(draw((True, False))),
        use_trace_scaling=bool(draw((True, False))),
        epsilon=float(draw((1e-12, 1e-6, 1e-1))),
        trace_scaling_exponent=float(draw((0.5, 1.0))),
    )
    stored = matrices.to(dtype)  # entries beyond the dtype's range become infinite
    if settings.use_symmetric_packing:
        stored = pack_stack(stored)
    return {
        "settings": settings,
        "factor_matrices": list(stored.unbind(0)),
        "bias_correction2": torch.tensor(float(draw((1.0, 0.05, 1e-3)))),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_flag_is_never_finite_for_a_non_finite_matrix_and_exact_below_the_range_top(
    dtype: torch.dtype,
) -> None:
    generator = torch.Generator().manual_seed(7)
    outcomes = {"finite": 0, "non-finite": 0, "conservative": 0}
    for _ in range(CASES):
        case = random_case(generator, dtype)
        settings, factor_matrices = case["settings"], case["factor_matrices"]
        stack = bias_corrected_factor_stack(
            settings,  # type: ignore[arg-type]
            factor_matrices,  # type: ignore[arg-type]
            case["bias_correction2"],  # type: ignore[arg-type]
        )
        exact = bool(torch.isfinite(stack).all())
        flag = bool(
            bias_corrected_factors_finite(
                settings,  # type: ignore[arg-type]
                factor_matrices,  # type: ignore[arg-type]
                case["bias_correction2"],  # type: ignore[arg-type]
            )
        )
        assert exact or not flag
        stored = torch.stack(factor_matrices).double()  # type: ignore[arg-type]
        margin = stored[0].numel() * 2.0 / float(case["bias_correction2"])  # type: ignore[arg-type]
        if settings.use_trace_scaling:  # type: ignore[attr-defined]
            margin *= settings.epsilon**-settings.trace_scaling_exponent  # type: ignore[attr-defined]
        far_from_the_top = bool(stored.abs().max() * margin < torch.finfo(dtype).max / 4)
        if far_from_the_top:
            assert flag == exact
        outcomes["conservative" if flag != exact else "finite" if exact else "non-finite"] += 1
    assert outcomes["finite"] > CASES // 4 and outcomes["non-finite"] > CASES // 4, outcomes
