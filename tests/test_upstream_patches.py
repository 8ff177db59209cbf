"""The committed ``patches/`` series is what ``scripts/make_upstream_patches.py`` generates.

The generator locates upstream's hook points in the installed ``distributed_shampoo`` sources
(the pinned commit of the ``upstream`` extra); the test is skipped without them.
"""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.upstream
distributed_shampoo = pytest.importorskip("distributed_shampoo")

from tests.script_modules import load_script

REPOSITORY = Path(__file__).resolve().parents[1]
make_upstream_patches = load_script("make_upstream_patches")

UPSTREAM_ROOT = Path(distributed_shampoo.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def series() -> dict[str, str]:
    return make_upstream_patches.generate(UPSTREAM_ROOT)


def test_committed_series_is_what_the_generator_produces(series: dict[str, str]) -> None:
    committed = {path.name: path.read_text() for path in (REPOSITORY / "patches").glob("*.patch")}
    assert committed.keys() == series.keys()
    stale = [name for name in series if committed[name] != series[name]]
    assert not stale, f"regenerate with scripts/make_upstream_patches.py: {stale}"


def test_series_only_adds_lines(series: dict[str, str]) -> None:
    """Zero-context hunks without removed lines: no upstream line is reproduced."""
    for name, text in series.items():
        body = text[text.index("diff --git") :]
        for line in body.splitlines():
            if line.startswith(("diff --git", "--- ", "+++ ", "new file mode", "@@ ")):
                if line.startswith("@@ "):
                    assert re.fullmatch(r"@@ -\d+,0 \+\d+,\d+ @@", line), (name, line)
                continue
            assert line.startswith("+"), (name, line)


def test_every_new_python_file_of_the_series_carries_upstreams_copyright_header(
    series: dict[str, str],
) -> None:
    header = make_upstream_patches.COPYRIGHT_HEADER.splitlines()
    new_files = 0
    for text in series.values():
        for diff in text.split("diff --git ")[1:]:
            if "new file mode" not in diff or not diff.split()[0].endswith(".py"):
                continue
            new_files += 1
            added = [
                line[1:]
                for line in diff.splitlines()
                if line.startswith("+") and not line.startswith("+++")
            ]
            assert added[: len(header)] == header, diff.split()[0]
    assert new_files > 20
