"""Where rayloop keeps state: everything under RAYLOOP_HOME (default ./.rayloop).

Nothing here creates folders at import; callers ask for a path and `ensure` it when they
write. Ray's temp dir, Train/Tune storage, the MLflow store, inference logs and reports
all live here, so a run never touches $HOME or /tmp/ray.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from rayloop.constants import DEFAULT_HOME, HOME_ENV_VAR, STORAGE_ENV_VAR
from rayloop.errors import RayTempDirError

# Unix socket paths are limited to 107 bytes; Ray appends up to 71 characters to its temp dir:
# /session_<date>_<time>_<usec>_<pid up to 7 digits>/sockets/dash_TaskEventsHead (the longest
# dashboard module socket; a 41-character temp dir broke MetricsHead's on CI).
MAX_RAY_TEMP_DIR_CHARS = 36

__all__ = [
    "home",
    "ensure",
    "ray_temp_dir",
    "ensure_ray_temp_dir",
    "short_path",
    "prune_dangling_links",
    "auth_token_path",
    "train_storage",
    "tune_storage",
    "checkpoint_storage",
    "mlflow_db",
    "mlflow_tracking_uri",
    "mlflow_artifacts",
    "inference_log_dir",
    "monitor_state_dir",
    "inference_log_root",
    "reports_dir",
    "runs_dir",
    "run_dir",
    "data_dir",
    "compile_cache_dir",
    "engine_cache_dir",
    "logs_dir",
    "audit_log",
]


def home() -> Path:
    """The state root, absolute, from RAYLOOP_HOME (default ./.rayloop in the working dir)."""
    return Path(os.environ.get(HOME_ENV_VAR) or DEFAULT_HOME).expanduser().resolve()


def ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def ray_temp_dir() -> Path:
    """Where Ray's temp dir (sessions, logs, spilled objects) lives: under home."""
    return home() / "ray"


def ensure_ray_temp_dir(real: Path | None = None) -> Path:
    """Create Ray's temp dir (default `ray_temp_dir()`) and return the path to hand to Ray
    (RAY_TMPDIR / --temp-dir).

    Unix socket paths are limited to 107 bytes. When the project path is too long for that,
    Ray gets a short symlink in the system temp dir that points here: the files stay under
    RAYLOOP_HOME, only the link lives outside.
    """
    return short_path(real or ray_temp_dir(), "rayloop", MAX_RAY_TEMP_DIR_CHARS)


def short_path(real: Path, tag: str, max_chars: int) -> Path:
    """`real` (created) when it has at most `max_chars` characters, else a short symlink to it,
    `$TMPDIR/<tag>-<uid>-<hash>`, for programs that put sockets under it."""
    real = ensure(real)
    if len(str(real)) <= max_chars:
        return real
    digest = hashlib.sha256(str(real).encode()).hexdigest()[:10]
    link = Path(tempfile.gettempdir()) / f"{tag}-{os.getuid()}-{digest}"
    if len(str(link)) > max_chars:
        raise RayTempDirError(
            f"{str(real)!r} is {len(str(real))} characters and so is the system temp dir "
            f"link {str(link)!r}; Unix socket paths allow at most {max_chars} here. "
            f"Set {HOME_ENV_VAR} (or TMPDIR) to a shorter path."
        )
    prune_dangling_links(tag)
    if link.is_symlink() and Path(os.readlink(link)) != real:
        link.unlink()
    if not link.is_symlink():
        link.symlink_to(real, target_is_directory=True)
    return link


def prune_dangling_links(tag: str) -> int:
    """Remove this user's earlier `short_path` links whose target is gone (a removed test, demo or
    benchmark home), so the system temp dir does not collect one per home; returns how many."""
    removed = 0
    for link in Path(tempfile.gettempdir()).glob(f"{tag}-{os.getuid()}-*"):
        try:
            if link.is_symlink() and not link.exists():
                link.unlink()
                removed += 1
        except OSError:  # another process removed or replaced it meanwhile
            continue
    return removed


def auth_token_path() -> Path:
    """The Ray auth token of a local cluster started by rayloop (instead of ~/.ray/auth_token)."""
    return home() / "auth_token"


def train_storage() -> Path:
    return home() / "train"


def tune_storage() -> Path:
    return home() / "tune"


def checkpoint_storage(kind: str) -> str:
    """Ray Train/Tune `storage_path` for `kind` ("train" or "tune"): RAYLOOP_STORAGE/<kind> when set
    (a cluster's s3://, gs:// or shared-filesystem URI, from its profile), else local under home."""
    root = os.environ.get(STORAGE_ENV_VAR, "").rstrip("/")
    if root:
        return f"{root}/{kind}"
    return str(ensure(train_storage() if kind == "train" else tune_storage()))


def mlflow_db() -> Path:
    return home() / "mlflow.db"


def mlflow_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set (a real server), else sqlite under home."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlflow_db()}"


def mlflow_artifacts() -> Path:
    return home() / "mlartifacts"


_INFERENCE_LOG = "inference_log"  # under a monitoring storage root (RAYLOOP_HOME by default)
_MONITOR = "monitor"


def inference_log_dir() -> Path:
    return home() / _INFERENCE_LOG


def monitor_state_dir(root: str, model_name: str) -> str:
    """A model's DriftMonitor state under a storage root: RAYLOOP_HOME or `monitoring.storage`
    (a path or a pyarrow URI)."""
    return f"{root.rstrip('/')}/{_MONITOR}/{model_name}"


def inference_log_root(root: str, model_name: str) -> str:
    """A model's inference log (Parquet, partitioned by date and hour) under a storage root."""
    return f"{root.rstrip('/')}/{_INFERENCE_LOG}/{model_name}"


def reports_dir() -> Path:
    return home() / "reports"


def runs_dir() -> Path:
    return home() / "runs"


def run_dir(run_id: str) -> Path:
    return runs_dir() / run_id


def data_dir() -> Path:
    """Generated data (demo and benchmarks)."""
    return home() / "data"


def compile_cache_dir(tool: str) -> Path:
    """Where torch.compile (`torchinductor`) and Triton keep compiled kernels instead of /tmp and
    ~/.triton: a replica with the torch_compile backend writes there."""
    return home() / "cache" / tool


def engine_cache_dir() -> Path:
    """Compiled serving engines (TensorRT), reused by the replicas of a model version."""
    return home() / "engine-cache"


def logs_dir() -> Path:
    return home() / "logs"


def audit_log() -> Path:
    """Every decision (gate, promotion, rollback, drift alarm, retrain) as one JSON line."""
    return home() / "audit.jsonl"
