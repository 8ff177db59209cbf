"""Every batched inverse-root solver, with what the rest of the package needs to know about it.

One :class:`Solver` entry per solver in :data:`SOLVERS`: its function, its product count, the
roots it computes, its work space and the options it takes. The adapter's dispatch binds a config
to an entry (:meth:`Solver.bind`), the batched list sizes its chunks from :attr:`Solver.workspace`,
the cost model and the benchmarks price a root with :meth:`Solver.products`, and the tests run one
battery over the entries. Adding a solver is a module in this package and one entry here.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import Tensor

from distributed_shampoo_dash.solvers.chebyshev import (
    chebyshev_inverse_root,
    chebyshev_products,
    run_chebyshev,
)
from distributed_shampoo_dash.solvers.checks import is_power_of_two, is_rational_root
from distributed_shampoo_dash.solvers.coupled_newton import (
    coupled_newton_inverse_root,
    coupled_newton_products,
    run_coupled_newton,
)
from distributed_shampoo_dash.solvers.eigh import eigh_inverse_root, eigh_products, run_eigh
from distributed_shampoo_dash.solvers.minimax import (
    MINIMAX_ROOTS,
    minimax_inverse_root,
    minimax_products,
    run_minimax,
)
from distributed_shampoo_dash.solvers.newton_db import (
    newton_db_inverse_root,
    newton_db_products,
    run_newton_db,
)
from distributed_shampoo_dash.solvers.precision import ProductCounts
from distributed_shampoo_dash.solvers.result import InverseRootResult


def _any_root(root: float) -> bool:
    return root > 0


def _integer_root(root: float) -> bool:
    return root > 0 and float(root).is_integer()


def _minimax_root(root: float) -> bool:
    return root in MINIMAX_ROOTS


@dataclass(frozen=True)
class Solver:
    """One batched inverse-root solver.

    Attributes:
        name (str): The registry key.
        inverse_root (Callable[..., InverseRootResult]): ``inverse_root(A, root, *, epsilon,
            **options)`` for an ``(N, d, d)`` stack: the public function, which checks every
            argument.
        run (Callable[..., InverseRootResult]): The same computation for checked arguments (an
            ``(N, d, d)`` stack, a supported root, every option given): what :meth:`bind` binds,
            since a config checks its fields when it is constructed.
        count_products (Callable[..., ProductCounts]): ``count_products(root, **options)``: the
            ``d x d`` products per block, by precision (at most, for early-exit iterations).
        supports_root (Callable[[float], bool]): Whether the solver computes root ``p``.
        integer_root (bool): Whether ``inverse_root`` takes the root as an ``int``.
        workspace (int): Stacks of the input's size the solver allocates at its peak, its result
            included (float32; ``tests/test_memory.py`` measures it).
        options (tuple[str, ...]): Keyword options of ``inverse_root`` besides ``epsilon``: the
            names the configs' fields carry.
        product_options (tuple[str, ...]): The options ``count_products`` takes.
    """

    name: str
    inverse_root: Callable[..., InverseRootResult]
    run: Callable[..., InverseRootResult]
    count_products: Callable[..., ProductCounts]
    supports_root: Callable[[float], bool]
    integer_root: bool
    workspace: int
    options: tuple[str, ...]
    product_options: tuple[str, ...]

    def products(self, root: float, **options: Any) -> ProductCounts:
        """``d x d`` products per block at ``root`` with ``options`` (extra ones are ignored)."""
        return self.count_products(
            root, **{name: options[name] for name in self.product_options if name in options}
        )

    def bind(
        self, root: float, epsilon: float, **options: Any
    ) -> tuple[Callable[[Tensor], InverseRootResult], ProductCounts]:
        """The solver call for a stack at ``root`` and ``epsilon`` with checked ``options``, and
        its product counts.

        Args:
            root (float): The inverse root ``p``.
            epsilon (float): The absolute ridge, ``>= 0``.
            **options (Any): Every one of :attr:`options`, with checked values (a config's
                fields).

        Raises:
            ValueError: If the solver does not compute ``root``, or ``options`` are not exactly
                :attr:`options`.
        """
        if not self.supports_root(root):
            raise ValueError(f"Invalid root {root} for the {self.name} solver.")
        if set(options) != set(self.options):
            raise ValueError(
                f"Invalid options {sorted(options)} for the {self.name} solver. Must be "
                f"{sorted(self.options)}."
            )
        bound_root = int(root) if self.integer_root else root
        solve = partial(self.run, root=bound_root, epsilon=epsilon, **options)
        return solve, self.products(root, **options)


#: Every batched solver, by name.
SOLVERS: Mapping[str, Solver] = {
    solver.name: solver
    for solver in (
        Solver(
            name="eigh",
            inverse_root=eigh_inverse_root,
            run=run_eigh,
            count_products=eigh_products,
            supports_root=_any_root,
            integer_root=False,
            workspace=6,
            options=("perturb_before_computation",),
            product_options=(),
        ),
        Solver(
            name="minimax",
            inverse_root=minimax_inverse_root,
            run=run_minimax,
            count_products=minimax_products,
            supports_root=_minimax_root,
            integer_root=True,
            workspace=10,
            options=("rel_epsilon", "precision", "scaling", "first_step_precision"),
            product_options=("rel_epsilon", "precision", "first_step_precision"),
        ),
        Solver(
            name="newton_db",
            inverse_root=newton_db_inverse_root,
            run=run_newton_db,
            count_products=newton_db_products,
            supports_root=is_power_of_two,
            integer_root=True,
            workspace=12,
            options=("rel_epsilon", "precision", "iteration", "scaling"),
            product_options=("precision", "iteration"),
        ),
        Solver(
            name="chebyshev",
            inverse_root=chebyshev_inverse_root,
            run=run_chebyshev,
            count_products=chebyshev_products,
            supports_root=is_rational_root,
            integer_root=False,
            workspace=6,
            options=("rel_epsilon", "precision", "degree", "scaling"),
            product_options=("precision", "degree"),
        ),
        Solver(
            name="coupled_newton",
            inverse_root=coupled_newton_inverse_root,
            run=run_coupled_newton,
            count_products=coupled_newton_products,
            supports_root=_integer_root,
            integer_root=True,
            workspace=9,
            options=("rel_epsilon", "precision", "iteration", "scaling"),
            product_options=("precision", "iteration"),
        ),
    )
}

#: The solver DASH recommends wherever matrix products are cheap (GPUs).
DEFAULT_SOLVER: Solver = SOLVERS["minimax"]
