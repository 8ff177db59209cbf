"""The DASH and the upstream form of a config give the same optimizer for upstream's solvers; the
DASH solver configs behave."""

import dataclasses
import pickle
from collections.abc import Callable

import numpy as np
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
from distributed_shampoo_dash.solvers import IterationControl, SpectralScaling
from tests.integration.models import train
from tests.integration.shampoo import (
    kronecker_factors,
    max_parameter_difference,
    preconditioner_list,
    shampoo_factory,
)


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
    def factory(batched: bool) -> Callable[[torch.nn.Module], DistributedShampoo]:
        return shampoo_factory(solver, batched=batched, epsilon=epsilon, **preconditioner_kwargs)

    upstream_model, upstream_optimizer, _ = train(factory(False), num_steps=20, **train_kwargs)
    dash_model, dash_optimizer, _ = train(factory(True), num_steps=20, **train_kwargs)

    assert (
        type(preconditioner_list(dash_optimizer)).__name__
        == "BatchedRootInvShampooPreconditionerList"
    )
    assert max_parameter_difference(upstream_model, dash_model) < 5e-4
    # Inverse roots of rank-deficient factors amplify rounding in the near-null space by up to
    # epsilon^{-1/p}, so they are compared through the matrices they are the roots of.
    for (upstream_inverse, root), (dash_inverse, _) in zip(
        inverse_factors(upstream_optimizer), inverse_factors(dash_optimizer), strict=True
    ):
        assert (
            upstream_inverse.dtype == dash_inverse.dtype
            and upstream_inverse.shape == dash_inverse.shape
        )
        upstream_matrix, dash_matrix = (
            implied_matrix(upstream_inverse, root),
            implied_matrix(dash_inverse, root),
        )
        assert torch.linalg.norm(dash_matrix - upstream_matrix) <= 1e-3 * torch.linalg.norm(
            upstream_matrix
        )


def fp64_reference_root(matrix: torch.Tensor, root: float, epsilon: float) -> torch.Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix.double())
    return (eigenvectors * (eigenvalues + epsilon).pow(-1.0 / root)) @ eigenvectors.mT


@pytest.mark.cuda
@pytest.mark.parametrize(
    "solver, max_error",
    [
        (dash.MinimaxRootInvConfig(), 1e-3),
        (dash.MinimaxRootInvConfig(rel_epsilon=1e-6, first_step_precision="fp64"), 1e-3),
        (
            dash.NewtonDBRootInvConfig(
                iteration=IterationControl(num_iterations=30, tolerance=1e-6), max_residual=1e-3
            ),
            1e-3,
        ),
        (dash.ChebyshevRootInvConfig(degree=100, rel_epsilon=1e-2, max_residual=1e-3), 1e-3),
    ],
    ids=["newton_db", "newton_db_fp64_first_step", "newton_db_paper_converged", "chebyshev"],
)
def test_dash_configs_train_the_model_with_roots_of_the_promised_accuracy(
    solver: dash.MinimaxRootInvConfig | dash.ChebyshevRootInvConfig,
    max_error: float,
    device: torch.device,
) -> None:
    """Every inverse factor is within ``max_error`` of the fp64 root of its bias-corrected factor.

    A root the solver computed has residual <= ``max_residual``, which bounds its relative error
    by about ``max_residual sqrt(d) / p``; a rejected one was recomputed by eigh. Roots are those
    of ``A + r I``, ``r = max(rel_epsilon u, epsilon)`` (``u`` the config's spectral bound of
    ``A + epsilon I``).
    """
    epsilon = 1e-6
    model, optimizer, losses = train(
        shampoo_factory(solver, batched=True, epsilon=epsilon),
        num_steps=30,
        fixed_batch=True,
        device=device,
    )
    assert sum(losses[-5:]) < sum(losses[:5])
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())

    bias_correction2 = preconditioner_list(optimizer)._bias_correction2
    for factors in kronecker_factors(optimizer):
        for factor_matrix, inverse, root in zip(
            factors.factor_matrices, factors.inv_factor_matrices, factors.roots, strict=True
        ):
            matrix = bias_corrected_factor_stack(factors, [factor_matrix], bias_correction2)[0]
            inverse = factors._unpack_matrix(inverse)
            scaling: SpectralScaling = solver.scaling
            assert inverse.device == matrix.device and matrix.device.type == device.type
            shifted = matrix + epsilon * torch.eye(matrix.shape[0], device=device)
            ridge = max(
                solver.rel_epsilon * float(scaling.upper_bound(shifted.unsqueeze(0))[0]), epsilon
            )
            reference = fp64_reference_root(matrix, root, ridge)
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

    _, upstream_optimizer, _ = train(shampoo_factory(EigenConfig(), batched=False), num_steps=3)
    _, dash_optimizer, _ = train(shampoo_factory(EigenConfig(), batched=True), num_steps=3)
    assert layout(upstream_optimizer) == layout(dash_optimizer)


@pytest.mark.parametrize(
    "config",
    [
        dash.NewtonDBRootInvConfig(iteration=IterationControl(num_iterations=7), precision="fp16"),
        dash.ChebyshevRootInvConfig(degree=20),
    ],
)
def test_configs_pickle_round_trip(config: RootInvConfig) -> None:
    restored = pickle.loads(pickle.dumps(config))
    assert restored == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        restored.max_residual = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "make_config, match",
    [
        (lambda: dash.MinimaxRootInvConfig(precision="fp8"), "'fp8'"),
        (lambda: dash.MinimaxRootInvConfig(rel_epsilon=-1.0), r"Invalid rel_epsilon=-1\.0"),
        (lambda: dash.MinimaxRootInvConfig(max_residual=-1.0), r"Invalid max_residual=-1\.0"),
        (
            lambda: dash.ChebyshevRootInvConfig(degree=0),
            r"Invalid degree=0\. Must be an int in \[1, 1000\]",
        ),
        (lambda: dash.ChebyshevRootInvConfig(degree=10**9), r"Invalid degree=1000000000"),
        (lambda: dash.ChebyshevRootInvConfig(rel_epsilon=0.0), r"Invalid rel_epsilon=0\.0"),
        (lambda: dash.NewtonDBRootInvConfig(max_residual=-1.0), r"Invalid max_residual=-1\.0"),
        (
            lambda: dash.MinimaxRootInvConfig(first_step_precision="bf16"),
            r"Invalid first_step_precision=bf16\. Must be fp32 or fp64",
        ),
        (
            lambda: dash.MinimaxRootInvConfig(rel_epsilon=1e-9),
            r"Invalid rel_epsilon=1e-09\. Must be a finite number >= 1e-08",
        ),
    ],
)
def test_configs_reject_bad_values_by_name(make_config: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_config()


@pytest.mark.parametrize(
    "make_config, match",
    [
        (
            lambda: dash.ChebyshevRootInvConfig(degree="60"),
            r"Invalid degree='60' of type str\. Must be an int",
        ),
        (
            lambda: dash.MinimaxRootInvConfig(fallback_to_eigh=1),
            r"Invalid fallback_to_eigh=1 of type int",
        ),
        (
            lambda: dash.NewtonDBRootInvConfig(iteration=10),
            r"Invalid iteration=10 of type int\. Must be a IterationControl",
        ),
        (
            lambda: dash.MinimaxRootInvConfig(scaling="frobenius"),
            r"Invalid scaling='frobenius' of type str",
        ),
    ],
)
def test_configs_reject_values_of_the_wrong_type_by_name(
    make_config: Callable[[], object], match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        make_config()


def test_config_option_objects_report_their_own_field_names() -> None:
    with pytest.raises(ValueError, match=r"Invalid num_iterations=0\."):
        dash.MinimaxRootInvConfig(scaling=SpectralScaling(num_iterations=0))
    with pytest.raises(ValueError, match=r"Invalid num_vectors=0\."):
        dash.MinimaxRootInvConfig(scaling=SpectralScaling(num_vectors=0))


def test_configs_accept_numpy_scalars_and_store_python_values() -> None:
    config = dash.ChebyshevRootInvConfig(
        degree=np.int64(30),
        rel_epsilon=np.float32(0.01),
        max_residual=np.float64(0.5),
        fallback_to_eigh=np.bool_(False),
    )
    assert (config.degree, config.max_residual, config.fallback_to_eigh) == (30, 0.5, False)
    assert [
        type(value)
        for value in (
            config.degree,
            config.rel_epsilon,
            config.max_residual,
            config.fallback_to_eigh,
        )
    ] == [
        int,
        float,
        float,
        bool,
    ]


def test_configs_are_immutable_and_replace_makes_a_checked_copy() -> None:
    config = dash.MinimaxRootInvConfig()
    with pytest.raises(dataclasses.FrozenInstanceError, match=r"dataclasses\.replace"):
        config.max_residual = 1e-3  # type: ignore[misc]
    assert dataclasses.replace(config, max_residual=1e-3).max_residual == 1e-3
    with pytest.raises(ValueError, match=r"Invalid max_residual=-1\.0"):
        dataclasses.replace(config, max_residual=-1.0)
