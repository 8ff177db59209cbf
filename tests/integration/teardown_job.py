"""A two-rank gloo DDP job that ends as a job should (run under torchrun).

``python -m torch.distributed.run --standalone --nproc_per_node=2 -m
tests.integration.teardown_job`` takes one step of ``DistributedShampoo`` with DASH's form of
the config and ``DDPDistributedConfig`` on one ``Linear(8, 8)``, releases the optimizer (``del``,
then ``gc.collect()``: the optimizer's objects hold each other), destroys the process group and
returns. Upstream's distributor holds its process group: destroyed while the
optimizer lives, the group's gloo threads run on until interpreter teardown, where one that drops
a tensor owned by Python needs the interpreter's lock and is terminated ("terminate called
without an active exception", about one run in ten with or without DASH; docs/distributed.md,
"Ending a job").
"""

import gc

import torch
import torch.distributed as dist
from distributed_shampoo import DDPDistributedConfig, DistributedShampoo

import distributed_shampoo_dash as dash


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 8)
        optimizer = DistributedShampoo(
            model.parameters(),
            lr=0.01,
            preconditioner_config=dash.RootInvShampooPreconditionerConfig(),
            distributed_config=DDPDistributedConfig(communication_dtype=torch.float32),
        )
        model(torch.randn(4, 8)).sum().backward()
        optimizer.step()
        print(f"rank {dist.get_rank()} stepped", flush=True)
        del optimizer  # its distributor holds the process group ...
        gc.collect()  # ... also through reference cycles
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
