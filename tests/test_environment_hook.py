"""The installed ``.pth`` hook: ``DISTRIBUTED_SHAMPOO_DASH=1`` turns DASH on in every interpreter.

The project is installed with pip, as a wheel and as an editable install, under a temporary
prefix that fresh interpreters use as their user site (``PYTHONUSERBASE``). Python processes the
user site before the one that holds torch and upstream, which is the order that breaks a hook
that imports them at start. Each check starts a new interpreter (or a ``multiprocessing`` spawned
child), so nothing is faked: the ``.pth`` line runs as it does for a user.
"""

import ast
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distributed_shampoo_dash.environment import ENVIRONMENT_VARIABLE

ROOT = Path(__file__).resolve().parents[1]
#: What ``pip install`` needs from the checkout.
PROJECT_FILES = (
    "pyproject.toml",
    "setup.py",
    "README.md",
    "_distributed_shampoo_dash_startup.py",
    "distributed_shampoo_dash_environment.pth",
)
HOOK_FILE = "distributed_shampoo_dash_environment.pth"
STARTUP_MODULE = "_distributed_shampoo_dash_startup"
DASH_STATE = (
    "import distributed_shampoo; "
    "from distributed_shampoo_dash.integration import is_enabled; print(is_enabled())"
)

pytestmark = pytest.mark.slow


def user_site(user_base: Path) -> Path:
    return (
        user_base
        / "lib"
        / f"python{sys.version_info.major}.{sys.version_info.minor}"
        / "site-packages"
    )


def install(kind: str, work_dir: Path) -> Path:
    """Installs a copy of the checkout with pip (``wheel`` or ``editable``); returns the user
    base.
    """
    source = work_dir / "source"
    source.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "distributed_shampoo_dash",
        source / "distributed_shampoo_dash",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    user_base = work_dir / "userbase"
    editable = ["-e"] if kind == "editable" else []
    # --prefix with --ignore-installed writes only under user_base and uninstalls nothing.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--ignore-installed",
            "--prefix",
            str(user_base),
            *editable,
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return user_base


def require_user_site() -> None:
    """Skips where fresh interpreters ignore the user site (inside a virtual environment)."""
    result = subprocess.run(
        [sys.executable, "-c", "import site; print(site.ENABLE_USER_SITE)"],
        capture_output=True,
        text=True,
        check=True,
    )
    if result.stdout.strip() != "True":
        pytest.skip("this interpreter does not process a user site (virtual environment?)")


@pytest.fixture(scope="module", params=["wheel", "editable"])
def user_base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_user_site()
    return install(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def wheel_user_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_user_site()
    return install("wheel", tmp_path_factory.mktemp("wheel_only"))


def environment(user_base: Path, value: str | None) -> dict[str, str]:
    """The inherited environment with ``user_base`` as user site and the variable set or unset."""
    env = {k: v for k, v in os.environ.items() if k not in (ENVIRONMENT_VARIABLE, "PYTHONPATH")}
    env["PYTHONUSERBASE"] = str(user_base)
    env["OMP_NUM_THREADS"] = "1"
    if value is not None:
        env[ENVIRONMENT_VARIABLE] = value
    return env


def run_python(
    code: str, user_base: Path, value: str | None, *flags: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        check=False,
        env=environment(user_base, value),
        cwd=user_base,
        capture_output=True,
        text=True,
    )


def test_the_install_puts_the_hook_at_the_root_of_site_packages(user_base: Path) -> None:
    hook = user_site(user_base) / HOOK_FILE
    assert hook.is_file()
    assert "DISTRIBUTED_SHAMPOO_DASH" in hook.read_text()


def imported_names(importtime_log: str) -> list[str]:
    """Module names listed by ``python -X importtime`` (one ``import time: ... | name`` line
    each).
    """
    return [
        line.rsplit("|", 1)[1].strip()
        for line in importtime_log.splitlines()
        if line.startswith("import time:") and "|" in line
    ]


def is_ours_or_torch(name: str) -> bool:
    return name in (STARTUP_MODULE, "torch") or name.split(".")[0] in (
        "distributed_shampoo_dash",
        "distributed_shampoo",
    )


def test_unset_variable_imports_nothing_at_start(wheel_user_base: Path) -> None:
    result = run_python(
        "import sys; print(sorted(sys.modules))", wheel_user_base, None, "-X", "importtime"
    )
    assert result.returncode == 0, result.stderr
    assert not [name for name in ast.literal_eval(result.stdout) if is_ours_or_torch(name)]
    assert not [name for name in imported_names(result.stderr) if is_ours_or_torch(name)]
    # The hook is really processed from that site: with the variable set, its module is loaded.
    with_variable = run_python("pass", wheel_user_base, "1", "-X", "importtime")
    assert STARTUP_MODULE in imported_names(with_variable.stderr), with_variable.stderr


def test_set_variable_imports_neither_torch_nor_the_package_at_start(wheel_user_base: Path) -> None:
    result = run_python(
        "import sys; print('torch' in sys.modules, 'distributed_shampoo_dash' in sys.modules)",
        wheel_user_base,
        "1",
    )
    assert result.stdout.strip() == "False False", result.stderr


@pytest.mark.upstream
def test_a_fresh_interpreter_gets_dash_when_it_imports_upstream(user_base: Path) -> None:
    result = run_python(DASH_STATE, user_base, "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


@pytest.mark.upstream
@pytest.mark.parametrize("value", [None, "0", "off"])
def test_unset_or_false_variable_leaves_dash_off(wheel_user_base: Path, value: str | None) -> None:
    result = run_python(DASH_STATE, wheel_user_base, value)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.upstream
def test_dash_is_on_when_the_adapter_is_imported_before_upstream(wheel_user_base: Path) -> None:
    result = run_python(
        "import distributed_shampoo_dash as dash; print(dash.is_enabled())", wheel_user_base, "1"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


@pytest.mark.upstream
def test_an_invalid_value_fails_the_upstream_import_by_name(wheel_user_base: Path) -> None:
    result = run_python("import distributed_shampoo", wheel_user_base, "maybe")
    assert result.returncode != 0
    assert f"{ENVIRONMENT_VARIABLE}='maybe'" in result.stderr


def report_dash_state(queue: "multiprocessing.Queue[bool]") -> None:
    """Target of the spawned child: whether DASH is on once upstream is imported."""
    import distributed_shampoo  # noqa: F401

    from distributed_shampoo_dash.integration import is_enabled

    queue.put(is_enabled())


@pytest.mark.upstream
def test_a_spawned_child_gets_dash(user_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONUSERBASE", str(user_base))
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "1")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=report_dash_state, args=(queue,))
    child.start()
    state = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert state is True
