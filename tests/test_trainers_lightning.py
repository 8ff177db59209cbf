"""Lightning ModelParallelStrategy + DistributedShampoo + DASH on 2 gloo ranks: save and resume.

``tests/integration/lightning_job.py`` runs under torchrun: a tiny MLP sharded with
``fully_shard``, ``configure_shampoo`` (roots every step), 4 steps, a sharded checkpoint every 2.

* *uninterrupted*: steps 1-4;
* *resumed*: ``fit(ckpt_path=<step-2 checkpoint of the uninterrupted run>)``, steps 3-4;
* *control*: the same resume, with the optimizer put back to its initial state after Lightning
  restored the checkpoint (its state "not restored").

The step-4 checkpoints (model and every rank's Shampoo state) of the first two must be
bit-identical and the control's must differ. Two more runs pin the reported crash (saving without
the hooks) and the guard against full checkpoints.
"""

import importlib.util
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.integration.launch import run_two_ranks
from tests.integration.trainer_checks import differences, load_dcp_checkpoint, max_abs_difference

pytestmark = [
    pytest.mark.upstream,
    pytest.mark.distributed,
    pytest.mark.skipif(
        importlib.util.find_spec("lightning") is None,
        reason="needs lightning (pip install 'distributed-shampoo-dash[lightning]')",
    ),
]

BATCHED_LIST = "BatchedRootInvShampooPreconditionerList"


def run_job(work: Path, name: str, *extra_args: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node=2`` of the Lightning job; checkpoints in ``work/name``."""
    return run_two_ranks(
        "tests.integration.lightning_job",
        "--checkpoint-dir",
        str(work / name),
        "--report-dir",
        str(work / f"report_{name}"),
        *extra_args,
    )


def step_checkpoint(work: Path, name: str, step: int) -> Path:
    return work / name / f"step={step}.ckpt"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("lightning")
    step_2 = str(step_checkpoint(work, "uninterrupted", 2))
    jobs = {
        "uninterrupted": (),
        "resumed": ("--resume-from", step_2),
        "control": ("--resume-from", step_2, "--reset-optimizer"),
    }
    results: dict[str, Any] = {"work": work}
    for name, extra_args in jobs.items():
        result = run_job(work, name, *extra_args)
        assert result.returncode == 0, result.stderr[-6000:]
        results[name] = load_dcp_checkpoint(step_checkpoint(work, name, 4), work)
        results[f"{name}_meta"] = torch.load(
            step_checkpoint(work, name, 4) / "meta.pt", weights_only=False
        )
    return results


def test_every_rank_uses_dashs_batched_list(runs: dict[str, Any]) -> None:
    for name in ("uninterrupted", "resumed", "control"):
        for rank in (0, 1):
            assert (
                runs["work"] / f"report_{name}" / f"rank{rank}_list.txt"
            ).read_text() == BATCHED_LIST


def test_sharded_checkpoint_holds_the_shampoo_state_of_both_ranks(runs: dict[str, Any]) -> None:
    keys = runs["uninterrupted"].keys()
    for rank in (0, 1):
        assert any(f"rank_{rank}-block_" in k and ".shampoo.factor_matrices." in k for k in keys)


def test_resumed_run_is_bit_identical_to_the_uninterrupted_run(runs: dict[str, Any]) -> None:
    assert runs["uninterrupted_meta"]["global_step"] == runs["resumed_meta"]["global_step"] == 4
    assert any(k.startswith("optimizer_0.state.") for k in runs["uninterrupted"])
    assert differences(runs["uninterrupted"], runs["resumed"]) == []


def test_control_resume_without_optimizer_state_differs(runs: dict[str, Any]) -> None:
    changed = differences(runs["uninterrupted"], runs["control"])
    changed_weights = [k for k in changed if k.startswith("state_dict.")]
    assert changed_weights, "resetting the optimizer state left the model unchanged"
    assert any(k.startswith("optimizer_0.state.") for k in changed)
    assert max_abs_difference(runs["uninterrupted"], runs["control"], changed_weights) > 1e-6


def test_saving_without_the_hooks_fails_as_reported(tmp_path: Path) -> None:
    result = run_job(tmp_path, "no_hooks", "--no-checkpoint-hooks")
    assert result.returncode != 0
    assert "ValueError: Unexpected value type <enum 'WeightDecayType'>" in result.stderr


def test_full_checkpoints_are_refused(tmp_path: Path) -> None:
    result = run_job(tmp_path, "full", "--full-checkpoint")
    assert result.returncode != 0
    assert "save_distributed_checkpoint=False" in result.stderr
    assert not list((tmp_path / "full").glob("*.ckpt"))
