"""DASH is chosen by the param group's config: its DASH form, ``batched``, the recommended solver
config, coexistence with upstream optimizers in one process and across threads."""

import dataclasses
import math
import subprocess
import sys
import threading

import pytest
import torch

pytestmark = pytest.mark.upstream
distributed_shampoo = pytest.importorskip("distributed_shampoo")

from distributed_shampoo import (
    AdamPreconditionerConfig,
    CoupledNewtonConfig,
    DistributedShampoo,
    EigenConfig,
    EigendecomposedKLShampooPreconditionerConfig,
    EigendecomposedShampooPreconditionerConfig,
    EigenvalueCorrectedShampooPreconditionerConfig,
    RootInvKLShampooPreconditionerConfig,
    RootInvShampooPreconditionerConfig,
)

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.integration.configs import step_products_in_tf32
from tests.integration.models import MixedShapeModel, make_batches, run_steps
from tests.integration.shampoo import preconditioner_list, shampoo_factory

BATCHED = "BatchedRootInvShampooPreconditionerList"
UPSTREAM = "RootInvShampooPreconditionerList"


def list_name(optimizer: DistributedShampoo, group: int = 0) -> str:
    return type(preconditioner_list(optimizer, group)).__name__


def seeded_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MixedShapeModel()


def train(
    model: torch.nn.Module, batched: bool, seed: int = 0
) -> tuple[torch.nn.Module, DistributedShampoo]:
    optimizer = shampoo_factory(EigenConfig(), batched=batched, epsilon=1e-6)(model)
    run_steps(model, optimizer, make_batches(3, seed=seed))
    return model, optimizer


def trained(batched: bool, seed: int = 0) -> tuple[torch.nn.Module, DistributedShampoo]:
    return train(seeded_model(seed), batched, seed)


def test_in_one_process_the_config_alone_chooses_the_list() -> None:
    _, dash_optimizer = trained(batched=True)
    _, upstream_optimizer = trained(batched=False)
    _, second_dash_optimizer = trained(batched=True)
    assert list_name(dash_optimizer) == list_name(second_dash_optimizer) == BATCHED
    assert list_name(upstream_optimizer) == UPSTREAM


def test_one_optimizer_may_mix_dash_and_upstream_param_groups() -> None:
    torch.manual_seed(0)
    model = MixedShapeModel()
    linear = [model.linear.weight, model.linear.bias]
    rest = [p for p in model.parameters() if all(p is not q for q in linear)]
    optimizer = DistributedShampoo(
        [
            {"params": linear, "preconditioner_config": dash.RootInvShampooPreconditionerConfig()},
            {"params": rest, "preconditioner_config": RootInvShampooPreconditionerConfig()},
        ],
        lr=0.01,
        epsilon=1e-6,
        max_preconditioner_dim=8,
        precondition_frequency=1,
        start_preconditioning_step=1,
        grafting_config=AdamPreconditionerConfig(beta2=0.95, epsilon=1e-8),
    )
    run_steps(model, optimizer, make_batches(2))
    assert (list_name(optimizer, 0), list_name(optimizer, 1)) == (BATCHED, UPSTREAM)


def test_four_threads_building_dash_and_upstream_optimizers_at_once_get_their_own_lists() -> None:
    """Two threads build and train with the DASH form and two with upstream's, concurrently; every
    optimizer has the list its config names and matches the same run made alone."""
    models = {index: seeded_model(index) for index in range(4)}  # torch's seed is global
    results: dict[int, tuple[str, list[torch.Tensor]]] = {}
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait()
            model, optimizer = train(models[index], batched=index % 2 == 0, seed=index)
            results[index] = (list_name(optimizer), [p.detach() for p in model.parameters()])
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for index, (name, parameters) in results.items():
        assert name == (BATCHED if index % 2 == 0 else UPSTREAM)
        alone, _ = trained(batched=index % 2 == 0, seed=index)
        for parameter, expected in zip(parameters, alone.parameters(), strict=True):
            assert torch.equal(parameter, expected)


def test_the_dash_forms_keep_every_upstream_field_and_add_dash_settings() -> None:
    for form in dash.BATCHED_FORMS:
        upstream_fields = {field.name for field in dataclasses.fields(form.upstream)}
        dash_fields = {field.name for field in dataclasses.fields(form.dash)}
        assert dash_fields == upstream_fields | {"max_stack_bytes", "tf32_step_products"}
        assert issubclass(form.dash, form.upstream) and form.dash.__name__ == form.upstream.__name__
        assert form.dash() == form.dash() and not dash.is_batched(form.upstream())


def test_batched_returns_the_dash_form_with_the_same_values_and_leaves_the_config_alone() -> None:
    config = RootInvShampooPreconditionerConfig(
        amortized_computation_config=dash.MinimaxRootInvConfig(rel_epsilon=1e-3),
        use_trace_scaling=True,
        inverse_exponent_override={2: 0.2},
    )
    form = dash.batched(config, max_stack_bytes=2**20)
    assert type(form) is dash.RootInvShampooPreconditionerConfig and dash.is_batched(form)
    for field in dataclasses.fields(config):
        assert getattr(form, field.name) == getattr(config, field.name), field.name
    assert form.max_stack_bytes == 2**20 and not dash.is_batched(config)
    assert dash.batched(form) == dataclasses.replace(form)  # a DASH form stays one
    kl = dash.batched(RootInvKLShampooPreconditionerConfig())
    assert type(kl) is dash.RootInvKLShampooPreconditionerConfig


@pytest.mark.parametrize(
    "config",
    [
        EigendecomposedShampooPreconditionerConfig(),
        EigenvalueCorrectedShampooPreconditionerConfig(),
        AdamPreconditionerConfig(),
        EigenConfig(),
    ],
    ids=lambda config: type(config).__name__,
)
def test_batched_names_a_config_class_dash_does_not_batch(config: object) -> None:
    name = type(config).__name__
    with pytest.raises(TypeError, match=rf"DASH does not batch .*\.{name}; it batches "):
        dash.batched(config)


@pytest.mark.parametrize(
    "value, error, match",
    [
        (0, ValueError, r"Invalid max_stack_bytes=0\. Must be an int >= 1"),
        (1.5, TypeError, r"Invalid max_stack_bytes=1\.5 of type float\. Must be an int"),
        (True, TypeError, r"Invalid max_stack_bytes=True of type bool"),
    ],
)
def test_a_bad_max_stack_bytes_is_refused_by_name(
    value: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        dash.RootInvShampooPreconditionerConfig(max_stack_bytes=value)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        dash.batched(RootInvShampooPreconditionerConfig(), max_stack_bytes=value)


@pytest.mark.parametrize("value", [1, "yes", 0.0])
def test_a_bad_tf32_step_products_is_refused_by_name(value: object) -> None:
    match = rf"Invalid tf32_step_products={value!r} of type .*\. Must be a bool or None"
    with pytest.raises(TypeError, match=match):
        dash.RootInvShampooPreconditionerConfig(tf32_step_products=value)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=match):
        dash.batched(RootInvShampooPreconditionerConfig(), tf32_step_products=value)


@pytest.mark.parametrize(
    ("solver", "setting", "expected"),
    [
        (EigenConfig(), None, False),
        (dash.MinimaxRootInvConfig(), None, False),
        (dash.default_root_inv_config("cuda"), None, True),
        (dash.MinimaxRootInvConfig(precision="bf16"), None, True),
        (dash.default_root_inv_config("cuda"), False, False),
        (EigenConfig(), True, True),
    ],
)
def test_step_products_follow_the_solver_onto_tensor_cores_unless_set(
    solver: object, setting: bool | None, expected: bool
) -> None:
    """``tf32_step_products=None`` (the default) runs the Gram and preconditioning products on
    TF32 where the amortized computation runs on tensor cores; a bool decides by itself. The
    batched list of an optimizer built with the config does what the config says."""
    config = dash.RootInvShampooPreconditionerConfig(
        amortized_computation_config=solver, tf32_step_products=setting
    )
    assert step_products_in_tf32(config) is expected
    optimizer = DistributedShampoo(
        seeded_model(0).parameters(), lr=0.01, preconditioner_config=config
    )
    assert preconditioner_list(optimizer, 0).tf32_step_products is expected


DASH_SOLVER_CONFIGS = (
    dash.MinimaxRootInvConfig(),
    dash.NewtonDBRootInvConfig(),
    dash.ChebyshevRootInvConfig(),
)


@pytest.mark.parametrize("solver", DASH_SOLVER_CONFIGS, ids=lambda config: type(config).__name__)
@pytest.mark.parametrize(
    "config_cls",
    [EigendecomposedShampooPreconditionerConfig, EigendecomposedKLShampooPreconditionerConfig],
    ids=lambda cls: cls.__name__,
)
def test_a_dash_solver_in_an_eigendecomposed_config_is_refused_when_the_optimizer_is_built(
    solver: object, config_cls: type
) -> None:
    """Upstream would accept it and fail at the first step with a bare assertion."""
    config = config_cls(amortized_computation_config=solver)
    match = (
        rf"Invalid amortized_computation_config={type(solver).__name__}\(\.\.\.\) for "
        rf"{config_cls.__name__}: .* needs an EigendecompositionConfig"
    )
    with pytest.raises(TypeError, match=match):
        DistributedShampoo(seeded_model(0).parameters(), lr=0.01, preconditioner_config=config)


@pytest.mark.parametrize("solver", DASH_SOLVER_CONFIGS, ids=lambda config: type(config).__name__)
def test_a_dash_solver_in_an_eigenvalue_corrected_config_is_refused_by_name(
    solver: object,
) -> None:
    """Upstream's own check reads ``rank_deficient_stability_config``, which says why it is
    missing (a bare ``AttributeError`` before)."""
    match = (
        rf"{type(solver).__name__} has no rank_deficient_stability_config: it is a DASH "
        "root-inverse config for RootInvShampooPreconditionerConfig"
    )
    with pytest.raises(AttributeError, match=match):
        EigenvalueCorrectedShampooPreconditionerConfig(amortized_computation_config=solver)


def test_upstream_configs_in_eigendecomposed_configs_are_left_to_upstream() -> None:
    """The refusal is DASH's solver configs' alone: upstream's eigendecomposition configs train,
    and its root-inverse configs there are built as upstream builds them."""
    for solver in (EigenConfig(), CoupledNewtonConfig()):
        config = EigendecomposedShampooPreconditionerConfig(amortized_computation_config=solver)
        DistributedShampoo(seeded_model(0).parameters(), lr=0.01, preconditioner_config=config)
    model = seeded_model(0)
    optimizer = DistributedShampoo(
        model.parameters(),
        lr=0.01,
        preconditioner_config=EigendecomposedShampooPreconditionerConfig(),
    )
    losses = run_steps(model, optimizer, make_batches(2))
    assert all(math.isfinite(loss) for loss in losses)


def test_upstream_checks_still_run_in_the_dash_form() -> None:
    with pytest.raises(ValueError, match="Invalid num_tolerated_failed_amortized_computations"):
        dash.RootInvShampooPreconditionerConfig(num_tolerated_failed_amortized_computations=-1)


def test_the_configured_max_stack_bytes_is_the_lists_budget() -> None:
    torch.manual_seed(0)
    model = MixedShapeModel()
    optimizer = shampoo_factory(EigenConfig(), batched=True, epsilon=1e-6, max_stack_bytes=12345)(
        model
    )
    assert preconditioner_list(optimizer).stack_budget((torch.zeros(10),)) == 12345


def test_dash_solver_configs_in_a_plain_upstream_config_run_per_block() -> None:
    torch.manual_seed(0)
    model = MixedShapeModel()
    optimizer = shampoo_factory(dash.MinimaxRootInvConfig(), batched=False, epsilon=1e-6)(model)
    losses = run_steps(model, optimizer, make_batches(6))
    assert list_name(optimizer) == UPSTREAM
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(bool(torch.isfinite(f.inverse_root).all()) for f in dash.inverse_factors(optimizer))


def test_default_root_inv_config_by_device() -> None:
    assert isinstance(dash.default_root_inv_config("cpu"), EigenConfig)
    tensor_cores = dash.MinimaxRootInvConfig(precision="tf32")
    assert dash.default_root_inv_config("cuda") == tensor_cores
    assert dash.default_root_inv_config(torch.device("cuda", 1)) == tensor_cores
    assert isinstance(dash.default_root_inv_config(torch.device("cpu")), EigenConfig)
    with pytest.raises(ValueError, match=r"Invalid device='gpu0'\. Must be a torch\.device"):
        dash.default_root_inv_config("gpu0")


INSTALL_CHECK = """
import distributed_shampoo.distributed_shampoo as optimizer_module
from distributed_shampoo.preconditioner import matrix_functions, shampoo_preconditioner_list
method = optimizer_module.DistributedShampoo._preconditioner_config_to_list_cls
binding = shampoo_preconditioner_list.matrix_inverse_root
import distributed_shampoo_dash
assert optimizer_module.DistributedShampoo._preconditioner_config_to_list_cls is method
assert binding is shampoo_preconditioner_list.matrix_inverse_root
assert binding is matrix_functions.matrix_inverse_root
from distributed_shampoo_dash import integration
installed = optimizer_module.DistributedShampoo._preconditioner_config_to_list_cls
integration.install()
integration.install()
assert optimizer_module.DistributedShampoo._preconditioner_config_to_list_cls is installed
assert installed.__wrapped__ is method
assert shampoo_preconditioner_list.matrix_inverse_root is integration.dash_matrix_inverse_root
print("ok")
"""


def test_importing_the_package_installs_once_and_only_what_dash_configs_need() -> None:
    """The top-level import touches nothing upstream; the adapter's import extends the list
    method once (a second ``install`` is a no-op)."""
    output = subprocess.run(
        [sys.executable, "-c", INSTALL_CHECK], check=True, capture_output=True, text=True
    ).stdout
    assert output.strip() == "ok"
