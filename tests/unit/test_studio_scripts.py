"""The studio's pure JavaScript (tests/studio_js/*.test.mjs) under node's own test runner; the page as a
whole is tested in a real browser (tests/browser)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_studios_pure_scripts_pass_their_node_tests() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (the Makefile's node-clients target needs it too)")
    tests = sorted(str(p) for p in (ROOT / "tests" / "studio_js").glob("*.test.mjs"))
    assert tests
    # The studio's modules are ES modules in .js files with no package.json: detect them as such.
    run = subprocess.run(
        [node, "--experimental-detect-module", "--test", *tests],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    passed = re.search(r"^# pass (\d+)$", run.stdout, re.MULTILINE)
    assert passed and int(passed.group(1)) >= 5, run.stdout
