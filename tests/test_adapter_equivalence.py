"""DASH on and off give the same optimizer for upstream's solvers; the switch and configs behave."""

import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
import torch

pytestmark = pytest.mark.upstream
distributed_shampoo = pytest.importorskip("distributed_shampoo")

import distributed_shampoo_dash as dash  # noqa: E402
from distributed_shampoo import (  # noqa: E402
    AdamPreconditionerConfig,
    CoupledNewtonConfig,
    DistributedShampoo,
    EigenConfig,
    RootInvShampooPreconditionerConfig,
)
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig  # noqa: E402

from tests.integration.models import train  # noqa: E402


@pytest.fixture(autouse=True)
def dash_disabled_afterwards() -> Iterator[None]:
    yield
    dash.disable()


def shampoo_factory(
    solver: RootInvConfig, epsilon: float = 1e-8, **preconditioner_kwargs: object
) -> Callable[[torch.nn.Module], DistributedShampoo]:
    return lambda model: DistributedShampoo(
        model.parameters(),
        lr=0.01,
        betas=(0.9, 0.95),
        epsilon=epsilon,
        max_preconditioner_dim=8,
        precondition_frequency=1,
        start_preconditioning_step=1,
        grafting_config=AdamPreconditionerConfig(beta2=0.95, epsilon=1e-8),
        preconditioner_config=RootInvShampooPreconditionerConfig(
            amortized_computation_config=solver, **preconditioner_kwargs
        ),
    )


def max_parameter_difference(first: torch.nn.Module, second: torch.nn.Module) -> float:
    return max(float((a - b).detach().abs().max()) for a, b in zip(first.parameters(), second.parameters(), strict=True))


@pytest.mark.parametrize(
    "solver, epsilon",
    [(EigenConfig(), 1e-8), (CoupledNewtonConfig(), 1e-3)],
    ids=["eigen", "coupled_newton"],
)
@pytest.mark.parametrize(
    "preconditioner_kwargs",
    [{}, {"use_symmetric_packing": False}, {"use_trace_scaling": True}, {"inverse_exponent_override": {2: 0.2}}],
    ids=["packed", "unpacked", "trace_scaling", "override"],
)
def test_dash_matches_upstream_parameters_after_20_steps(
    solver: RootInvConfig, epsilon: float, preconditioner_kwargs: dict[str, object]
) -> None:
    dash.disable()
    upstream_model, _, _ = train(shampoo_factory(solver, epsilon, **preconditioner_kwargs), num_steps=20)
    dash.enable()
    dash_model, dash_optimizer, _ = train(shampoo_factory(solver, epsilon, **preconditioner_kwargs), num_steps=20)
    assert type(dash_optimizer._per_group_state_lists[0]["shampoo_preconditioner_list"]).__name__ == (
        "BatchedRootInvShampooPreconditionerList"
    )
    assert max_parameter_difference(upstream_model, dash_model) < 5e-4


@pytest.mark.parametrize("solver", [dash.NewtonDBRootInvConfig(), dash.ChebyshevRootInvConfig()], ids=["newton_db", "chebyshev"])
def test_dash_configs_train_the_model(solver: RootInvConfig) -> None:
    dash.enable()
    model, _, losses = train(shampoo_factory(solver), num_steps=30, fixed_batch=True)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


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
