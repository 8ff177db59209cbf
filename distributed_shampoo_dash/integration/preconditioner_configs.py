"""The DASH forms of upstream's preconditioner configs: every upstream field, batched.

A param group whose ``preconditioner_config`` is one of these runs DASH's batched preconditioner
list; any other config runs upstream's. Each form subclasses the upstream config of the same name,
so it keeps every upstream field, default, check and meaning (upstream's ``match`` statements,
which test ``isinstance``, treat it as the upstream config), and adds DASH's own settings,
:class:`BatchedSettings`. Switching a config to DASH is therefore one token::

    from distributed_shampoo_dash import RootInvShampooPreconditionerConfig

or, for a config object received from elsewhere, ``distributed_shampoo_dash.batched(config)``.
The forms are plain dataclasses: they pickle into ``param_groups`` and checkpoints as upstream's
configs do, and a checkpoint loads across the DASH and the upstream form in either direction
(the optimizer state is upstream's).
"""

from dataclasses import dataclass

from distributed_shampoo import shampoo_types

from distributed_shampoo_dash.solvers.checks import check_int, check_optional_bool


@dataclass(kw_only=True)
class BatchedSettings:
    """DASH's settings of a batched preconditioner (a mixin of the DASH config forms).

    Attributes:
        max_stack_bytes (int | None): Memory, in bytes, one batched operation of a step may
            allocate for its stacks, its solver's work space and its results (every stage is
            chunked to fit); ``None`` sizes it from the param group's gradients: half their bytes,
            at least 4 MiB, and on a CUDA device at least 1/32 of its memory. Must be >= 1 when
            set. (Default: None)
        tf32_step_products (bool | None): Run the factor updates' Gram products and the
            preconditioning products of float32 blocks on TF32 tensor cores (torch's
            ``torch.backends.cuda.matmul.fp32_precision`` set to ``"tf32"`` around them; a CPU
            computes them in fp32). ``False`` leaves them to torch's switch, as upstream does;
            ``None`` runs them on TF32 where the ``amortized_computation_config`` runs its own
            products on tensor cores (a DASH config whose ``precision`` is TF32, 3xTF32, bf16 or
            fp16, as ``default_root_inv_config("cuda")``) and leaves them to torch's switch
            otherwise (:func:`~.configs.step_products_in_tf32`). (Default: None)
    """

    max_stack_bytes: int | None = None
    tf32_step_products: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]  # upstream's checks run first
        if self.max_stack_bytes is not None:
            check_int(self.max_stack_bytes, "max_stack_bytes", minimum=1)
        check_optional_bool(self.tf32_step_products, "tf32_step_products")


@dataclass(kw_only=True)
class RootInvShampooPreconditionerConfig(
    BatchedSettings, shampoo_types.RootInvShampooPreconditionerConfig
):
    """Upstream's ``RootInvShampooPreconditionerConfig``, batched: factor updates,
    preconditioning and inverse roots run on stacks of same-shape blocks.

    Attributes: every attribute of upstream's config, plus :class:`BatchedSettings`'.
    """


@dataclass(kw_only=True)
class RootInvKLShampooPreconditionerConfig(
    BatchedSettings, shampoo_types.RootInvKLShampooPreconditionerConfig
):
    """Upstream's ``RootInvKLShampooPreconditionerConfig``, batched: preconditioning and inverse
    roots run on stacks (KL-Shampoo's factor update stays upstream's per-block loop).

    Attributes: every attribute of upstream's config, plus :class:`BatchedSettings`'.
    """
