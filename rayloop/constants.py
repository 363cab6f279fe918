"""Every RAYLOOP_* environment knob: its name, its default, one line on what it is for.

Read where they are used (never at import), so a test or a job can set them first.
"""

from __future__ import annotations

__all__ = [
    "DATA_BLOCK_MB_ENV_VAR",
    "DATA_OBJECT_STORE_MB_ENV_VAR",
    "DEFAULT_DATA_BLOCK_MB",
    "DEFAULT_DATA_OBJECT_STORE_MB",
    "DEFAULT_HOME",
    "DEFAULT_INGRESS",
    "DEFAULT_SERVE_TOKEN_ENV_VAR",
    "HAPROXY_BINARY_ENV_VAR",
    "HAPROXY_BIND_HOST_ENV_VAR",
    "HOME_ENV_VAR",
    "INGRESS_ENV_VAR",
    "PROGRESS_ENV_VAR",
    "STORAGE_ENV_VAR",
    "SUBMISSION_ID_ENV_VAR",
    "DRIVER_CPUS_ENV_VAR",
    "NODE_IP_ENV_VAR",
]

# The state root: Ray's temp dir, Train/Tune storage, the MLflow store, logs, runs, reports.
HOME_ENV_VAR = "RAYLOOP_HOME"
DEFAULT_HOME = ".rayloop"  # relative to the working directory

# Train/Tune `storage_path` root on a cluster (s3://, gs:// or a shared path); default under home.
STORAGE_ENV_VAR = "RAYLOOP_STORAGE"

# Every job rayloop submits learns its own submission id from this variable.
SUBMISSION_ID_ENV_VAR = "RAYLOOP_SUBMISSION_ID"
# CPUs the Jobs API reserved for a job's driver (entrypoint_num_cpus): the driver's own, so the
# training placement counts them as free for a local-mode run in the driver.
DRIVER_CPUS_ENV_VAR = "RAYLOOP_DRIVER_CPUS"

# Serve's ingress: "haproxy" (Ray's HAProxy ingress, loopback-bound by our wrapper) or "proxy" (Serve's own).
INGRESS_ENV_VAR = "RAYLOOP_INGRESS"
DEFAULT_INGRESS = "haproxy"
# Set by rayloop for the HAProxy wrapper (serving/haproxy-local.sh): the real binary, the listeners' host.
HAPROXY_BINARY_ENV_VAR = "RAYLOOP_HAPROXY_BINARY"
HAPROXY_BIND_HOST_ENV_VAR = "RAYLOOP_HAPROXY_BIND_HOST"

# "0" turns Ray Data's progress bars off (tests, CI logs).
PROGRESS_ENV_VAR = "RAYLOOP_PROGRESS"

# Ray Data memory bounds for streaming preprocessing (benchmarks/README.md has the measurements).
DATA_BLOCK_MB_ENV_VAR = "RAYLOOP_DATA_BLOCK_MB"  # target block size, MB
DEFAULT_DATA_BLOCK_MB = 8
DATA_OBJECT_STORE_MB_ENV_VAR = "RAYLOOP_DATA_OBJECT_STORE_MB"  # blocks buffered between operators, MB
DEFAULT_DATA_OBJECT_STORE_MB = 128

# A node of `rayloop cluster local` names its own address here. Its nodes share one process table,
# and a Ray driver looks for its node's raylet among the raylets it can see: without the address it
# takes the head's, from any node.
NODE_IP_ENV_VAR = "RAYLOOP_NODE_IP"

# The variable holding the Serve API's optional bearer token: replicas check it, clients send it
# (`serving.auth_token_env` can name another).
DEFAULT_SERVE_TOKEN_ENV_VAR = "RAYLOOP_SERVE_TOKEN"
