"""Seeded synthetic tabular data for every task, with controllable drift.

One latent process, three labels (`task`): a binary label (`1[f(x) + noise > 0]`), a
three-class label (`low` / `medium` / `high`: the same noisy score cut at two thresholds, so
`high` is the binary positive) and a regression target (`100 + 20 f(x) + gaussian noise`). Every
drift scenario moves all three the same way: covariate shifts the inputs, concept changes f,
prior resamples rows towards higher scores (more positives, more `high`, larger targets).

Why this exists: the pipeline needs a realistic, reproducible dataset (skewed
and heavy-tailed numerics, missing values, a high-cardinality categorical, a
non-linear label) plus *known* drift so that drift detection and retraining
can be tested against ground truth.  Everything is vectorized (numpy +
pyarrow.compute); nothing runs at import time.

Design notes
------------
* Every column draws from its own child ``numpy.random.SeedSequence`` stream,
  so the same seed gives the same base draws regardless of scenario.  A
  ``concept`` scenario therefore has exactly the features of ``scenario=None``
  and a ``covariate`` scenario is a deterministic transform of them.
* The "world" (merchant popularity and per-merchant label effects) is fixed by
  :data:`WORLD_SEED`, independent of ``seed``: chunks generated with different
  seeds share the same merchants, so a model can learn merchant effects across
  files and chunked output is distributed like one big call.
* Feature dependencies (income | region, device | channel, transactions |
  channel) are computed from the *unshifted* draws; covariate drift is then
  applied column by column.  Hence a column not listed in
  ``Scenario.features`` keeps exactly its marginal distribution.
* The label is ``1[f(x) + logistic noise > 0]``, i.e. ``y ~ Bernoulli(sigmoid(f(x)))``.
  :func:`true_probability` exposes ``sigmoid(f(x))`` of the undrifted concept.
* Arrow fields are all declared nullable (the Arrow default) so that tables
  concatenate cleanly with pandas/Ray round-trips; the *contract* for which
  columns must be non-null is :data:`NON_NULLABLE_COLUMNS`.
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rayloop.data.schema import FeatureSchema

__all__ = [
    "AGE_RANGE",
    "BASE_POSITIVE_RATE",
    "CATEGORICAL_COLUMNS",
    "CHANNELS",
    "CORRUPTION_KINDS",
    "DEFAULT_COVARIATE_FEATURES",
    "DEVICE_TYPES",
    "FEATURE_COLUMNS",
    "ID_COLUMN",
    "LABEL_COLUMN",
    "MERCHANT_IDS",
    "N_MERCHANTS",
    "NON_NULLABLE_COLUMNS",
    "NULLABLE_COLUMNS",
    "NUMERIC_COLUMNS",
    "PRIOR_SHIFT_PER_MAGNITUDE",
    "REGIONS",
    "MULTICLASS_CLASSES",
    "SCHEMA",
    "TASKS",
    "TIMESTAMP_COLUMN",
    "WORLD_SEED",
    "Scenario",
    "chunk_seed",
    "corrupt",
    "drift_intensity",
    "generate",
    "schema_for",
    "true_probability",
    "write_parquet",
]

# --------------------------------------------------------------------------
# Column names and vocabularies (import these instead of hard-coding strings)
# --------------------------------------------------------------------------
ID_COLUMN = "entity_id"
TIMESTAMP_COLUMN = "event_time"
LABEL_COLUMN = "label"

NUMERIC_COLUMNS: tuple[str, ...] = (
    "age",
    "income",
    "account_balance",
    "tenure_months",
    "credit_utilization",
    "num_transactions_30d",
    "avg_session_minutes",
    "latency_ms",
    "risk_score",
)
CATEGORICAL_COLUMNS: tuple[str, ...] = ("channel", "region", "merchant_id", "device_type")
FEATURE_COLUMNS: tuple[str, ...] = NUMERIC_COLUMNS + CATEGORICAL_COLUMNS

CHANNELS: tuple[str, ...] = ("web", "mobile", "store", "phone")
REGIONS: tuple[str, ...] = tuple(f"r{i:02d}" for i in range(1, 13))
DEVICE_TYPES: tuple[str, ...] = ("ios", "android", "desktop", "other")
N_MERCHANTS = 5000
MERCHANT_IDS: tuple[str, ...] = tuple(f"m{i:05d}" for i in range(N_MERCHANTS))

#: Columns that may contain nulls in generated (uncorrupted) data, with their
#: approximate null rates.
NULLABLE_COLUMNS: dict[str, float] = {
    "income": 0.05,
    "tenure_months": 0.03,
    "latency_ms": 0.01,
    "device_type": 0.02,
}
NON_NULLABLE_COLUMNS: tuple[str, ...] = tuple(
    c for c in (ID_COLUMN, TIMESTAMP_COLUMN, *FEATURE_COLUMNS, LABEL_COLUMN) if c not in NULLABLE_COLUMNS
)

#: The tasks a table can be generated for, and the classes of the multiclass label.
TASKS: tuple[str, ...] = ("binary", "multiclass", "regression")
MULTICLASS_CLASSES: tuple[str, ...] = ("low", "medium", "high")
# the multiclass label cuts the binary label's noisy score here and at 0 (low about 40%, high about 30%)
_LOW_MEDIUM_CUT = -2.0
# the regression target: 100 + 20 f(x) + N(0, 8)
_TARGET_BASE, _TARGET_SCALE, _TARGET_NOISE = 100.0, 20.0, 8.0

#: Valid range of ``age`` (generated values are clipped to it).
AGE_RANGE: tuple[float, float] = (18.0, 95.0)

SCHEMA = pa.schema(
    [
        pa.field(ID_COLUMN, pa.int64()),
        pa.field(TIMESTAMP_COLUMN, pa.timestamp("us", tz="UTC")),
        pa.field("age", pa.float64()),
        pa.field("income", pa.float64()),
        pa.field("account_balance", pa.float64()),
        pa.field("tenure_months", pa.float64()),
        pa.field("credit_utilization", pa.float64()),
        pa.field("num_transactions_30d", pa.int64()),
        pa.field("avg_session_minutes", pa.float64()),
        pa.field("latency_ms", pa.float64()),
        pa.field("risk_score", pa.float64()),
        pa.field("channel", pa.string()),
        pa.field("region", pa.string()),
        pa.field("merchant_id", pa.string()),
        pa.field("device_type", pa.string()),
        pa.field(LABEL_COLUMN, pa.int64()),
    ]
)

#: Seed of the fixed "world" (merchant popularity and merchant label effects).
WORLD_SEED = 20260101
#: Approximate P(y=1) of the undrifted process (used as p0 by the prior scenario).
BASE_POSITIVE_RATE = 0.30
#: Prior scenario: p1 = min(0.95, p0 + PRIOR_SHIFT_PER_MAGNITUDE * magnitude).
PRIOR_SHIFT_PER_MAGNITUDE = 0.3
#: Covariate scenario default: 4 numeric + 1 categorical column shift.
DEFAULT_COVARIATE_FEATURES: tuple[str, ...] = (
    "age",
    "income",
    "credit_utilization",
    "latency_ms",
    "channel",
)
#: Kinds injected by :func:`corrupt`, in cycling order.
CORRUPTION_KINDS: tuple[str, ...] = (
    "age_out_of_range",
    "credit_utilization_out_of_range",
    "unknown_channel",
    "null_label",
)

# Distribution parameters (module constants so they are documented in one place).
_CHANNEL_P = np.array([0.40, 0.35, 0.15, 0.10])
_CHANNEL_TX_RATE = np.array([12.0, 20.0, 6.0, 3.0])  # Poisson rate of num_transactions_30d
_REGION_P = np.array([0.16, 0.13, 0.11, 0.10, 0.09, 0.08, 0.07, 0.07, 0.06, 0.05, 0.04, 0.04])
_REGION_INCOME_MULT = np.array([1.25, 1.10, 1.0, 0.95, 1.05, 0.90, 0.85, 1.15, 0.80, 1.0, 0.75, 0.95])
# P(device | channel); rows follow CHANNELS, columns DEVICE_TYPES.
_DEVICE_GIVEN_CHANNEL = np.array(
    [
        [0.10, 0.10, 0.75, 0.05],  # web
        [0.45, 0.50, 0.00, 0.05],  # mobile
        [0.15, 0.15, 0.10, 0.60],  # store
        [0.30, 0.30, 0.05, 0.35],  # phone
    ]
)
_INCOME_LOG_MEDIAN = math.log(52_000.0)
_INCOME_LOG_SIGMA = 0.6
_ZIPF_EXPONENT = 1.1
_ENTITY_ID_OFFSET = 1_000_000
_MOBILE = CHANNELS.index("mobile")
_WEB = CHANNELS.index("web")

# Label function coefficients (old concept).
_INTERCEPT = -0.99
_CHANNEL_EFFECT_OLD = np.array([0.20, 0.00, -0.50, 0.60])
# New concept: channel effects change and the utilization x web interaction flips.
_CHANNEL_EFFECT_NEW = np.array([-0.40, 0.50, 0.10, -0.30])
_DEVICE_EFFECT = np.array([-0.10, 0.10, 0.00, 0.40])
_TENURE_MEDIAN = 30.0 * math.log(2.0)  # median of Exponential(scale=30)
_LATENCY_MEDIAN = 2.0 * 60.0 * 0.839  # ~median of Gamma(2, 60)

_STREAMS: tuple[str, ...] = (
    "time",
    "entity",
    "age",
    "income",
    "balance",
    "tenure",
    "util",
    "ntx",
    "session",
    "latency",
    "risk",
    "channel",
    "region",
    "merchant",
    "device",
    "nulls",
    "label",
    "prior",
    "target",  # last: adding a stream must not change the draws of the others
)


class Scenario(BaseModel):
    """A drift scenario: what changes (``kind``), from where (``onset``), how fast, how much.

    ``onset`` and ``width`` are fractions of the *overall* timeline, so a scenario
    means the same thing whether the data is generated in one call or in chunks.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["covariate", "prior", "concept", "covariate+concept"]
    onset: float = Field(0.5, ge=0.0, le=1.0)
    mode: Literal["abrupt", "gradual"] = "abrupt"
    width: float = Field(0.2, gt=0.0)
    magnitude: float = Field(1.0, ge=0.0)
    features: tuple[str, ...] | None = None

    @field_validator("features")
    @classmethod
    def _known_features(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if len(value) == 0:
            raise ValueError("features must be None (default set) or a non-empty tuple")
        unknown = [f for f in value if f not in FEATURE_COLUMNS]
        if unknown:
            raise ValueError(f"unknown feature name(s) {unknown}; allowed: {list(FEATURE_COLUMNS)}")
        return tuple(dict.fromkeys(value))  # de-duplicate, keep order

    @model_validator(mode="after")
    def _features_only_for_covariate(self) -> Scenario:
        if self.features is not None and "covariate" not in self.kind:
            raise ValueError(f"features only applies to kind='covariate' or 'covariate+concept', not {self.kind!r}")
        return self

    @property
    def shifted_features(self) -> tuple[str, ...]:
        """Columns whose marginal distribution changes (empty unless covariate)."""
        if "covariate" not in self.kind:
            return ()
        return self.features if self.features is not None else DEFAULT_COVARIATE_FEATURES


def drift_intensity(position: np.ndarray, scenario: Scenario | None) -> np.ndarray:
    """Per-row drift weight in [0, 1] for timeline positions in [0, 1].

    abrupt: 1 where position >= onset; gradual: clip((position - onset) / width, 0, 1).
    """
    pos = np.asarray(position, dtype=np.float64)
    if scenario is None:
        return np.zeros(pos.shape, dtype=np.float64)
    if scenario.mode == "abrupt":
        return (pos >= scenario.onset).astype(np.float64)
    return np.clip((pos - scenario.onset) / scenario.width, 0.0, 1.0)


def chunk_seed(seed: int, index: int) -> int:
    """Seed of chunk ``index`` in :func:`write_parquet`, so a single file can be regenerated."""
    state = np.random.SeedSequence([_check_seed(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


# --------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------
def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _rngs(seed: int | list[int]) -> dict[str, np.random.Generator]:
    children = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children)}


@lru_cache(maxsize=1)
def _world() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed merchant popularity (normal + drifted) and per-merchant label effects."""
    rng = np.random.default_rng(WORLD_SEED)
    ranks = np.arange(1, N_MERCHANTS + 1, dtype=np.float64)
    weights = ranks**-_ZIPF_EXPONENT
    popularity = np.empty(N_MERCHANTS)
    popularity[rng.permutation(N_MERCHANTS)] = weights / weights.sum()
    # Drifted popularity: a different permutation makes tail merchants popular.
    drifted = np.empty(N_MERCHANTS)
    drifted[rng.permutation(N_MERCHANTS)] = weights / weights.sum()
    effects = rng.normal(0.0, 0.6, N_MERCHANTS)
    out = (np.cumsum(popularity), np.cumsum(drifted), effects)
    for arr in out:
        arr.setflags(write=False)  # cached and shared: keep it immutable
    return out


def _pick(u: np.ndarray, cdf: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling; ``cdf`` is 1-D (shared) or 2-D (one row per draw)."""
    if cdf.ndim == 1:
        idx = np.searchsorted(cdf, u, side="right")
        return np.minimum(idx, cdf.shape[0] - 1)
    idx = (u[:, None] >= cdf).sum(axis=1)
    return np.minimum(idx, cdf.shape[1] - 1)


def _positions(n: int, timeline: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Stratified jittered positions in [t0, t1): sorted by construction."""
    t0, t1 = timeline
    pos = t0 + (t1 - t0) * ((np.arange(n, dtype=np.float64) + rng.random(n)) / n)
    return np.maximum.accumulate(pos)


def _logit(cols: dict[str, np.ndarray], concept_shift: np.ndarray | None = None) -> np.ndarray:
    """Non-linear label logit; ``concept_shift`` (w * magnitude per row) blends in the new concept.

    Missing income/tenure/latency are imputed with their medians and a missing
    device gets no device effect, so nulls never produce NaN logits.
    """
    age = cols["age"]
    log_income = np.where(cols["income_null"], _INCOME_LOG_MEDIAN, np.log(np.maximum(cols["income"], 1.0)))
    tenure = np.where(cols["tenure_null"], _TENURE_MEDIAN, cols["tenure_months"])
    latency = np.where(cols["latency_null"], _LATENCY_MEDIAN, cols["latency_ms"])
    util = cols["credit_utilization"]
    channel = cols["channel_idx"]
    device = cols["device_idx"]
    web = (channel == _WEB).astype(np.float64)
    interaction = 3.5 * web * np.maximum(util - 0.35, 0.0)

    z = np.full(age.shape, _INTERCEPT)
    z += 0.8 * np.sin((age - 18.0) / 8.0)  # non-monotone in age
    z -= 0.9 * (log_income - _INCOME_LOG_MEDIAN) / _INCOME_LOG_SIGMA
    z += 2.0 * (util - 0.29)
    z += interaction
    z += _CHANNEL_EFFECT_OLD[channel]
    z += np.where(device >= 0, _DEVICE_EFFECT[np.maximum(device, 0)], 0.0)
    z -= 0.9 * (tenure >= 12.0)
    z += 0.5 * (tenure < 3.0)
    z += _world()[2][cols["merchant_idx"]]
    z += 0.8 * cols["risk_score"]
    z -= 0.3 * np.tanh(cols["account_balance"] / 2000.0)
    z += 0.4 * (latency > 250.0)
    z -= 0.02 * (cols["num_transactions_30d"] - 12.0)
    z += 0.15 * np.log1p(cols["avg_session_minutes"])
    if concept_shift is not None:
        # f_new = f_old + delta; magnitude 1 flips the interaction sign exactly.
        delta = -2.0 * interaction + (_CHANNEL_EFFECT_NEW - _CHANNEL_EFFECT_OLD)[channel]
        z += concept_shift * delta
    return z


def _simulate(
    n: int,
    rngs: dict[str, np.random.Generator],
    shift: np.ndarray,
    shifted: frozenset[str],
    concept_shift: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Draw features (with covariate ``shift`` = w * magnitude on ``shifted`` columns) and labels."""
    pop_cdf, drifted_cdf, _ = _world()
    s = shift
    cols: dict[str, np.ndarray] = {}

    # Base (unshifted) categorical draws; dependencies use these.
    u_channel = rngs["channel"].random(n)
    base_channel = _pick(u_channel, np.cumsum(_CHANNEL_P))
    u_region = rngs["region"].random(n)
    base_region = _pick(u_region, np.cumsum(_REGION_P))

    # channel -> drifts toward "mobile" (mixture weight t = clip(0.5 s, 0, 1)).
    if "channel" in shifted:
        t = np.clip(0.5 * s, 0.0, 1.0)[:, None]
        target = np.zeros(len(CHANNELS))
        target[_MOBILE] = 1.0
        cdf = np.cumsum((1.0 - t) * _CHANNEL_P + t * target, axis=1)
        cols["channel_idx"] = _pick(u_channel, cdf)
    else:
        cols["channel_idx"] = base_channel
    # region -> drifts toward the three smallest regions.
    if "region" in shifted:
        t = np.clip(0.5 * s, 0.0, 1.0)[:, None]
        target = np.zeros(len(REGIONS))
        target[-3:] = 1.0 / 3.0
        cols["region_idx"] = _pick(u_region, np.cumsum((1.0 - t) * _REGION_P + t * target, axis=1))
    else:
        cols["region_idx"] = base_region

    # merchant: Zipf-like popularity; drift mixes in a differently ranked popularity.
    mr = rngs["merchant"]
    u_merchant = mr.random(n)
    merchant = _pick(u_merchant, pop_cdf)
    if "merchant_id" in shifted:
        use_drifted = mr.random(n) < np.clip(0.5 * s, 0.0, 1.0)
        merchant = np.where(use_drifted, _pick(u_merchant, drifted_cdf), merchant)
    cols["merchant_idx"] = merchant

    # device depends on (base) channel; drift moves it toward "android".
    dr = rngs["device"]
    u_device = dr.random(n)
    dev_p = _DEVICE_GIVEN_CHANNEL[base_channel]
    if "device_type" in shifted:
        t = np.clip(0.5 * s, 0.0, 1.0)[:, None]
        target = np.zeros(len(DEVICE_TYPES))
        target[DEVICE_TYPES.index("android")] = 1.0
        dev_p = (1.0 - t) * dev_p + t * target
    device = _pick(u_device, np.cumsum(dev_p, axis=1))
    device_null = dr.random(n) < NULLABLE_COLUMNS["device_type"]
    cols["device_idx"] = np.where(device_null, -1, device)

    def on(name: str) -> np.ndarray | float:
        return s if name in shifted else 0.0

    age = rngs["age"].normal(41.0, 13.0, n) + 10.0 * on("age")
    cols["age"] = np.clip(age, *AGE_RANGE)

    ir = rngs["income"]
    log_income = (
        _INCOME_LOG_MEDIAN + np.log(_REGION_INCOME_MULT[base_region]) + _INCOME_LOG_SIGMA * ir.standard_normal(n)
    )
    cols["income"] = np.round(np.exp(log_income + 0.4 * on("income")), 2)
    cols["income_null"] = ir.random(n) < NULLABLE_COLUMNS["income"]

    cols["account_balance"] = np.round(
        2000.0 * rngs["balance"].standard_t(2.5, n) + 1500.0 + 1500.0 * on("account_balance"), 2
    )

    tr = rngs["tenure"]
    cols["tenure_months"] = tr.exponential(30.0, n) * np.exp(-0.5 * on("tenure_months"))
    cols["tenure_null"] = tr.random(n) < NULLABLE_COLUMNS["tenure_months"]

    util = rngs["util"].beta(2.0, 5.0, n)
    cols["credit_utilization"] = 1.0 - (1.0 - util) * np.exp(-0.5 * on("credit_utilization"))

    rate = _CHANNEL_TX_RATE[base_channel] * np.exp(0.4 * on("num_transactions_30d"))
    cols["num_transactions_30d"] = rngs["ntx"].poisson(rate).astype(np.int64)

    cols["avg_session_minutes"] = 3.0 * (1.0 + rngs["session"].pareto(2.5, n)) * np.exp(0.3 * on("avg_session_minutes"))

    lr = rngs["latency"]
    cols["latency_ms"] = lr.gamma(2.0, 60.0, n) * np.exp(0.4 * on("latency_ms"))
    cols["latency_null"] = lr.random(n) < NULLABLE_COLUMNS["latency_ms"]

    rr = rngs["risk"]
    high = rr.random(n) < 0.3
    cols["risk_score"] = np.where(high, rr.normal(1.5, 1.0, n), rr.normal(-1.0, 0.7, n)) + 0.5 * on("risk_score")

    z = _logit(cols, concept_shift)
    score = z + rngs["label"].logistic(0.0, 1.0, n)
    cols["label"] = (score > 0.0).astype(np.int64)
    cols["class"] = np.where(score < _LOW_MEDIUM_CUT, 0, np.where(score < 0.0, 1, 2)).astype(np.int64)
    cols["target"] = np.round(_TARGET_BASE + _TARGET_SCALE * z + rngs["target"].normal(0.0, _TARGET_NOISE, n), 3)
    return cols


def _vocab_take(vocab: tuple[str, ...], idx: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    indices = pa.array(idx.astype(np.int32), mask=mask)
    return pc.take(pa.array(vocab, pa.string()), indices)


# ranges a real row of the generator never leaves: the broken rows it plants (bad_row_fraction) do
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "age": (0, 120),
    "income": (0, None),
    "tenure_months": (0, None),
    "credit_utilization": (0, 1),
    "num_transactions_30d": (0, None),
    "avg_session_minutes": (0, None),
    "latency_ms": (0, None),
}


def declared_schema(task: str = "binary") -> FeatureSchema:
    """The generated table as a declared schema (types, ranges, categories), so preprocessing
    rejects the broken rows the generator plants; what `data.source: synthetic` validates with."""
    arrow = schema_for(task)
    columns = FeatureSchema.infer(arrow, non_nullable=[ID_COLUMN, TIMESTAMP_COLUMN, LABEL_COLUMN]).columns
    categories = {"channel": CHANNELS, "device_type": DEVICE_TYPES}
    if task == "multiclass":
        categories[LABEL_COLUMN] = MULTICLASS_CLASSES
    ranges = {**_RANGES, **({LABEL_COLUMN: (0, 1)} if task == "binary" else {})}
    out = []
    for column in columns:
        low, high = ranges.get(column.name, (None, None))
        values = categories.get(column.name)
        out.append(column.model_copy(update={"min": low, "max": high, "categories": list(values) if values else None}))
    return FeatureSchema(columns=out)


def schema_for(task: str = "binary") -> pa.Schema:
    """The generated table's schema: the label is int64 (binary), string (multiclass) or float64."""
    label = {"binary": pa.int64(), "multiclass": pa.string(), "regression": pa.float64()}[task]
    return SCHEMA.set(SCHEMA.get_field_index(LABEL_COLUMN), pa.field(LABEL_COLUMN, label))


def _label_array(cols: dict[str, np.ndarray], task: str) -> pa.Array:
    if task == "multiclass":
        return _vocab_take(MULTICLASS_CLASSES, cols["class"])
    if task == "regression":
        return pa.array(cols["target"], pa.float64())
    return pa.array(cols["label"], pa.int64())


def _to_table(cols: dict[str, np.ndarray], entity: np.ndarray, ts_us: np.ndarray, task: str = "binary") -> pa.Table:
    f64 = pa.float64()
    arrays = [
        pa.array(entity, pa.int64()),
        pa.array(ts_us, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        pa.array(cols["age"], f64),
        pa.array(cols["income"], f64, mask=cols["income_null"]),
        pa.array(cols["account_balance"], f64),
        pa.array(cols["tenure_months"], f64, mask=cols["tenure_null"]),
        pa.array(cols["credit_utilization"], f64),
        pa.array(cols["num_transactions_30d"], pa.int64()),
        pa.array(cols["avg_session_minutes"], f64),
        pa.array(cols["latency_ms"], f64, mask=cols["latency_null"]),
        pa.array(cols["risk_score"], f64),
        _vocab_take(CHANNELS, cols["channel_idx"]),
        _vocab_take(REGIONS, cols["region_idx"]),
        _vocab_take(MERCHANT_IDS, cols["merchant_idx"]),
        _vocab_take(DEVICE_TYPES, cols["device_idx"], mask=cols["device_idx"] < 0),
        _label_array(cols, task),
    ]
    return pa.Table.from_arrays(arrays, schema=schema_for(task))


def _prior_rows(n: int, w: np.ndarray, magnitude: float, seed: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Prior shift by label-conditional resampling from an undrifted pool (keeps P(x|y))."""
    p0 = BASE_POSITIVE_RATE
    p1 = min(0.95, p0 + PRIOR_SHIFT_PER_MAGNITUDE * magnitude)
    y = rng.random(n) < p0 + w * (p1 - p0)
    need_pos = int(y.sum())
    need_neg = n - need_pos
    pool: dict[str, np.ndarray] | None = None
    for attempt in range(8):  # almost always one pass; retries only top up the pool
        m = int(math.ceil(1.15 * max(need_pos / p0, need_neg / (1.0 - p0)))) + 256
        part = _simulate(m, _rngs([seed, 0x9E3779B9, attempt]), np.zeros(m), frozenset(), None)
        pool = part if pool is None else {k: np.concatenate([pool[k], part[k]]) for k in pool}
        pos_idx = np.flatnonzero(pool["label"] == 1)
        neg_idx = np.flatnonzero(pool["label"] == 0)
        if len(pos_idx) >= need_pos and len(neg_idx) >= need_neg:
            break
    else:  # pragma: no cover - would need a pathological label function
        raise RuntimeError("prior scenario: could not build a large enough pool")
    chosen = np.empty(n, dtype=np.int64)
    chosen[y] = rng.permutation(pos_idx)[:need_pos]
    chosen[~y] = rng.permutation(neg_idx)[:need_neg]
    return {k: v[chosen] for k, v in pool.items()}


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------
def generate(
    n_rows: int,
    seed: int,
    scenario: Scenario | None = None,
    *,
    start: datetime = datetime(2026, 1, 1, tzinfo=timezone.utc),
    span: timedelta = timedelta(days=28),
    timeline: tuple[float, float] = (0.0, 1.0),
    n_entities: int | None = None,
    task: str = "binary",
) -> pa.Table:
    """Generate ``n_rows`` rows covering ``timeline`` (a slice of the overall [0, 1] timeline),
    labelled for ``task`` (binary, multiclass or regression; see the module docstring).

    Row positions are spread over [timeline[0], timeline[1]) in row order; they
    set ``event_time = start + position * span`` and the drift intensity, so
    chunks generated with adjacent timelines concatenate into one consistent
    dataset.  ``n_entities`` is the customer pool size (default ~n_rows / 3).
    """
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 0:
        raise ValueError(f"n_rows must be a non-negative int, got {n_rows!r}")
    n = int(n_rows)
    seed = _check_seed(seed)
    t0, t1 = (float(timeline[0]), float(timeline[1]))
    if not (0.0 <= t0 <= t1 <= 1.0):
        raise ValueError(f"timeline must satisfy 0 <= t0 <= t1 <= 1, got {timeline!r}")
    if span <= timedelta(0):
        raise ValueError(f"span must be positive, got {span!r}")
    if n_entities is None:
        n_entities = max(1, n // 3)
    if n_entities < 1:
        raise ValueError(f"n_entities must be >= 1, got {n_entities!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if n == 0:
        return schema_for(task).empty_table()
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)

    rngs = _rngs(seed)
    pos = _positions(n, (t0, t1), rngs["time"])
    w = drift_intensity(pos, scenario)
    kind = scenario.kind if scenario is not None else None
    magnitude = scenario.magnitude if scenario is not None else 0.0

    if kind == "prior":
        cols = _prior_rows(n, w, magnitude, seed, rngs["prior"])
    elif kind == "concept":
        cols = _simulate(n, rngs, np.zeros(n), frozenset(), w * magnitude)
    elif kind == "covariate":
        assert scenario is not None
        cols = _simulate(n, rngs, w * magnitude, frozenset(scenario.shifted_features), None)
    elif kind == "covariate+concept":  # both at once: the inputs move and so does the label function
        assert scenario is not None
        cols = _simulate(n, rngs, w * magnitude, frozenset(scenario.shifted_features), w * magnitude)
    else:
        cols = _simulate(n, rngs, np.zeros(n), frozenset(), None)

    start_us = (start - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
    span_us = span // timedelta(microseconds=1)
    offset = np.minimum(np.floor(pos * span_us).astype(np.int64), span_us - 1)
    ts_us = start_us + np.maximum.accumulate(offset)
    entity = _ENTITY_ID_OFFSET + rngs["entity"].integers(0, n_entities, n, dtype=np.int64)
    return _to_table(cols, entity, ts_us, task)


def true_probability(table: pa.Table) -> np.ndarray:
    """P(label = 1 | x) under the undrifted concept, for oracle AUCs and calibration checks.

    Expects a table produced by :func:`generate` (unknown categories raise).
    """

    def num(name: str) -> np.ndarray:
        return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)

    def idx(name: str, vocab: tuple[str, ...], allow_null: bool = False) -> np.ndarray:
        col = table.column(name)
        found = pc.index_in(col, value_set=pa.array(vocab, pa.string()))
        unknown = pc.sum(pc.and_(pc.is_null(found), pc.is_valid(col))).as_py() or 0
        if unknown or (not allow_null and col.null_count):
            raise ValueError(f"column {name!r} has values outside {vocab} or nulls")
        return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)

    cols = {name: num(name) for name in NUMERIC_COLUMNS}
    for name in ("income", "tenure_months", "latency_ms"):
        cols[name.split("_")[0] + "_null"] = np.isnan(cols[name])
    merchant = pc.cast(pc.utf8_slice_codeunits(table.column("merchant_id"), 1), pa.int64())
    cols["merchant_idx"] = merchant.to_numpy(zero_copy_only=False)
    cols["channel_idx"] = idx("channel", CHANNELS)
    cols["device_idx"] = idx("device_type", DEVICE_TYPES, allow_null=True)
    return 1.0 / (1.0 + np.exp(-_logit(cols)))


def corrupt(table: pa.Table, fraction: float, seed: int) -> tuple[pa.Table, np.ndarray]:
    """Inject schema violations into ``fraction`` of rows (>= 1 row if fraction > 0).

    Returns the table (same schema) and the sorted corrupted row indices.  The
    j-th returned index gets kind ``CORRUPTION_KINDS[j % 4]``:
    age set out of range (-5.0 and 500.0 alternately), credit_utilization set
    to 1.7, channel set to "fax", label set to null.  Deterministic in ``seed``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    missing = [c for c in ("age", "credit_utilization", "channel", LABEL_COLUMN) if c not in table.column_names]
    if missing:
        raise ValueError(f"table lacks columns {missing}")
    n = table.num_rows
    k = 0 if fraction == 0 or n == 0 else min(n, max(1, int(round(fraction * n))))
    rng = np.random.default_rng(np.random.SeedSequence([_check_seed(seed), 0xC0FFEE]))
    indices = np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64) if k else np.empty(0, np.int64)
    kind = np.arange(k) % len(CORRUPTION_KINDS)

    def mask_for(kind_no: int) -> tuple[pa.Array, int]:
        m = np.zeros(n, dtype=bool)
        m[indices[kind == kind_no]] = True
        return pa.array(m), int(m.sum())

    def replace(name: str, kind_no: int, values: Any) -> None:
        nonlocal table
        m, cnt = mask_for(kind_no)
        if cnt == 0:
            return
        pos = table.schema.get_field_index(name)
        field = table.schema.field(pos)
        col = table.column(name).combine_chunks()
        if values is None:
            new = pc.if_else(m, pa.scalar(None, field.type), col)
        else:
            new = pc.replace_with_mask(col, m, pa.array(values(cnt), field.type))
        table = table.set_column(pos, field, new)

    replace("age", 0, lambda c: np.where(np.arange(c) % 2 == 0, -5.0, 500.0))
    replace("credit_utilization", 1, lambda c: np.full(c, 1.7))
    replace("channel", 2, lambda c: ["fax"] * c)
    replace(LABEL_COLUMN, 3, None)
    return table, indices


def write_parquet(
    path: str | os.PathLike[str],
    n_rows: int,
    seed: int,
    scenario: Scenario | None = None,
    *,
    rows_per_file: int = 1_000_000,
    bad_row_fraction: float = 0.0,
    overwrite: bool = False,
    **generate_kwargs: Any,
) -> list[str]:
    """Write ``n_rows`` rows as ``part-00000.parquet``, ... with memory bounded by one chunk.

    Chunk i uses ``chunk_seed(seed, i)`` and timeline ``(i*r/n, min((i+1)*r, n)/n)``,
    so timestamps are contiguous across files and the scenario onset refers to
    the whole dataset.  The customer pool (``n_entities``) defaults to n_rows / 3
    over the whole dataset so customers repeat across files.  ``bad_row_fraction``
    > 0 applies :func:`corrupt` to each chunk (seed ``chunk_seed(seed, i)``; at
    least one bad row per file).  Existing part files raise ``FileExistsError``
    unless ``overwrite=True`` (which deletes them first).
    """
    if "timeline" in generate_kwargs:
        raise TypeError("write_parquet sets timeline per chunk; do not pass it")
    if not 0.0 <= bad_row_fraction <= 1.0:
        raise ValueError(f"bad_row_fraction must be in [0, 1], got {bad_row_fraction!r}")
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file!r}")
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 0:
        raise ValueError(f"n_rows must be a non-negative int, got {n_rows!r}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob("part-*.parquet"))
    if existing:
        if not overwrite:
            raise FileExistsError(f"{out} already contains {len(existing)} part files; pass overwrite=True")
        for f in existing:
            f.unlink()
    generate_kwargs.setdefault("n_entities", max(1, int(n_rows) // 3))
    n_files = math.ceil(n_rows / rows_per_file)
    paths: list[str] = []
    for i in range(n_files):
        lo, hi = i * rows_per_file, min((i + 1) * rows_per_file, n_rows)
        table = generate(hi - lo, chunk_seed(seed, i), scenario, timeline=(lo / n_rows, hi / n_rows), **generate_kwargs)
        if bad_row_fraction > 0:
            table, _ = corrupt(table, bad_row_fraction, chunk_seed(seed, i))
        file = out / f"part-{i:05d}.parquet"
        pq.write_table(table, file)
        paths.append(str(file))
        del table
    return paths
