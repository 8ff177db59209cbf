"""Failure handling: upstream's per-block error semantics hold with DASH, and DASH configs fall back
per block.
"""

import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch

pytestmark = pytest.mark.upstream
distributed_shampoo = pytest.importorskip("distributed_shampoo")

from distributed_shampoo import DistributedShampoo, EigenConfig
from distributed_shampoo.shampoo_types import PreconditionerValueError

import distributed_shampoo_dash as dash
from distributed_shampoo_dash.integration.preconditioner_list import (
    bias_corrected_factor_stack,
)
from distributed_shampoo_dash.solvers import (
    SOLVERS,
    InverseRootResult,
    IterationControl,
    eigh_inverse_root,
)
from tests.integration.models import MixedShapeModel, make_batches, run_steps
from tests.integration.shampoo import kronecker_factors, preconditioner_list, shampoo_factory

EPSILON = 1e-6
#: Converging Newton-DB configs that accept any finite root, so only injected failures are
#: rejected, and the registry's solver of each (the one the tests corrupt).
NEWTON_DB_CONFIGS = {
    "minimax": (dash.MinimaxRootInvConfig(max_residual=None), "minimax"),
    "paper": (
        dash.NewtonDBRootInvConfig(
            iteration=IterationControl(num_iterations=30, tolerance=1e-6), max_residual=None
        ),
        "newton_db",
    ),
}
NEWTON_DB = pytest.mark.parametrize("variant", sorted(NEWTON_DB_CONFIGS))
#: Factor dimension whose Newton-DB roots the tests corrupt (the linear layer's 5-column blocks).
CORRUPTED_DIM = 5


def fresh_model_and_optimizer(
    make_optimizer: Callable[[torch.nn.Module], DistributedShampoo],
) -> tuple[torch.nn.Module, DistributedShampoo]:
    torch.manual_seed(0)
    model = MixedShapeModel()
    return model, make_optimizer(model)


def failure_counters(optimizer: DistributedShampoo) -> list[int]:
    return [
        factors._failed_amortized_computation_counter for factors in kronecker_factors(optimizer)
    ]


def run_failure_sequence(
    failing_steps: set[int], num_steps: int, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> list[object]:
    """Steps with every ``eigh`` failing at ``failing_steps``; records outcome and counters per
    step.
    """
    original_eigh = torch.linalg.eigh
    current_step = 0

    def scheduled_eigh(*args: object, **kwargs: object) -> object:
        if current_step in failing_steps:
            raise torch.linalg.LinAlgError("injected eigh failure")
        return original_eigh(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", scheduled_eigh)
    model, optimizer = fresh_model_and_optimizer(
        shampoo_factory(EigenConfig(), batched=batched, epsilon=EPSILON)
    )
    record: list[object] = []
    for current_step, batch in enumerate(make_batches(num_steps)):
        try:
            run_steps(model, optimizer, [batch])
        except ValueError as error:
            record.append(("raised", type(error).__name__, str(error).split(". ")[0]))
            break
        record.append(
            ("ok", failure_counters(optimizer), [p.detach().clone() for p in model.parameters()])
        )
    monkeypatch.setattr(torch.linalg, "eigh", original_eigh)
    return record


def test_failure_tolerance_sequence_is_upstreams(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three failed root computations are tolerated, a success resets the count, the fourth
    raises.
    """
    failing_steps = {2, 3, 4, 6, 7, 8, 9}
    upstream = run_failure_sequence(failing_steps, 12, monkeypatch, batched=False)
    with_dash = run_failure_sequence(failing_steps, 12, monkeypatch, batched=True)

    assert len(upstream) == len(with_dash) == 10
    assert upstream[-1] == with_dash[-1]
    assert upstream[-1][:2] == ("raised", "ValueError")
    assert "exceeded the allowed tolerance" in upstream[-1][2]
    for (_, upstream_counters, upstream_params), (_, dash_counters, dash_params) in zip(
        upstream[:-1], with_dash[:-1], strict=True
    ):
        assert upstream_counters == dash_counters
        for upstream_param, dash_param in zip(upstream_params, dash_params, strict=True):
            torch.testing.assert_close(dash_param, upstream_param, rtol=1e-4, atol=5e-4)
    assert max(with_dash[4][1]) == 3 and max(with_dash[5][1]) == 0


def test_non_finite_factor_raises_upstreams_error() -> None:
    def run(batched: bool) -> None:
        model, optimizer = fresh_model_and_optimizer(
            shampoo_factory(EigenConfig(), batched=batched, epsilon=EPSILON)
        )
        run_steps(model, optimizer, make_batches(1))
        images, tokens, targets = make_batches(1)[0]
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(images, tokens), targets).backward()
        model.linear.weight.grad[0, 0] = float("inf")
        optimizer.step()

    with pytest.raises(
        PreconditionerValueError, match="Encountered nan/inf values in factor matrix"
    ) as upstream:
        run(batched=False)
    with pytest.raises(
        PreconditionerValueError, match="Encountered nan/inf values in factor matrix"
    ) as with_dash:
        run(batched=True)
    assert str(with_dash.value).split("!")[0] == str(upstream.value).split("!")[0]


@dataclass
class Corruption:
    """Non-finite roots from the registry's solver for every ``(dim, dim)`` factor while
    ``active``; ``calls`` counts the corrupted calls."""

    dim: int
    active: bool = False
    calls: int = 0


def corrupt_roots_of_dim(dim: int, solver: str, monkeypatch: pytest.MonkeyPatch) -> Corruption:
    """Installs a :class:`Corruption` (inactive) of the registry's ``solver``; an optimizer binds
    its solvers at its first root computation, so install it before that."""
    original = SOLVERS[solver].run
    corruption = Corruption(dim)

    def corrupting(A: torch.Tensor, *args: object, **kwargs: object) -> InverseRootResult:
        result = original(A, *args, **kwargs)
        if not corruption.active or A.shape[-1] != dim:
            return result
        corruption.calls += 1
        nan = torch.full_like(result.inverse_root, float("nan"))
        return result._replace(inverse_root=nan, is_finite=torch.zeros_like(result.is_finite))

    monkeypatch.setitem(SOLVERS, solver, dataclasses.replace(SOLVERS[solver], run=corrupting))
    return corruption


def factor_matrices_and_inverses(
    optimizer: DistributedShampoo,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, float]]:
    """``(block index, bias-corrected factor, unpacked inverse factor, root)`` for every factor."""
    bias_correction2 = preconditioner_list(optimizer)._bias_correction2
    for block_index, factors in enumerate(kronecker_factors(optimizer)):
        for factor_matrix, inverse, root in zip(
            factors.factor_matrices, factors.inv_factor_matrices, factors.roots, strict=True
        ):
            matrix = bias_corrected_factor_stack(factors, [factor_matrix], bias_correction2)[0]
            yield block_index, matrix, factors._unpack_matrix(inverse), root


def twin_runs(
    config: dash.MinimaxRootInvConfig,
    solver: str,
    monkeypatch: pytest.MonkeyPatch,
    clean_steps: int,
    corrupted_steps: int,
) -> tuple[DistributedShampoo, DistributedShampoo, torch.nn.Module, list[torch.Tensor]]:
    """Two identical runs, the second with corrupted roots for its last ``corrupted_steps`` steps.

    Returns the optimizer that was never corrupted (after ``clean_steps + corrupted_steps``
    steps), the corrupted run's optimizer and model, and its unpacked inverse factors as they
    were before the corruption.
    """
    batches = make_batches(clean_steps + corrupted_steps)
    factory = shampoo_factory(config, batched=True, epsilon=EPSILON)
    clean_model, clean_optimizer = fresh_model_and_optimizer(factory)
    run_steps(clean_model, clean_optimizer, batches)
    corruption = corrupt_roots_of_dim(CORRUPTED_DIM, solver, monkeypatch)
    model, optimizer = fresh_model_and_optimizer(factory)
    run_steps(model, optimizer, batches[:clean_steps])
    before = [inverse.clone() for _, _, inverse, _ in factor_matrices_and_inverses(optimizer)]
    corruption.active = True
    run_steps(model, optimizer, batches[clean_steps:])
    return clean_optimizer, optimizer, model, before


@NEWTON_DB
def test_rejected_roots_fall_back_to_eigh_for_those_blocks_alone(
    variant: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config, solver = NEWTON_DB_CONFIGS[variant]
    with caplog.at_level(logging.WARNING):
        clean, optimizer, model, _ = twin_runs(
            config, solver, monkeypatch, clean_steps=2, corrupted_steps=1
        )

    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert "recomputing by eigh" in caplog.text
    corrupted = 0
    for (_, matrix, inverse, root), (_, _, clean_inverse, _) in zip(
        factor_matrices_and_inverses(optimizer), factor_matrices_and_inverses(clean), strict=True
    ):
        if matrix.shape[-1] == CORRUPTED_DIM:
            corrupted += 1
            expected = eigh_inverse_root(matrix, root, epsilon=EPSILON).inverse_root[0]
            torch.testing.assert_close(inverse, expected, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(inverse, clean_inverse)
    assert corrupted > 0
    assert dash.fallback_counts(optimizer)["eigh"] == corrupted
    assert failure_counters(optimizer) == [0] * len(failure_counters(optimizer))


@NEWTON_DB
def test_rejected_roots_without_fallback_keep_the_previous_inverse_and_count_failures(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, solver = NEWTON_DB_CONFIGS[variant]
    config = dataclasses.replace(config, fallback_to_eigh=False)
    clean, optimizer, model, before = twin_runs(
        config, solver, monkeypatch, clean_steps=2, corrupted_steps=1
    )

    affected_blocks = set()
    for (block_index, matrix, inverse, _), (_, _, clean_inverse, _), old in zip(
        factor_matrices_and_inverses(optimizer),
        factor_matrices_and_inverses(clean),
        before,
        strict=True,
    ):
        if matrix.shape[-1] == CORRUPTED_DIM:
            affected_blocks.add(block_index)
            assert torch.equal(inverse, old)
        else:
            assert torch.equal(inverse, clean_inverse)
    assert 0 < len(affected_blocks) < len(failure_counters(optimizer))
    assert failure_counters(optimizer) == [
        int(block_index in affected_blocks)
        for block_index in range(len(failure_counters(optimizer)))
    ]
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())

    batches = make_batches(3, seed=1)
    run_steps(model, optimizer, batches[:2])
    assert max(failure_counters(optimizer)) == 3
    with pytest.raises(ValueError, match="exceeded the allowed tolerance"):
        run_steps(model, optimizer, batches[2:])
