"""Shared benchmark helpers: measure a command's whole process tree, save results, print tables,
say which code was measured (`run_identity`) and how loaded the machine was (`loadavg`).

Benchmarks are not tests: each one runs our code and a named baseline in the same run, prints
both and the ratio, and saves the numbers as JSON under benchmarks/results/.

`measure` runs a command as a subprocess and samples, every `interval` seconds, the memory of
the whole process tree: the child and every descendant (for a Ray driver that is gcs_server,
raylet, the agents and every worker that `ray.init` starts). It records peak summed RSS and peak
summed PSS. PSS is the honest number for Ray: the shared-memory object store is mapped into the
raylet and into every worker that reads an object, so summed RSS counts those pages several
times, while PSS splits each shared page between the processes that map it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import psutil

__all__ = [
    "RESULTS_DIR",
    "MiB",
    "measure",
    "save_results",
    "machine_info",
    "print_table",
    "fmt",
    "loadavg",
    "run_identity",
    "warn_if_changed",
]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_DIR = HERE / "results"
MiB = 1024 * 1024


def loadavg() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (2 decimals): other work on the machine skews wall times."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def run_identity(
    extra_files: Sequence[str] = ("configs/*",), dirty_paths: Sequence[str] = ("rayloop", "configs")
) -> dict[str, Any]:
    """Which code a benchmark measured: `rayloop.lineage.code_version()` (the rayloop version, a
    digest of rayloop's Python sources, the git commit) plus what matters to this benchmark's
    results beyond those sources.

    `files_sha256`: one digest per glob pattern of `extra_files` (relative to the repository root;
    each file's path and contents), e.g. configs/* or one module. `dirty_files`: uncommitted files
    under `dirty_paths` (`git status --porcelain`; empty outside a git checkout).
    """
    from rayloop.lineage import code_version

    files = {}
    for pattern in extra_files:
        digest = hashlib.sha256()
        for path in sorted(p for p in ROOT.glob(pattern) if p.is_file()):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
        files[pattern] = digest.hexdigest()[:16]
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", *dirty_paths],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        status = ""
    return {**code_version(), "files_sha256": files, "dirty_files": [line[3:] for line in status.splitlines()]}


def warn_if_changed(
    code: dict[str, Any],
    extra_files: Sequence[str] = ("configs/*",),
    dirty_paths: Sequence[str] = ("rayloop", "configs"),
    *,
    what: str = "rayloop/ or configs/",
) -> bool:
    """Take `run_identity` again after a run; when the sources differ from `code` (taken before the
    run, with the same arguments), record the new identity as code["changed_during_run"], print a
    warning and return True: the results may mix two versions of the code."""
    after = run_identity(extra_files, dirty_paths)
    if after["source_sha256"] == code["source_sha256"] and after["files_sha256"] == code["files_sha256"]:
        return False
    code["changed_during_run"] = after
    print(f"WARNING: {what} changed during the run; see code.changed_during_run", flush=True)
    return True


def _label(proc: psutil.Process) -> str:
    """A short, readable name: Ray workers retitle themselves (ray::IDLE, ray::ReadParquet->...)."""
    try:
        cmd = proc.cmdline()
        name = proc.name()
    except (psutil.Error, OSError):
        return "?"
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0][:60]
    for part in cmd[:4]:
        base = os.path.basename(part)
        if base in ("gcs_server", "raylet") or base.endswith(".py"):
            return base
    return name


def _memory(proc: psutil.Process) -> tuple[int, int, int] | None:
    """(rss, pss, uss) in bytes, or None when the process is gone or unreadable."""
    try:
        info = proc.memory_full_info()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except (psutil.AccessDenied, OSError):
        try:  # no smaps access: fall back to RSS for both
            rss = proc.memory_info().rss
        except (psutil.Error, OSError):
            return None
        return rss, rss, rss
    return info.rss, getattr(info, "pss", info.rss), getattr(info, "uss", info.rss)


def measure(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    interval: float = 0.1,
    timeout: float | None = None,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    cwd: str | os.PathLike[str] | None = None,
    straggler_grace_s: float = 10.0,
) -> dict[str, Any]:
    """Run `cmd`, sampling the memory of its whole process tree; return wall time, exit code, peaks.

    Every process ever seen in the tree keeps being sampled even if it is re-parented (a daemon
    that outlives its parent still counts). When the command exits, processes of its tree still
    alive get `straggler_grace_s` to exit by themselves and are then terminated, since this run
    started them.

    Returns a dict with: returncode, wall_s; peak_rss_bytes, peak_pss_bytes, peak_uss_bytes (each
    summed over the tree); the processes at the PSS peak (`peak_pss_breakdown`: label -> PSS bytes,
    largest first) and the summed USS (private memory) at that moment; max_processes; samples;
    timeline (per second, the max of that second: rss, pss and shmem delta); loadavg_start/end;
    and two machine-wide cross-checks that include anything else running on the machine:
    peak_system_used_delta_bytes (used memory above the value at start) and
    peak_shmem_delta_bytes (/proc/meminfo Shmem above start: the resident pages of Ray's object
    store in /dev/shm).
    """
    env = dict(os.environ if env is None else env)
    vm0 = psutil.virtual_memory()
    used0 = vm0.total - vm0.available
    shared0 = getattr(vm0, "shared", 0)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    child = subprocess.Popen(list(cmd), env=env, stdout=stdout, stderr=stderr, cwd=cwd)
    root = psutil.Process(child.pid)
    known: dict[int, psutil.Process] = {child.pid: root}
    peak_rss = peak_pss = peak_uss = 0
    uss_at_peak_pss = shmem_at_peak_pss = peak_shmem_delta = 0
    peak_breakdown: dict[str, int] = {}
    peak_pss_at = 0.0
    max_procs = 0
    samples = 0
    timeline: dict[int, list[int]] = {}
    peak_used_delta = 0
    timed_out = False

    def sample(now: float) -> None:
        nonlocal peak_rss, peak_pss, peak_uss, peak_breakdown, peak_pss_at, max_procs, samples, peak_used_delta
        nonlocal uss_at_peak_pss, shmem_at_peak_pss, peak_shmem_delta
        try:
            for proc in root.children(recursive=True):
                key = proc.pid
                if key not in known:
                    known[key] = proc
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
        rss_sum = pss_sum = uss_sum = 0
        alive: list[tuple[psutil.Process, int]] = []
        for pid, proc in list(known.items()):
            if not proc.is_running():  # also guards against pid reuse (create time is checked)
                del known[pid]
                continue
            mem = _memory(proc)
            if mem is None:
                continue
            rss_sum += mem[0]
            pss_sum += mem[1]
            uss_sum += mem[2]
            alive.append((proc, mem[1]))
        samples += 1
        max_procs = max(max_procs, len(alive))
        peak_rss = max(peak_rss, rss_sum)
        peak_uss = max(peak_uss, uss_sum)
        vm = psutil.virtual_memory()
        shmem_delta = getattr(vm, "shared", 0) - shared0
        peak_shmem_delta = max(peak_shmem_delta, shmem_delta)
        peak_used_delta = max(peak_used_delta, (vm.total - vm.available) - used0)
        if pss_sum > peak_pss:
            peak_pss = pss_sum
            uss_at_peak_pss = uss_sum
            shmem_at_peak_pss = shmem_delta
            peak_pss_at = now - start
            breakdown: dict[str, int] = {}
            for proc, pss in alive:
                label = _label(proc)
                breakdown[label] = breakdown.get(label, 0) + pss
            peak_breakdown = dict(sorted(breakdown.items(), key=lambda kv: -kv[1]))
        second = int(now - start)
        point = timeline.setdefault(second, [0, 0, 0])
        point[0] = max(point[0], rss_sum)
        point[1] = max(point[1], pss_sum)
        point[2] = max(point[2], shmem_delta)

    while True:
        now = time.perf_counter()
        if child.poll() is not None:
            break
        if timeout is not None and now - start > timeout:
            timed_out = True
            _terminate(list(known.values()))
            child.wait()
            break
        sample(now)
        time.sleep(max(0.0, interval - (time.perf_counter() - now)))
    wall = time.perf_counter() - start
    returncode = child.returncode

    # Processes the command left behind (e.g. Ray daemons still shutting down).
    deadline = time.perf_counter() + straggler_grace_s
    leftovers = [p for p in known.values() if p.pid != child.pid and _alive(p)]
    while leftovers and time.perf_counter() < deadline:
        sample(time.perf_counter())
        time.sleep(interval)
        leftovers = [p for p in leftovers if _alive(p)]
    if leftovers:
        _terminate(leftovers)

    return {
        "cmd": list(cmd),
        "returncode": returncode,
        "timed_out": timed_out,
        "wall_s": round(wall, 3),
        "peak_rss_bytes": peak_rss,
        "peak_pss_bytes": peak_pss,
        "peak_pss_at_s": round(peak_pss_at, 2),
        "peak_uss_bytes": peak_uss,
        "uss_at_peak_pss_bytes": uss_at_peak_pss,
        "shmem_at_peak_pss_bytes": shmem_at_peak_pss,
        "peak_shmem_delta_bytes": peak_shmem_delta,
        "peak_pss_breakdown": peak_breakdown,
        "max_processes": max_procs,
        "samples": samples,
        "sample_interval_s": interval,
        "leftover_processes_killed": len(leftovers),
        # 1-minute load average at start and end: other work on the machine skews wall times
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "peak_system_used_delta_bytes": peak_used_delta,
        "timeline_columns": ["second", "rss_bytes", "pss_bytes", "shmem_delta_bytes"],
        "timeline": [[s, *point] for s, point in sorted(timeline.items())],
    }


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _terminate(procs: Sequence[psutil.Process], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace`, only the given processes (ones this run started)."""
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs), timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)


def save_results(name: str, payload: Mapping[str, Any]) -> Path:
    """Write benchmarks/results/<name>.json (directory created) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


def machine_info(packages: Sequence[str] = ()) -> dict[str, Any]:
    """CPU count, total memory, Python and package versions, date: the context of every number."""
    from importlib import metadata

    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_total_bytes": psutil.virtual_memory().total,
        "memory_total_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "versions": versions,
    }


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table when rich is installed and stdout is a terminal-ish stream, else plain text."""
    cells = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None  # type: ignore[assignment]
    if Console is not None:
        table = Table(title=title)
        for i, col in enumerate(columns):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in cells:
            table.add_row(*row)
        Console(width=max(140, sum(len(c) for c in columns) + 8 * len(columns))).print(table)
        return
    widths = [max(len(str(c)), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print(title)
    print("  ".join(str(c).rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
