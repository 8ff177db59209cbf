"""accelerate FSDP2 + DistributedShampoo + DASH on 2 gloo ranks: the recipe, resume, and the guard.

``tests/integration/accelerate_job.py`` runs under torchrun (see its docstring for the phases).
The step-4 states that ``accelerator.save_state`` writes (FSDP2 model and optimizer, DCP) of the
uninterrupted and the resumed run must be bit-identical; the control (optimizer state reset after
``load_state``) must differ; and Shampoo built before ``prepare``, which used to train nothing
without an error, must stop with ``ReplacedParametersError``.
"""

import importlib.util
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.launch import run_two_ranks
from tests.integration.trainer_checks import differences, load_dcp_checkpoint, max_abs_difference

pytestmark = [
    pytest.mark.upstream,
    pytest.mark.distributed,
    pytest.mark.skipif(
        importlib.util.find_spec("accelerate") is None,
        reason="needs accelerate (pip install 'distributed-shampoo-dash[accelerate]')",
    ),
]

BATCHED_LIST = "BatchedRootInvShampooPreconditionerList"


def run_job(work: Path, phase: str, *extra_args: str) -> subprocess.CompletedProcess[str]:
    return run_two_ranks(
        "tests.integration.accelerate_job",
        "--phase",
        phase,
        "--state-dir",
        str(work / phase),
        "--report-dir",
        str(work / f"report_{phase}"),
        *extra_args,
    )


def saved_state(work: Path, phase: str) -> dict[str, Any]:
    """Model and optimizer of ``save_state`` after step 4, flattened."""
    step_4 = work / phase / "step4"
    return {
        **{
            f"model.{k}": v
            for k, v in load_dcp_checkpoint(step_4 / "pytorch_model_fsdp_0", work).items()
        },
        **{f"optim.{k}": v for k, v in load_dcp_checkpoint(step_4 / "optimizer_0", work).items()},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("accelerate")
    step_2 = str(work / "uninterrupted" / "step2")
    results: dict[str, Any] = {"work": work}
    for phase, extra_args in (
        ("uninterrupted", ()),
        ("resumed", ("--resume-from", step_2)),
        ("control", ("--resume-from", step_2)),
    ):
        result = run_job(work, phase, *extra_args)
        assert result.returncode == 0, f"{phase}: " + result.stdout[-3000:] + result.stderr[-6000:]
        results[phase] = saved_state(work, phase)
    return results


def test_every_rank_uses_dashs_batched_list(runs: dict[str, Any]) -> None:
    for phase in ("uninterrupted", "resumed", "control"):
        for rank in (0, 1):
            assert (
                runs["work"] / f"report_{phase}" / f"rank{rank}_list.txt"
            ).read_text() == BATCHED_LIST


def test_saved_state_holds_the_shampoo_state_of_both_ranks(runs: dict[str, Any]) -> None:
    keys = runs["uninterrupted"].keys()
    for rank in (0, 1):
        assert any(f"rank_{rank}-block_" in k and ".shampoo.factor_matrices." in k for k in keys)


def test_resumed_run_is_bit_identical_to_the_uninterrupted_run(runs: dict[str, Any]) -> None:
    assert any(k.startswith("model.") for k in runs["uninterrupted"])
    assert differences(runs["uninterrupted"], runs["resumed"]) == []


def test_control_resume_without_optimizer_state_differs(runs: dict[str, Any]) -> None:
    changed = differences(runs["uninterrupted"], runs["control"])
    changed_weights = [k for k in changed if k.startswith("model.")]
    assert changed_weights, "resetting the optimizer state left the model unchanged"
    assert any(".shampoo." in k for k in changed)
    assert max_abs_difference(runs["uninterrupted"], runs["control"], changed_weights) > 1e-6


def test_shampoo_built_before_prepare_stops_with_a_clear_error(tmp_path: Path) -> None:
    result = run_job(tmp_path, "prebuilt")
    assert result.returncode != 0
    assert (
        "ReplacedParametersError: Parameter 0 of param group 0 of DistributedShampoo was replaced"
        in result.stderr
    )
    assert "accelerator.prepare_model" in result.stderr


def test_without_the_guard_shampoo_built_before_prepare_silently_trains_nothing(
    tmp_path: Path,
) -> None:
    """The failure the guard turns into an error (as reported: no error, weights never change)."""
    result = run_job(tmp_path, "prebuilt-unguarded")
    assert result.returncode == 0, result.stderr[-6000:]
    for rank in (0, 1):
        assert (
            tmp_path / "report_prebuilt-unguarded" / f"rank{rank}_changed.txt"
        ).read_text() == "False"
