"""How the streaming Parquet reader plans its read tasks and unifies schemas (pure parts)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from rayloop.data.parquet_stream import conform, plan_units


def _covered(plan):
    return sorted((path, g) for task in plan for path, groups in task for g in groups)


def test_files_stay_whole_when_there_are_enough_tasks_for_them():
    plan = plan_units({"a": 3, "b": 1, "c": 2}, parallelism=2)
    assert len(plan) == 2
    assert all(len(groups) == {"a": 3, "b": 1, "c": 2}[path] for task in plan for path, groups in task)
    assert _covered(plan) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("c", 0), ("c", 1)]


def test_row_groups_are_dealt_out_when_tasks_outnumber_files():
    plan = plan_units({"a": 10, "b": 1}, parallelism=6)
    # b has one group: one task; a's ten groups spread over three tasks
    assert sorted(len(task[0][1]) for task in plan) == [1, 3, 3, 4]
    assert _covered(plan) == [*(("a", i) for i in range(10)), ("b", 0)]


@pytest.mark.parametrize("parallelism", [0, 1, 5, 100])
def test_every_row_group_is_read_exactly_once(parallelism):
    groups = {"x": 7, "y": 0, "z": 2}
    plan = plan_units(groups, parallelism)
    assert _covered(plan) == [("x", i) for i in range(7)] + [("z", 0), ("z", 1)]
    assert all(task for task in plan)


def test_conform_orders_casts_and_fills_missing_columns():
    target = pa.schema([("id", pa.int64()), ("score", pa.float64()), ("city", pa.string())])
    table = pa.table({"score": pa.array([1.5, 2.5], pa.float32()), "id": pa.array([1, 2], pa.int32())})
    out = conform(table, target)
    assert out.schema.equals(target)
    assert out.column("id").to_pylist() == [1, 2]
    assert out.column("score").to_pylist() == [1.5, 2.5]
    assert out.column("city").null_count == 2


def test_conform_returns_a_matching_table_unchanged():
    table = pa.table({"a": [1, 2]})
    assert conform(table, table.schema) is table
