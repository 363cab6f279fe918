"""The reference profile: what "normal" looks like, computed with the features, saved with the model.

Per numeric feature: quantile bin edges from the training data and the counts in each bin;
per categorical feature: frequencies of the vocabulary, one out-of-vocabulary bucket and the
missing count. Drift detection compares live windows against exactly these bins.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["NumericProfile", "CategoricalProfile", "Histogram", "ReferenceProfile", "interior_edges"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumericProfile(_Frozen):
    name: str
    edges: list[float] = Field(description="interior bin edges; bins are (-inf, e0], (e0, e1], ..., (e_last, inf)")
    counts: list[int]
    missing: int
    mean: float
    std: float
    min: float | None
    max: float | None

    @property
    def n(self) -> int:
        return sum(self.counts) + self.missing


class CategoricalProfile(_Frozen):
    name: str
    categories: list[str]
    counts: list[int]
    other: int = Field(description="rows whose value is outside `categories` (the out-of-vocabulary bucket)")
    missing: int

    @property
    def n(self) -> int:
        return sum(self.counts) + self.other + self.missing


class Histogram(_Frozen):
    edges: list[float]
    counts: list[int]


class ReferenceProfile(_Frozen):
    version: int = 1
    n_rows: int
    numeric: list[NumericProfile]
    categorical: list[CategoricalProfile]
    label_rate: float | None = None
    prediction_histogram: Histogram | None = Field(
        None, description="a binary model's held-out P(positive), or a regression's predicted values"
    )
    class_histograms: dict[str, Histogram] = Field(
        default_factory=dict, description="a multiclass model's held-out probability of each class"
    )
    predicted_class_counts: list[int] | None = Field(
        None, description="a multiclass model's held-out predicted classes, counted in class order"
    )
    # the labels the model was judged on: what arrived labels are compared with (label drift)
    label_class_counts: list[int] | None = Field(None, description="a classifier's held-out labels, in class order")
    label_histogram: Histogram | None = Field(None, description="a regression's held-out labels")

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> ReferenceProfile:
        return cls.model_validate_json(text)

    @property
    def content_hash(self) -> str:
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()

    def feature(self, name: str) -> NumericProfile | CategoricalProfile:
        for item in [*self.numeric, *self.categorical]:
            if item.name == name:
                return item
        raise KeyError(f"feature {name!r} is not in the profile")


def interior_edges(quantiles: Sequence[float]) -> list[float]:
    """Unique, sorted, finite interior edges from quantiles (discrete columns repeat values)."""
    arr = np.asarray([q for q in quantiles if q is not None and np.isfinite(q)], dtype=np.float64)
    return [float(v) for v in np.unique(arr)]
