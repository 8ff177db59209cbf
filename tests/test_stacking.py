"""Stack algebra: the batched Kronecker products, packing and chunking equal their per-block
forms.
"""

from functools import reduce

import pytest
import torch

from distributed_shampoo_dash.stacking import (
    chunked,
    group_indices,
    mode_gram_matrices,
    pack_stack,
    packed_size,
    precondition_stack,
    unpack_stack,
    unpacked_dim,
)

SHAPES = [(7,), (5, 3), (4, 3, 2), (2, 3, 2, 3)]


def per_block_gram(block: torch.Tensor, dim: int) -> torch.Tensor:
    """Shampoo's definition: contract every dim of the block except ``dim`` with itself."""
    others = [k for k in range(block.ndim) if k != dim]
    return torch.tensordot(block, block, dims=[others, others])


def per_block_precondition(
    block: torch.Tensor, selector: tuple[bool, ...], factors: list[torch.Tensor]
) -> torch.Tensor:
    """Shampoo's definition: contract the leading dim with each factor in turn, rotating the
    rest.
    """
    remaining = iter(factors)
    return reduce(
        lambda X, selected: (
            torch.tensordot(X, next(remaining), dims=([0], [0]))
            if selected
            else X.permute(*range(1, X.ndim), 0)
        ),
        selector,
        block,
    )


@pytest.mark.cuda
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mode_gram_matrices_equal_the_per_block_contraction(
    shape: tuple[int, ...], device: torch.device
) -> None:
    G = torch.randn(4, *shape, dtype=torch.float64, device=device)
    for dim in range(len(shape)):
        expected = torch.stack([per_block_gram(block, dim) for block in G])
        torch.testing.assert_close(mode_gram_matrices(G, dim), expected)


@pytest.mark.cuda
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("skip_dim", [None, 0, -1])
def test_precondition_stack_equals_the_per_block_contraction(
    shape: tuple[int, ...], skip_dim: int | None, device: torch.device
) -> None:
    selector = tuple(
        k != (skip_dim % len(shape) if skip_dim is not None else -1) for k in range(len(shape))
    )
    G = torch.randn(3, *shape, dtype=torch.float64, device=device)
    factors = [
        torch.randn(3, d, d, dtype=torch.float64, device=device)
        for d, selected in zip(shape, selector)
        if selected
    ]
    expected = torch.stack(
        [per_block_precondition(G[i], selector, [f[i] for f in factors]) for i in range(G.shape[0])]
    )
    torch.testing.assert_close(precondition_stack(G, selector, factors), expected)


def test_precondition_stack_computes_in_the_factor_dtype_and_returns_the_gradient_dtype() -> None:
    G = torch.randn(2, 3, 4, dtype=torch.bfloat16)
    factors = [torch.eye(3).expand(2, 3, 3), torch.eye(4).expand(2, 4, 4)]
    result = precondition_stack(G, (True, True), factors)
    assert result.dtype == torch.bfloat16
    torch.testing.assert_close(result, G)


@pytest.mark.cuda
@pytest.mark.parametrize("dim", [1, 2, 5, 16])
def test_packing_round_trips_and_keeps_the_row_major_upper_triangle(
    dim: int, device: torch.device
) -> None:
    A = torch.randn(3, dim, dim, device=device)
    A = A + A.mT
    packed = pack_stack(A)
    assert packed.shape == (3, packed_size(dim)) and unpacked_dim(packed) == dim
    assert packed.device == A.device
    rows, cols = torch.triu_indices(dim, dim, device=device)
    torch.testing.assert_close(packed[1], A[1][rows, cols], rtol=0, atol=0)
    torch.testing.assert_close(unpack_stack(packed, dim), A, rtol=0, atol=0)


@pytest.mark.upstream
@pytest.mark.parametrize("dim", [1, 3, 8])
def test_packing_matches_upstream(dim: int) -> None:
    shampoo_utils = pytest.importorskip("distributed_shampoo.utils.shampoo_utils")
    A = torch.randn(2, dim, dim)
    A = A + A.mT
    packed = pack_stack(A)
    for i in range(2):
        assert torch.equal(packed[i], shampoo_utils.pack_upper_triangular(A[i]))
        assert torch.equal(
            unpack_stack(packed, dim)[i], shampoo_utils.unpack_upper_triangular(packed[i], dim)
        )


def test_chunks_respect_the_byte_budget_and_keep_order() -> None:
    positions = list(range(10))
    assert list(chunked(positions, item_bytes=100, max_stack_bytes=350)) == [
        [0, 1, 2],
        [3, 4, 5],
        [6, 7, 8],
        [9],
    ]
    assert list(chunked(positions[:2], item_bytes=1000, max_stack_bytes=10)) == [[0], [1]]


def test_groups_keep_first_appearance_order() -> None:
    assert group_indices(["a", "b", "a", "c", "b"]) == {"a": [0, 2], "b": [1, 4], "c": [3]}
