"""The two-command setup: once installed, `make test` / `make demo` do not reinstall."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.skipif(
    not (ROOT / ".venv" / ".rayloop-installed").exists(), reason="this environment was not set up by `make`"
)
def test_setup_is_up_to_date_after_the_install():
    # `make -q` exits 0 only when the install stamp is newer than pyproject.toml
    done = subprocess.run(["make", "-q", "setup"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, "a second `make test` would reinstall: " + done.stdout + done.stderr
    dry = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True)
    assert "pip install" not in dry.stdout
