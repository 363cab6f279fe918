from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import ValidationError

from rayloop.data.schema import REASON_COLUMN, ColumnSchema, FeatureSchema
from rayloop.errors import MissingColumnsError

SCHEMA = FeatureSchema(
    columns=[
        ColumnSchema(name="id", dtype="int64", nullable=False),
        ColumnSchema(name="age", dtype="float64", min=0, max=120),
        ColumnSchema(name="channel", dtype="string", categories=["web", "mobile"]),
        ColumnSchema(name="when", dtype="timestamp", nullable=False),
        ColumnSchema(name="label", dtype="int64", nullable=False, min=0, max=1),
    ]
)


def _raw_text_table() -> pa.Table:
    """As a CSV reader hands it over: every column text, some values broken."""
    return pa.table(
        {
            "id": ["1", "2", "3", "4", "5", "6", "7"],
            "age": ["34.5", "abc", "150", "20", None, "nan", "41"],
            "channel": ["web", "web", "mobile", "fax", "mobile", None, "web"],
            "when": [
                "2026-01-01T10:00:00",
                "2026-01-02",
                "2026-01-03 04:05:06Z",
                "2026-01-04",
                "2026-01-05",
                "2026-01-06",
                "not a date",
            ],
            "label": ["0", "1", "1", "0", None, "1", "0"],
        }
    )


def test_every_bad_row_is_rejected_with_its_reason_and_good_rows_are_kept():
    good, rejects = SCHEMA.validate(_raw_text_table(), source="mem")
    assert good.num_rows + rejects.num_rows == 7
    assert good.column("id").to_pylist() == [1, 6]
    assert good.schema == SCHEMA.arrow_schema()
    # NaN is a missing value: allowed in a nullable column, and stored as null
    assert good.column("age").to_pylist() == [34.5, None]
    by_id = dict(zip(rejects.column("id").to_pylist(), rejects.column(REASON_COLUMN).to_pylist()))
    assert set(by_id) == {"2", "3", "4", "5", "7"}
    assert "column=age rule=type value=abc" in by_id["2"]
    assert "column=age rule=range value=150" in by_id["3"]
    assert "column=channel rule=category value=fax" in by_id["4"]
    assert "column=label rule=null" in by_id["5"]
    assert "column=when rule=type value=not a date" in by_id["7"]


def test_a_row_with_several_problems_lists_them_all():
    table = pa.table({"id": [1], "age": [-3.0], "channel": ["fax"], "when": [None], "label": [7]}).cast(
        pa.schema(
            [
                ("id", pa.int64()),
                ("age", pa.float64()),
                ("channel", pa.string()),
                ("when", pa.timestamp("us")),
                ("label", pa.int64()),
            ]
        )
    )
    good, rejects = SCHEMA.validate(table)
    assert good.num_rows == 0
    reason = rejects.column(REASON_COLUMN)[0].as_py()
    for part in (
        "column=age rule=range",
        "column=channel rule=category",
        "column=when rule=null",
        "column=label rule=range",
    ):
        assert part in reason


def test_rejects_keep_values_as_text_with_one_schema():
    _, rejects = SCHEMA.validate(_raw_text_table())
    assert rejects.schema == SCHEMA.rejects_schema()
    _, none = SCHEMA.validate(
        pa.table({"id": [1], "age": [1.0], "channel": ["web"], "when": ["2026-01-01"], "label": [0]})
    )
    assert none.num_rows == 0 and none.schema == SCHEMA.rejects_schema()


def test_typed_input_is_cast_and_non_integral_floats_fail_int_columns():
    table = pa.table(
        {
            "id": pa.array([1.0, 2.5], pa.float64()),
            "age": pa.array([3, 4], pa.int32()),
            "channel": pa.array(["web", "mobile"]).dictionary_encode(),
            "when": pa.array([0, 1], pa.timestamp("ms")),
            "label": pa.array([1, 0], pa.int8()),
        }
    )
    good, rejects = SCHEMA.validate(table)
    assert good.column("id").to_pylist() == [1]
    assert good.column("when").type == pa.timestamp("us", tz="UTC")
    assert "column=id rule=type value=2.5" in rejects.column(REASON_COLUMN)[0].as_py()


def test_infinite_values_are_rejected_unless_allowed():
    schema = FeatureSchema(
        columns=[ColumnSchema(name="x", dtype="float64"), ColumnSchema(name="y", dtype="float64", allow_infinite=True)]
    )
    good, rejects = schema.validate(pa.table({"x": [1.0, math.inf], "y": [math.inf, 1.0]}))
    assert good.num_rows == 1 and good.column("y")[0].as_py() == math.inf
    assert "rule=not_finite" in rejects.column(REASON_COLUMN)[0].as_py()


def test_missing_required_column_fails_at_once_naming_source_and_columns():
    table = _raw_text_table().drop_columns(["label", "channel"])
    with pytest.raises(MissingColumnsError) as info:
        SCHEMA.validate(table, source="s3://bucket/data.parquet")
    assert info.value.missing == ["channel", "label"]
    assert "s3://bucket/data.parquet" in str(info.value)


def test_optional_column_may_be_absent():
    schema = FeatureSchema(
        columns=[ColumnSchema(name="a", dtype="int64"), ColumnSchema(name="b", dtype="string", required=False)]
    )
    good, rejects = schema.validate(pa.table({"a": [1, 2]}))
    assert good.column("b").null_count == 2 and rejects.num_rows == 0


def test_inferred_schema_follows_the_data_types():
    arrow = pa.schema(
        [
            ("i", pa.int32()),
            ("f", pa.float32()),
            ("s", pa.large_string()),
            ("t", pa.timestamp("ns")),
            ("l", pa.list_(pa.int64())),
        ]
    )
    schema = FeatureSchema.infer(arrow, non_nullable=["i"])
    assert [(c.name, c.dtype, c.nullable) for c in schema.columns] == [
        ("i", "int64", False),
        ("f", "float64", True),
        ("s", "string", True),
        ("t", "timestamp", True),
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "a", "dtype": "string", "min": 1}, "min/max apply"),
        ({"name": "a", "dtype": "float64", "min": 2, "max": 1}, "greater than max"),
        ({"name": "a", "dtype": "int64", "categories": ["x"]}, "categories apply"),
        ({"name": "a", "dtype": "float32"}, "Input should be"),
    ],
)
def test_column_schema_rejects_contradictions(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        ColumnSchema(**kwargs)


def test_duplicate_columns_are_rejected():
    with pytest.raises(ValidationError, match="duplicate"):
        FeatureSchema(columns=[ColumnSchema(name="a", dtype="int64"), ColumnSchema(name="a", dtype="int64")])


def test_counts_add_up_on_a_large_batch():
    n = 10_000
    ages = pa.array([float(i % 200) for i in range(n)])  # 120..199 out of range
    table = pa.table(
        {
            "id": pa.array(range(n)),
            "age": ages,
            "channel": pa.array(["web"] * n),
            "when": pa.array(range(n), pa.timestamp("s")),
            "label": pa.array([i % 2 for i in range(n)]),
        }
    )
    good, rejects = SCHEMA.validate(table)
    expected_bad = sum(1 for i in range(n) if i % 200 > 120)
    assert rejects.num_rows == expected_bad
    assert good.num_rows == n - expected_bad
    assert pc.all(pc.less_equal(good.column("age"), 120)).as_py()
