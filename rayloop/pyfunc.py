"""The MLflow pyfunc face of a ModelBundle: `mlflow.pyfunc.load_model(...)` predicts from raw rows.

Kept apart from registry.py so that importing the registry does not import mlflow. The wrapper
holds no logic of its own: load the bundle directory, call `predict_proba`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import AnyType

from rayloop.bundle import ModelBundle

__all__ = ["BundleModel", "MODEL_CODE", "signature_for", "requirements"]

# MLflow "models from code": this file is stored with the model and executed at load time, so the
# model carries no pickled object
MODEL_CODE = Path(__file__).with_name("_pyfunc_entry.py")

# MLflow refuses int64 -> double and NaN -> long (an int column with a missing value arrives as
# float64), and tz-aware timestamps; those columns are declared Any and checked by our transform.
_MLFLOW_TYPE = {"float64": "double", "string": "string", "bool": "boolean"}


class BundleModel(mlflow.pyfunc.PythonModel):
    """Raw rows (a DataFrame with the schema's input columns) -> the task's outputs per row, a
    DataFrame: binary `label`, `probability`; multiclass `label`, `probability.<class>`;
    regression `prediction` (and `lower`, `upper` with an interval)."""

    bundle: ModelBundle

    def load_context(self, context) -> None:
        self.bundle = ModelBundle.load(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.bundle.predict_frame(model_input)


def signature_for(bundle: ModelBundle) -> ModelSignature:
    """Inputs from the schema: every column the transform reads, by name and (where MLflow's type
    check agrees with our data) by type."""
    by_name = {c.name: c for c in bundle.schema.columns}
    inputs = Schema(
        [ColSpec(_MLFLOW_TYPE.get(by_name[name].dtype) or AnyType(), name) for name in bundle.input_columns]
    )
    return ModelSignature(inputs=inputs, outputs=Schema([_output_spec(name) for name in _output_names(bundle)]))


def _output_names(bundle: ModelBundle) -> list[str]:
    task = bundle.task
    if task.kind == "regression":
        return ["prediction", *(["lower", "upper"] if bundle.interval_half_width is not None else [])]
    if task.kind == "binary":
        return ["label", "probability"]
    return ["label", *(f"probability.{c}" for c in task.classes)]


def _output_spec(name: str) -> ColSpec:
    # the label is a class value of the task's own type (int, string or bool)
    return ColSpec(AnyType() if name == "label" else "double", name)


def requirements(kind: str) -> list[str]:
    """Pinned to what trained the model; rayloop itself must be importable where the model loads."""
    names = ["numpy", "pandas", "pyarrow", "pydantic", "scipy", "mlflow", "lightgbm" if kind == "lightgbm" else "torch"]
    out = []
    for name in names:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out
