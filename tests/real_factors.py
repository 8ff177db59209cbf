"""Real Shampoo factor matrices for the solver tests, grouped into stacks.

Two sets, in the same schema (a dict with ``description``, ``epsilon`` and ``factors``, each a
dict with ``step``, ``kind``, ``root`` and either the ``d x d`` ``matrix`` or its ``dim`` and the
``upper`` triangle, row-major):

* ``tests/data/real_factors.pt``, in the repository: 80 factors of a byte-level Llama trained
  with upstream Shampoo, at steps 1 (a single gradient: rank-deficient, rank one for 1-D
  parameters), 10, 50 and 300 (``scripts/record_real_factors.py`` regenerates it);
* ``../shared/data/shampoo_factors_bytellama.pt``, beside the checkout when present: 195 factors
  of a model of the same kind at steps 10, 50 and 300.

Tests take them through the ``real_factor_sets`` fixture of ``tests/conftest.py``, which runs a
test once per set that is present.
"""

import collections
from dataclasses import dataclass
from pathlib import Path

import torch

REPOSITORY_FACTORS = Path(__file__).resolve().parent / "data" / "real_factors.pt"
SHARED_FACTORS = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "shampoo_factors_bytellama.pt"
)
#: The sets by name, in the order tests run them.
FACTOR_FILES = {"repository": REPOSITORY_FACTORS, "shared": SHARED_FACTORS}


@dataclass(frozen=True)
class RealFactors:
    """One set of real factors.

    Attributes:
        name (str): ``"repository"`` or ``"shared"``.
        epsilon (float): Shampoo's epsilon of the run that recorded them.
        factors (list[dict[str, object]]): Every factor with its ``step``, ``kind``, ``root``
            and ``matrix`` (``(d, d)`` float32).
    """

    name: str
    epsilon: float
    factors: list[dict[str, object]]

    def stacks(
        self, *, min_step: int = 0, step: int | None = None
    ) -> dict[tuple[int, int], torch.Tensor]:
        """``{(d, root): (N, d, d) float32 stack}`` of the factors recorded at ``step`` (every
        step if ``None``) and at or after ``min_step``."""
        groups: dict[tuple[int, int], list[torch.Tensor]] = collections.defaultdict(list)
        for factor in self.factors:
            recorded = int(factor["step"])  # type: ignore[call-overload]
            if recorded < min_step or (step is not None and recorded != step):
                continue
            matrix: torch.Tensor = factor["matrix"]  # type: ignore[assignment]
            groups[(matrix.shape[0], int(factor["root"]))].append(matrix)  # type: ignore[call-overload]
        return {key: torch.stack(matrices) for key, matrices in groups.items()}


def symmetric_from_upper(upper: torch.Tensor, dim: int) -> torch.Tensor:
    """The ``(d, d)`` symmetric matrix whose entries on and above the diagonal are ``upper``."""
    rows, columns = torch.triu_indices(dim, dim)
    matrix = torch.zeros(dim, dim, dtype=upper.dtype)
    matrix[rows, columns] = upper
    matrix[columns, rows] = upper
    return matrix


def load_real_factors(name: str, path: Path) -> RealFactors:
    """Reads a factor file of either schema into :class:`RealFactors`."""
    data = torch.load(path)
    factors = []
    for factor in data["factors"]:
        matrix = factor.get("matrix")
        if matrix is None:
            matrix = symmetric_from_upper(factor["upper"], int(factor["dim"]))
        factors.append({**factor, "matrix": matrix})
    return RealFactors(name, float(data["epsilon"]), factors)
