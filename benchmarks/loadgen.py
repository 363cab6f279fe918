"""HTTP load generation and CPU accounting for the serving benchmarks: one copy, shared by every scenario.

- The client: a small HTTP/1.1 client on raw asyncio (uvloop when the caller installs its event loop
  policy) with keep-alive connections, one request at a time per connection (`connect`,
  `http_request`; wrk is not installed). Its ceiling is measured against `echo_server`, and every
  step records the client's CPU, so a step the client limited shows.
- Steps: `closed_step` (N clients, each sends its next request when the previous one is answered)
  and `open_step` (requests scheduled at a fixed, evenly spaced rate; latency counts from each
  request's scheduled send time, so a server that falls behind cannot slow the generator down and
  hide its queue). `rate_search` finds the highest open-loop rate whose p99 meets an SLO.
- CPU accounting during a step (`Probe`): the generator's own CPU, the server process tree's CPU by
  process, each core's busy share (`core_times`, `core_busy`) and server CPU per answered request
  (`cpu_per_request`), which hardly moves when other work takes part of the server's core.
- Servers: a command pinned to one core with its whole process tree remembered (`pinned`, `Server`,
  `wait_http`).
- Latency summaries (`latency_summary`, `summarize_latencies`): nearest-rank percentiles from
  `rayloop.latency`, the one definition every result file uses.
- Comparing arms over several rounds: `alternating` (the order reversed every other round) and
  `paired_ratios`.

Only the standard library, psutil, rayloop.latency and (for `echo_server`) uvloop: no Ray and no
rayloop serving code.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil

from rayloop.latency import percentile

__all__ = [
    "SERVER_CORE",
    "CLIENT_CORE",
    "Conn",
    "connect",
    "http_request",
    "Step",
    "closed_step",
    "open_step",
    "rate_search",
    "Probe",
    "busy_cpu_s",
    "core_times",
    "core_busy",
    "process_cpu_s",
    "process_label",
    "cpu_per_request",
    "latency_summary",
    "summarize_latencies",
    "ratio",
    "alternating",
    "paired_ratios",
    "pinned",
    "Server",
    "wait_http",
    "echo_server",
]

# Placement: servers on core 0, the load generator on core 1 (Probe reports these two cores).
SERVER_CORE = 0
CLIENT_CORE = 1

Completion = tuple[float, float, int]  # (scheduled or start time, done time, HTTP status)


# ---- the HTTP client -----------------------------------------------------------------------------
LOCALHOST = "127.0.0.1"  # every server of the one-machine benchmarks; the cluster ones pass a node's address


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, content-length or chunked replies."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.head_end = -1
        self.need = -1
        self.chunked = False
        self.status = 0
        self.close_after = False
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None:
            self._parse()

    def _parse(self) -> None:
        buf = self.buf
        if self.head_end < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            self.status = int(head[9:12])
            self.head_end = end + 4
            self.close_after = b"\r\nconnection: close" in head
            self.chunked = b"\r\ntransfer-encoding: chunked" in head
            if not self.chunked:
                j = head.find(b"\r\ncontent-length:")
                length = int(head[j + 17 :].split(b"\r\n", 1)[0]) if j >= 0 else 0
                self.need = self.head_end + length
        if self.chunked:
            pos, parts = self.head_end, []
            while True:
                k = buf.find(b"\r\n", pos)
                if k < 0:
                    return
                size = int(bytes(buf[pos:k]).split(b";", 1)[0], 16)
                if size == 0:
                    end = buf.find(b"\r\n\r\n", k)
                    if end < 0:
                        return
                    consumed = end + 4
                    break
                if len(buf) < k + 2 + size + 2:
                    return
                parts.append(bytes(buf[k + 2 : k + 2 + size]))
                pos = k + 2 + size + 2
            body = b"".join(parts)
        else:
            if len(buf) < self.need:
                return
            body, consumed = bytes(buf[self.head_end : self.need]), self.need
        del buf[:consumed]
        self.head_end, self.need = -1, -1
        waiter, self.waiter = self.waiter, None
        waiter.set_result((self.status, body))

    def request(self, data: bytes) -> asyncio.Future:
        """Send one encoded request (`http_request`); the future gets (status, body)."""
        fut = asyncio.get_running_loop().create_future()
        self.waiter = fut
        self.transport.write(data)
        if self.buf:  # a reply that arrived early (never for HTTP/1.1 without pipelining)
            self._parse()
        return fut

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def http_request(method: str, path: str, port: int, body: bytes = b"", host: str = LOCALHOST) -> bytes:
    """The bytes of one HTTP/1.1 request to `host`:`port` (a POST body is sent as JSON)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def connect(port: int, host: str = LOCALHOST) -> Conn:
    """A new keep-alive connection to `host`:`port`."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Conn, host, port)
    return conn


class Step:
    """Shared state of one measured step; completions are (t_sched_or_start, t_done, status)."""

    def __init__(self) -> None:
        self.stop = False
        self.done: list[Completion] = []
        self.conn_errors = 0
        self.next = 0


async def _send(conn_box: list[Conn], port: int, data: bytes, step: Step, host: str) -> tuple[int, bytes] | None:
    conn = conn_box[0]
    try:
        if conn.lost:
            raise ConnectionError("closed")
        status, body = await conn.request(data)
    except (ConnectionError, OSError):
        step.conn_errors += 1
        conn.close()
        try:
            conn_box[0] = await connect(port, host)
        except OSError:
            await asyncio.sleep(0.05)
        return None
    if conn.close_after:
        conn.close()
        conn_box[0] = await connect(port, host)
    return status, body


async def _closed_worker(
    conn_box: list[Conn], port: int, reqs: list[bytes], offset: int, step: Step, host: str
) -> None:
    perf, n, i = time.perf_counter, len(reqs), offset
    done = step.done
    while not step.stop:
        data = reqs[i % n]
        i += 1
        t0 = perf()
        got = await _send(conn_box, port, data, step, host)
        if got is not None:
            done.append((t0, perf(), got[0]))


async def _open_worker(
    conn_box: list[Conn],
    port: int,
    reqs: list[bytes],
    step: Step,
    t0: float,
    interval: float,
    t_stop: float,
    host: str,
) -> None:
    perf, n = time.perf_counter, len(reqs)
    done = step.done
    while True:
        i = step.next
        step.next += 1
        t_sched = t0 + i * interval
        if t_sched >= t_stop:
            return
        now = perf()
        if t_sched > now:
            await asyncio.sleep(t_sched - now)
        got = await _send(conn_box, port, reqs[i % n], step, host)
        if got is not None:
            done.append((t_sched, perf(), got[0]))


# ---- CPU accounting --------------------------------------------------------------------------------
# Busy = every field of /proc/stat (and of psutil.cpu_times()) but idle and iowait; guest time is
# already inside user time.
BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")
_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def busy_cpu_s(times: Any) -> float:
    """Busy CPU seconds in a `psutil.cpu_times()` result (since boot; all cores when not per CPU)."""
    return sum(getattr(times, f, 0.0) for f in BUSY_FIELDS)


def core_times() -> dict[str, tuple[float, float]]:
    """Per-core (busy, total) jiffies from /proc/stat: what the whole machine did on each core."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *vals = line.split()
                    fields = dict(zip(_STAT_FIELDS, (float(x) for x in vals)))
                    busy = sum(fields.get(k, 0.0) for k in BUSY_FIELDS)
                    out[name] = (busy, busy + fields.get("idle", 0.0) + fields.get("iowait", 0.0))
    except OSError:
        pass
    return out


def core_busy(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float | None]:
    """Each core's busy fraction between two `core_times()` readings."""
    busy = {}
    for name, (b1, t1) in after.items():
        if name in before:
            b0, t0 = before[name]
            busy[name] = round((b1 - b0) / (t1 - t0), 3) if t1 > t0 else None
    return busy


def process_cpu_s(procs: Iterable[psutil.Process]) -> dict[psutil.Process, float]:
    """User + system CPU seconds of each process still readable (psutil identifies a process by pid
    and start time, so a reused pid is another key)."""
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p] = t.user + t.system
        except psutil.Error:  # gone
            pass
    return out


def process_label(p: psutil.Process) -> str:
    """A short name: Ray retitles its workers (ray::ServeReplica:...), daemons by binary or script."""
    try:
        cmd = p.cmdline()
        name = p.name()
    except psutil.Error:  # gone or unreadable
        return "?"
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split(" ")[0].split(".")[0][:60]  # the title changes with the running method
    for part in cmd[:4]:
        base = os.path.basename(part)
        if base in ("gcs_server", "raylet", "haproxy", "uvicorn") or base.endswith((".py", ".sh")):
            return base
    return name


class Probe:
    """CPU use during a step: this process (the generator), the server tree, and each core.

    Read at `start()` and `stop()` only (no sampling thread in the generator's process); a server
    process counts when it is there at both.
    """

    def __init__(
        self, server_procs: Sequence[psutil.Process], server_core: int = SERVER_CORE, client_core: int = CLIENT_CORE
    ) -> None:
        self.me = psutil.Process()
        self.server = list(server_procs)
        self.server_core, self.client_core = server_core, client_core

    def start(self) -> None:
        t = self.me.cpu_times()
        self.t0, self.me0, self.srv0, self.cores0 = (
            time.perf_counter(),
            t.user + t.system,
            process_cpu_s(self.server),
            core_times(),
        )

    def stop(self) -> dict[str, Any]:
        """`loadgen_cpu`, `server_cpu`, `neighbour_cpu` (fractions of one core), `server_cpu_by_process`
        and `core_busy` of the two cores, over the time since `start()`."""
        t = self.me.cpu_times()
        wall = time.perf_counter() - self.t0
        busy = core_busy(self.cores0, core_times())
        srv1 = process_cpu_s(self.server)
        by_label: Counter = Counter()
        for p in self.server:
            if p in srv1 and p in self.srv0:
                by_label[process_label(p)] += (srv1[p] - self.srv0[p]) / wall
        server = sum(by_label.values())
        core0 = busy.get(f"cpu{self.server_core}")
        return {
            "loadgen_cpu": round((t.user + t.system - self.me0) / wall, 3),
            "server_cpu": round(server, 3) if self.server else None,
            # the part of the server's core used by processes outside the server tree (other work
            # on the machine): the noise in this step
            "neighbour_cpu": round(max(0.0, core0 - server), 3) if core0 is not None and self.server else None,
            # which server processes used the core (fraction of one core each)
            "server_cpu_by_process": {k: round(v, 3) for k, v in by_label.most_common() if v >= 0.005},
            "core_busy": {k: busy.get(k) for k in (f"cpu{self.server_core}", f"cpu{self.client_core}")},
        }


def cpu_per_request(cpu: dict[str, Any], stats: dict[str, Any]) -> float | None:
    """Server CPU (the whole server process tree) per answered request, in µs: unlike req/s, this
    hardly moves when other work on the machine takes part of the server's core."""
    if not cpu.get("server_cpu") or not stats["ok"]:
        return None
    return round(cpu["server_cpu"] * stats["window_s"] / stats["ok"] * 1e6, 1)


# ---- latency summaries ---------------------------------------------------------------------------
def _round(x: float | None, digits: int | None) -> float | None:
    return x if x is None or digits is None else round(x, digits)


def latency_summary(latencies_ms: Iterable[float], digits: int | None = 3) -> dict[str, float | None]:
    """p50, p90, p99, p99.9 (nearest rank), max and mean of latencies in ms, in any order, rounded
    to `digits` (None: as they are); each None when there are no latencies."""
    ordered = sorted(latencies_ms)
    return {
        "p50_ms": _round(percentile(ordered, 50), digits),
        "p90_ms": _round(percentile(ordered, 90), digits),
        "p99_ms": _round(percentile(ordered, 99), digits),
        "p999_ms": _round(percentile(ordered, 99.9), digits),
        "max_ms": _round(ordered[-1] if ordered else None, digits),
        "mean_ms": _round(statistics.fmean(ordered) if ordered else None, digits),
    }


def summarize_latencies(
    done: list[Completion], lo: float, hi: float, by_sched: bool, rows_per_request: int
) -> dict[str, Any]:
    """Stats over the completions in the window [lo, hi): by completion time (closed loop) or by
    scheduled send time (open loop). Latencies are of the 200 answers only."""
    key = 0 if by_sched else 1
    inside = [d for d in done if lo <= d[key] < hi]
    ok = [(d[1] - d[0]) * 1000 for d in inside if d[2] == 200]
    statuses = Counter(str(d[2]) for d in inside)
    window = hi - lo
    return {
        "window_s": round(window, 3),
        "completed": len(inside),
        "ok": len(ok),
        "statuses": dict(statuses),
        "rps": round(len(inside) / window, 1),
        "ok_rps": round(len(ok) / window, 1),
        "rows_per_s": round(len(ok) * rows_per_request / window, 1),
        **latency_summary(ok),
    }


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    """numerator / denominator rounded, or None when either is missing or zero."""
    return round(numerator / denominator, digits) if numerator and denominator else None


# ---- steps ---------------------------------------------------------------------------------------
async def closed_step(
    port: int,
    reqs: list[bytes],
    concurrency: int,
    warmup: float,
    duration: float,
    rows_per_request: int,
    server_procs: Sequence[psutil.Process],
    grace: float = 15.0,
    host: str = LOCALHOST,
) -> dict[str, Any]:
    """`concurrency` connections, each sending its next request when the previous one is answered.

    `reqs` are encoded requests (`http_request`), sent round-robin; each connection starts at its own
    offset. Measured: `duration` seconds after `warmup`, with the garbage collector off. Returns the
    latency summary, status codes, connection errors and the `Probe` readings of the window.
    """
    boxes = [[c] for c in await asyncio.gather(*(connect(port, host) for _ in range(concurrency)))]
    step = Step()
    offsets = [i * 7919 for i in range(concurrency)]
    tasks = [asyncio.ensure_future(_closed_worker(b, port, reqs, o, step, host)) for b, o in zip(boxes, offsets)]
    probe = Probe(server_procs)
    await asyncio.sleep(warmup)
    gc.collect()
    gc.disable()
    lo = time.perf_counter()
    probe.start()
    await asyncio.sleep(duration)
    hi = time.perf_counter()
    cpu = probe.stop()
    step.stop = True
    pending = await _end_step(tasks, boxes, grace)
    stats = summarize_latencies(step.done, lo, hi, False, rows_per_request)
    return {
        "mode": "closed",
        "concurrency": concurrency,
        "rows_per_request": rows_per_request,
        **stats,
        "conn_errors": step.conn_errors,
        "unfinished_at_end": len(pending),
        **cpu,
        "server_cpu_us_per_request": cpu_per_request(cpu, stats),
    }


async def _end_step(tasks: list[asyncio.Future], boxes: list[list[Conn]], grace: float) -> set[asyncio.Future]:
    """Wait up to `grace` for the step's workers, cancel the rest, re-enable GC, close the
    connections; returns the workers that did not finish."""
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for t in pending:
        t.cancel()
    gc.enable()
    for b in boxes:
        b[0].close()
    return pending


async def open_step(
    port: int,
    reqs: list[bytes],
    rate: float,
    warmup: float,
    duration: float,
    rows_per_request: int,
    server_procs: Sequence[psutil.Process],
    connections: int,
    *,
    slo_p99_ms: float,
    grace: float = 10.0,
    host: str = LOCALHOST,
) -> dict[str, Any]:
    """Requests scheduled at `rate` per second (evenly spaced) over up to `connections` connections;
    latency counts from the scheduled time, so time spent waiting for a free connection counts too.

    `meets_slo`: p99 <= `slo_p99_ms`, every request due in the measured window answered 200, and no
    connection errors.
    """
    boxes = [[c] for c in await asyncio.gather(*(connect(port, host) for _ in range(connections)))]
    step = Step()
    interval = 1.0 / rate
    gc.collect()
    gc.disable()
    t0 = time.perf_counter() + 0.05
    lo, hi = t0 + warmup, t0 + warmup + duration
    tasks = [asyncio.ensure_future(_open_worker(b, port, reqs, step, t0, interval, hi, host)) for b in boxes]
    probe = Probe(server_procs)
    await asyncio.sleep(max(0.0, lo - time.perf_counter()))
    probe.start()
    await asyncio.sleep(max(0.0, hi - time.perf_counter()))
    cpu = probe.stop()
    await _end_step(tasks, boxes, grace)
    # every request due in the window, sent or not (a worker cancelled at the grace limit never sent its next one)
    # (the same float expression the workers use, so the two counts agree exactly)
    scheduled = sum(1 for i in range(math.ceil((hi - t0) / interval) + 2) if lo <= t0 + i * interval < hi)
    stats = summarize_latencies(step.done, lo, hi, True, rows_per_request)
    unfinished = max(0, scheduled - stats["completed"])
    ok = (
        stats["p99_ms"] is not None
        and stats["p99_ms"] <= slo_p99_ms
        and stats["ok"] == scheduled
        and unfinished == 0
        and step.conn_errors == 0
    )
    return {
        "mode": "open",
        "target_rps": round(rate, 1),
        "connections": connections,
        "rows_per_request": rows_per_request,
        "scheduled": scheduled,
        **stats,
        "conn_errors": step.conn_errors,
        "unfinished": unfinished,
        "meets_slo": ok,
        **cpu,
        "server_cpu_us_per_request": cpu_per_request(cpu, stats),
    }


async def rate_search(
    port: int,
    reqs: list[bytes],
    start: float,
    server_procs: Sequence[psutil.Process],
    *,
    max_steps: int,
    precision: float,
    warmup: float,
    duration: float,
    connections: int,
    slo_p99_ms: float,
    host: str = LOCALHOST,
) -> dict[str, Any]:
    """Highest evenly spaced rate of one-row requests whose p99 (from the scheduled send time) is
    <= `slo_p99_ms` with every request answered 200: grow by 1.3x from `start` until a step fails
    (halve while none passes), then bisect until the passing and failing rates are within
    `precision` (a fraction), at most `max_steps` rates. A failing rate is tried once more."""
    lo = hi = None
    rate = max(start, 10.0)
    steps = []
    for _ in range(max_steps):
        # a failing rate gets one more try: a burst of other work on the machine can fail a step,
        # while the server's own periodic work (Ray's 10 s metrics cycle) is inside every window
        for attempt in range(2):
            res = await open_step(
                port, reqs, rate, warmup, duration, 1, server_procs, connections, slo_p99_ms=slo_p99_ms, host=host
            )
            res["attempt"] = attempt + 1
            steps.append(res)
            print(
                f"    open loop {rate:8.0f}/s (try {attempt + 1}): ok {res['ok_rps']:8.1f}/s p50 {res['p50_ms']} "
                f"p99 {res['p99_ms']} max {res['max_ms']} ms statuses {res['statuses']} "
                f"gen cpu {res['loadgen_cpu']:.2f} "
                f"neighbours {res['neighbour_cpu']} -> {'pass' if res['meets_slo'] else 'FAIL'}",
                flush=True,
            )
            if res["meets_slo"]:
                break
        if res["meets_slo"]:
            lo = rate if lo is None else max(lo, rate)
        else:
            hi = rate if hi is None else min(hi, rate)
        if lo is None:
            rate = rate * 0.5
            if rate < 10:
                break
        elif hi is None:
            rate = rate * 1.3
        else:
            if hi / lo <= 1 + precision:
                break
            rate = (lo + hi) / 2
    best = max((s for s in steps if s["meets_slo"]), key=lambda s: s["target_rps"], default=None)
    passed = {s["target_rps"] for s in steps if s["meets_slo"]}
    failed_above = min(
        (s for s in steps if s["target_rps"] not in passed and (best is None or s["target_rps"] > best["target_rps"])),
        key=lambda s: s["target_rps"],
        default=None,
    )
    return {
        "max_rps_at_slo": best["target_rps"] if best else 0.0,
        "at_max": best,
        "first_failing_above": failed_above["target_rps"] if failed_above else None,
        "generator_limited": bool(failed_above and failed_above["loadgen_cpu"] >= 0.9),
        "steps": steps,
    }


# ---- rounds ----------------------------------------------------------------------------------------
def alternating(units: Sequence[Any], rounds: int) -> list[tuple[int, Any]]:
    """(round, unit) for every unit `rounds` times, the order reversed every other round, so slow
    drift on the machine hits both units of a pair alike."""
    return [(r, u) for r in range(rounds) for u in (units if r % 2 == 0 else list(reversed(units)))]


def paired_ratios(on: list[float | None], off: list[float | None]) -> list[float]:
    """Round-by-round on/off ratios (rounds where either arm failed are left out)."""
    return [round(a / b, 3) for a, b in zip(on, off) if a and b]


# ---- servers: start, wait, stop ------------------------------------------------------------------
def pinned(cmd: list[str], core: int) -> list[str]:
    """The command pinned to one core; every process it starts inherits the affinity."""
    taskset = shutil.which("taskset")
    if taskset:
        return [taskset, "-c", str(core), *cmd]
    pin = f"import os, sys; os.sched_setaffinity(0, {{{core}}}); os.execvp(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", pin, *cmd]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Server:
    """A server subprocess pinned to `core`; remembers every process of its tree.

    Its output goes to `log_path`. With `stdin_pipe` the server is stopped by closing its stdin (it
    shuts itself down), else by SIGTERM.
    """

    def __init__(
        self,
        label: str,
        cmd: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        core: int = SERVER_CORE,
        cwd: str | os.PathLike[str] | None = None,
        stdin_pipe: bool = False,
    ) -> None:
        self.label = label
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            pinned(cmd, core),
            env=env,
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            start_new_session=True,
        )
        self.root = psutil.Process(self.proc.pid)
        self.known: dict[int, psutil.Process] = {self.proc.pid: self.root}

    def tree(self) -> list[psutil.Process]:
        """Every live process of the tree, including ones re-parented away from it."""
        try:
            for p in self.root.children(recursive=True):
                self.known.setdefault(p.pid, p)
        except psutil.Error:
            pass
        return [p for p in self.known.values() if _alive(p)]

    def describe(self) -> list[dict[str, Any]]:
        """pid, name, CPU affinity, nice and thread count of each live process of the tree."""
        out = []
        for p in self.tree():
            try:
                out.append(
                    {
                        "pid": p.pid,
                        "name": process_label(p),
                        "affinity": p.cpu_affinity(),
                        "nice": p.nice(),
                        "threads": p.num_threads(),
                    }
                )
            except psutil.Error:  # gone in between
                continue
        return out

    def tail(self, n: int = 3000) -> str:
        self.log.flush()
        try:
            return self.log_path.read_text()[-n:]
        except OSError:
            return ""

    def stop(self, grace: float = 60.0) -> dict[str, Any]:
        """Close stdin (Ray arms shut down by themselves) or SIGTERM, wait, then end stragglers."""
        self.tree()
        start = time.perf_counter()
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Ray daemons (gcs_server, raylet, HAProxy) may need a moment after the driver exits
        deadline = time.perf_counter() + 10
        left = [p for p in self.known.values() if _alive(p)]
        while left and time.perf_counter() < deadline:
            time.sleep(0.2)
            left = [p for p in left if _alive(p)]
        killed = []
        for p in left:  # only processes of this server's own tree
            try:
                killed.append(p.name())
                p.terminate()
            except psutil.Error:
                pass
        _, still = psutil.wait_procs(left, timeout=5)
        for p in still:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.log.close()
        return {
            "returncode": self.proc.returncode,
            "stop_s": round(time.perf_counter() - start, 2),
            "stragglers_terminated": killed,
        }


async def wait_http(port: int, path: str, timeout: float, server: Server) -> float:
    """Seconds until GET `path` answers 200; raises when the server exits or `timeout` passes."""
    start = time.perf_counter()
    data = http_request("GET", path, port)
    while time.perf_counter() - start < timeout:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.label} exited with {server.proc.returncode}:\n{server.tail()}")
        try:
            conn = await connect(port)
            try:
                status, _ = await asyncio.wait_for(conn.request(data), 5)
            finally:
                conn.close()
            if status == 200:
                return time.perf_counter() - start
        except (OSError, ConnectionError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.3)
    raise TimeoutError(f"{server.label}: no 200 from {path} in {timeout:.0f} s:\n{server.tail()}")


def echo_server(port: int) -> int:
    """A trivial server for the generator's own ceiling: answers every HTTP/1.1 request with a fixed
    small 200 on keep-alive connections (uvloop), until SIGTERM."""
    import uvloop

    reply = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{"status":"ok"}'

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.buf = bytearray()

        def data_received(self, data):
            buf = self.buf
            buf += data
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                j = head.find(b"content-length:")
                length = int(head[j + 15 :].split(b"\r\n", 1)[0]) if j >= 0 else 0
                if len(buf) < end + 4 + length:
                    return
                del buf[: end + 4 + length]
                self.transport.write(reply)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", port, backlog=1024)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    uvloop.run(main())
    return 0
