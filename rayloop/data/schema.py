"""Row-level validation: a declared or inferred FeatureSchema splits a batch into good rows and rejects.

Pure pyarrow (no Ray): the same function validates a batch inside `map_batches`, a file in a
test, or a table in a notebook. A bad row never raises; only a missing required column does,
because then no row can be judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rayloop.errors import MissingColumnsError

__all__ = ["DType", "ColumnSchema", "FeatureSchema", "REASON_COLUMN", "ARROW_TYPES", "parse_timestamps"]

DType = Literal["int64", "float64", "string", "bool", "timestamp"]
REASON_COLUMN = "reason"
ARROW_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_INT_PATTERN = r"^\s*[+-]?\d+\s*$"
_FLOAT_PATTERN = r"^\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|(?i:inf|infinity|nan))\s*$"
_BOOL_PATTERN = r"^\s*(?i:true|false|1|0)\s*$"


class ColumnSchema(BaseModel):
    """One column's contract. `categories` makes the set of values closed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    dtype: DType
    nullable: bool = True
    required: bool = Field(True, description="the column must be present in every source")
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = Field(None, description="allowed values; anything else is rejected")
    allow_infinite: bool = False

    @model_validator(mode="after")
    def _check(self) -> ColumnSchema:
        numeric = self.dtype in ("int64", "float64")
        if (self.min is not None or self.max is not None) and not numeric:
            raise ValueError(f"column {self.name!r}: min/max apply to int64/float64, not {self.dtype}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"column {self.name!r}: min {self.min} is greater than max {self.max}")
        if self.categories is not None and self.dtype != "string":
            raise ValueError(f"column {self.name!r}: categories apply to string columns, not {self.dtype}")
        return self


class FeatureSchema(BaseModel):
    """The columns a source must have and the rules each value must follow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: list[ColumnSchema] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> FeatureSchema:
        names = [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate column names in schema: {dupes}")
        return self

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnSchema:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"column {name!r} is not in the schema; it has {self.names}")

    def arrow_schema(self) -> pa.Schema:
        """The schema of validated (good) rows."""
        return pa.schema([(c.name, ARROW_TYPES[c.dtype]) for c in self.columns])

    def rejects_schema(self) -> pa.Schema:
        """Rejected rows keep every value as text (lossless, one schema for every batch) plus the reason."""
        return pa.schema([(c.name, pa.string()) for c in self.columns] + [(REASON_COLUMN, pa.string())])

    def check_columns(self, available: Iterable[str], source: str) -> None:
        available = list(available)
        missing = [c.name for c in self.columns if c.required and c.name not in available]
        if missing:
            raise MissingColumnsError(source, missing, available)

    @classmethod
    def infer(
        cls, schema: pa.Schema, *, non_nullable: Sequence[str] = (), columns: Sequence[str] | None = None
    ) -> FeatureSchema:
        """Types from the data, no ranges, open categories: rows are only rejected for type and nulls."""
        cols = []
        for field in schema:
            if columns is not None and field.name not in columns:
                continue
            dtype = _infer_dtype(field.type)
            if dtype is None:
                continue
            cols.append(ColumnSchema(name=field.name, dtype=dtype, nullable=field.name not in non_nullable))
        return cls(columns=cols)

    def validate(self, table: pa.Table | pa.RecordBatch, source: str = "<batch>") -> tuple[pa.Table, pa.Table]:
        """Split rows into (good, rejects). Good rows have the schema's types, with NaN as null."""
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        self.check_columns(table.column_names, source)
        n = table.num_rows
        typed: dict[str, pa.Array] = {}
        raw: dict[str, pa.Array] = {}
        problems: list[tuple[str, str, pa.Array, str]] = []
        for col in self.columns:
            target = ARROW_TYPES[col.dtype]
            if col.name not in table.column_names:
                typed[col.name] = pa.nulls(n, target)
                raw[col.name] = pa.nulls(n, pa.string())
                continue
            values = table.column(col.name).combine_chunks()
            raw[col.name] = values
            converted, type_bad = _coerce(values, col.dtype)
            if type_bad is not None:
                problems.append((col.name, "type", type_bad, f"expected {col.dtype}"))
            problems.extend(_value_problems(col, converted, type_bad))
            if col.dtype == "float64":
                converted = pc.if_else(pc.is_nan(converted), pa.scalar(None, pa.float64()), converted)
            typed[col.name] = converted

        bad = _any(problems)
        good = pa.table(typed, schema=self.arrow_schema())
        if bad is None:
            return good, self.rejects_schema().empty_table()
        good = good.filter(pc.invert(bad))
        rejects = _rejects(self, raw, problems, bad)
        return good, rejects


def _infer_dtype(t: pa.DataType) -> str | None:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return "int64"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float64"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "timestamp"
    return None


def _coerce(values: pa.Array, dtype: str) -> tuple[pa.Array, pa.Array | None]:
    """Cast to the schema type; returns (typed values with bad ones null, mask of bad values or None)."""
    target = ARROW_TYPES[dtype]
    t = values.type
    if pa.types.is_dictionary(t):
        values = values.dictionary_decode()
        t = values.type
    if t == target:
        return values, None
    if pa.types.is_null(t):
        return pa.nulls(len(values), target), None
    if pa.types.is_large_string(t):
        values = values.cast(pa.string())
        t = values.type
    if pa.types.is_string(t) and dtype != "string":
        return _parse_strings(values, dtype)
    if dtype == "string":
        return values.cast(pa.string()), None
    if dtype == "float64" and (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
        return values.cast(pa.float64()), None
    if dtype == "int64" and pa.types.is_integer(t):
        return values.cast(pa.int64(), safe=False), _int_overflow(values)
    if dtype == "int64" and pa.types.is_floating(t):
        ok = pc.and_kleene(pc.is_finite(values), pc.equal(pc.floor(values), values))
        bad = pc.and_(pc.is_valid(values), pc.invert(ok.fill_null(False)))
        clean = pc.if_else(bad, pa.scalar(None, t), values)
        return clean.cast(pa.int64(), safe=False), _mask_or_none(bad)
    if dtype == "timestamp" and (pa.types.is_timestamp(t) or pa.types.is_date(t)):
        if pa.types.is_date(t):
            values = values.cast(pa.timestamp("us"))
        if values.type.tz is None:
            values = pc.assume_timezone(values.cast(pa.timestamp("us")), "UTC")
        return values.cast(target), None
    if dtype == "bool" and pa.types.is_integer(t):
        bad = pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, pa.array([0, 1], t))))
        clean = pc.if_else(bad, pa.scalar(None, t), values)
        return clean.cast(pa.bool_()), _mask_or_none(bad)
    # No sensible conversion: every non-null value is the wrong type.
    return pa.nulls(len(values), target), _mask_or_none(pc.is_valid(values))


def _int_overflow(values: pa.Array) -> pa.Array | None:
    if values.type != pa.uint64():
        return None
    return _mask_or_none(pc.greater(values, pa.scalar(np.iinfo(np.int64).max, pa.uint64())).fill_null(False))


def _parse_strings(values: pa.Array, dtype: str) -> tuple[pa.Array, pa.Array | None]:
    trimmed = pc.utf8_trim_whitespace(values)
    empty = pc.equal(pc.utf8_length(trimmed), 0).fill_null(False)
    trimmed = pc.if_else(empty, pa.scalar(None, pa.string()), trimmed)  # "" in CSV is a missing value
    if dtype == "timestamp":
        return parse_timestamps(trimmed)
    pattern = {"int64": _INT_PATTERN, "float64": _FLOAT_PATTERN, "bool": _BOOL_PATTERN}[dtype]
    ok = pc.match_substring_regex(trimmed, pattern)
    bad = pc.and_(pc.is_valid(trimmed), pc.invert(ok.fill_null(True)))
    clean = pc.if_else(bad, pa.scalar(None, pa.string()), trimmed)
    if dtype == "bool":
        clean = pc.utf8_lower(clean)
    return clean.cast(ARROW_TYPES[dtype]), _mask_or_none(bad)


def parse_timestamps(values: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """ISO 8601 strings; naive ones are taken as UTC."""
    try:
        return _cast_timestamp(values), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Slow path, only for batches that hold unparseable timestamps: value by value.
    out, bad = [], []
    for item in values.to_pylist():
        try:
            out.append(None if item is None else _cast_timestamp(pa.array([item]))[0].as_py())
            bad.append(False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            out.append(None)
            bad.append(True)
    return pa.array(out, ARROW_TYPES["timestamp"]), _mask_or_none(pa.array(bad, pa.bool_()))


def _cast_timestamp(values: pa.Array) -> pa.Array:
    target = ARROW_TYPES["timestamp"]
    try:
        return values.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pc.assume_timezone(values.cast(pa.timestamp("us")), "UTC")


def _mask_or_none(mask: pa.Array) -> pa.Array | None:
    return mask if pc.any(mask).as_py() else None


def _value_problems(
    col: ColumnSchema, values: pa.Array, type_bad: pa.Array | None
) -> list[tuple[str, str, pa.Array, str]]:
    problems: list[tuple[str, str, pa.Array, str]] = []

    def add(rule: str, mask: pa.Array, detail: str) -> None:
        mask = mask.fill_null(False)
        if pc.any(mask).as_py():
            problems.append((col.name, rule, mask, detail))

    if not col.nullable:
        missing = pc.is_null(values, nan_is_null=True)
        if type_bad is not None:  # already reported as a type problem
            missing = pc.and_(missing, pc.invert(type_bad))
        add("null", missing, "column is not nullable")
    if col.dtype == "float64" and not col.allow_infinite:
        add("not_finite", pc.is_inf(values), "infinite values are not allowed")
    if col.min is not None:
        add("range", pc.less(values, pa.scalar(col.min)), f"below min {col.min:g}")
    if col.max is not None:
        add("range", pc.greater(values, pa.scalar(col.max)), f"above max {col.max:g}")
    if col.categories is not None:
        outside = pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, pa.array(col.categories, pa.string()))))
        add("category", outside, "not an allowed category")
    return problems


def _any(problems: list[tuple[str, str, pa.Array, str]]) -> pa.Array | None:
    if not problems:
        return None
    mask = problems[0][2]
    for _, _, other, _ in problems[1:]:
        mask = pc.or_(mask, other)
    return mask


def _rejects(
    schema: FeatureSchema, raw: dict[str, pa.Array], problems: list[tuple[str, str, pa.Array, str]], bad: pa.Array
) -> pa.Table:
    text = {name: _as_text(arr.filter(bad)) for name, arr in raw.items()}
    pieces = []
    for name, rule, mask, detail in problems:
        sub = mask.filter(bad)
        shown = text[name].fill_null("null")
        piece = pc.binary_join_element_wise(
            pa.scalar(f"column={name} rule={rule} value="), shown, pa.scalar(f" ({detail})"), ""
        )
        pieces.append(pc.if_else(sub, piece, pa.scalar(None, pa.string())))
    reason = pc.binary_join_element_wise(*pieces, "; ", null_handling="skip")
    columns = {c.name: text[c.name] for c in schema.columns}
    columns[REASON_COLUMN] = reason
    return pa.table(columns, schema=schema.rejects_schema())


def _as_text(values: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_string(values.type):
        return values
    try:
        return values.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else str(v) for v in values.to_pylist()], pa.string())
