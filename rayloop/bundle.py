"""The model bundle: everything a registered version needs to predict from raw rows and be judged.

One directory, plain files, no Ray and no MLflow:

    bundle.json           kind, task (binary | multiclass | regression, its classes), model params,
                          metrics, the regression interval, lineage, format version
    model.txt | model.pt  the LightGBM booster | the MLP's config and state dict
    fitted_features.json  the one feature transform (FittedFeatures)
    schema.json           the declared or inferred input schema
    profile.json          the reference profile, including the prediction histogram

`registry.py` logs this directory as an MLflow pyfunc artifact; Serve, the monitor and the gate
load it back with `ModelBundle.load` and call `predict_scores(raw rows)`: P(positive) per row for
a binary task, an (n, classes) probability matrix for multiclass, the value for a regression
(`rayloop.tasks`). `predict_frame` gives the task's outputs with original class values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from rayloop.data.schema import FeatureSchema
from rayloop.errors import BundleError
from rayloop.features.pipeline import Batch, FittedFeatures, to_arrow
from rayloop.features.profile import Histogram, ReferenceProfile
from rayloop.tasks import Task

__all__ = ["BUNDLE_FORMAT", "ModelKind", "ModelBundle", "prediction_histogram", "value_histogram"]

BUNDLE_FORMAT = 2  # 1: binary only, no task in bundle.json (still read)
ModelKind = Literal["lightgbm", "mlp"]
PREDICTION_BINS = 50
_FILES = {"meta": "bundle.json", "fitted": "fitted_features.json", "schema": "schema.json", "profile": "profile.json"}
_MODEL_FILE = {"lightgbm": "model.txt", "mlp": "model.pt"}


def prediction_histogram(probabilities: np.ndarray, bins: int = PREDICTION_BINS) -> Histogram:
    """Quantile bins of held-out scores over [0, 1]: the reference the monitor compares live scores with.

    Equal-mass bins (not equal-width) keep every bin informative when scores crowd near 0 or 1,
    which is what the drift tests on scores need. Bin i holds edges[i] <= p < edges[i+1] (the
    last bin also holds 1.0), as `numpy.histogram`.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    inner = np.unique(np.quantile(p, np.linspace(0.0, 1.0, bins + 1)[1:-1])) if p.size else np.array([])
    inner = inner[(inner > 0.0) & (inner < 1.0)]
    edges = np.concatenate([[0.0], inner, [1.0]])
    counts, _ = np.histogram(p, bins=edges)
    return Histogram(edges=edges.tolist(), counts=counts.astype(int).tolist())


def value_histogram(values: np.ndarray, bins: int = PREDICTION_BINS) -> Histogram:
    """Quantile bins of held-out predicted values (a regression): the outer edges are the values'
    range, so the monitor's bins cover any value."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return Histogram(edges=[0.0, 1.0], counts=[0])
    inner = np.unique(np.quantile(v, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    edges = np.concatenate([[v.min()], inner[(inner > v.min()) & (inner < v.max())], [v.max()]])
    if edges.size < 2 or edges[0] == edges[-1]:
        edges = np.array([v.min(), v.min() + 1.0])
    counts, _ = np.histogram(v, bins=edges)
    return Histogram(edges=edges.tolist(), counts=counts.astype(int).tolist())


_BINARY = Task(kind="binary", label="label", label_type="int", classes=[0, 1])  # what format 1 bundles predict


@dataclass
class ModelBundle:
    kind: ModelKind
    model: Any  # lightgbm.Booster | rayloop.models.mlp.Scores (eval mode: the task's outputs)
    fitted: FittedFeatures
    schema: FeatureSchema
    profile: ReferenceProfile
    task: Task = _BINARY
    model_params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    # a regression's prediction interval: prediction +- this (split-conformal, at `interval_coverage`)
    interval_half_width: float | None = None
    interval_coverage: float | None = None

    def __post_init__(self) -> None:
        if self.kind == "mlp" and not hasattr(self.model, "head"):  # a bare TabularMLP: put its head on
            from rayloop.models.mlp import build_scores  # torch at import: only for an MLP bundle

            self.model = build_scores(self.model.eval(), self.model_params)

    # ---- prediction -----------------------------------------------------------------------
    @property
    def input_columns(self) -> list[str]:
        """The raw columns a request must carry (the label is never one)."""
        return self.fitted.input_columns

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        """The task's scores for an already transformed float32 matrix."""
        if self.kind == "lightgbm":
            out = np.asarray(self.model.predict(x), dtype=np.float64)
            return out.reshape(len(x), -1) if self.task.kind == "multiclass" else out
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return out.float().numpy().astype(np.float64)

    def predict_scores(self, rows: Batch) -> np.ndarray:
        """Raw rows (Arrow, pandas, dict of columns or list of records) -> the task's scores."""
        return self.predict_matrix(self.fitted.transform(to_arrow(rows)))

    def predict_proba(self, rows: Batch) -> np.ndarray:
        """P(positive class) of a binary classifier; class probabilities of a multiclass one."""
        if self.task.kind == "regression":
            raise BundleError("a regression predicts values, not probabilities: use predict_scores")
        return self.predict_scores(rows)

    def interval(self, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(low, high) of a regression's prediction interval; None without one."""
        if self.interval_half_width is None:
            return None
        values = np.asarray(predictions, dtype=np.float64)
        return values - self.interval_half_width, values + self.interval_half_width

    def outputs(self, scores: np.ndarray, threshold: float = 0.5) -> pd.DataFrame:
        """The task's outputs per row from its scores: binary `label` (the class value) and
        `probability`; multiclass `label` and one `probability.<class>` per class; regression
        `prediction` and, with an interval, `lower` and `upper`."""
        task = self.task
        if task.kind == "regression":
            frame = pd.DataFrame({"prediction": np.asarray(scores, dtype=np.float64)})
            bounds = self.interval(frame["prediction"].to_numpy())
            if bounds is not None:
                frame["lower"], frame["upper"] = bounds
            return frame
        labels = task.decode(task.predicted_codes(scores, threshold))
        if task.kind == "binary":
            return pd.DataFrame({"label": labels, "probability": np.asarray(scores, dtype=np.float64)})
        columns: dict[str, Any] = {"label": labels}
        for code, name in enumerate(task.classes):
            columns[f"probability.{name}"] = np.asarray(scores)[:, code]
        return pd.DataFrame(columns)

    def predict_frame(self, rows: Batch, threshold: float = 0.5) -> pd.DataFrame:
        """Raw rows -> the task's outputs (what `mlflow.pyfunc` returns)."""
        return self.outputs(self.predict_scores(rows), threshold)

    # ---- files ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": BUNDLE_FORMAT,
            "kind": self.kind,
            "task": self.task.model_dump(mode="json"),
            "model_file": _MODEL_FILE[self.kind],
            "model_params": self.model_params,
            "metrics": self.metrics,
            "interval_half_width": self.interval_half_width,
            "interval_coverage": self.interval_coverage,
            "lineage": self.lineage,
        }
        (directory / _FILES["meta"]).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        (directory / _FILES["fitted"]).write_text(self.fitted.to_json())
        (directory / _FILES["schema"]).write_text(self.schema.model_dump_json(indent=2))
        (directory / _FILES["profile"]).write_text(self.profile.to_json())
        target = directory / _MODEL_FILE[self.kind]
        if self.kind == "lightgbm":
            self.model.save_model(str(target))
        else:
            import torch

            torch.save({"state_dict": self.model.model.state_dict()}, target)  # the MLP; its head is in params
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ModelBundle:
        directory = Path(directory)
        try:
            meta = json.loads((directory / _FILES["meta"]).read_text())
        except FileNotFoundError as exc:
            raise BundleError(f"{directory} is not a rayloop model bundle (no {_FILES['meta']})") from exc
        if meta.get("format") not in (1, BUNDLE_FORMAT):
            raise BundleError(
                f"bundle format {meta.get('format')!r} in {directory}; this rayloop reads 1..{BUNDLE_FORMAT}"
            )
        kind = meta["kind"]
        task = Task.model_validate(meta["task"]) if "task" in meta else _BINARY
        fitted = FittedFeatures.from_json((directory / _FILES["fitted"]).read_text())
        model_file = directory / meta["model_file"]
        if kind == "lightgbm":
            import lightgbm as lgb

            model = lgb.Booster(model_file=str(model_file))
        elif kind == "mlp":
            import torch

            from rayloop.models.mlp import build_model, build_scores  # torch at import: only for an MLP bundle

            params = {
                "feature_names": fitted.feature_names,
                "categorical_indices": fitted.categorical_indices,
                "cardinalities": fitted.cardinalities,
                **meta["model_params"],
            }
            mlp = build_model(params)
            mlp.load_state_dict(torch.load(model_file, map_location="cpu", weights_only=True)["state_dict"])
            model = build_scores(mlp.eval(), params)
        else:
            raise BundleError(f"unknown model kind {kind!r} in {directory}")
        return cls(
            kind=kind,
            model=model,
            fitted=fitted,
            schema=FeatureSchema.model_validate_json((directory / _FILES["schema"]).read_text()),
            profile=ReferenceProfile.from_json((directory / _FILES["profile"]).read_text()),
            task=task,
            model_params=meta["model_params"],
            metrics=meta["metrics"],
            lineage=meta["lineage"],
            interval_half_width=meta.get("interval_half_width"),
            interval_coverage=meta.get("interval_coverage"),
        )
