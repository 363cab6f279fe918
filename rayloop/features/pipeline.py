"""Fit features once on the training split; apply them everywhere with one pure transform.

`FittedFeatures` is plain data (JSON, content hash). Its `transform` is the only feature code
path: Ray Data's `map_batches`, the training workers and every Serve replica call it, so the
model never sees features computed two ways (no training-serving skew).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, PrivateAttr

from rayloop.config import FeaturesConfig
from rayloop.data.schema import FeatureSchema, parse_timestamps
from rayloop.errors import FeatureError
from rayloop.features import stats as st
from rayloop.features.aggregates import compute_histograms, compute_stats
from rayloop.features.profile import (
    CategoricalProfile,
    NumericProfile,
    ReferenceProfile,
    interior_edges,
)

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "NumericFeature",
    "CategoricalFeature",
    "FittedFeatures",
    "FeaturePipeline",
    "Batch",
    "to_arrow",
    "MISSING_CODE",
    "OOV_CODE",
]

Batch = pa.Table | pa.RecordBatch | pd.DataFrame | Mapping[str, Any] | Sequence[Mapping[str, Any]]
TimePart = Literal["hour", "day_of_week", "day_of_month", "month"]
MISSING_CODE = 0  # categorical code of a missing value
OOV_CODE = 1  # categorical code of a value outside the vocabulary
_PERIODS = {"hour": 24.0, "day_of_week": 7.0, "day_of_month": 31.0, "month": 12.0}


class NumericFeature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    mean: float
    std: float
    edges: list[float] | None = None  # quantile-bin strategy only
    missing_indicator: bool = True


class CategoricalFeature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    vocabulary: list[str]

    @property
    def cardinality(self) -> int:
        """Codes: 0 missing, 1 out-of-vocabulary, 2.. the vocabulary."""
        return len(self.vocabulary) + 2


class FittedFeatures(BaseModel):
    """Everything the transform needs, as plain data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    strategy: Literal["standardize", "quantile_bins"] = "standardize"
    numeric: list[NumericFeature]
    categorical: list[CategoricalFeature]
    timestamp_column: str | None = None
    time_features: list[TimePart] = []
    label_column: str | None = None
    n_rows: int = 0
    _vocab_arrays: dict[str, pa.Array] = PrivateAttr(default_factory=dict)

    # ---- description -------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        names: list[str] = []
        for f in self.numeric:
            names.append(f.name)
            if f.missing_indicator:
                names.append(f"{f.name}__missing")
        names.extend(f.name for f in self.categorical)
        if self.timestamp_column:
            for part in self.time_features:
                names += [f"{self.timestamp_column}__{part}_sin", f"{self.timestamp_column}__{part}_cos"]
        return names

    @property
    def categorical_indices(self) -> list[int]:
        """Positions of the categorical codes in the matrix (LightGBM categorical_feature, MLP embeddings)."""
        names = self.feature_names
        return [names.index(f.name) for f in self.categorical]

    @property
    def cardinalities(self) -> list[int]:
        return [f.cardinality for f in self.categorical]

    @property
    def input_columns(self) -> list[str]:
        cols = [f.name for f in self.numeric] + [f.name for f in self.categorical]
        if self.timestamp_column and self.time_features:
            cols.append(self.timestamp_column)
        return cols

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self._canonical().encode()).hexdigest()

    def _canonical(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> FittedFeatures:
        return cls.model_validate_json(text)

    # ---- the one transform ----------------------------------------------------------------
    def transform(self, batch: Batch) -> np.ndarray:
        """Raw rows -> float32 matrix (rows x feature_names). Pure and row-independent."""
        table = to_arrow(batch)
        present = set(table.column_names)  # column_names builds a new list on every access
        missing = [c for c in self.input_columns if c not in present]
        if missing:
            raise FeatureError(f"batch is missing feature column(s) {missing}; it has {table.column_names}")
        n = table.num_rows
        out = np.empty((n, len(self.feature_names)), dtype=np.float32)
        j = 0
        for f in self.numeric:
            x = st.numeric_values(table.column(f.name))
            absent = np.isnan(x)
            if self.strategy == "quantile_bins" and f.edges is not None:
                value = np.searchsorted(np.asarray(f.edges), x, side="left").astype(np.float64)
                value[absent] = -1.0
            else:
                value = (x - f.mean) / (f.std if f.std > 0 else 1.0)
                value[absent] = 0.0
            out[:, j] = value
            j += 1
            if f.missing_indicator:
                out[:, j] = absent
                j += 1
        for f in self.categorical:
            out[:, j] = self._codes(f, table.column(f.name))
            j += 1
        if self.timestamp_column:
            for part in self.time_features:
                angle = 2.0 * np.pi * _time_part(table.column(self.timestamp_column), part) / _PERIODS[part]
                out[:, j] = np.sin(angle)
                out[:, j + 1] = np.cos(angle)
                j += 2
        return out

    def feature_table(self, batch: Batch, keep: Sequence[str] = ()) -> pa.Table:
        """The transform as named float32 columns, plus passthrough columns (label, id, ...)."""
        table = to_arrow(batch)
        matrix = self.transform(table)
        columns: dict[str, pa.Array] = {
            name: pa.array(np.ascontiguousarray(matrix[:, i])) for i, name in enumerate(self.feature_names)
        }
        for name in keep:
            if name in table.column_names and name not in columns:
                columns[name] = table.column(name)
        return pa.table(columns)

    def _codes(self, feature: CategoricalFeature, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
        vocab = self._vocab_arrays.get(feature.name)
        if vocab is None:
            vocab = self._vocab_arrays[feature.name] = pa.array(feature.vocabulary, pa.string())
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if not pa.types.is_string(column.type):
            column = column.cast(pa.string())
        index = pc.index_in(column, value_set=vocab)
        codes = index.to_numpy(zero_copy_only=False)  # float with NaN where not found or null
        codes = np.where(np.isnan(codes), OOV_CODE, codes + 2)
        codes[column.is_null().to_numpy(zero_copy_only=False)] = MISSING_CODE
        return codes


def to_arrow(batch: Batch) -> pa.Table:
    """One normalization for every caller: Ray Data batches, pandas frames, JSON records."""
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch])
    if isinstance(batch, pd.DataFrame):
        return pa.Table.from_pandas(batch, preserve_index=False)
    if isinstance(batch, Mapping):
        values = list(batch.values())
        if values and all(isinstance(v, (list, tuple, np.ndarray, pa.Array)) for v in values):
            return pa.table(dict(batch))
        return pa.Table.from_pylist([dict(batch)])
    if isinstance(batch, Sequence):
        return pa.Table.from_pylist([dict(row) for row in batch])
    raise FeatureError(f"cannot transform a batch of type {type(batch).__name__}")


def _time_part(column: pa.ChunkedArray | pa.Array, part: str) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column, _ = parse_timestamps(column.cast(pa.string()))
    elif pa.types.is_timestamp(column.type) and column.type.tz is None:
        column = pc.assume_timezone(column, "UTC")
    elif pa.types.is_timestamp(column.type) and column.type.tz != "UTC":
        column = column.cast(pa.timestamp(column.type.unit, tz="UTC"))
    fn = {"hour": pc.hour, "day_of_week": pc.day_of_week, "day_of_month": pc.day, "month": pc.month}[part]
    values = fn(column).cast(pa.float64()).to_numpy(zero_copy_only=False)
    return np.nan_to_num(values, nan=0.0)


class FeaturePipeline:
    """Decides which columns become which features, fits them on a Ray Dataset, builds the profile."""

    def __init__(
        self,
        config: FeaturesConfig,
        schema: FeatureSchema,
        *,
        label_column: str,
        timestamp_column: str | None = None,
        id_column: str | None = None,
    ) -> None:
        self.config = config
        self.schema = schema
        self.label_column = label_column
        self.timestamp_column = timestamp_column if timestamp_column in schema.names else None
        self.id_column = id_column
        self.numeric, self.categorical = self._resolve_columns()

    def _resolve_columns(self) -> tuple[list[str], list[str]]:
        skip = {self.label_column, self.id_column, self.timestamp_column, *self.config.exclude}
        by_type = {c.name: c.dtype for c in self.schema.columns}

        def pick(spec: list[str] | str, dtypes: set[str], kind: str) -> list[str]:
            if spec == "auto":
                return [n for n, t in by_type.items() if t in dtypes and n not in skip]
            unknown = [n for n in spec if n not in by_type]
            if unknown:
                raise FeatureError(
                    f"features.{kind} names column(s) {unknown} that are not in the schema {list(by_type)}"
                )
            return list(spec)

        numeric = pick(self.config.numeric, {"int64", "float64", "bool"}, "numeric")
        categorical = pick(self.config.categorical, {"string"}, "categorical")
        if not numeric and not categorical:
            raise FeatureError("no feature columns: set features.numeric / features.categorical")
        return numeric, categorical

    # ---- pure: stats -> fitted features / profile -----------------------------------------
    def profile_quantiles(self) -> list[float]:
        b = self.config.profile_bins
        return [i / b for i in range(1, b)]

    def bin_quantiles(self) -> list[float]:
        b = self.config.n_bins
        return [i / b for i in range(1, b)]

    def build(self, stats: Mapping[str, Any]) -> FittedFeatures:
        """FittedFeatures from merged block statistics (see features.stats)."""
        numeric = []
        for name in self.numeric:
            summary = st.numeric_summary(stats["numeric"][name], self.bin_quantiles())
            edges = interior_edges(summary["quantiles"]) if self.config.numeric_strategy == "quantile_bins" else None
            numeric.append(
                NumericFeature(
                    name=name,
                    mean=summary["mean"],
                    std=summary["std"],
                    edges=edges,
                    # like sklearn's add_indicator: only where training data had missing values
                    missing_indicator=self.config.missing_indicators and summary["missing"] > 0,
                )
            )
        categorical = []
        for name in self.categorical:
            counts = stats["categorical"][name]["counts"]
            ranked = sorted(
                ((v, c) for v, c in counts.items() if c >= self.config.min_frequency), key=lambda kv: (-kv[1], kv[0])
            )
            categorical.append(CategoricalFeature(name=name, vocabulary=[v for v, _ in ranked[: self.config.top_k]]))
        return FittedFeatures(
            strategy=self.config.numeric_strategy,
            numeric=numeric,
            categorical=categorical,
            timestamp_column=self.timestamp_column,
            time_features=list(self.config.time_features) if self.timestamp_column else [],
            label_column=self.label_column,
            n_rows=stats["rows"],
        )

    def profile_edges(self, stats: Mapping[str, Any]) -> dict[str, list[float]]:
        return {
            name: interior_edges(st.numeric_summary(stats["numeric"][name], self.profile_quantiles())["quantiles"])
            for name in self.numeric
        }

    def build_profile(
        self,
        stats: Mapping[str, Any],
        fitted: FittedFeatures,
        edges: Mapping[str, list[float]],
        histograms: Mapping[str, tuple[list[int], int]],
    ) -> ReferenceProfile:
        numeric = []
        for name in self.numeric:
            summary = st.numeric_summary(stats["numeric"][name], [])
            counts, missing = histograms[name]
            numeric.append(
                NumericProfile(
                    name=name,
                    edges=list(edges[name]),
                    counts=list(counts),
                    missing=missing,
                    mean=summary["mean"],
                    std=summary["std"],
                    min=summary["min"],
                    max=summary["max"],
                )
            )
        categorical = []
        for feature in fitted.categorical:
            cat = stats["categorical"][feature.name]
            counts = [int(cat["counts"].get(v, 0)) for v in feature.vocabulary]
            total = sum(cat["counts"].values()) + cat["pruned"]
            categorical.append(
                CategoricalProfile(
                    name=feature.name,
                    categories=list(feature.vocabulary),
                    counts=counts,
                    other=total - sum(counts),
                    missing=cat["missing"],
                )
            )
        label = stats["numeric"].get(self.label_column)
        label_rate = st.numeric_summary(label, [])["mean"] if label and label["n"] else None
        return ReferenceProfile(n_rows=stats["rows"], numeric=numeric, categorical=categorical, label_rate=label_rate)

    def stat_columns(self) -> tuple[list[str], list[str]]:
        """Columns whose statistics the fit pass collects (features plus the label, for its rate)."""
        numeric = list(self.numeric)
        label_type = next((c.dtype for c in self.schema.columns if c.name == self.label_column), None)
        if label_type in ("int64", "float64", "bool") and self.label_column not in numeric:
            numeric.append(self.label_column)
        return numeric, list(self.categorical)

    def fit_table(self, table: pa.Table) -> tuple[FittedFeatures, ReferenceProfile]:
        """Fit on one in-memory table, no Ray: the same statistics as one single-block Ray pass."""
        numeric, categorical = self.stat_columns()
        stats = st.block_stats(table, numeric, categorical, self.config.quantile_precision)
        if stats["rows"] == 0:
            raise FeatureError("cannot fit features on an empty training split")
        fitted = self.build(stats)
        edges = self.profile_edges(stats)
        histograms = {
            name: st.histogram_counts(st.numeric_values(table.column(name)), np.asarray(e)) for name, e in edges.items()
        }
        return fitted, self.build_profile(stats, fitted, edges, histograms)

    # ---- Ray wiring -----------------------------------------------------------------------
    def fit(self, ds: ray.data.Dataset) -> FittedFeatures:
        return self.fit_with_profile(ds)[0]

    def fit_with_profile(self, ds: ray.data.Dataset) -> tuple[FittedFeatures, ReferenceProfile]:
        """Two streaming passes: statistics (moments, sketches, counts), then profile bin counts."""
        numeric, categorical = self.stat_columns()
        stats = compute_stats(ds, numeric, categorical, precision=self.config.quantile_precision)
        if stats["rows"] == 0:
            raise FeatureError("cannot fit features on an empty training split")
        fitted = self.build(stats)
        edges = self.profile_edges(stats)
        histograms = compute_histograms(ds, edges)
        return fitted, self.build_profile(stats, fitted, edges, histograms)
