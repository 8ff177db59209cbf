"""DASH on and off give the same optimizer for upstream's solvers; the switch and configs behave."""

import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
import torch

pytestmark = pytest.mark.upstream
distributed_shampoo = pytest.importorskip("distributed_shampoo")

from distributed_shampoo import CoupledNewtonConfig, DistributedShampoo, EigenConfig
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.integration.preconditioner_list import (
    bias_corrected_factor_stack,
)
from distributed_shampoo_dash.solvers.scaling import SpectralScaling
from tests.integration.models import train
from tests.integration.shampoo import (
    kronecker_factors,
    max_parameter_difference,
    preconditioner_list,
    shampoo_factory,
)


@pytest.fixture(autouse=True)
def dash_disabled_afterwards() -> Iterator[None]:
    yield
    dash.disable()


def inverse_factors(optimizer: DistributedShampoo) -> list[tuple[torch.Tensor, float]]:
    """Every unpacked inverse factor with its root."""
    return [
        (factors._unpack_matrix(inverse), root)
        for factors in kronecker_factors(optimizer)
        for inverse, root in zip(factors.inv_factor_matrices, factors.roots, strict=True)
    ]


def implied_matrix(inverse_root: torch.Tensor, root: float) -> torch.Tensor:
    """``X^{-p}`` in fp64: the regularised factor matrix whose inverse root ``X`` is."""
    eigenvalues, eigenvectors = torch.linalg.eigh(inverse_root.double())
    return (eigenvectors * eigenvalues.pow(-root)) @ eigenvectors.mT


def masked_linear_every_third_step(step: int) -> set[str]:
    return {"linear.weight", "norm.bias"} if step % 3 == 1 else set()


@pytest.mark.parametrize(
    "solver, epsilon",
    [(EigenConfig(), 1e-8), (CoupledNewtonConfig(), 1e-3)],
    ids=["eigen", "coupled_newton"],
)
@pytest.mark.parametrize(
    "preconditioner_kwargs, train_kwargs",
    [
        ({}, {}),
        ({"use_symmetric_packing": False}, {}),
        ({"use_trace_scaling": True}, {}),
        ({"inverse_exponent_override": {2: 0.2}}, {}),
        ({}, {"skip_gradients": masked_linear_every_third_step}),
    ],
    ids=["packed", "unpacked", "trace_scaling", "override", "masked"],
)
def test_dash_matches_upstream_inverse_factors_and_parameters_after_20_steps(
    solver: RootInvConfig,
    epsilon: float,
    preconditioner_kwargs: dict[str, object],
    train_kwargs: dict[str, object],
) -> None:
    factory = shampoo_factory(solver, epsilon, **preconditioner_kwargs)
    dash.disable()
    upstream_model, upstream_optimizer, _ = train(factory, num_steps=20, **train_kwargs)
    dash.enable()
    dash_model, dash_optimizer, _ = train(factory, num_steps=20, **train_kwargs)

    assert type(preconditioner_list(dash_optimizer)).__name__ == "BatchedRootInvShampooPreconditionerList"
    assert max_parameter_difference(upstream_model, dash_model) < 5e-4
    # Inverse roots of rank-deficient factors amplify rounding in the near-null space by up to
    # epsilon^{-1/p}, so they are compared through the matrices they are the roots of.
    for (upstream_inverse, root), (dash_inverse, _) in zip(
        inverse_factors(upstream_optimizer), inverse_factors(dash_optimizer), strict=True
    ):
        assert upstream_inverse.dtype == dash_inverse.dtype and upstream_inverse.shape == dash_inverse.shape
        upstream_matrix, dash_matrix = implied_matrix(upstream_inverse, root), implied_matrix(dash_inverse, root)
        assert torch.linalg.norm(dash_matrix - upstream_matrix) <= 1e-3 * torch.linalg.norm(upstream_matrix)


def fp64_reference_root(matrix: torch.Tensor, root: float, epsilon: float) -> torch.Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix.double())
    return (eigenvectors * (eigenvalues + epsilon).pow(-1.0 / root)) @ eigenvectors.mT


@pytest.mark.parametrize(
    "solver, max_error",
    [
        (dash.NewtonDBRootInvConfig(num_iterations=30, tolerance=1e-6, max_residual=1e-3), 1e-3),
        (dash.ChebyshevRootInvConfig(degree=100, relative_epsilon=1e-2, max_residual=1e-3), 1e-3),
    ],
    ids=["newton_db", "chebyshev"],
)
def test_dash_configs_train_the_model_with_roots_of_the_promised_accuracy(
    solver: dash.NewtonDBRootInvConfig | dash.ChebyshevRootInvConfig, max_error: float
) -> None:
    """Every inverse factor is within ``max_error`` of the fp64 root of its bias-corrected factor.

    A root the solver computed has residual <= ``max_residual``, which bounds its relative error
    by about ``max_residual sqrt(d) / p``; a rejected one was recomputed by eigh. Chebyshev roots
    are those of ``A + epsilon I + delta s I`` (``s`` the config's spectral bound).
    """
    dash.enable()
    epsilon = 1e-6
    model, optimizer, losses = train(shampoo_factory(solver, epsilon), num_steps=30, fixed_batch=True)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())

    bias_correction2 = preconditioner_list(optimizer)._bias_correction2
    for factors in kronecker_factors(optimizer):
        for factor_matrix, inverse, root in zip(
            factors.factor_matrices, factors.inv_factor_matrices, factors.roots, strict=True
        ):
            matrix = bias_corrected_factor_stack(factors, [factor_matrix], bias_correction2)[0]
            matrix = matrix + epsilon * torch.eye(matrix.shape[0])
            inverse = factors._unpack_matrix(inverse)
            shift = 0.0
            if isinstance(solver, dash.ChebyshevRootInvConfig):
                scale: SpectralScaling = solver.scaling
                shift = solver.relative_epsilon * float(scale.upper_bound(matrix.unsqueeze(0))[0])
            reference = fp64_reference_root(matrix, root, shift)
            error = torch.linalg.norm(inverse.double() - reference) / torch.linalg.norm(reference)
            assert error < max_error


def test_state_dict_has_the_same_layout_with_and_without_dash() -> None:
    def layout(optimizer: DistributedShampoo) -> dict[object, tuple[tuple[int, ...], torch.dtype]]:
        return {
            (param_key, state_key): (tuple(value.shape), value.dtype)
            for param_key, param_state in optimizer.state_dict()["state"].items()
            for state_key, value in param_state.items()
            if isinstance(value, torch.Tensor)
        }

    dash.disable()
    _, upstream_optimizer, _ = train(shampoo_factory(EigenConfig()), num_steps=3)
    dash.enable()
    _, dash_optimizer, _ = train(shampoo_factory(EigenConfig()), num_steps=3)
    assert layout(upstream_optimizer) == layout(dash_optimizer)


def test_dash_config_without_dash_fails_at_construction_with_instructions() -> None:
    dash.disable()
    with pytest.raises(ValueError, match=r"distributed_shampoo_dash\.enable\(\)"):
        train(shampoo_factory(dash.NewtonDBRootInvConfig()), num_steps=1)


def test_enable_and_disable_are_idempotent_and_restore_upstream() -> None:
    from distributed_shampoo import distributed_shampoo as optimizer_module
    from distributed_shampoo.preconditioner import shampoo_preconditioner_list

    original = (optimizer_module.RootInvShampooPreconditionerList, shampoo_preconditioner_list.matrix_inverse_root)
    dash.enable()
    dash.enable()
    assert dash.is_enabled()
    dash.disable()
    dash.disable()
    assert (optimizer_module.RootInvShampooPreconditionerList, shampoo_preconditioner_list.matrix_inverse_root) == original


def test_importing_the_package_changes_nothing_upstream() -> None:
    code = (
        "import distributed_shampoo.distributed_shampoo as m, distributed_shampoo_dash as d;"
        "from distributed_shampoo.preconditioner import shampoo_preconditioner_list as l, matrix_functions as f;"
        "assert m.RootInvShampooPreconditionerList is l.RootInvShampooPreconditionerList;"
        "assert l.matrix_inverse_root is f.matrix_inverse_root"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "config", [dash.NewtonDBRootInvConfig(num_iterations=7, precision="fp16"), dash.ChebyshevRootInvConfig(degree=20)]
)
def test_configs_pickle_round_trip(config: RootInvConfig) -> None:
    assert pickle.loads(pickle.dumps(config)) == config


@pytest.mark.parametrize(
    "make_config, match",
    [
        (lambda: dash.NewtonDBRootInvConfig(num_iterations=0), "num_iterations=0"),
        (lambda: dash.NewtonDBRootInvConfig(precision="fp8"), "'fp8'"),
        (lambda: dash.NewtonDBRootInvConfig(safety_factor=0.5), "safety_factor=0.5"),
        (lambda: dash.ChebyshevRootInvConfig(degree=0), "degree=0"),
        (lambda: dash.ChebyshevRootInvConfig(relative_epsilon=0.0), "relative_epsilon=0.0"),
    ],
)
def test_configs_reject_bad_values_by_name(make_config: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_config()
