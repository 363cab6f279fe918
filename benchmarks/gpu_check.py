"""GPU inference check for rayloop's tabular MLP: which way of running it on a GPU is fastest, and is it exact?

Runs `rayloop.models.mlp.TabularMLP` (random seeded weights, eval mode) through several backends at
several batch sizes and compares each with the named baseline, **eager fp32** at the same batch size,
in the same run:

- eager fp32 (baseline), eager bf16 (weights and input cast), eager bf16 autocast, eager fp16;
- explicit CUDA graphs (one `torch.cuda.CUDAGraph` per static batch size: copy the input into a static
  buffer, replay), fp32 and bf16;
- `torch.compile(mode="reduce-overhead")` fp32 and bf16, `mode="max-autotune-no-cudagraphs"` fp32;
- ONNX Runtime with the CUDA execution provider (only when onnxruntime has it);
- TensorRT through `torch_tensorrt` (only when importable), fp16, dynamic batch.

One call = input already on the device -> logits on the device (no host copies). Latency: each call is
timed alone, with `torch.cuda.synchronize()` after it (p50/p99 by nearest rank, `rayloop.latency`;
calls/s = 1 / mean latency, rows/s = calls/s x batch). "pipelined" = the same calls back to back
with one synchronize at the end (the CPU may run ahead of the GPU). Parity = max |sigmoid(logit) -
sigmoid(logit of eager fp32)| on the same input.

It is self-contained: it needs only the standard library, torch, rayloop/models/mlp.py and
rayloop/latency.py (numpy only for ONNX Runtime). Without CUDA it runs a small CPU version (eager
fp32/bf16 and torch.compile) and records every CUDA-only backend as skipped with "no CUDA". It never
exits non-zero because a backend failed: each failure is recorded with its error, and the JSON is
rewritten after every backend.

    python benchmarks/gpu_check.py --out $OUT/gpu_check.json      # on the lent GPU machine
    .venv/bin/python benchmarks/gpu_check.py --out /tmp/gpu_check_cpu.json   # CPU smoke run

`--part serving` measures instead what a Serve replica calls: `rayloop.serving.backends.build_backend`
on the demo MLP bundle (features fitted on synthetic rows), numpy float32 rows in, float64
probabilities out, host copies included. Named baseline: the `native` reference (eager torch on the
CPU, what a replica without a GPU serves). It needs rayloop's own dependencies (pydantic,
datasketches, pyarrow) but no Ray, LightGBM or MLflow.

    python benchmarks/gpu_check.py --part serving --out $OUT/gpu_serving.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import gc
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The lent GPU machine runs this from a bare checkout (no venv, rayloop not installed): the checkout
# goes on sys.path first, hence E402 on the rayloop imports below.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayloop.latency import percentile  # noqa: E402  (no dependencies)
from rayloop.models.mlp import TabularMLP  # noqa: E402  (imports only torch)

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_check.json"
BASELINE = "eager-fp32"

# A realistic feature matrix, laid out like FittedFeatures: numerics (with missing indicators) first,
# then the categorical codes, then the time-of-day / day-of-week sin/cos columns.
N_FEATURES = 30
CAT_IDX = [22, 23, 24, 25]
CARDINALITIES = [6, 12, 202, 6]
MODELS = {"mlp-128-64": (128, 64), "mlp-512-256-128": (512, 256, 128)}

# Largest integer every value up to which a dtype holds exactly: codes cast to it must stay exact.
EXACT_INT = {torch.bfloat16: 256, torch.float16: 2048, torch.float32: 2**24}
# Parity tolerance per compute dtype (reported, not asserted; fp32 assumes TF32 off).
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 5e-3}


class BackendTimeout(BaseException):
    """Raised by the per-backend alarm. BaseException, so library code's `except Exception` cannot eat it."""


class Unavailable(Exception):
    """The backend cannot run here (missing package, missing execution provider): not a failure."""


@contextmanager
def time_limit(seconds: float | None):
    """Raise BackendTimeout in the main thread after `seconds` (a safety net: C code that never returns
    to the interpreter cannot be interrupted)."""
    if seconds is None or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise BackendTimeout(f"over its time limit of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, max(float(seconds), 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.total = seconds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total - self.elapsed()


# ---- models and inputs ----------------------------------------------------------------------------


def build_model(hidden: tuple[int, ...], seed: int, device: torch.device) -> nn.Module:
    torch.manual_seed(seed)
    model = TabularMLP(N_FEATURES, CAT_IDX, CARDINALITIES, hidden=hidden, dropout=0.1)
    return model.eval().to(device)


def make_inputs(batch: int, seed: int, device: torch.device) -> torch.Tensor:
    """Standardized numerics ~ N(0, 1) and valid categorical codes 0..cardinality-1, all float32."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, N_FEATURES, generator=gen)
    for idx, card in zip(CAT_IDX, CARDINALITIES):
        x[:, idx] = torch.randint(0, card, (batch,), generator=gen).float()
    return x.to(device)


class CastInput(nn.Module):
    """A model whose weights were cast to `dtype`; the input is cast too (the codes stay exact, checked)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        if max(CARDINALITIES) > EXACT_INT[dtype]:
            raise ValueError(f"a categorical code >= {EXACT_INT[dtype]} is not exact in {dtype}")
        self.model = copy.deepcopy(model).to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype))


class Autocast(nn.Module):
    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            return self.model(x)


# ---- backends -------------------------------------------------------------------------------------
# A backend: prepare(model, ctx) -> state, once per model; bind(state, x, ctx) -> fn, once per batch
# size, where fn() runs one call on x and returns the logits (a tensor on the device).

Fn = Callable[[], torch.Tensor]


def _plain_bind(state: nn.Module, x: torch.Tensor, ctx: dict) -> Fn:
    return lambda: state(x)


def _compile(mode: str | None, dtype: torch.dtype | None) -> Callable[[nn.Module, dict], Any]:
    def prepare(model: nn.Module, ctx: dict) -> Any:
        torch._dynamo.reset()
        module = CastInput(model, dtype) if dtype is not None else model
        # static shapes: one compiled graph per batch size, as a server with fixed buckets would use
        return torch.compile(module, mode=mode, dynamic=False)

    return prepare


def _compile_bind(state: Any, x: torch.Tensor, ctx: dict) -> Fn:
    mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
    if ctx["cuda"] and mark is not None:

        def fn() -> torch.Tensor:
            mark()  # one inference step per call: cudagraph trees may reuse the previous output's memory
            return state(x)

        return fn
    return lambda: state(x)


def _graph_bind(state: nn.Module, x: torch.Tensor, ctx: dict) -> Fn:
    static_in = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream before capture, as the PyTorch docs do
        for _ in range(3):
            state(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = state(static_in)
    torch.cuda.synchronize()

    def fn() -> torch.Tensor:
        static_in.copy_(x)
        graph.replay()
        return static_out  # overwritten by the next replay; read before calling again

    return fn


def _onnx_export(model: nn.Module, example: torch.Tensor, path: Path, max_batch: int) -> str:
    """Export with the TorchScript exporter (no onnxscript needed); fall back to the dynamo exporter."""
    errors = []
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["x"],
            output_names=["logit"],
            dynamic_axes={"x": {0: "batch"}, "logit": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        return "torchscript"
    except Exception as exc:  # noqa: BLE001
        errors.append(f"dynamo=False: {type(exc).__name__}: {exc}"[:500])
    try:
        batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["x"],
            output_names=["logit"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
        )
        return "dynamo"
    except Exception as exc:  # noqa: BLE001
        errors.append(f"dynamo=True: {type(exc).__name__}: {exc}"[:500])
    message = "torch.onnx.export failed: " + " | ".join(errors)
    if all("not installed" in e or "ModuleNotFoundError" in e for e in errors):
        raise Unavailable(message + " (the exporters need the onnx / onnxscript packages)")
    raise RuntimeError(message)


def _ort_prepare(model: nn.Module, ctx: dict) -> Any:
    try:
        import numpy as np  # noqa: F401  (needed for the IO binding)
        import onnxruntime as ort
    except Exception as exc:
        raise Unavailable(f"import onnxruntime failed: {type(exc).__name__}: {exc}") from exc
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise Unavailable(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (has {available})")
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_onnx_"))
    path = tmp / "mlp.onnx"
    example = make_inputs(4, 99, ctx["device"])
    with torch.no_grad():
        exporter = _onnx_export(model, example, path, max(ctx["batches"]))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    device_id = ctx["device"].index or 0
    session = ort.InferenceSession(
        str(path), opts, providers=[("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    )
    if session.get_providers()[0] != "CUDAExecutionProvider":  # ORT falls back to CPU silently
        raise Unavailable(f"CUDAExecutionProvider failed to load; session providers {session.get_providers()}")
    ctx["notes"].setdefault("onnxruntime", {}).update(
        {"version": ort.__version__, "exporter": exporter, "providers": session.get_providers()}
    )
    return session


def _ort_bind(session: Any, x: torch.Tensor, ctx: dict) -> Fn:
    import numpy as np

    x = x.contiguous()
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    device_id = x.device.index or 0
    binding = session.io_binding()
    binding.bind_input(session.get_inputs()[0].name, "cuda", device_id, np.float32, list(x.shape), x.data_ptr())
    binding.bind_output(session.get_outputs()[0].name, "cuda", device_id, np.float32, list(out.shape), out.data_ptr())

    def fn() -> torch.Tensor:
        session.run_with_iobinding(binding)
        return out

    return fn


def _trt_prepare(model: nn.Module, ctx: dict) -> Any:
    try:
        import torch_tensorrt
    except Exception as exc:
        raise Unavailable(f"import torch_tensorrt failed: {type(exc).__name__}: {exc}") from exc
    ctx["notes"]["torch_tensorrt"] = {"version": getattr(torch_tensorrt, "__version__", None)}
    batches = ctx["batches"]
    spec = torch_tensorrt.Input(
        min_shape=(1, N_FEATURES),
        opt_shape=(min(1024, max(batches)), N_FEATURES),
        max_shape=(max(batches), N_FEATURES),
        dtype=torch.float32,
    )
    errors = []
    attempts = [
        ("weak typing, enabled_precisions={fp16}", model, {"enabled_precisions": {torch.float16}}),
        ("fp16 weights, use_explicit_typing", CastInput(model, torch.float16), {"use_explicit_typing": True}),
    ]
    for label, module, kwargs in attempts:
        try:
            compiled = torch_tensorrt.compile(module, ir="dynamo", inputs=[spec], min_block_size=1, **kwargs)
            ctx["notes"]["torch_tensorrt"]["compile"] = label
            if errors:
                ctx["notes"]["torch_tensorrt"]["earlier_errors"] = errors
            return compiled
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{label}: {type(exc).__name__}: {exc}"[:800])
    raise RuntimeError("torch_tensorrt.compile failed: " + " | ".join(errors))


def backends() -> list[dict[str, Any]]:
    """In priority order: when the budget runs out, the ones at the end are skipped."""
    bf16, fp16 = torch.bfloat16, torch.float16
    return [
        {"name": BASELINE, "dtype": "fp32", "cpu": True, "est_s": 2, "prepare": lambda m, c: m, "bind": _plain_bind},
        {
            "name": "cuda-graph-fp32",
            "dtype": "fp32",
            "cpu": False,
            "est_s": 3,
            "prepare": lambda m, c: m,
            "bind": _graph_bind,
        },
        {
            "name": "eager-bf16",
            "dtype": "bf16",
            "cpu": True,
            "est_s": 2,
            "prepare": lambda m, c: CastInput(m, bf16),
            "bind": _plain_bind,
        },
        {
            "name": "cuda-graph-bf16",
            "dtype": "bf16",
            "cpu": False,
            "est_s": 3,
            "prepare": lambda m, c: CastInput(m, bf16),
            "bind": _graph_bind,
        },
        {
            "name": "eager-bf16-autocast",
            "dtype": "bf16",
            "cpu": True,
            "est_s": 2,
            "prepare": lambda m, c: Autocast(m, bf16),
            "bind": _plain_bind,
        },
        {
            "name": "eager-fp16",
            "dtype": "fp16",
            "cpu": False,
            "est_s": 2,
            "prepare": lambda m, c: CastInput(m, fp16),
            "bind": _plain_bind,
        },
        {
            "name": "compile-reduce-overhead-fp32",
            "dtype": "fp32",
            "cpu": False,
            "est_s": 30,
            "timeout_s": 120,
            "prepare": _compile("reduce-overhead", None),
            "bind": _compile_bind,
            "compile": True,
        },
        # on CPU reduce-overhead has nothing to capture: the CPU run uses the default mode instead
        {
            "name": "compile-default-fp32",
            "dtype": "fp32",
            "cpu": True,
            "gpu": False,
            "est_s": 20,
            "timeout_s": 90,
            "prepare": _compile(None, None),
            "bind": _compile_bind,
            "compile": True,
        },
        {
            "name": "onnxruntime-cuda-fp32",
            "dtype": "fp32",
            "cpu": False,
            "est_s": 10,
            "timeout_s": 60,
            "prepare": _ort_prepare,
            "bind": _ort_bind,
        },
        {
            "name": "tensorrt-fp16",
            "dtype": "fp16",
            "cpu": False,
            "est_s": 40,
            "timeout_s": 150,
            "prepare": _trt_prepare,
            "bind": _plain_bind,
        },
        {
            "name": "compile-reduce-overhead-bf16",
            "dtype": "bf16",
            "cpu": False,
            "est_s": 30,
            "timeout_s": 90,
            "prepare": _compile("reduce-overhead", bf16),
            "bind": _compile_bind,
            "compile": True,
        },
        # GEMM autotuning costs seconds per matmul and shape: only where tuning can matter (large batches)
        {
            "name": "compile-max-autotune-no-cudagraphs-fp32",
            "dtype": "fp32",
            "cpu": False,
            "est_s": 60,
            "timeout_s": 120,
            "prepare": _compile("max-autotune-no-cudagraphs", None),
            "bind": _compile_bind,
            "compile": True,
            "only_models": ["mlp-128-64"],
            "only_batches": [1024, 8192],
        },
    ]


# ---- timing ---------------------------------------------------------------------------------------


def measure(fn: Fn, batch: int, calls: int, warmup: int, sync: Callable[[], None], ref: torch.Tensor) -> dict:
    t0 = time.perf_counter()
    fn()
    sync()
    first_call_s = time.perf_counter() - t0  # includes a lazy compile or a graph record
    for _ in range(warmup):
        fn()
    sync()
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        sync()
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    pipelined_s = time.perf_counter() - t0
    out = fn()
    prob = torch.sigmoid(out.detach().float().reshape(-1))
    sync()
    parity = (prob - ref).abs().max().item()
    lat.sort()
    mean = sum(lat) / len(lat)
    return {
        "batch": batch,
        "calls": calls,
        "warmup": warmup,
        "first_call_s": round(first_call_s, 4),
        "p50_ms": round(percentile(lat, 50) * 1e3, 4),
        "p99_ms": round(percentile(lat, 99) * 1e3, 4),
        "mean_ms": round(mean * 1e3, 4),
        "min_ms": round(lat[0] * 1e3, 4),
        "calls_per_s": round(1.0 / mean, 1),
        "rows_per_s": round(batch / mean, 1),
        "pipelined_calls_per_s": round(calls / pipelined_s, 1),
        "pipelined_rows_per_s": round(batch * calls / pipelined_s, 1),
        "parity_max_abs_prob_diff": parity,
    }


# ---- environment ----------------------------------------------------------------------------------


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception as exc:  # noqa: BLE001
        return f"unavailable ({type(exc).__name__}: {str(exc)[:120]})"
    return getattr(mod, "__version__", "?")


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "torch_num_threads": torch.get_num_threads(),
        "device_type": device.type,
        # other work on the machine skews times: compare with loadavg_end before trusting a number
        "loadavg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "versions": {m: _version(m) for m in ("numpy", "triton", "onnxruntime")},
    }
    try:
        env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception as exc:  # noqa: BLE001
        env["cudnn"] = f"error: {exc}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            {
                "device_name": torch.cuda.get_device_name(device),
                "capability": list(torch.cuda.get_device_capability(device)),
                "device_memory_gib": round(props.total_memory / 2**30, 1),
                "multiprocessors": props.multi_processor_count,
                "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            }
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,name,clocks.max.sm", "--format=csv,noheader"],
                check=False,
                capture_output=True,
                text=True,
                timeout=10,
            )
            env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()[:200]
        except Exception as exc:  # noqa: BLE001
            env["nvidia_smi"] = f"unavailable: {exc}"
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


# ---- main -----------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    cells = [[c if isinstance(c, str) else _fmt(c) for c in row] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(col.ljust(w) if i < 2 else col.rjust(w) for i, (col, w) in enumerate(zip(columns, widths))))
    for row in cells:
        print("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))


def summary(payload: dict) -> None:
    base = {(r["model"], r["batch"]): r for r in payload["results"] if r["backend"] == BASELINE}
    rows = []
    for r in payload["results"]:
        b = base.get((r["model"], r["batch"]))
        rows.append(
            [
                r["model"],
                r["backend"],
                r["batch"],
                f"{r['p50_ms']:.3f}",
                f"{r['p99_ms']:.3f}",
                r["calls_per_s"],
                r["rows_per_s"],
                f"{r['ratio_vs_eager_fp32']:.2f}x" if b else "-",
                r["pipelined_rows_per_s"],
                f"{r['pipelined_ratio_vs_eager_fp32']:.2f}x" if b else "-",
                f"{r['parity_max_abs_prob_diff']:.1e}" + ("" if r["parity_ok"] else " !"),
                f"{r['first_call_s']:.2f}",
            ]
        )
    env = payload["environment"]
    print_table(
        f"TabularMLP inference on {env.get('device_name')} ({env['device_type']}), torch {env['torch']}; "
        f"baseline = {BASELINE} at the same batch size; parity vs eager fp32 ('!' = over {TOLERANCE})",
        [
            "model",
            "backend",
            "batch",
            "p50 ms",
            "p99 ms",
            "calls/s",
            "rows/s",
            "x eager",
            "rows/s pipel.",
            "x eager",
            "parity",
            "1st call s",
        ],
        rows,
    )
    print("\nbackends:")
    for name, info in payload["backends"].items():
        setup = ", ".join(f"{m} {v:.1f} s" for m, v in info.get("setup_s", {}).items() if v >= 0.05)
        extra = (f"  setup {setup}" if setup else "") + (f"  {info['reason']}" if info.get("reason") else "")
        print(f"  {name:42s} {info['status']}{extra}")
    print(f"load average: {env.get('loadavg_start')} at start, {env.get('loadavg_end')} at end")
    if payload["errors"]:
        print(f"\n{len(payload['errors'])} error(s) recorded in the JSON ('errors').")


def save(payload: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(out)


# ---- --part serving: rayloop's serving backends, numpy in -> numpy out ------------------------
SERVING_SIZES = [1, 8, 64, 256, 1024, 4096]


def _demo_mlp_bundle(seed: int, rows: int) -> Any:
    """The demo config's MLP shape on FittedFeatures fitted in-process (random weights: parity and
    speed do not depend on training)."""
    from rayloop.bundle import ModelBundle
    from rayloop.config import load_config
    from rayloop.data.synthetic import generate
    from rayloop.features.pipeline import FeaturePipeline
    from rayloop.models.mlp import build_model

    config = load_config(None)
    pipeline = FeaturePipeline(
        config.features, config.data.schema_, label_column="label", timestamp_column="event_time", id_column="entity_id"
    )
    fitted, profile = pipeline.fit_table(generate(rows, seed=seed))
    params = {"hidden": list(config.training.mlp["hidden"]), "dropout": 0.0}
    torch.manual_seed(seed)
    model = build_model(
        {
            "feature_names": fitted.feature_names,
            "categorical_indices": fitted.categorical_indices,
            "cardinalities": fitted.cardinalities,
            **params,
        }
    ).eval()
    return ModelBundle("mlp", model, fitted, config.data.schema_, profile, model_params=params)


def _latency_ms(times: list[float]) -> dict[str, float]:
    """p50, p99 and mean of call times in seconds, as ms."""
    ordered = sorted(times)
    return {
        "p50_ms": round(percentile(ordered, 50) * 1e3, 4),
        "p99_ms": round(percentile(ordered, 99) * 1e3, 4),
        "mean_ms": round(sum(times) / len(times) * 1e3, 4),
    }


def _timed(fn: Callable[[], Any], calls: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return _latency_ms(times)


def serving_main(args: argparse.Namespace) -> int:
    """Every serving backend as build_backend makes it, against the native CPU reference."""
    import numpy as np

    from rayloop.serving import backends as sb

    budget = Budget(args.budget_s)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    sizes = args.batches or (SERVING_SIZES if cuda else [1, 64, 1024])
    calls = args.calls or (200 if cuda else 20)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    bundle = _demo_mlp_bundle(args.seed, 5000)
    max_rows = args.max_rows or sb.MAX_ROWS
    payload: dict[str, Any] = {
        "name": "gpu_serving",
        "baseline": "native",
        "environment": environment(device),
        "settings": {
            "sizes": sizes,
            "calls": calls,
            "warmup": warmup,
            "seed": args.seed,
            "budget_s": args.budget_s,
            "model_params": bundle.model_params,
            "n_features": len(bundle.fitted.feature_names),
            "max_batch_size": 64,
            "max_rows": max_rows,
            "tolerance": 2e-3,
            "call": "backend.predict(float32 numpy rows) -> float64 numpy probabilities, host copies included",
            "mixed": "then 300 calls with row counts drawn uniformly from 1..64 (as Serve's batches vary): "
            "the first call at each new size included",
        },
        "backends": {},
        "results": [],
        "errors": [],
    }
    print(
        f"gpu_check --part serving: {payload['environment'].get('device_name')} ({device}), torch "
        f"{torch.__version__}, MLP {bundle.model_params}, {len(bundle.fitted.feature_names)} features",
        flush=True,
    )
    inputs = {n: sb.probe_matrix(bundle.fitted, rows=n, seed=100 + n) for n in sizes}
    expected = {n: bundle.predict_matrix(x) for n, x in inputs.items()}
    rng = np.random.default_rng(args.seed)
    mixed_sizes = [int(v) for v in rng.integers(1, 65, 300)]
    mixed_pool = sb.probe_matrix(bundle.fitted, rows=64, seed=7)
    base: dict[int, float] = {}
    choices = (
        ["native", "torch", "torch_compile", "cuda_graph", "tensorrt"] if cuda else ["native", "torch", "torch_compile"]
    )
    if args.backends:  # the baseline always runs
        choices = ["native", *[c for c in choices if c in args.backends and c != "native"]]
    payload["auto"] = sb.resolve_choice("mlp", "auto")
    for choice in choices:
        info: dict[str, Any] = {}
        payload["backends"][choice] = info
        if budget.left() < 15:
            info.update(status="skipped", reason=f"budget: {budget.left():.0f} s left")
            continue
        print(f"[{budget.elapsed():6.1f} s] {choice}", flush=True)
        fallbacks: list[tuple[str, str]] = []
        try:
            with time_limit(min(180.0, budget.left() - 5)):
                t0 = time.perf_counter()
                backend = sb.build_backend(
                    bundle,
                    choice,
                    max_batch_size=64,
                    max_rows=max_rows,
                    tolerance=2e-3,
                    cache_dir=Path(tempfile.mkdtemp(prefix="gpu_serving_")),
                    on_fallback=lambda *a, sink=fallbacks: sink.append(a),
                )
                info["build_s"] = round(time.perf_counter() - t0, 3)
        except (Exception, BackendTimeout) as exc:  # noqa: BLE001
            info.update(status="failed", reason=f"{type(exc).__name__}: {exc}"[:500])
            continue
        info.update(
            served_by=backend.name,
            device=backend.device,
            probe_max_abs_diff=backend.max_abs_diff,
            fallbacks=[list(f) for f in fallbacks],
        )
        if backend.name != choice:
            info.update(status="fell back", reason=f"{fallbacks}")
            print(f"  fell back to {backend.name}: {fallbacks}", flush=True)
            continue
        try:
            with time_limit(min(240.0, budget.left() - 5)):
                for n in sizes:
                    t0 = time.perf_counter()
                    got = backend.predict(inputs[n])
                    first = time.perf_counter() - t0
                    row = {
                        "backend": choice,
                        "rows": n,
                        "first_call_ms": round(first * 1e3, 3),
                        **_timed(lambda b=backend, x=inputs[n]: b.predict(x), calls, warmup),
                        "parity_max_abs_prob_diff": float(np.max(np.abs(got - expected[n]))),
                    }
                    row["rows_per_s"] = round(n / (row["mean_ms"] / 1e3), 1)
                    if choice == "native":
                        base[n] = row["rows_per_s"]
                    row["ratio_vs_native"] = round(row["rows_per_s"] / base[n], 3) if n in base else None
                    payload["results"].append(row)
                    print(
                        f"  rows {n:5d}: p50 {row['p50_ms']:.3f} ms, first {row['first_call_ms']:.1f} ms, "
                        f"{row['rows_per_s']:,.0f} rows/s ({row['ratio_vs_native'] or 0:.2f}x native), "
                        f"parity {row['parity_max_abs_prob_diff']:.1e}",
                        flush=True,
                    )
                times = []
                for n in mixed_sizes:
                    t0 = time.perf_counter()
                    backend.predict(mixed_pool[:n])
                    times.append(time.perf_counter() - t0)
                info["mixed"] = {
                    "calls": len(times),
                    **_latency_ms(times),
                    "max_ms": round(max(times) * 1e3, 3),
                    "first_100_mean_ms": round(sum(times[:100]) / 100 * 1e3, 4),
                }
                print(f"  mixed 1..64 rows: {info['mixed']}", flush=True)
            info["status"] = "ok"
        except (Exception, BackendTimeout) as exc:  # noqa: BLE001
            info.update(status="failed", reason=f"{type(exc).__name__}: {exc}"[:500])
            payload["errors"].append({"backend": choice, "traceback": traceback.format_exc()[-3000:]})
            print(f"  failed: {info['reason']}", flush=True)
        finally:
            backend = None
            if choice == "torch_compile":
                torch._dynamo.reset()
            gc.collect()
        payload["elapsed_s"] = round(budget.elapsed(), 1)
        save(payload, args.out)
    payload["elapsed_s"] = round(budget.elapsed(), 1)
    save(payload, args.out)
    print(f"\nsaved {args.out} ({payload['elapsed_s']} s); auto picks {payload['auto']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument(
        "--budget-s", type=float, default=240.0, help="stop starting new work after this many seconds (default 240)"
    )
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--batches", type=int, nargs="+", help="default 1 64 1024 8192 (CUDA), 1 64 1024 (CPU)")
    parser.add_argument("--calls", type=int, help="timed calls per cell (default 200 CUDA, 20 CPU)")
    parser.add_argument("--warmup", type=int, help="warm-up calls per cell (default 20 CUDA, 3 CPU)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--backends", nargs="+", help="only these backends (the baseline always runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--part",
        choices=["models", "serving"],
        default="models",
        help="models: TabularMLP backends on device tensors (default); serving: rayloop's "
        "serving backends, numpy in and out",
    )
    parser.add_argument(
        "--max-rows",
        type=int,
        help="--part serving: rows per call of a shape-bound backend (default rayloop.serving.backends.MAX_ROWS)",
    )
    args = parser.parse_args(argv)
    if args.part == "serving":
        return serving_main(args)

    budget = Budget(args.budget_s)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda asked for, but CUDA is not available: running on CPU", file=sys.stderr)
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    batches = args.batches or ([1, 64, 1024, 8192] if cuda else [1, 64, 1024])
    calls = args.calls or (200 if cuda else 20)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 3)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    reserve_s = 10.0  # kept back for printing and saving

    for name in ("recompile_limit", "cache_size_limit"):  # one compiled graph per batch size and model
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))

    payload: dict[str, Any] = {
        "name": "gpu_check",
        "baseline": BASELINE,
        "environment": environment(device),
        "settings": {
            "batches": batches,
            "calls": calls,
            "warmup": warmup,
            "budget_s": args.budget_s,
            "seed": args.seed,
            "n_features": N_FEATURES,
            "categorical_indices": CAT_IDX,
            "cardinalities": CARDINALITIES,
            "models": {m: list(MODELS[m]) for m in args.models},
            "call": "input already on the device -> logits on the device; latency = one call + synchronize",
            "parity": "max |sigmoid(logit) - sigmoid(logit of eager fp32)| on the same input",
            "parity_tolerance": TOLERANCE,
        },
        "backends": {},
        "results": [],
        "errors": [],
        "notes": {},
    }
    ctx = {"device": device, "cuda": cuda, "batches": batches, "notes": payload["notes"]}
    print(
        f"gpu_check: device {payload['environment'].get('device_name')} ({device}), torch {torch.__version__}, "
        f"batches {batches}, {calls} calls, budget {args.budget_s:.0f} s",
        flush=True,
    )

    models = {name: build_model(MODELS[name], args.seed, device) for name in args.models}
    inputs = {b: make_inputs(b, args.seed + b, device) for b in batches}
    refs: dict[tuple[str, int], torch.Tensor] = {}
    with torch.inference_mode():
        for name, model in models.items():
            for b, x in inputs.items():
                refs[(name, b)] = torch.sigmoid(model(x).float())
    base_rows: dict[tuple[str, int], dict] = {}

    def record_error(backend: str, model: str | None, batch: int | None, stage: str, exc: BaseException) -> str:
        msg = f"{type(exc).__name__}: {exc}"
        payload["errors"].append(
            {
                "backend": backend,
                "model": model,
                "batch": batch,
                "stage": stage,
                "error": msg[:2000],
                "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-3000:],
            }
        )
        print(f"  {backend} {model or ''} {batch or ''} {stage}: {msg[:300]}", flush=True)
        return msg[:300]

    for spec in backends():
        name = spec["name"]
        info: dict[str, Any] = {"dtype": spec["dtype"], "status": "ok", "reason": None, "setup_s": {}}
        payload["backends"][name] = info
        if cuda and not spec.get("gpu", True):
            info.update(status="skipped", reason="CPU-only variant (the CUDA run uses reduce-overhead)")
            continue
        if not cuda and not spec["cpu"]:
            info.update(status="skipped", reason="no CUDA")
            continue
        if args.backends and name != BASELINE and name not in args.backends:
            info.update(status="skipped", reason="not selected (--backends)")
            continue
        if budget.left() - reserve_s < spec["est_s"]:
            info.update(status="skipped", reason=f"budget: {budget.left():.0f} s left, needs about {spec['est_s']} s")
            continue
        print(f"[{budget.elapsed():6.1f} s] {name}", flush=True)
        reasons: list[str] = []
        cut = unavailable = False
        for model_name, model in models.items():
            if spec.get("only_models") and model_name not in spec["only_models"]:
                continue
            if budget.left() - reserve_s < 1.0:
                cut = True
                break
            limit = min(spec.get("timeout_s", 60), max(budget.left() - reserve_s, 1.0))
            state = None
            try:
                with time_limit(limit), torch.no_grad():
                    t0 = time.perf_counter()
                    state = spec["prepare"](model, ctx)
                    info["setup_s"][model_name] = round(time.perf_counter() - t0, 3)
            except Unavailable as exc:
                unavailable = True
                reasons.append(str(exc)[:500])
                print(f"  unavailable: {str(exc)[:300]}", flush=True)
                break
            except (Exception, BackendTimeout) as exc:  # noqa: BLE001
                reasons.append(f"{model_name} prepare: " + record_error(name, model_name, None, "prepare", exc))
                continue
            for b in batches:
                if spec.get("only_batches") and b not in spec["only_batches"]:
                    continue
                left = budget.left() - reserve_s
                if left < 1.0:
                    cut = True
                    break
                try:
                    with time_limit(min(spec.get("timeout_s", 60), left)), torch.inference_mode():
                        fn = spec["bind"](state, inputs[b], ctx)
                        row = measure(fn, b, calls, warmup, sync, refs[(model_name, b)])
                except (Exception, BackendTimeout) as exc:  # noqa: BLE001
                    reasons.append(f"{model_name} batch {b}: " + record_error(name, model_name, b, "run", exc))
                    continue
                finally:
                    fn = None
                row = {"model": model_name, "backend": name, "dtype": spec["dtype"], "device": device.type, **row}
                row["parity_ok"] = row["parity_max_abs_prob_diff"] <= TOLERANCE[spec["dtype"]]
                if name == BASELINE:
                    base_rows[(model_name, b)] = row
                base = base_rows.get((model_name, b))
                row["ratio_vs_eager_fp32"] = round(row["rows_per_s"] / base["rows_per_s"], 3) if base else None
                row["pipelined_ratio_vs_eager_fp32"] = (
                    round(row["pipelined_rows_per_s"] / base["pipelined_rows_per_s"], 3) if base else None
                )
                payload["results"].append(row)
                print(
                    f"  {model_name:16s} batch {b:5d}: p50 {row['p50_ms']:.3f} ms, {row['rows_per_s']:,.0f} rows/s"
                    f" ({row['ratio_vs_eager_fp32'] or 0:.2f}x eager fp32),"
                    f" parity {row['parity_max_abs_prob_diff']:.1e}",
                    flush=True,
                )
            state = None
            try:
                if spec.get("compile"):
                    torch._dynamo.reset()
                gc.collect()
                if cuda:
                    torch.cuda.synchronize()
            except Exception as exc:  # noqa: BLE001
                reasons.append("cleanup: " + record_error(name, model_name, None, "cleanup", exc))
            if cut:
                break
        if cut:
            reasons.append("budget ran out")
        n_rows = sum(r["backend"] == name for r in payload["results"])
        if unavailable:
            status = "unavailable"
        elif n_rows == 0:
            status = "failed" if reasons else "ok"
        else:
            status = "partial" if reasons else "ok"
        info.update(status=status, reason="; ".join(reasons)[:1500] or None, rows=n_rows)
        payload["elapsed_s"] = round(budget.elapsed(), 1)
        save(payload, args.out)

    payload["elapsed_s"] = round(budget.elapsed(), 1)
    payload["environment"]["loadavg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    save(payload, args.out)
    summary(payload)
    print(f"\nsaved {args.out} ({payload['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
