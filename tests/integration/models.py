"""Small models and optimizer factories shared by the adapter tests."""

from collections.abc import Callable

import torch
from torch import nn

# Batch size and input sizes of MixedShapeModel.
BATCH, CHANNELS, HEIGHT, VOCAB, SEQUENCE = 4, 3, 6, 11, 5


class MixedShapeModel(nn.Module):
    """A model whose parameters cover 1-D, 2-D (with remainder blocks), 3-D, 4-D and embedding
    shapes.

    With ``max_preconditioner_dim=8``: the conv weight (5, 3, 3, 3) gives a 4-D block, the
    ``mixing`` tensor (3, 4, 7) a 3-D block, the linear weight (12, 21) gives 8x8, 8x5, 4x8 and
    4x5 blocks, norms and biases give 1-D blocks.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 6)
        self.conv = nn.Conv2d(CHANNELS, 5, kernel_size=3, bias=True)
        self.norm = nn.LayerNorm(5 * 4 * 4 // 4)
        self.linear = nn.Linear(21, 12)
        self.head = nn.Linear(12, 3, bias=False)
        self.mixing = nn.Parameter(0.1 * torch.randn(3, 4, 7))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(images)).flatten(1)  # (B, 80)
        features = self.norm(features.view(features.shape[0], 4, 20)).flatten(1)[:, :15]
        embedded = self.embedding(tokens).mean(dim=1)  # (B, 6)
        hidden = torch.tanh(self.linear(torch.cat([features, embedded], dim=1)))
        mixed = torch.einsum("bk,ijk->bij", hidden[:, :7], self.mixing).mean(dim=-1)  # (B, 3)
        return self.head(hidden) + mixed


def make_batches(
    num_steps: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Deterministic ``(images, tokens, targets)`` batches for ``num_steps`` steps."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(BATCH, CHANNELS, HEIGHT, HEIGHT, generator=generator),
            torch.randint(0, VOCAB, (BATCH, SEQUENCE), generator=generator),
            torch.randn(BATCH, 3, generator=generator),
        )
        for _ in range(num_steps)
    ]


def run_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    first_step: int = 0,
    skip_gradients: Callable[[int], set[str]] | None = None,
) -> list[float]:
    """Takes one optimizer step per batch (moved to the device of the model's parameters);
    returns the losses.

    ``skip_gradients(step)`` names parameters whose gradient is set to ``None`` at that step
    (steps are numbered from ``first_step``).
    """
    device = next(model.parameters()).device
    losses = []
    for step, batch in enumerate(batches, start=first_step):
        images, tokens, targets = (tensor.to(device) for tensor in batch)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(images, tokens), targets)
        loss.backward()
        if skip_gradients is not None:
            for name, parameter in model.named_parameters():
                if name in skip_gradients(step):
                    parameter.grad = None
        optimizer.step()
        losses.append(loss.item())
    return losses


def train(
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    num_steps: int,
    seed: int = 0,
    skip_gradients: Callable[[int], set[str]] | None = None,
    fixed_batch: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, torch.optim.Optimizer, list[float]]:
    """Trains a fresh ``MixedShapeModel`` (seeded, then moved to ``device``) for ``num_steps``
    steps; returns model, optimizer, losses.

    ``skip_gradients`` is passed to :func:`run_steps`; ``fixed_batch`` repeats the first batch
    every step (a task whose loss must fall).
    """
    torch.manual_seed(seed)
    model = MixedShapeModel().to(device)
    optimizer = make_optimizer(model)
    batches = make_batches(1, seed) * num_steps if fixed_batch else make_batches(num_steps, seed)
    return model, optimizer, run_steps(model, optimizer, batches, skip_gradients=skip_gradients)
