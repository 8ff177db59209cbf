"""Checkpoints are upstream's: saved with the DASH form of the config they load into the upstream
form and the other way round."""

import io

import pytest
import torch

pytestmark = pytest.mark.upstream
distributed_shampoo = pytest.importorskip("distributed_shampoo")

from distributed_shampoo import DistributedShampoo, EigenConfig

import distributed_shampoo_dash as dash
from tests.integration.models import MixedShapeModel, make_batches, run_steps
from tests.integration.shampoo import shampoo_factory

CHECKPOINT_STEP, TOTAL_STEPS = 5, 10


def fresh(batched: bool) -> tuple[torch.nn.Module, DistributedShampoo]:
    torch.manual_seed(0)
    model = MixedShapeModel()
    optimizer = shampoo_factory(EigenConfig(), batched=batched, epsilon=1e-8)(model)
    assert dash.is_batched(optimizer.param_groups[0]["preconditioner_config"]) == batched
    return model, optimizer


def save(model: torch.nn.Module, optimizer: DistributedShampoo) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    return buffer.getvalue()


def resume(checkpoint: bytes, batched: bool) -> tuple[torch.nn.Module, DistributedShampoo]:
    model, optimizer = fresh(batched)
    state = torch.load(io.BytesIO(checkpoint), weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return model, optimizer


@pytest.mark.parametrize(
    "saved_with_dash", [True, False], ids=["saved_with_dash", "saved_without_dash"]
)
@pytest.mark.parametrize(
    "resumed_with_dash", [True, False], ids=["resumed_with_dash", "resumed_without_dash"]
)
def test_resuming_from_a_checkpoint_matches_not_stopping(
    saved_with_dash: bool, resumed_with_dash: bool
) -> None:
    batches = make_batches(TOTAL_STEPS)
    model, optimizer = fresh(saved_with_dash)
    run_steps(model, optimizer, batches[:CHECKPOINT_STEP])
    checkpoint = save(model, optimizer)

    resumed_model, resumed_optimizer = resume(checkpoint, resumed_with_dash)
    run_steps(
        resumed_model, resumed_optimizer, batches[CHECKPOINT_STEP:], first_step=CHECKPOINT_STEP
    )

    uninterrupted_model, uninterrupted_optimizer = fresh(resumed_with_dash)
    run_steps(uninterrupted_model, uninterrupted_optimizer, batches)

    exact = saved_with_dash == resumed_with_dash
    for resumed, uninterrupted in zip(
        resumed_model.parameters(), uninterrupted_model.parameters(), strict=True
    ):
        if exact:
            assert torch.equal(resumed, uninterrupted)
        else:
            torch.testing.assert_close(resumed, uninterrupted, rtol=1e-4, atol=5e-4)

    resumed_state, uninterrupted_state = (
        resumed_optimizer.state_dict(),
        uninterrupted_optimizer.state_dict(),
    )
    assert resumed_state["state"].keys() == uninterrupted_state["state"].keys()
    for key, param_state in uninterrupted_state["state"].items():
        assert param_state.keys() == resumed_state["state"][key].keys()
