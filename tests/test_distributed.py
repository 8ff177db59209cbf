"""DASH under upstream's distributors: DDP, fully_shard, hybrid shard and FSDP1 (CPU, gloo).

Each spawned group trains ``MixedShapeModel`` (blocks of at most 8, roots every step,
``EigenConfig``) with DASH off and on; every rank sees the same batches. Upstream's DDP distributor
reproduces the single-process run; its FSDP distributors block each rank's shard, not the full
parameter, so their results differ from it (by ~5e-2 here) and DASH must match upstream's. Every
worker checks that DASH's list is in use exactly when DASH is on. These tests spawn 2 to 4
processes each and take tens of seconds on two cores; they are marked ``distributed`` so that
``pytest -m distributed`` runs them alone and ``-m "not distributed"`` skips them.
"""

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = [pytest.mark.upstream, pytest.mark.distributed]
pytest.importorskip("distributed_shampoo")

from distributed_shampoo import EigenConfig

from tests.integration.distributed import Job, load, run_worker
from tests.integration.models import MixedShapeModel, make_batches, run_steps
from tests.integration.shampoo import shampoo_factory

NUM_STEPS = 10
#: fp32 tolerance on parameters after NUM_STEPS steps (as in the single-process equivalence tests).
TOLERANCE = 5e-4


def spawn(job: Job, world_size: int, out_dir: Path) -> dict[str, object]:
    """Runs ``job`` on ``world_size`` spawned ranks; returns what rank 0 saved."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(run_worker, args=(world_size, port, job, str(out_dir)), nprocs=world_size, join=True)
    return torch.load(out_dir / "results.pt")


def max_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    assert first.keys() == second.keys()
    return max(float((first[name] - second[name]).abs().max()) for name in first)


def single_process_parameters(use_dash: bool = False) -> dict[str, torch.Tensor]:
    """The same training without a distributor."""
    torch.manual_seed(0)
    model = MixedShapeModel()
    optimizer = shampoo_factory(EigenConfig(), batched=use_dash)(model)
    run_steps(model, optimizer, make_batches(NUM_STEPS))
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def single_process() -> dict[str, torch.Tensor]:
    return single_process_parameters()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], Path]:
    out_dir = tmp_path_factory.mktemp("ddp")
    return spawn(Job("ddp", NUM_STEPS, save_checkpoint=True), 2, out_dir), out_dir


@pytest.fixture(scope="module")
def fully_shard_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    job = Job("fully_shard", NUM_STEPS, checkpoints=((True, False), (False, True)))
    return spawn(job, 2, tmp_path_factory.mktemp("fully_shard"))


def check_distributed_run(
    compare: dict[str, dict[str, torch.Tensor]], single: dict[str, torch.Tensor]
) -> None:
    """DASH on equals DASH off, and is no further from the single-process run than upstream."""
    assert max_difference(compare["on"], compare["off"]) < TOLERANCE
    upstream_gap = max_difference(compare["off"], single)
    assert max_difference(compare["on"], single) < upstream_gap + TOLERANCE


def test_ddp_with_dash_matches_upstream_and_the_single_process_run(
    ddp_results: tuple[dict[str, object], Path], single_process: dict[str, torch.Tensor]
) -> None:
    compare = ddp_results[0]["compare"]
    check_distributed_run(compare, single_process)
    # Upstream's DDP distributor computes every block once and all-gathers: single-process results.
    assert max_difference(compare["off"], single_process) < TOLERANCE


def test_fully_shard_with_dash_matches_upstream(
    fully_shard_results: dict[str, object], single_process: dict[str, torch.Tensor]
) -> None:
    check_distributed_run(fully_shard_results["compare"], single_process)


@pytest.mark.parametrize(("save_dash", "load_dash"), [(True, False), (False, True)])
def test_fully_shard_checkpoint_resumes_across_the_dash_and_upstream_forms(
    fully_shard_results: dict[str, object], save_dash: bool, load_dash: bool
) -> None:
    label = {True: "on", False: "off"}
    resumed = fully_shard_results[f"resumed_{label[save_dash]}_{label[load_dash]}"]
    uninterrupted = fully_shard_results[f"uninterrupted_{label[save_dash]}"]
    assert max_difference(resumed, uninterrupted) < TOLERANCE


def test_ddp_checkpoint_from_two_ranks_resumes_in_a_single_process(
    ddp_results: tuple[dict[str, object], Path],
) -> None:
    results, out_dir = ddp_results
    torch.manual_seed(0)
    model = MixedShapeModel()
    optimizer = shampoo_factory(EigenConfig(), batched=True)(model)
    load(model, optimizer, out_dir / "checkpoint")
    run_steps(
        model, optimizer, make_batches(NUM_STEPS)[NUM_STEPS // 2 :], first_step=NUM_STEPS // 2
    )
    resumed = {name: p.detach() for name, p in model.named_parameters()}
    assert max_difference(resumed, results["compare"]["on"]) < TOLERANCE


@pytest.mark.slow
def test_ddp_checkpoint_from_two_ranks_resumes_on_four(
    ddp_results: tuple[dict[str, object], Path], tmp_path: Path
) -> None:
    results, out_dir = ddp_results
    job = Job("ddp", NUM_STEPS, compare=False, load_checkpoint=str(out_dir / "checkpoint"))
    loaded = spawn(job, 4, tmp_path)["loaded"]
    assert max_difference(loaded, results["compare"]["on"]) < TOLERANCE


@pytest.mark.slow
def test_hybrid_shard_with_dash_matches_upstream(
    tmp_path: Path, single_process: dict[str, torch.Tensor]
) -> None:
    check_distributed_run(
        spawn(Job("hybrid_shard", NUM_STEPS), 4, tmp_path)["compare"], single_process
    )


def test_fsdp1_with_dash_matches_upstream(
    tmp_path: Path, single_process: dict[str, torch.Tensor]
) -> None:
    check_distributed_run(spawn(Job("fsdp1", NUM_STEPS), 2, tmp_path)["compare"], single_process)
