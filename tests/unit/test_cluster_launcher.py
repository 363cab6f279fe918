"""`ray up` cluster files (cluster/launcher/*.yaml): valid for the launcher of the pinned Ray,
secure (token auth, dashboard on loopback), and big enough for what our configs ask.

Offline: Ray's own JSON schema and config preparation, no cloud API and no Ray start.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from rayloop.config import RayloopConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER_DIR = ROOT / "cluster" / "launcher"
LAUNCHERS = ["aws.yaml", "azure.yaml", "gcp.yaml"]
CONFIGS = ["configs/demo.yaml", "configs/cluster.yaml"]
SCHEMA_PATH = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"

# Ray's accelerator_type names (ray.util.accelerators) for the two GPU classes the loop uses
# (Azure offers neither L4 nor A10G: its inference class is the T4)
SERVE_GPUS = {"L4", "A10G", "T4"}
TRAIN_GPUS = {"A100", "A100-40G", "A100-80G", "H100", "H200"}
# the GPU class each kind of GPU work is meant for (it must not spill onto the other class)
GPU_CLASS = {"training worker": TRAIN_GPUS, "serve replica": SERVE_GPUS}
# ports that must never be open to the internet: dashboard/Jobs API, GCS, Ray Client, Serve
PRIVATE_PORTS = {8265, 6379, 10001, 8000}


# ---- the resource arithmetic, pure ---------------------------------------------------------------
@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]
    min_workers: int
    max_workers: int

    @property
    def gpus(self) -> float:
        return self.resources.get("GPU", 0)

    @property
    def accelerator(self) -> str | None:
        names = [k.split(":", 1)[1] for k in self.resources if k.startswith("accelerator_type:")]
        return names[0] if names else None


def units_per_node(node: dict[str, float], demand: dict[str, float]) -> int:
    """How many copies of `demand` (e.g. one training worker) one node holds, by every resource."""
    return min(math.floor(node.get(key, 0) / amount + 1e-9) for key, amount in demand.items() if amount > 0)


def candidates(types: list[NodeType], demand: dict[str, float]) -> list[NodeType]:
    """Worker types the autoscaler would launch for `demand`: GPU types for GPU work only, CPU types
    for CPU work only (Ray's autoscaler keeps GPU nodes for GPU work, so CPU work must fit without)."""
    wants_gpu = demand.get("GPU", 0) > 0
    return [t for t in types if (t.gpus > 0) == wants_gpu]


def max_units(types: list[NodeType], demand: dict[str, float], max_workers: int) -> int:
    """The most copies of `demand` the cluster holds at full size: the best-packing node types first,
    within each type's max_workers and the global max_workers."""
    per_type = sorted(
        ((units_per_node(t.resources, demand), t.max_workers) for t in candidates(types, demand)), reverse=True
    )
    total, nodes_left = 0, max_workers
    for units, count in per_type:
        take = min(count, nodes_left)
        total, nodes_left = total + units * take, nodes_left - take
    return total


def intended_types(types: list[NodeType], what: str, demand: dict[str, float]) -> list[NodeType]:
    """GPU training counts only on the training-GPU types and GPU replicas only on the serving-GPU
    types: spilling onto the other class would take GPUs the other half of the loop needs."""
    if demand.get("GPU", 0) > 0 and what in GPU_CLASS:
        return [t for t in types if t.accelerator in GPU_CLASS[what]]
    return types


def demands(config: RayloopConfig) -> dict[str, tuple[dict[str, float], int, str]]:
    """What each part of the loop asks Ray for: (one unit, how many at once, the config keys)."""
    training, tuning, serving = config.training, config.tuning, config.serving
    return {
        "training worker": (
            {"CPU": training.cpus_per_worker, "GPU": 1.0 if training.use_gpu else 0.0},
            # auto: at most one worker while the data fits a node (the head has no CPUs for local mode)
            1 if training.num_workers == "auto" else training.num_workers,
            "training.cpus_per_worker / training.use_gpu / training.num_workers",
        ),
        "tune trial": (
            {"CPU": tuning.cpus_per_trial},
            tuning.max_concurrent_trials,
            "tuning.cpus_per_trial / tuning.max_concurrent_trials",
        ),
        "serve replica": (
            {"CPU": serving.replica_cpus, "GPU": serving.replica_gpus},
            serving.max_replicas,
            "serving.replica_cpus / serving.replica_gpus / serving.max_replicas",
        ),
    }


def test_resource_arithmetic_packs_by_every_resource_and_respects_the_caps():
    """The helpers the checks below rely on: wrong arithmetic would let a too-small cluster pass."""
    assert units_per_node({"CPU": 16}, {"CPU": 4, "GPU": 0}) == 4
    assert units_per_node({"CPU": 96, "GPU": 8}, {"CPU": 4, "GPU": 1}) == 8
    assert units_per_node({"CPU": 8, "GPU": 1}, {"CPU": 2, "GPU": 0.5}) == 2
    assert units_per_node({"CPU": 8}, {"CPU": 2, "GPU": 1}) == 0
    cpu = NodeType("cpu", {"CPU": 16}, 0, 3)
    gpu = NodeType("gpu", {"CPU": 8, "GPU": 1}, 0, 4)
    assert [t.name for t in candidates([cpu, gpu], {"CPU": 1})] == ["cpu"]
    assert max_units([cpu, gpu], {"CPU": 4}, max_workers=10) == 12  # GPU nodes are not counted
    assert max_units([cpu, gpu], {"CPU": 4, "GPU": 1}, max_workers=10) == 4
    assert max_units([cpu, gpu], {"CPU": 4}, max_workers=2) == 8  # the global cap binds
    l4 = NodeType("l4", {"CPU": 8, "GPU": 1, "accelerator_type:L4": 1}, 0, 4)
    a100 = NodeType("a100", {"CPU": 96, "GPU": 8, "accelerator_type:A100": 1}, 0, 1)
    assert [t.name for t in intended_types([cpu, l4, a100], "training worker", {"CPU": 4, "GPU": 1})] == ["a100"]
    assert [t.name for t in intended_types([cpu, l4, a100], "serve replica", {"CPU": 2, "GPU": 1})] == ["l4"]
    assert intended_types([cpu, l4, a100], "tune trial", {"CPU": 4}) == [cpu, l4, a100]


# ---- loading ---------------------------------------------------------------------------------------
@functools.cache
def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((LAUNCHER_DIR / name).read_text())


def launcher(name: str) -> dict[str, Any]:
    return copy.deepcopy(_load(name))


def worker_types(cluster: dict[str, Any]) -> list[NodeType]:
    head = cluster["head_node_type"]
    return [
        NodeType(
            name, dict(spec["resources"]), spec.get("min_workers", 0), spec.get("max_workers", cluster["max_workers"])
        )
        for name, spec in cluster["available_node_types"].items()
        if name != head
    ]


def start_commands(cluster: dict[str, Any]) -> list[str]:
    return [c for c in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"] if "ray start" in c]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


# ---- validity --------------------------------------------------------------------------------------
def test_the_launcher_files_are_the_ones_the_issue_names():
    """A new cloud file gets the same checks only if it is listed here."""
    assert sorted(p.name for p in LAUNCHER_DIR.glob("*.yaml")) == sorted(LAUNCHERS)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_valid_against_the_cluster_schema_shipped_with_ray(name, schema):
    """The schema `ray up` validates against, in the draft it declares."""
    validator_cls = jsonschema.validators.validator_for(schema)
    assert validator_cls is jsonschema.Draft7Validator, schema.get("$schema")
    errors = sorted(validator_cls(schema).iter_errors(launcher(name)), key=lambda e: [str(p) for p in e.absolute_path])
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c.update(max_worker=4), id="misspelled top-level key"),
        pytest.param(
            lambda c: c["available_node_types"]["gpu_serve"]["resources"].update(GPU=0.5), id="fractional GPU"
        ),
        pytest.param(lambda c: c["available_node_types"]["cpu_worker"].pop("node_config"), id="no node_config"),
    ],
)
def test_the_schema_check_rejects_a_broken_file(mutate, schema):
    """The validation above can fail: the same file with one mistake does not pass."""
    broken = launcher("aws.yaml")
    mutate(broken)
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


@pytest.mark.parametrize("name", LAUNCHERS)
def test_ray_prepares_and_validates_the_file_offline(name, monkeypatch):
    """What `ray up` does before it calls the cloud: merge defaults, check min/max workers, the
    docker section and the head type. Any network connection here fails the test."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    def no_network(*args, **kwargs):
        raise AssertionError("the offline check tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    prepared = prepare_config(launcher(name))
    validate_config(prepared)
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0
    assert prepared["head_setup_commands"][: len(prepared["setup_commands"])] == prepared["setup_commands"]


# ---- image and setup ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LAUNCHERS)
def test_image_is_rayproject_ray_pinned_to_our_ray_with_python_311_and_cuda(name):
    """Nodes and the client must run the same Ray; GPU nodes need the CUDA image."""
    docker = launcher(name)["docker"]
    match = re.fullmatch(
        r"rayproject/ray:(?P<version>\d+\.\d+\.\d+)-py(?P<py>\d+)-(?P<cuda>gpu|cu\d+)", docker["image"]
    )
    assert match, f"{name}: docker.image {docker['image']!r} is not rayproject/ray:<version>-py311-<gpu|cuXXX>"
    assert match["version"] == ray.__version__, (
        f"{name}: image Ray {match['version']} != installed Ray {ray.__version__}"
    )
    assert match["py"] == "311"
    assert not {"head_image", "worker_image"} & docker.keys(), f"{name}: one image for every node"
    for node_type, spec in launcher(name)["available_node_types"].items():
        assert "worker_image" not in spec.get("docker", {}), f"{name}: {node_type} overrides the image"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_setup_installs_the_synced_checkout_with_the_gpu_extra_and_pins(name):
    """The working dir is synced (without venv, state or git) and installed the Makefile's way:
    torch first and pinned, then the project with the `gpu` extra, Ray kept at our version."""
    cluster = launcher(name)
    remote = next((r for r, local in cluster["file_mounts"].items() if local in (".", "./")), None)
    assert remote, f"{name}: file_mounts does not sync the working dir ('.')"
    for pattern in (".venv", ".rayloop", "**/.git"):
        assert pattern in cluster["rsync_exclude"], f"{name}: rsync_exclude lacks {pattern}"
    torch_spec = re.search(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)[1]
    setup = cluster["setup_commands"]
    torch_at = next((i for i, c in enumerate(setup) if f'"{torch_spec}"' in c and "-e" not in c.split()), None)
    install_at = next((i for i, c in enumerate(setup) if re.search(rf'-e "{re.escape(remote)}\[gpu\]"', c)), None)
    assert torch_at is not None, f'{name}: no `pip install "{torch_spec}"` (the Makefile\'s pin) in setup_commands'
    assert install_at is not None, f'{name}: setup_commands do not `pip install -e "{remote}[gpu]"`'
    assert torch_at < install_at, f"{name}: torch must be installed before the project"
    assert f'"{torch_spec}"' in setup[install_at] and f"=={ray.__version__}" in setup[install_at], (
        f"{name}: the project install must repeat the torch and Ray pins so the gpu extra cannot move them"
    )


# ---- security ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LAUNCHERS)
def test_token_auth_is_on_in_every_ray_start_and_the_token_is_synced_not_committed(name):
    """Every node must start with RAY_AUTH_MODE=token and find the same token file."""
    cluster = launcher(name)
    commands = start_commands(cluster)
    assert len(commands) == 2, f"{name}: expected one `ray start` for the head and one for workers"
    for command in commands:
        before_start = command.split("ray start", 1)[0]
        assert re.search(r"\bRAY_AUTH_MODE=token\b", before_start), f"{name}: no RAY_AUTH_MODE=token before {command!r}"
    assert cluster["file_mounts"].get("/home/ray/.ray/auth_token") == "~/.ray/auth_token", (
        f"{name}: the token file (`ray get-auth-token --generate`) must be synced to Ray's default path"
    )
    text = (LAUNCHER_DIR / name).read_text()
    assert not re.search(r"RAY_AUTH_TOKEN\s*[=:]", text), f"{name}: a token value in the file"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_dashboard_binds_loopback_and_metrics_port_is_fixed(name):
    """The dashboard and Jobs API are reached through `ray dashboard` (SSH) only; Prometheus
    scrapes a fixed port on every node."""
    cluster = launcher(name)
    assert not re.search(r"dashboard-host[= ]+0\.0\.0\.0", (LAUNCHER_DIR / name).read_text()), name
    head_start, worker_start = start_commands(cluster)
    assert "--head" in head_start and "--head" not in worker_start
    assert "--dashboard-host=127.0.0.1" in head_start.split(), f"{name}: head dashboard not on 127.0.0.1"
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start.split()
    for command in (head_start, worker_start):
        assert "--metrics-export-port=8080" in command.split(), f"{name}: no fixed metrics port in {command!r}"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_no_firewall_rule_opens_ray_or_serve_ports_to_the_internet(name):
    """Ray's own security group opens SSH and intra-cluster traffic; extra rules must not add
    the dashboard, GCS, Ray Client or Serve for 0.0.0.0/0."""
    rules = launcher(name)["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        world = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", []))
        ports = set(range(rule.get("FromPort", 0), rule.get("ToPort", 65535) + 1))
        assert not (world and ports & PRIVATE_PORTS), (
            f"{name}: {rule} opens {sorted(ports & PRIVATE_PORTS)} to the world"
        )


@pytest.mark.parametrize("name", LAUNCHERS)
def test_shared_state_is_the_prod_profile_home_on_every_node(name):
    """RAYLOOP_HOME comes from configs/profiles/prod.yaml at `ray start`; the launcher must mount
    that same path into every container."""
    cluster = launcher(name)
    home = yaml.safe_load((ROOT / "configs" / "profiles" / "prod.yaml").read_text())["home"]
    assert f"-v {home}:{home}" in cluster["docker"]["run_options"], f"{name}: {home} is not mounted into the container"
    assert any(f"mkdir -p {home}" in c for c in cluster["initialization_commands"]), (
        f"{name}: {home} not created on the host"
    )
    for spec in cluster["available_node_types"].values():
        assert "initialization_commands" not in spec, f"{name}: a node type would replace the host setup"
    for command in start_commands(cluster):
        assert "rayloop env --profile prod" in command.split("ray start", 1)[0], f"{name}: {command!r}"


def _home() -> str:
    return yaml.safe_load((ROOT / "configs" / "profiles" / "prod.yaml").read_text())["home"]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_the_shared_file_system_is_mounted_by_default(name):
    """Every node mounts the shared file system (EFS, Filestore, Azure Files over NFS) at the
    profile's home before its container starts; a node with a local home would split the loop's
    state. Re-running `ray up` must not mount it twice."""
    home = _home()
    init = launcher(name)["initialization_commands"]
    mounts = [i for i, c in enumerate(init) if re.search(r"\bmount -t nfs4?\b", c) and f" {home};" in c]
    assert len(mounts) == 1, f"{name}: no (or more than one) NFS mount of {home} in initialization_commands"
    assert f"mountpoint -q {home} ||" in init[mounts[0]], f"{name}: the mount is not skipped when already there"
    made = next(i for i, c in enumerate(init) if f"mkdir -p {home}" in c)
    owned = next(i for i, c in enumerate(init) if f"chown 1000:100 {home}" in c)
    assert made < mounts[0] < owned, f"{name}: mkdir, then mount, then chown (the share's root is what `ray` writes)"
    text = (LAUNCHER_DIR / name).read_text()
    assert not re.search(r"^\s*#.*mount -t nfs", text, re.M), f"{name}: a mount left commented out"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_the_head_runs_mlflow_on_its_private_address_and_every_node_uses_it(name):
    """The registry is an MLflow server on the head, started before Ray; it binds the head's
    private address (never all interfaces), keeps its sqlite store off the NFS mount and its
    artifacts on it, and every node's Ray (and so every job) points MLFLOW_TRACKING_URI at it."""
    home = _home()
    cluster = launcher(name)
    head = cluster["head_start_ray_commands"]
    servers = [c for c in head if "mlflow server" in c]
    assert len(servers) == 1, f"{name}: no MLflow server in head_start_ray_commands"
    server = servers[0]
    assert head.index(server) < head.index(start_commands(cluster)[0]), f"{name}: MLflow must be up before Ray"
    assert "ray.util.get_node_ip_address()" in server and '--host "$HEAD_IP"' in server, name
    assert "--serve-artifacts" in server and f"--artifacts-destination {home}/" in server, name
    default_store = re.search(r"echo (sqlite:///\S+)\)", server)
    assert default_store and not default_store[1].removeprefix("sqlite:///").startswith(home), (
        f"{name}: the sqlite store must be on the head's own disk, not on the NFS mount"
    )
    assert "setsid" in server and 'kill -- "-$(cat' in server, f"{name}: a restart must stop the old server"
    commands = "\n".join(c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cluster[key])
    assert "0.0.0.0" not in commands, f"{name}: a listener on all interfaces"
    head_start, worker_start = start_commands(cluster)
    for command, host in ((head_start, "$(python -c"), (worker_start, "$RAY_HEAD_IP")):
        before = command.split("ray start", 1)[0]
        assert f'export MLFLOW_TRACKING_URI="http://{host}' in before, f"{name}: {command!r}"
        # after the profile's exports, whose MLflow URI is a Kubernetes Service name
        assert before.index("export MLFLOW_TRACKING_URI") > before.index("rayloop env --profile prod"), name


# ---- node types and autoscaling ------------------------------------------------------------------
@pytest.mark.parametrize("name", LAUNCHERS)
def test_head_cpu_serving_gpu_and_training_gpu_node_types_by_their_resources(name):
    """Each role is found by what it provides, not by its name: a renamed or resized type still
    has to provide it."""
    cluster = launcher(name)
    head = cluster["available_node_types"][cluster["head_node_type"]]["resources"]
    assert head.get("CPU") == 0 and not head.get("GPU"), f"{name}: the head must take no tasks (CPU: 0), got {head}"
    types = worker_types(cluster)
    for t in types:
        assert "CPU" in t.resources, f"{name}: {t.name} does not declare CPU"
        if t.gpus:
            assert t.accelerator, f"{name}: GPU type {t.name} does not declare accelerator_type:<GPU>"
    roles = {
        "CPU workers": [t for t in types if t.resources["CPU"] >= 4 and not t.gpus],
        "serving GPU (L4/A10G)": [t for t in types if t.gpus >= 1 and t.accelerator in SERVE_GPUS],
        "training GPU (A100/H100)": [t for t in types if t.gpus >= 1 and t.accelerator in TRAIN_GPUS],
    }
    missing = [role for role, found in roles.items() if not found]
    assert not missing, f"{name}: no node type for {missing}; types: {[(t.name, t.resources) for t in types]}"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_autoscaling_bounds(name):
    """Workers scale between min and max per type, within the global max, and idle ones go away."""
    cluster = launcher(name)
    assert cluster["idle_timeout_minutes"] > 0
    assert cluster["upscaling_speed"] > 0
    types = worker_types(cluster)
    for t in types:
        assert 0 <= t.min_workers <= t.max_workers, (
            f"{name}: {t.name} min_workers {t.min_workers} > max_workers {t.max_workers}"
        )
        assert t.max_workers >= 1, f"{name}: {t.name} can never start"
    assert sum(t.min_workers for t in types) <= cluster["max_workers"]
    gpu_floor = [t.name for t in types if t.gpus and t.min_workers]
    assert not gpu_floor, f"{name}: GPU types {gpu_floor} would run (and bill) while idle"


# ---- our configs against the node types ----------------------------------------------------------
@pytest.mark.parametrize("config_path", CONFIGS)
def test_configs_load_and_keep_serve_on_loopback(config_path):
    """configs/cluster.yaml passes our validators; Serve is exposed on purpose, never by binding."""
    config = load_config(ROOT / config_path)
    assert config.serving.host == "127.0.0.1"


@pytest.mark.parametrize("config_path", CONFIGS)
@pytest.mark.parametrize("name", LAUNCHERS)
def test_each_training_worker_tune_trial_and_replica_fits_a_node_type(name, config_path):
    """A unit that fits no node type waits forever: the autoscaler has nothing to launch for it."""
    types = worker_types(launcher(name))
    for what, (demand, _, keys) in demands(load_config(ROOT / config_path)).items():
        fits = [t.name for t in candidates(types, demand) if units_per_node(t.resources, demand) >= 1]
        assert fits, (
            f"{name} x {config_path}: one {what} {demand} ({keys}) fits no node type; "
            f"candidates: {[(t.name, t.resources) for t in candidates(types, demand)]}"
        )


@pytest.mark.parametrize("config_path", CONFIGS)
@pytest.mark.parametrize("name", LAUNCHERS)
def test_gpu_work_fits_its_gpu_class(name, config_path):
    """GPU training belongs on the A100/H100 type and GPU replicas on the L4/A10G type."""
    types = worker_types(launcher(name))
    groups = demands(load_config(ROOT / config_path))
    for what, accelerators in GPU_CLASS.items():
        demand, _, keys = groups[what]
        if not demand.get("GPU"):
            continue
        fits = [t.name for t in intended_types(types, what, demand) if units_per_node(t.resources, demand) >= 1]
        assert fits, f"{name} x {config_path}: one {what} {demand} ({keys}) fits no {sorted(accelerators)} node type"


@pytest.mark.parametrize("config_path", CONFIGS)
@pytest.mark.parametrize("name", LAUNCHERS)
def test_cluster_at_max_size_holds_each_group(name, config_path):
    """All training workers at once (a gang), all concurrent trials, all replicas at max_replicas:
    each group alone must fit the cluster at its maximum size, GPU work on its own GPU class."""
    cluster = launcher(name)
    types = worker_types(cluster)
    for what, (demand, count, keys) in demands(load_config(ROOT / config_path)).items():
        usable = intended_types(types, what, demand)
        capacity = max_units(usable, demand, cluster["max_workers"])
        assert capacity >= count, (
            f"{name} x {config_path}: {count} x {what} {demand} ({keys}) but the cluster at max size "
            f"holds {capacity}; node types: "
            f"{[(t.name, t.resources, t.max_workers) for t in candidates(usable, demand)]}"
        )
