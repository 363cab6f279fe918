"""Prediction backends for a bundle: feature matrix in, the task's scores out.

An MLP bundle's model is `rayloop.models.mlp.Scores`: the network with the task's head (sigmoid,
softmax or the scaled regression output), so every backend compiles or captures the head too and
returns what the reference returns: P(positive) per row, class probabilities (rows x classes) or
predicted values.

- `native`: the bundle's own model (LightGBM's C++ predictor; the MLP in eager torch on CPU).
  It is the reference every other backend is checked against.
- `torch`: the MLP in eager torch on the best device (CUDA when visible).
- `torch_compile`: `torch.compile` (CUDA graphs via mode="reduce-overhead" on GPU).
- `cuda_graph`: the MLP captured once per power-of-two batch size (1..max_rows) into CUDA graphs
  at load time; a call pads its rows up to the next captured size and replays that graph. A
  tabular MLP is launch-bound on a GPU, and replaying one graph removes the per-layer launches
  (benchmarks/README.md, GPU). Unlike `torch_compile`, no new batch size ever
  compiles or records anything on the request path.
- `tensorrt`: `torch_tensorrt` with fp16 and a dynamic batch of 1..max_rows; engines are
  cached on disk keyed by the bundle's hash, the GPU architecture and the TensorRT version.
- `auto`: LightGBM -> native; MLP -> tensorrt when CUDA and torch_tensorrt are there, else
  cuda_graph on CUDA, else native.

A Serve batch can carry up to max_batch_size requests of many rows each, more rows than a
shape-bound engine (a TensorRT profile, a set of captured graphs) takes: those backends score
it in chunks of at most max_rows.

An optimized backend serves only after a parity check against the reference on a probe batch
(max absolute difference of probabilities within the tolerance). When it is unavailable or fails
the check, the reference serves instead and `on_fallback(backend, reason)` is called (the
server logs a warning and counts it in a metric).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rayloop.bundle import ModelBundle
from rayloop.features.pipeline import FittedFeatures

__all__ = [
    "MAX_ROWS",
    "Backend",
    "BackendChoice",
    "build_backend",
    "graph_sizes",
    "parity",
    "probe_matrix",
    "resolve_choice",
]

log = logging.getLogger(__name__)

BackendChoice = str  # "auto" | "native" | "torch" | "torch_compile" | "cuda_graph" | "tensorrt"
Fallback = Callable[[str, str], None]
# rows per call of a shape-bound engine; larger inputs go in chunks (bigger graphs cost nothing at
# small sizes and score a big batch faster than chunks of it: benchmarks/README.md, GPU)
MAX_ROWS = 16_384


@dataclass
class Backend:
    name: str
    predict: Callable[[np.ndarray], np.ndarray]  # float32 (rows x features) -> float64 scores of the task
    device: str = "cpu"
    max_abs_diff: float = 0.0  # against the reference on the probe batch


def probe_matrix(fitted: FittedFeatures, rows: int = 256, seed: int = 0) -> np.ndarray:
    """A deterministic feature matrix that looks like real input: standardized numerics (or bin
    indices), 0/1 missing flags, valid categorical codes, sin/cos pairs."""
    rng = np.random.default_rng(seed)
    columns = []
    for feature in fitted.numeric:
        if fitted.strategy == "quantile_bins" and feature.edges is not None:
            columns.append(rng.integers(-1, len(feature.edges) + 1, rows).astype(np.float32))
        else:
            columns.append(rng.standard_normal(rows).astype(np.float32))
        if feature.missing_indicator:
            columns.append((rng.random(rows) < 0.1).astype(np.float32))
    for feature in fitted.categorical:
        columns.append(rng.integers(0, feature.cardinality, rows).astype(np.float32))
    if fitted.timestamp_column:
        for _ in fitted.time_features:
            angle = rng.uniform(0, 2 * np.pi, rows)
            columns += [np.sin(angle).astype(np.float32), np.cos(angle).astype(np.float32)]
    return np.column_stack(columns) if columns else np.empty((rows, 0), np.float32)


def parity(reference: np.ndarray, candidate: np.ndarray, relative: bool = False) -> float:
    """The largest difference from the reference: absolute for probabilities, relative to the
    value (at least 1) for a regression's predictions, whose units are the label's."""
    want, got = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if want.shape != got.shape:
        return float("inf")
    diff = np.abs(want - got)
    if relative:
        diff = diff / np.maximum(1.0, np.abs(want))
    return float(np.max(diff)) if diff.size else 0.0


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _has_tensorrt() -> bool:
    try:
        import torch_tensorrt  # noqa: F401
    except Exception:  # ImportError, or a CUDA/TensorRT library mismatch at import
        return False
    return True


def resolve_choice(kind: str, choice: BackendChoice) -> str:
    if kind == "lightgbm" or choice == "native":
        return "native"
    if choice != "auto":
        return choice
    if _cuda():
        return "tensorrt" if _has_tensorrt() else "cuda_graph"
    return "native"


def _torch_backend(module: Any, name: str, device: str, dtype: Any = None) -> Backend:
    import torch

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device, non_blocking=True)
            if dtype is not None:
                tensor = tensor.to(dtype)
            return module(tensor).float().cpu().numpy().astype(np.float64)

    return Backend(name, predict, device)


def _chunked(backend: Backend, max_rows: int) -> Backend:
    """Score inputs larger than the engine's shape range in slices of at most max_rows."""
    one = backend.predict

    def predict(x: np.ndarray) -> np.ndarray:
        if len(x) <= max_rows:
            return one(x)
        return np.concatenate([one(x[i : i + max_rows]) for i in range(0, len(x), max_rows)])

    backend.predict = predict
    return backend


def _candidate(bundle: ModelBundle, name: str, max_batch_size: int, max_rows: int, cache_dir: Path | None) -> Backend:
    import copy

    import torch

    device = "cuda" if _cuda() else "cpu"
    model = copy.deepcopy(bundle.model).to(device).eval()
    if name == "torch":
        return _torch_backend(model, name, device)
    if name == "torch_compile":
        compiled = torch.compile(model, mode="reduce-overhead" if device == "cuda" else "default", dynamic=True)
        return _torch_backend(compiled, name, device)
    if name == "cuda_graph":
        if device != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        return _chunked(_cuda_graphs(model, len(bundle.fitted.feature_names), max_rows), max_rows)
    if name == "tensorrt":
        if device != "cuda":
            raise RuntimeError("TensorRT needs a CUDA device")
        return _chunked(_tensorrt(bundle, model, max_batch_size, max_rows, cache_dir), max_rows)
    raise ValueError(f"unknown backend {name!r}")


def graph_sizes(max_rows: int) -> list[int]:
    """The captured batch sizes: powers of two up to the first one that holds max_rows."""
    sizes = [1]
    while sizes[-1] < max_rows:
        sizes.append(sizes[-1] * 2)
    return sizes


def _cuda_graphs(model: Any, width: int, max_rows: int) -> Backend:
    """One CUDA graph per size in graph_sizes(max_rows), all in one memory pool; the task's head included."""
    import bisect
    import threading

    import torch

    sizes = graph_sizes(max_rows)
    pool = torch.cuda.graph_pool_handle()
    graphs: list[tuple[Any, Any, Any]] = []
    side = torch.cuda.Stream()
    with torch.inference_mode():
        for size in reversed(sizes):  # largest first: the smaller graphs reuse its pool blocks
            static_in = torch.zeros(size, width, device="cuda")
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm up on a side stream before capture (PyTorch docs)
                for _ in range(2):
                    model(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: a swap captures while the serving backend keeps launching work
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                static_out = model(static_in).float()
            graphs.append((graph, static_in, static_out))
    graphs.reverse()
    static_out_shape = tuple(graphs[0][2].shape[1:])  # () per row, or (classes,)
    torch.cuda.synchronize()
    lock = threading.Lock()  # the static buffers are shared by every call

    def predict(x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n == 0:
            return np.empty((0, *static_out_shape), np.float64)
        graph, static_in, static_out = graphs[bisect.bisect_left(sizes, n)]
        source = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        with lock, torch.inference_mode():
            static_in[:n].copy_(source)  # rows past n keep old values: each row is scored on its own
            graph.replay()
            return static_out[:n].cpu().numpy().astype(np.float64)

    return Backend("cuda_graph", predict, "cuda")


def _tensorrt(bundle: ModelBundle, model: Any, max_batch_size: int, max_rows: int, cache_dir: Path | None) -> Backend:
    import tensorrt
    import torch
    import torch_tensorrt

    width = len(bundle.fitted.feature_names)
    major, minor = torch.cuda.get_device_capability()
    run = bundle.lineage.get("mlflow_run_id", "x")
    key = f"{bundle.fitted.content_hash[:16]}-{run}-sm{major}{minor}-trt{tensorrt.__version__}-b{max_rows}"
    path = (cache_dir / f"{key}.ep") if cache_dir else None
    if path is not None and path.exists():
        engine = torch_tensorrt.load(str(path)).module()
    else:
        spec = torch_tensorrt.Input(
            min_shape=(1, width),
            opt_shape=(min(max_batch_size, max_rows), width),
            max_shape=(max_rows, width),
            dtype=torch.float32,
        )
        engine = torch_tensorrt.compile(model, ir="dynamo", inputs=[spec], enabled_precisions={torch.float16})
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch_tensorrt.save(engine, str(path), inputs=[torch.zeros(1, width, device="cuda")])
    return _torch_backend(engine, "tensorrt", "cuda")


def build_backend(
    bundle: ModelBundle,
    choice: BackendChoice = "auto",
    *,
    max_batch_size: int = 64,
    max_rows: int = MAX_ROWS,
    tolerance: float = 1e-3,
    cache_dir: Path | None = None,
    on_fallback: Fallback | None = None,
) -> Backend:
    """The backend that will serve `bundle`: the chosen one if it builds and passes parity, else the reference.

    max_batch_size is the usual rows per call (Serve's batch of one-row requests): TensorRT tunes
    for it and the probe is scored in slices of that size, besides 1 row, 5 rows and whole.
    max_rows bounds the rows per call of a shape-bound engine."""
    reference = Backend("native", bundle.predict_matrix)
    name = resolve_choice(bundle.kind, choice)
    if name == "native":
        return reference
    probe = probe_matrix(bundle.fitted, rows=min(256, max(8, max_batch_size)))
    try:
        candidate = _candidate(bundle, name, max_batch_size, max_rows, cache_dir)
        expected = reference.predict(probe)
        # the first call warms up (compiles, builds engines); an odd size exercises padding
        pieces = [(probe[:1], expected[:1]), (probe[:5], expected[:5]), (probe, expected)]
        pieces += [
            (probe[i : i + max_batch_size], expected[i : i + max_batch_size])
            for i in range(0, len(probe), max_batch_size)
        ]
        relative = bundle.task.kind == "regression"
        candidate.max_abs_diff = max(parity(want, candidate.predict(x), relative) for x, want in pieces)
    except Exception as exc:  # any build or runtime failure of an optional backend
        reason = f"{type(exc).__name__}: {exc}"[:200]
        log.warning("backend %s unavailable (%s); serving with the native reference", name, reason)
        if on_fallback:
            on_fallback(name, "unavailable")
        return reference
    if candidate.max_abs_diff > tolerance:
        log.warning(
            "backend %s failed the parity check (max |diff| %.2e > %.2e); serving with the native reference",
            name,
            candidate.max_abs_diff,
            tolerance,
        )
        if on_fallback:
            on_fallback(name, "parity")
        return reference
    return candidate
