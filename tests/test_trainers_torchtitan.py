"""torchtitan + DistributedShampoo + DASH on 2 gloo ranks: train, checkpoint, resume bit-exactly.

Three ``torchrun`` jobs of torchtitan's own trainer (``tests/integration/torchtitan_job.py``, a
tiny fully-sharded model, ``ShampooOptimizersContainer`` with roots every step):

* *uninterrupted*: 4 steps, DCP checkpoints at steps 2 and 4;
* *resumed*: a new job whose checkpoint folder holds only the uninterrupted job's step-2
  checkpoint, so torchtitan loads it and trains steps 3 and 4;
* *control*: the same, but with ``--checkpoint.exclude_from_loading optimizer``.

The step-4 checkpoints (model, every rank's Shampoo state, LR schedule, data position) of the
first two must be bit-identical, and the control must differ, which shows that the comparison sees
a resume that loses the optimizer state.
"""

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.integration.launch import repository_environment, run_python, run_two_ranks
from tests.integration.trainer_checks import differences, load_dcp_checkpoint, max_abs_difference

pytestmark = [
    pytest.mark.upstream,
    pytest.mark.distributed,
    pytest.mark.skipif(
        importlib.util.find_spec("torchtitan") is None,
        reason="needs torchtitan (pip install 'distributed-shampoo-dash[torchtitan]')",
    ),
]

JOB = "tests.integration.torchtitan_job"
BATCHED_LIST = "BatchedRootInvShampooPreconditionerList"


def run_job(dump_folder: Path, report_dir: Path, *extra_args: str) -> None:
    """``torchrun --nproc_per_node=2`` of torchtitan's trainer with the test config module."""
    report_dir.mkdir(parents=True, exist_ok=True)
    result = run_two_ranks(
        JOB,
        "--module",
        JOB,
        "--config",
        "tiny_shampoo",
        "--dump_folder",
        str(dump_folder),
        *extra_args,
        environment=repository_environment(DASH_TEST_REPORT_DIR=str(report_dir)),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def resume_from(step_2_checkpoint: Path, dump_folder: Path) -> None:
    """A dump folder whose only checkpoint is ``step_2_checkpoint`` (torchtitan loads the
    latest).
    """
    shutil.copytree(step_2_checkpoint, dump_folder / "checkpoint" / "step-2")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("torchtitan")
    run_job(work / "uninterrupted", work / "report_uninterrupted")
    step_2 = work / "uninterrupted" / "checkpoint" / "step-2"
    resume_from(step_2, work / "resumed")
    run_job(work / "resumed", work / "report_resumed")
    resume_from(step_2, work / "control")
    run_job(
        work / "control", work / "report_control", "--checkpoint.exclude_from_loading", "optimizer"
    )
    return {
        "reports": work,
        **{
            name: load_dcp_checkpoint(work / name / "checkpoint" / "step-4", work)
            for name in ("uninterrupted", "resumed", "control")
        },
    }


def test_every_rank_uses_dashs_batched_list(checkpoints: dict[str, Any]) -> None:
    for run in ("uninterrupted", "resumed", "control"):
        for rank in (0, 1):
            report = checkpoints["reports"] / f"report_{run}" / f"rank{rank}_lists.txt"
            assert report.read_text().split() == [BATCHED_LIST]


def test_checkpoint_holds_the_shampoo_state_of_both_ranks(checkpoints: dict[str, Any]) -> None:
    keys = checkpoints["uninterrupted"].keys()
    for rank in (0, 1):
        assert any(f"rank_{rank}-block_" in k and ".shampoo.factor_matrices." in k for k in keys)
        assert any(
            f"rank_{rank}-block_" in k and ".shampoo.inv_factor_matrices." in k for k in keys
        )


def test_resumed_run_is_bit_identical_to_the_uninterrupted_run(checkpoints: dict[str, Any]) -> None:
    uninterrupted, resumed = checkpoints["uninterrupted"], checkpoints["resumed"]
    assert uninterrupted["train_state.step"] == 4
    assert any(k.startswith("optimizer.state.") for k in uninterrupted)
    assert differences(uninterrupted, resumed) == []


def test_control_resume_without_optimizer_state_differs(checkpoints: dict[str, Any]) -> None:
    uninterrupted, control = checkpoints["uninterrupted"], checkpoints["control"]
    changed = differences(uninterrupted, control)
    changed_weights = [
        k for k in changed if k.endswith(".weight") and not k.startswith("optimizer.")
    ]
    assert changed_weights, "resuming without the optimizer state left the model unchanged"
    assert any(k.startswith("optimizer.state.") for k in changed)
    assert max_abs_difference(uninterrupted, control, changed_weights) > 1e-6


def test_command_line_flags_reach_the_shampoo_config() -> None:
    """``--optimizer.<field>`` overrides parse into ``ShampooOptimizersContainer.Config``
    (torchtitan's tyro CLI).
    """
    code = (
        f"import json, {JOB}\n"
        "from torchtitan.config import ConfigManager\n"
        f"c = ConfigManager().parse_args(['--module', '{JOB}', '--config', 'tiny_shampoo', "
        "'--optimizer.solver', 'minimax', '--optimizer.max_preconditioner_dim', '32', "
        "'--optimizer.grafting', 'adagrad'])\n"
        "print(json.dumps([type(c.optimizer).__qualname__, c.optimizer.solver, "
        "c.optimizer.max_preconditioner_dim, c.optimizer.grafting]))\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [
        "ShampooOptimizersContainer.Config",
        "minimax",
        32,
        "adagrad",
    ]


def test_an_unknown_solver_flag_is_rejected_by_name() -> None:
    code = (
        f"import {JOB}\n"
        "from torchtitan.config import ConfigManager\n"
        f"ConfigManager().parse_args(['--module', '{JOB}', '--config', 'tiny_shampoo', "
        "'--optimizer.solver', 'bogus'])\n"
    )
    result = run_python(code)
    assert result.returncode != 0
    assert "Unknown solver 'bogus'" in result.stdout + result.stderr
