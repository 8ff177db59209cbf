"""``distributed_shampoo_dash.paper_defaults``: the DASH paper's settings, defined once."""

import dataclasses

import pytest
import torch

from distributed_shampoo_dash.paper_defaults import PAPER_SETTINGS, PaperSettings


def test_the_settings_are_the_papers() -> None:
    assert PAPER_SETTINGS == PaperSettings(
        betas=(0.9, 0.95),
        epsilon=1e-10,
        grafting_beta2=0.95,
        grafting_epsilon=1e-8,
        max_preconditioner_dim=1024,
        precondition_frequency=10,
        weight_decay=0.0,
    )


@pytest.mark.upstream
def test_shampoo_kwargs_are_distributed_shampoo_arguments() -> None:
    distributed_shampoo = pytest.importorskip("distributed_shampoo")
    settings = dataclasses.replace(PAPER_SETTINGS, max_preconditioner_dim=64)
    kwargs = settings.shampoo_kwargs()
    assert kwargs["grafting_config"] == distributed_shampoo.AdamPreconditionerConfig(
        beta2=0.95, epsilon=1e-8
    )
    assert (kwargs["betas"], kwargs["epsilon"], kwargs["max_preconditioner_dim"]) == (
        (0.9, 0.95),
        1e-10,
        64,
    )
    param = torch.nn.Parameter(torch.zeros(4, 4))
    optimizer = distributed_shampoo.DistributedShampoo([param], lr=1e-3, **kwargs)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95)


@pytest.mark.upstream
def test_the_trainers_default_to_the_papers_settings() -> None:
    pytest.importorskip("distributed_shampoo")
    from distributed_shampoo_dash.trainers.optimizer import shampoo_kwargs

    trainer = shampoo_kwargs(device="cpu")
    for name, value in PAPER_SETTINGS.shampoo_kwargs().items():
        assert trainer[name] == value, name


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("betas", (1.0, 0.95), "betas[0]=1.0"),
        ("betas", (0.9, 0.0), "betas[1]=0.0"),
        ("epsilon", 0.0, "epsilon=0.0"),
        ("grafting_beta2", 1.5, "grafting_beta2=1.5"),
        ("grafting_epsilon", -1.0, "grafting_epsilon=-1.0"),
        ("max_preconditioner_dim", 0, "max_preconditioner_dim=0"),
        ("precondition_frequency", 0, "precondition_frequency=0"),
        ("weight_decay", -0.1, "weight_decay=-0.1"),
    ],
)
def test_an_invalid_setting_is_named_in_the_error(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        dataclasses.replace(PAPER_SETTINGS, **{field: value})
