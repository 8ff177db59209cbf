"""The framework-free trainer pieces: names to upstream configs, and checkpoint-safe param
groups.
"""

import logging

import pytest
import torch

pytestmark = pytest.mark.upstream
pytest.importorskip("distributed_shampoo")

from distributed_shampoo import (
    AdamPreconditionerConfig,
    DistributedShampoo,
    EigenConfig,
)
from distributed_shampoo.shampoo_types import DefaultSingleDeviceDistributedConfig, WeightDecayType
from torch.distributed._state_dict_utils import (
    _offload_state_dict_to_cpu,  # cpu_offload=True's pass
)

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.trainers.checkpoint import MARKER, register_checkpoint_hooks
from distributed_shampoo_dash.trainers.optimizer import (
    SOLVERS,
    build_shampoo,
    distributed_config_for,
    grafting_config,
    solver_config,
    solver_names,
)
from distributed_shampoo_dash.trainers.parameter_guard import ReplacedParametersError


def test_every_solver_name_gives_its_config() -> None:
    assert isinstance(solver_config("eigen"), EigenConfig)
    assert isinstance(solver_config("minimax"), dash.MinimaxRootInvConfig)
    assert isinstance(solver_config("chebyshev"), dash.ChebyshevRootInvConfig)
    assert set(SOLVERS) == {"eigen", "coupled-newton", "minimax", "newton-db", "chebyshev"}
    assert solver_config("newton-db") == dash.NewtonDBRootInvConfig()


def test_the_default_solver_is_the_one_dash_recommends_for_the_device() -> None:
    assert solver_names()[0] == "default"
    assert solver_config("default", "cuda") == dash.default_root_inv_config("cuda")
    assert isinstance(solver_config("default", torch.device("cpu")), EigenConfig)
    config = trained_shampoo(True, solver="default").param_groups[0]["preconditioner_config"]
    assert isinstance(config.amortized_computation_config, EigenConfig)  # CPU parameters


def test_unknown_names_are_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match="Unknown solver 'eig'.*'eigen'"):
        solver_config("eig")
    with pytest.raises(ValueError, match="Unknown grafting 'adamw'"):
        grafting_config("adamw", 0.95, 1e-8)


def test_grafting_names_carry_their_settings() -> None:
    assert grafting_config("adam", 0.9, 1e-6) == AdamPreconditionerConfig(beta2=0.9, epsilon=1e-6)
    assert grafting_config("none", 0.9, 1e-6) is None


def test_plain_tensors_get_the_single_device_config() -> None:
    assert distributed_config_for([torch.zeros(2, 2)]) is DefaultSingleDeviceDistributedConfig


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))


def trained_shampoo(use_dash: bool, solver: str = "eigen") -> DistributedShampoo:
    net = model()
    optimizer = build_shampoo(
        net.parameters(),
        use_dash=use_dash,
        precondition_frequency=1,
        solver=solver,
        epsilon=1e-8,
        max_preconditioner_dim=4,
    )
    for _ in range(2):
        optimizer.zero_grad()
        net(torch.randn(4, 6)).square().sum().backward()
        optimizer.step()
    return optimizer


def test_build_shampoo_turns_dash_on_or_off() -> None:
    from tests.integration.shampoo import preconditioner_list

    assert (
        type(preconditioner_list(trained_shampoo(True))).__name__
        == "BatchedRootInvShampooPreconditionerList"
    )
    assert (
        type(preconditioner_list(trained_shampoo(False))).__name__
        == "RootInvShampooPreconditionerList"
    )


def test_without_the_hooks_the_state_dict_fails_distributed_checkpointing_type_check() -> None:
    state_dict = trained_shampoo(True).state_dict()
    with pytest.raises(ValueError, match="Unexpected value type"):
        _offload_state_dict_to_cpu(state_dict)


def test_with_the_hooks_every_param_group_value_passes_the_type_check() -> None:
    state_dict = register_checkpoint_hooks(trained_shampoo(True)).state_dict()
    _offload_state_dict_to_cpu(state_dict)
    group = state_dict["param_groups"][0]
    assert group["weight_decay_type"].startswith(MARKER)
    assert "AdamPreconditionerConfig(" in group["grafting_config"]
    assert group["lr"] == 1e-3


def test_loading_restores_the_live_objects_and_the_state_bit_for_bit() -> None:
    source = register_checkpoint_hooks(trained_shampoo(True))
    target = register_checkpoint_hooks(
        build_shampoo(
            model().parameters(),
            precondition_frequency=1,
            solver="eigen",
            epsilon=1e-8,
            max_preconditioner_dim=4,
        )
    )
    live_configs = {k: v for k, v in target.param_groups[0].items() if k != "params"}
    target.load_state_dict(source.state_dict())
    group = target.param_groups[0]
    assert group["weight_decay_type"] is WeightDecayType.DECOUPLED
    for key, value in live_configs.items():
        if key in ("grafting_config", "preconditioner_config", "distributed_config"):
            assert (
                type(group[key]) is type(value) and group[key] == value
            )  # torch deep-copies groups
    loaded, saved = target.state_dict()["state"], source.state_dict()["state"]
    assert all(
        torch.equal(loaded[p][k], saved[p][k])
        for p in saved
        for k in saved[p]
        if torch.is_tensor(saved[p][k])
    )


def test_a_different_config_type_in_the_checkpoint_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = register_checkpoint_hooks(trained_shampoo(True))
    state_dict = source.state_dict()
    state_dict["param_groups"][0]["distributed_config"] = MARKER + "some.OtherConfig=OtherConfig()"
    with caplog.at_level(logging.WARNING):
        source.load_state_dict(state_dict)
    assert "some.OtherConfig" in caplog.text
    assert not isinstance(source.param_groups[0]["distributed_config"], str)


def test_registering_twice_adds_no_second_hook() -> None:
    optimizer = trained_shampoo(True)
    register_checkpoint_hooks(optimizer)
    count = len(optimizer._optimizer_state_dict_post_hooks)
    register_checkpoint_hooks(optimizer)
    assert len(optimizer._optimizer_state_dict_post_hooks) == count


def test_the_guard_lets_ordinary_steps_through() -> None:
    net = model()
    before = [p.detach().clone() for p in net.parameters()]
    optimizer = build_shampoo(
        net.parameters(), solver="eigen", epsilon=1e-8, precondition_frequency=1
    )
    for _ in range(2):
        optimizer.zero_grad()
        net(torch.randn(4, 6)).square().sum().backward()
        optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))


def test_the_guard_stops_a_step_after_the_parameters_were_swapped() -> None:
    net = model()
    optimizer = build_shampoo(net.parameters(), solver="eigen", epsilon=1e-8)
    optimizer.param_groups[0]["params"] = [
        p.detach().clone().requires_grad_() for p in net.parameters()
    ]
    with pytest.raises(
        ReplacedParametersError, match="Parameter 0 of param group 0 .* was replaced"
    ):
        optimizer.step()


def test_the_guard_stops_a_step_after_a_parameter_storage_moved() -> None:
    net = model()
    optimizer = build_shampoo(net.parameters(), solver="eigen", epsilon=1e-8)
    first = next(net.parameters())
    first.data = first.data.clone()
    with pytest.raises(ReplacedParametersError, match="had its storage replaced"):
        optimizer.step()
