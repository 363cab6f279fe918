"""The model bundle: everything a registered version needs to predict from raw rows and be judged.

One directory, plain files, no Ray and no MLflow:

    bundle.json           kind, model params, metrics, lineage, format version
    model.txt | model.pt  the LightGBM booster | the MLP's config and state dict
    fitted_features.json  the one feature transform (FittedFeatures)
    schema.json           the declared or inferred input schema
    profile.json          the reference profile, including the prediction histogram

`registry.py` logs this directory as an MLflow pyfunc artifact; Serve, the monitor and the gate
load it back with `ModelBundle.load` and call `predict_proba(raw rows)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rayloop.data.schema import FeatureSchema
from rayloop.errors import BundleError
from rayloop.features.pipeline import Batch, FittedFeatures, to_arrow
from rayloop.features.profile import Histogram, ReferenceProfile

__all__ = ["BUNDLE_FORMAT", "ModelKind", "ModelBundle", "prediction_histogram"]

BUNDLE_FORMAT = 1
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


@dataclass
class ModelBundle:
    kind: ModelKind
    model: Any  # lightgbm.Booster | rayloop.models.mlp.TabularMLP (eval mode)
    fitted: FittedFeatures
    schema: FeatureSchema
    profile: ReferenceProfile
    model_params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)

    # ---- prediction -----------------------------------------------------------------------
    @property
    def input_columns(self) -> list[str]:
        """The raw columns a request must carry (the label is never one)."""
        return self.fitted.input_columns

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for an already transformed float32 matrix."""
        if self.kind == "lightgbm":
            return np.asarray(self.model.predict(x), dtype=np.float64)
        import torch

        with torch.inference_mode():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return torch.sigmoid(logits.float()).numpy().astype(np.float64)

    def predict_proba(self, rows: Batch) -> np.ndarray:
        """Raw rows (Arrow, pandas, dict of columns or list of records) -> P(label = 1)."""
        return self.predict_matrix(self.fitted.transform(to_arrow(rows)))

    # ---- files ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": BUNDLE_FORMAT,
            "kind": self.kind,
            "model_file": _MODEL_FILE[self.kind],
            "model_params": self.model_params,
            "metrics": self.metrics,
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

            torch.save({"state_dict": self.model.state_dict()}, target)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ModelBundle:
        directory = Path(directory)
        try:
            meta = json.loads((directory / _FILES["meta"]).read_text())
        except FileNotFoundError as exc:
            raise BundleError(f"{directory} is not a rayloop model bundle (no {_FILES['meta']})") from exc
        if meta.get("format") != BUNDLE_FORMAT:
            raise BundleError(
                f"bundle format {meta.get('format')!r} in {directory}; this rayloop reads {BUNDLE_FORMAT}"
            )
        kind = meta["kind"]
        fitted = FittedFeatures.from_json((directory / _FILES["fitted"]).read_text())
        model_file = directory / meta["model_file"]
        if kind == "lightgbm":
            import lightgbm as lgb

            model = lgb.Booster(model_file=str(model_file))
        elif kind == "mlp":
            import torch

            from rayloop.models.mlp import build_model  # torch at import: only for an MLP bundle

            model = build_model(
                {
                    "feature_names": fitted.feature_names,
                    "categorical_indices": fitted.categorical_indices,
                    "cardinalities": fitted.cardinalities,
                    **meta["model_params"],
                }
            )
            model.load_state_dict(torch.load(model_file, map_location="cpu", weights_only=True)["state_dict"])
            model.eval()
        else:
            raise BundleError(f"unknown model kind {kind!r} in {directory}")
        return cls(
            kind=kind,
            model=model,
            fitted=fitted,
            schema=FeatureSchema.model_validate_json((directory / _FILES["schema"]).read_text()),
            profile=ReferenceProfile.from_json((directory / _FILES["profile"]).read_text()),
            model_params=meta["model_params"],
            metrics=meta["metrics"],
            lineage=meta["lineage"],
        )
