"""The counters of ``distributed_shampoo_dash.step_costs``: what they count, on small calls."""

import pytest
import torch

from distributed_shampoo_dash import step_costs


def test_op_counter_counts_launches_views_and_square_products() -> None:
    stack = torch.randn(5, 4, 4)
    with step_costs.OpCounter() as counter:
        product = stack @ stack.mT  # a view (transpose) and a batched product of 5 d x d blocks
        product[0] @ product[1]  # two views and one d x d product
        stack.reshape(5, 16) @ torch.randn(16, 3)  # a product, not d x d
    assert counter.products == 5 + 1
    assert counter.by_op["aten.bmm.default"] == 1 and counter.by_op["aten.mm.default"] == 2
    assert counter.launches < counter.ops
    assert (
        counter.launches
        == counter.ops
        - sum(
            count
            for name, count in counter.by_op.items()
            if name.split(".")[1] in ("transpose", "select", "view", "expand")
        )
        - counter.by_op["aten._unsafe_view.default"]
    )


def test_sync_counter_counts_every_host_read_including_tolist() -> None:
    flags = torch.tensor([True, False, True])
    stack = torch.eye(3).expand(2, 3, 3).clone()
    with step_costs.SyncCounter() as counter:
        flags.tolist()
        bool(flags.all())
        stack[flags[:2]]  # boolean-mask indexing
        torch.linalg.eigh(stack)  # CUDA reads eigh's error codes on the host
        stack.sum()  # not a read
    assert counter.by_op == {
        "Tensor.tolist": 1,
        "aten._local_scalar_dense.default": 1,
        "aten.index.Tensor": 1,
        "aten._linalg_eigh.default": 1,
    }
    assert counter.count == 4
    assert "tolist" not in vars(torch.Tensor) and flags.tolist() == [True, False, True]


def test_sync_counter_counts_blocking_copies_between_devices_only() -> None:
    host = torch.ones(3)
    with step_costs.SyncCounter() as counter:
        on_meta = host.to("meta")  # blocking: a device sync on CUDA
        on_meta.copy_(host, non_blocking=True)  # asynchronous
        host.to("cpu", copy=True)  # same device
    assert counter.by_op == {"aten._to_copy.default": 1}


def test_live_bytes_counts_new_tensors_alive_at_once_not_views_or_earlier_tensors() -> None:
    existing = torch.zeros(1024)  # 4 KiB, created before: never counted
    with step_costs.LiveBytes() as tracker:
        first = existing + 1  # 4 KiB
        view = first[:10]  # no new storage
        existing.add_(1)  # in place: nothing new
        second = torch.ones(2048)  # 8 KiB: 12 KiB alive
        del first, view, second
        third = torch.ones(256)  # 1 KiB after the others were freed
    assert tracker.peak == 3 * 4096
    assert tracker.live == 1024
    del third


class Solver:
    def solve(self, size: int) -> torch.Tensor:
        work = torch.ones(size) + 1  # size * 4 bytes of work space, freed on return
        return work[:1] * 2  # 4 bytes survive (the result's own storage)


def test_phases_get_the_peak_above_their_start() -> None:
    solver = Solver()
    with (
        step_costs.LiveBytes() as tracker,
        step_costs.phases_of(tracker, [("solve", solver, "solve")]),
    ):
        before = torch.ones(256) * 3  # 1 KiB alive before the phase
        result = solver.solve(1024)
    assert tracker.phase_peaks == {"solve": 2 * 4096}  # `ones` and `+ 1` alive at once
    assert tracker.peak == 1024 + 2 * 4096
    assert "solve" not in vars(solver) and result.numel() == 1 and before.numel() == 256


def test_measure_runs_the_call_once_under_every_counter() -> None:
    calls = []
    A = torch.randn(3, 8, 8)

    def call() -> None:
        calls.append(1)
        (A @ A).sum().item()

    costs = step_costs.measure(call)
    assert calls == [1]
    assert costs.products == 3 and costs.flops == 3 * 2 * 8**3 and costs.syncs == 1
    assert costs.peak_bytes >= 3 * 8 * 8 * 4 and costs.ops >= costs.launches >= 3


def test_flops_of_a_product_with_an_out_dtype_are_counted() -> None:
    a, out = (
        torch.empty(2, 8, 8, dtype=torch.float16, device="meta"),
        torch.empty(2, 8, 8, device="meta"),
    )
    with step_costs.OpCounter() as counter:
        torch.bmm(a, a, out_dtype=torch.float32, out=out)
    assert counter.flops == 2 * 2 * 8**3 and counter.products == 2 and counter.launches == 1


def test_meta_host_reads_pass_every_check_and_never_converge() -> None:
    error, flags = torch.empty((), device="meta"), torch.empty(3, dtype=torch.bool, device="meta")
    with step_costs.meta_scaffolding():
        assert bool(torch.isfinite(error).all()) and not bool(torch.isnan(error).any())
        assert bool(error > 1e-6) and not bool(error < 1e-6) and not bool(error <= 1e-6)
        assert bool(~(error < 1e-6)) and flags.tolist() == [True] * 3
        assert error.item() == 1
        with pytest.raises(RuntimeError, match="META_BOOLEAN_ANSWERS"):
            bool(torch.empty((), dtype=torch.bool, device="meta"))
        assert isinstance(torch.Generator(device="meta"), torch._C.Generator)
    assert torch.Generator is torch._C.Generator
