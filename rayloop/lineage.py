"""Where a model came from: the code, the libraries and the exact data it saw (pure, no Ray)."""

from __future__ import annotations

import hashlib
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

import rayloop

__all__ = ["code_version", "library_versions", "data_fingerprint"]

_PACKAGE = Path(rayloop.__file__).resolve().parent
LIBRARIES = ("ray", "lightgbm", "torch", "mlflow", "pyarrow", "numpy", "pandas", "pydantic")


def code_version() -> dict[str, Any]:
    """The git commit when there is one (a Ray job's working_dir has none) and always a digest
    of the rayloop sources, so two runs of the same code say so either way."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(_PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    commit = None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_PACKAGE, capture_output=True, text=True, timeout=10, check=False
        )
        commit = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"rayloop": rayloop.__version__, "source_sha256": digest.hexdigest()[:16], "git_commit": commit}


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def data_fingerprint(directory: str | Path) -> str:
    """A digest of a Parquet directory from its footers: relative path, rows and the file
    statistics (no full read, so it costs milliseconds at any size)."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*.parquet")):
        meta = pq.read_metadata(path)
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(f"{meta.num_rows}:{meta.num_row_groups}:{path.stat().st_size}".encode())
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            for j in range(group.num_columns):
                stats = group.column(j).statistics
                if stats is not None and stats.has_min_max:
                    digest.update(f"{stats.min!r}{stats.max!r}{stats.null_count}".encode())
    return digest.hexdigest()[:24]
