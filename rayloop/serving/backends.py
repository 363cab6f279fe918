"""Prediction backends for a bundle: feature matrix in, probabilities out.

- `native`: the bundle's own model (LightGBM's C++ predictor; the MLP in eager torch on CPU).
  It is the reference every other backend is checked against.
- `torch`: the MLP in eager torch on the best device (CUDA when visible).
- `torch_compile`: `torch.compile` (CUDA graphs via mode="reduce-overhead" on GPU).
- `tensorrt`: `torch_tensorrt` with fp16 and a dynamic batch of 1..max_batch_size; engines are
  cached on disk keyed by the bundle's hash, the GPU architecture and the TensorRT version.
- `auto`: LightGBM -> native; MLP -> tensorrt when CUDA and torch_tensorrt are there, else
  torch_compile on CUDA, else native.

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

__all__ = ["Backend", "BackendChoice", "build_backend", "parity", "probe_matrix", "resolve_choice"]

log = logging.getLogger(__name__)

BackendChoice = str  # "auto" | "native" | "torch" | "torch_compile" | "tensorrt"
Fallback = Callable[[str, str], None]


@dataclass
class Backend:
    name: str
    predict: Callable[[np.ndarray], np.ndarray]  # float32 (rows x features) -> float64 probabilities
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


def parity(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(reference, np.float64) - np.asarray(candidate, np.float64))))


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
        return "tensorrt" if _has_tensorrt() else "torch_compile"
    return "native"


def _torch_backend(module: Any, name: str, device: str, dtype: Any = None) -> Backend:
    import torch

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device, non_blocking=True)
            if dtype is not None:
                tensor = tensor.to(dtype)
            return torch.sigmoid(module(tensor).float()).cpu().numpy().astype(np.float64)

    return Backend(name, predict, device)


def _candidate(bundle: ModelBundle, name: str, max_batch_size: int, cache_dir: Path | None) -> Backend:
    import copy

    import torch

    device = "cuda" if _cuda() else "cpu"
    model = copy.deepcopy(bundle.model).to(device).eval()
    if name == "torch":
        return _torch_backend(model, name, device)
    if name == "torch_compile":
        compiled = torch.compile(model, mode="reduce-overhead" if device == "cuda" else "default", dynamic=True)
        return _torch_backend(compiled, name, device)
    if name == "tensorrt":
        if device != "cuda":
            raise RuntimeError("TensorRT needs a CUDA device")
        return _tensorrt(bundle, model, max_batch_size, cache_dir)
    raise ValueError(f"unknown backend {name!r}")


def _tensorrt(bundle: ModelBundle, model: Any, max_batch_size: int, cache_dir: Path | None) -> Backend:
    import tensorrt
    import torch
    import torch_tensorrt

    width = len(bundle.fitted.feature_names)
    major, minor = torch.cuda.get_device_capability()
    key = f"{bundle.fitted.content_hash[:16]}-{bundle.lineage.get('mlflow_run_id', 'x')}-sm{major}{minor}-trt{tensorrt.__version__}-b{max_batch_size}"
    path = (cache_dir / f"{key}.ep") if cache_dir else None
    if path is not None and path.exists():
        engine = torch_tensorrt.load(str(path)).module()
    else:
        spec = torch_tensorrt.Input(
            min_shape=(1, width), opt_shape=(max(1, max_batch_size // 2), width), max_shape=(max_batch_size, width),
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
    tolerance: float = 1e-3,
    cache_dir: Path | None = None,
    on_fallback: Fallback | None = None,
) -> Backend:
    """The backend that will serve `bundle`: the chosen one if it builds and passes parity, else the reference."""
    reference = Backend("native", bundle.predict_matrix)
    name = resolve_choice(bundle.kind, choice)
    if name == "native":
        return reference
    probe = probe_matrix(bundle.fitted, rows=min(256, max(8, max_batch_size)))
    try:
        candidate = _candidate(bundle, name, max_batch_size, cache_dir)
        candidate.predict(probe[:1])  # warm-up: compiles, captures graphs, builds engines
        got = np.concatenate(
            [candidate.predict(probe[i : i + max_batch_size]) for i in range(0, len(probe), max_batch_size)]
        )
        candidate.max_abs_diff = parity(reference.predict(probe), got)
    except Exception as exc:  # any build or runtime failure of an optional backend
        reason = f"{type(exc).__name__}: {exc}"[:200]
        log.warning("backend %s unavailable (%s); serving with the native reference", name, reason)
        if on_fallback:
            on_fallback(name, "unavailable")
        return reference
    if candidate.max_abs_diff > tolerance:
        log.warning(
            "backend %s failed the parity check (max |diff| %.2e > %.2e); serving with the native reference",
            name, candidate.max_abs_diff, tolerance,
        )
        if on_fallback:
            on_fallback(name, "parity")
        return reference
    return candidate
