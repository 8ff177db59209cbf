"""The whole step on stacks: same optimizer as upstream, constant host syncs, no stale state,
PT2.
"""

import copy
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytestmark = pytest.mark.upstream
distributed_shampoo = pytest.importorskip("distributed_shampoo")

import torch.distributed.checkpoint as dcp
from distributed_shampoo import (
    AdamPreconditionerConfig,
    DistributedShampoo,
    EigenConfig,
    ShampooPT2CompileConfig,
)
from distributed_shampoo.preconditioner.matrix_functions_types import RootInvConfig

import distributed_shampoo_dash as dash
from distributed_shampoo_dash import step_costs
from distributed_shampoo_dash.integration import preconditioner_list as preconditioner_list_module
from distributed_shampoo_dash.solvers.tf32 import EmulatedTF32
from tests.integration.models import MixedShapeModel, make_batches, run_steps, train
from tests.integration.shampoo import (
    kronecker_factors,
    max_parameter_difference,
    root_inv_config,
    shampoo,
    shampoo_factory,
)


def masked_every_fourth_step(step: int) -> set[str]:
    return {"linear.weight", "mixing", "norm.weight"} if step % 4 == 2 else set()


#: Shampoo's epsilon in the comparisons with upstream, per device type. On CUDA, a batched eigh of
#: small blocks (Jacobi) and upstream's per-block one (divide and conquer) round the near-null
#: eigenvalues of rank-deficient factors differently, and at epsilon 1e-8 training amplifies that
#: difference chaotically; 1e-6 keeps the comparison about DASH, not rounding.
COMPARISON_EPSILON = {"cpu": 1e-8, "cuda": 1e-6}


@pytest.mark.cuda
@pytest.mark.parametrize("use_symmetric_packing", [True, False], ids=["packed", "unpacked"])
@pytest.mark.parametrize(
    "precondition_frequency", [1, 10], ids=["roots_every_step", "roots_every_10"]
)
def test_dash_step_matches_upstream_over_50_steps_with_masked_blocks(
    use_symmetric_packing: bool, precondition_frequency: int, device: torch.device
) -> None:
    def factory(model: torch.nn.Module, batched: bool) -> DistributedShampoo:
        return DistributedShampoo(
            model.parameters(),
            lr=0.01,
            betas=(0.9, 0.95),
            epsilon=COMPARISON_EPSILON[device.type],
            max_preconditioner_dim=8,
            precondition_frequency=precondition_frequency,
            start_preconditioning_step=1 if precondition_frequency == 1 else 10,
            grafting_config=AdamPreconditionerConfig(beta2=0.95, epsilon=1e-8),
            preconditioner_config=root_inv_config(
                batched,
                amortized_computation_config=EigenConfig(),
                use_symmetric_packing=use_symmetric_packing,
            ),
        )

    upstream_model, upstream_optimizer, _ = train(
        partial(factory, batched=False), 50, skip_gradients=masked_every_fourth_step, device=device
    )
    dash_model, dash_optimizer, _ = train(
        partial(factory, batched=True), 50, skip_gradients=masked_every_fourth_step, device=device
    )

    orders = {len(factors.factor_matrices) for factors in kronecker_factors(dash_optimizer)}
    assert {1, 2, 3} <= orders
    assert max_parameter_difference(upstream_model, dash_model) < 5e-4
    for upstream_factors, dash_factors in zip(
        kronecker_factors(upstream_optimizer), kronecker_factors(dash_optimizer), strict=True
    ):
        for upstream_factor, dash_factor in zip(
            upstream_factors.factor_matrices, dash_factors.factor_matrices, strict=True
        ):
            assert upstream_factor.shape == dash_factor.shape
            difference = torch.linalg.norm(dash_factor - upstream_factor)
            assert difference <= 1e-3 * torch.linalg.norm(upstream_factor) + 1e-8


class SyncCounter(TorchDispatchMode):
    """Counts device-to-host reads (``aten._local_scalar_dense``) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def syncs_per_step(max_preconditioner_dim: int, batched: bool) -> tuple[int, int]:
    """(blocks, host syncs of one step with a root computation) for the mixed-shape model."""
    return syncs_of_a_root_step(max_preconditioner_dim, batched)[:2]


def syncs_of_a_root_step(
    max_preconditioner_dim: int, batched: bool, max_stack_bytes: int | None = None
) -> tuple[int, int, torch.nn.Module]:
    """(blocks, host syncs of one step with a root computation, model) for the mixed-shape model;
    ``max_stack_bytes`` is the DASH form's setting (``batched`` only)."""
    settings = {"max_stack_bytes": max_stack_bytes} if batched else {}
    torch.manual_seed(0)
    model = MixedShapeModel()
    optimizer = DistributedShampoo(
        model.parameters(),
        lr=0.01,
        betas=(0.9, 0.95),
        epsilon=1e-8,
        max_preconditioner_dim=max_preconditioner_dim,
        precondition_frequency=1,
        start_preconditioning_step=1,
        grafting_config=AdamPreconditionerConfig(beta2=0.95, epsilon=1e-8),
        preconditioner_config=root_inv_config(
            batched, amortized_computation_config=EigenConfig(), **settings
        ),
    )
    batches = make_batches(2)
    run_steps(model, optimizer, batches[:1])
    with SyncCounter() as counter:
        run_steps(model, optimizer, batches[1:])
    return len(list(kronecker_factors(optimizer))), counter.count, model


def test_host_syncs_per_step_do_not_grow_with_the_number_of_blocks() -> None:
    (few_blocks, upstream_few) = syncs_per_step(8, batched=False)
    (many_blocks, upstream_many) = syncs_per_step(3, batched=False)
    (_, dash_few), (_, dash_many) = syncs_per_step(8, batched=True), syncs_per_step(3, batched=True)

    assert many_blocks > 2 * few_blocks
    assert upstream_many > upstream_few  # upstream reads flags once per factor
    assert dash_few == dash_many  # once per param group (plus the step's own constant reads)
    assert dash_many < upstream_many


@contextmanager
def counting_host_syncs(device: torch.device) -> Iterator[Callable[[], int]]:
    """Yields a function returning the host synchronisations so far.

    CUDA: the warnings of ``torch.cuda.set_sync_debug_mode("warn")``, one per synchronising call.
    CPU: ``distributed_shampoo_dash.step_costs.SyncCounter``, every host read of a tensor value and
    every op that synchronises on a GPU (it also counts reads of tensors a GPU run keeps on the
    host, such as upstream's step counter, in every step alike).
    """
    if device.type == "cuda":
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield lambda: sum("synchroniz" in str(warning.message) for warning in caught)
            finally:
                torch.cuda.set_sync_debug_mode(previous)
    else:
        with step_costs.SyncCounter() as counter:
            yield lambda: counter.count


def two_group_factory(
    solver: RootInvConfig, batched: bool
) -> Callable[[torch.nn.Module], DistributedShampoo]:
    """Two param groups (the linear layers; everything else), roots every second step."""

    def factory(model: torch.nn.Module) -> DistributedShampoo:
        linear = [model.linear.weight, model.linear.bias, model.head.weight]
        rest = [p for p in model.parameters() if all(p is not q for q in linear)]
        return shampoo(
            [{"params": linear}, {"params": rest}],
            solver,
            batched=batched,
            epsilon=1e-6,
            precondition_frequency=2,
            start_preconditioning_step=2,
        )

    return factory


def syncs_without_and_with_roots(
    batched: bool, solver: RootInvConfig, device: torch.device
) -> tuple[int, int]:
    """Host synchronisations of a step without root computation (step 5) and of one with (step 6),
    after four steps of warm-up."""
    model, optimizer, _ = train(two_group_factory(solver, batched), 4, device=device)
    counts = []
    for batch in make_batches(2, seed=1):
        with counting_host_syncs(device) as syncs:
            run_steps(model, optimizer, [batch])
            counts.append(syncs())
    assert not dash.fallback_counts(optimizer)
    return counts[0], counts[1]


@pytest.mark.cuda
def test_a_dash_step_synchronises_once_per_param_group_and_root_computation(
    device: torch.device,
) -> None:
    """The documented constant: a DASH step with root computation (matmul-only solver) reads the
    device once per param group more than a step without, and a step without adds nothing to
    upstream's own step (the loss read of the training loop is in both)."""
    upstream_without, _ = syncs_without_and_with_roots(False, EigenConfig(), device)
    without_roots, with_roots = syncs_without_and_with_roots(
        True, dash.MinimaxRootInvConfig(), device
    )
    assert with_roots - without_roots == 2  # two param groups
    assert without_roots == upstream_without


def test_chunks_of_one_block_give_the_same_step_with_the_same_host_syncs() -> None:
    """A budget of one byte for every batched operation: each chunk holds a single block."""
    _, chunked_syncs, chunked_model = syncs_of_a_root_step(3, batched=True, max_stack_bytes=1)
    _, syncs, model = syncs_of_a_root_step(3, batched=True)
    assert chunked_syncs == syncs
    assert max_parameter_difference(chunked_model, model) < 1e-6


def trained_batched_list() -> "dash.integration.BatchedRootInvShampooPreconditionerList":
    """The batched preconditioner list of an optimizer trained for one step."""
    _, optimizer, _ = train(shampoo_factory(EigenConfig(), batched=True), num_steps=1)
    preconditioner_list = dash.preconditioner_lists(optimizer)[0]
    assert isinstance(preconditioner_list, dash.integration.BatchedRootInvShampooPreconditionerList)
    return preconditioner_list


def test_automatic_stack_budget_is_half_the_gradient_bytes_and_at_least_4_mib() -> None:
    preconditioner_list = trained_batched_list()
    small = (torch.zeros(100),)
    large = (torch.zeros(2**22), torch.zeros(2**21, dtype=torch.float64))
    assert preconditioner_list.stack_budget(small) == 4 * 2**20
    assert preconditioner_list.stack_budget(large) == (2**22 * 4 + 2**21 * 8) // 2


@pytest.mark.cuda
def test_on_a_cuda_device_the_automatic_budget_is_at_least_1_32_of_its_memory(
    device: torch.device,
) -> None:
    preconditioner_list = trained_batched_list()
    gradients = (torch.zeros(2**22, device=device),)
    expected = 2**23
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory
        expected = max(expected, memory // 32)
    assert preconditioner_list.stack_budget(gradients) == expected


def test_the_device_budget_is_used_where_it_exceeds_the_gradient_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    preconditioner_list = trained_batched_list()
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda device: types.SimpleNamespace(total_memory=80 * 2**30),
    )
    assert preconditioner_list_module.cuda_memory_bytes(torch.device("cuda", 0)) == 80 * 2**30
    assert preconditioner_list_module.cuda_memory_bytes(torch.device("cpu")) is None
    monkeypatch.setattr(preconditioner_list_module, "cuda_memory_bytes", lambda device: 80 * 2**30)
    assert preconditioner_list.stack_budget((torch.zeros(100),)) == 80 * 2**30 // 32
    huge = (torch.zeros(2**29, dtype=torch.float16).expand(12, 2**29),)
    assert preconditioner_list.stack_budget(huge) == 12 * 2**29


@pytest.mark.parametrize("tf32_step_products", [False, True])
def test_tf32_step_products_put_the_gram_and_preconditioning_products_on_tf32(
    tf32_step_products: bool,
) -> None:
    """Under the TF32 emulation a step rounds the factor update's and the preconditioning's
    products when the setting is on, and no product when it is off (torch's switch at its
    default); either way the step leaves torch's switch as it was."""
    factory = shampoo_factory(EigenConfig(), batched=True, tf32_step_products=tf32_step_products)
    model, optimizer, _ = train(factory, num_steps=2)
    images, tokens, targets = make_batches(1, seed=1)[0]
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(images, tokens), targets).backward()
    switch = torch.backends.cuda.matmul.fp32_precision
    with EmulatedTF32() as emulation:
        optimizer.step()
    assert torch.backends.cuda.matmul.fp32_precision == switch
    assert (emulation.products > 0) == tf32_step_products, emulation.products


def test_loading_into_a_running_optimizer_leaves_no_stale_state(
    tmp_path: torch.types.FileLike,
) -> None:
    """``load_state_dict`` and a bare ``dcp.load`` into a running optimizer, then steps: as
    fresh.
    """
    factory = shampoo_factory(EigenConfig(), batched=True)
    batches = make_batches(12)

    source_model, source_optimizer, _ = train(factory, 4)
    checkpoint_model = copy.deepcopy(source_model.state_dict())
    checkpoint_optimizer = copy.deepcopy(source_optimizer.state_dict())
    dcp.save({"optimizer": source_optimizer.state_dict()}, checkpoint_id=tmp_path)

    def from_checkpoint(load: str) -> torch.nn.Module:
        model, optimizer, _ = train(factory, 6, seed=1)  # a running optimizer with other state
        model.load_state_dict(checkpoint_model)
        if load == "load_state_dict":
            optimizer.load_state_dict(copy.deepcopy(checkpoint_optimizer))
        elif load == "dcp":
            dcp.load({"optimizer": optimizer.state_dict()}, checkpoint_id=tmp_path)
        else:
            model, optimizer = MixedShapeModel(), None
            model.load_state_dict(checkpoint_model)
            optimizer = factory(model)
            optimizer.load_state_dict(copy.deepcopy(checkpoint_optimizer))
        run_steps(model, optimizer, batches[4:])
        return model

    fresh = from_checkpoint("fresh")
    for load in ("load_state_dict", "dcp"):
        for loaded, expected in zip(
            from_checkpoint(load).parameters(), fresh.parameters(), strict=True
        ):
            assert torch.equal(loaded, expected), load


def test_pt2_compiled_step_works_with_dash() -> None:
    compiled = shampoo_factory(
        EigenConfig(),
        batched=True,
        optimizer_kwargs={"shampoo_pt2_compile_config": ShampooPT2CompileConfig()},
    )
    eager_model, _, _ = train(shampoo_factory(EigenConfig(), batched=True), 4)
    compiled_model, _, losses = train(compiled, 4)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert max_parameter_difference(eager_model, compiled_model) < 1e-4
