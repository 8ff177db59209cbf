"""DISTRIBUTED_SHAMPOO_DASH turns DASH on at interpreter start, and nothing else does."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from distributed_shampoo_dash.environment import ENVIRONMENT_VARIABLE, enable_from_environment


@pytest.fixture(autouse=True)
def dash_disabled_afterwards() -> Iterator[None]:
    yield
    if "distributed_shampoo_dash.integration" in sys.modules:
        sys.modules["distributed_shampoo_dash.integration"].disable()


@pytest.mark.parametrize("value", ["", "0", "off", "False"])
def test_unset_or_false_values_leave_dash_off(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, value)
    assert enable_from_environment() is False


def test_unknown_value_is_rejected_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "maybe")
    with pytest.raises(ValueError, match=rf"{ENVIRONMENT_VARIABLE}='maybe'"):
        enable_from_environment()


@pytest.mark.upstream
@pytest.mark.parametrize("value", ["1", "true", "ON"])
def test_true_values_enable_dash(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed_shampoo")
    import distributed_shampoo_dash as dash

    monkeypatch.setenv(ENVIRONMENT_VARIABLE, value)
    assert enable_from_environment() is True
    assert dash.is_enabled()


@pytest.mark.upstream
@pytest.mark.parametrize("value, expected", [("1", "True"), ("0", "False")])
def test_a_sitecustomize_hook_reaches_fresh_interpreters(
    value: str, expected: str, tmp_path: Path
) -> None:
    pytest.importorskip("distributed_shampoo")
    (tmp_path / "sitecustomize.py").write_text(
        "from distributed_shampoo_dash.environment import enable_from_environment\n"
        "enable_from_environment()\n"
    )
    environment = {
        **os.environ,
        ENVIRONMENT_VARIABLE: value,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
    }
    output = subprocess.run(
        [sys.executable, "-c", "import distributed_shampoo_dash as d; print(d.is_enabled())"],
        env=environment,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert output.strip() == expected
