"""The studio's vendored libraries (studio/vendor/, tests/browser/vendor/) are exactly what
scripts/vendor_studio.sh makes from the npm lock in scripts/studio_vendor/: the script runs again into a
temporary folder (npm ci from the registry) and every file must match, byte for byte, with none missing
or left over. A hand-edited or stale vendored file fails here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "scripts" / "studio_vendor"
VENDORED = (Path("studio/vendor"), Path("tests/browser/vendor"))


def files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for folder in VENDORED
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def test_the_vendored_files_are_the_scripts_output(tmp_path: Path) -> None:
    if shutil.which("npm") is None:
        pytest.fail("npm is not installed (Node.js 20 or later, as for tests/clients/node)", pytrace=False)
    result = subprocess.run(
        [str(ROOT / "scripts" / "vendor_studio.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fresh, committed = files(tmp_path), files(ROOT)
    assert sorted(committed) == sorted(fresh), "run scripts/vendor_studio.sh"
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert stale == [], f"differ from the locked packages (run scripts/vendor_studio.sh): {stale}"


def test_each_package_is_pinned_to_one_version_and_locked() -> None:
    wanted = json.loads((PACKAGE / "package.json").read_text())["dependencies"]
    locked = json.loads((PACKAGE / "package-lock.json").read_text())["packages"]
    for name, version in wanted.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name}: {version} is a range, not a version"
        assert locked[f"node_modules/{name}"]["version"] == version, name
        assert locked[f"node_modules/{name}"]["integrity"].startswith("sha512-"), name
