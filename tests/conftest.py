"""Shared by every test layer: state goes under a per-session RAYLOOP_HOME inside the project."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def rayloop_home() -> Path:
    """A fresh RAYLOOP_HOME under ./.rayloop (short enough for Ray's socket paths), removed after."""
    home = ROOT / ".rayloop" / f"t{uuid.uuid4().hex[:6]}"
    home.mkdir(parents=True)
    previous = os.environ.get("RAYLOOP_HOME")
    os.environ["RAYLOOP_HOME"] = str(home)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAYLOOP_PROGRESS", "0")
    yield home
    if previous is None:
        os.environ.pop("RAYLOOP_HOME", None)
    else:
        os.environ["RAYLOOP_HOME"] = previous
    shutil.rmtree(home, ignore_errors=True)
