"""The two-command setup: once installed, `make test` / `make demo` do not reinstall, and `make test`
sets up what its tests need beyond Python packages."""

from __future__ import annotations

import subprocess

from tests.support import ROOT


def test_setup_is_up_to_date_after_the_install():
    assert (ROOT / ".venv" / ".rayloop-installed").exists(), "run the tests with `make test`: it sets up .venv"
    # `make -q` exits 0 only when the install stamp is newer than pyproject.toml
    done = subprocess.run(["make", "-q", "setup"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, "a second `make test` would reinstall: " + done.stdout + done.stderr
    dry = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True)
    assert "pip install" not in dry.stdout


def test_make_test_installs_prometheus_for_the_observability_tests_and_ci_lints_first():
    dry = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "scripts/install-prometheus.sh" in dry and dry.index("install-prometheus") < dry.index("pytest")
    commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("make ")]
    assert commands == ["make lint", "make test"]
