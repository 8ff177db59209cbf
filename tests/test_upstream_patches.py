"""The committed ``patches/`` series is what ``scripts/make_upstream_patches.py`` generates.

The generator locates upstream's hook points in the installed ``distributed_shampoo`` sources
(the pinned commit of the ``upstream`` extra); the test is skipped without them. The script runs as
a subprocess (``--verify``); the other tests read the committed series it verified.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.upstream
distributed_shampoo = pytest.importorskip("distributed_shampoo")

REPOSITORY = Path(__file__).resolve().parents[1]
UPSTREAM_ROOT = Path(distributed_shampoo.__file__).resolve().parents[1]
#: Upstream's copyright header, which every new Python file of the series starts with.
COPYRIGHT_HEADER = [
    "# Copyright (c) Meta Platforms, Inc. and affiliates.",
    "# All rights reserved.",
    "#",
    "# This source code is licensed under the BSD-style license found in the",
    "# LICENSE file in the root directory of this source tree.",
    "",
]


@pytest.fixture(scope="module")
def series() -> dict[str, str]:
    """The committed series, by file name."""
    return {path.name: path.read_text() for path in (REPOSITORY / "patches").glob("*.patch")}


def test_committed_series_is_what_the_generator_produces() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            str(REPOSITORY / "scripts" / "make_upstream_patches.py"),
            "--upstream",
            str(UPSTREAM_ROOT),
            "--verify",
        ],
        cwd=REPOSITORY,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, (
        f"regenerate with scripts/make_upstream_patches.py: {completed.stderr[-2000:]}"
    )
    assert "patches/ is up to date" in completed.stdout


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
    header = COPYRIGHT_HEADER
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
