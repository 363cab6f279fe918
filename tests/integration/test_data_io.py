"""Reading sources through Ray Data: every URI form, and failures that name the path at once."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from rayloop.data import synthetic
from rayloop.data.io import fusable_map_args, inspect_source, read_dataset, read_table
from rayloop.errors import DataSourceError

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pq")
    synthetic.write_parquet(out, 6_000, seed=1, rows_per_file=2_000)
    (out / "_SUCCESS").write_text("")  # marker files are skipped
    return out


def test_parquet_directory_path_and_file_uri_read_the_same_rows(parquet_dir):
    plain = read_dataset(str(parquet_dir))
    uri = read_dataset(f"file://{parquet_dir}")
    assert plain.count() == uri.count() == 6_000
    assert set(plain.schema().names) == set(synthetic.SCHEMA.names)
    assert len(inspect_source(str(parquet_dir)).files) == 3


def test_blocks_follow_the_files_on_the_fast_parquet_path(parquet_dir):
    ds = read_dataset(str(parquet_dir), override_num_blocks=3).materialize()
    assert ds.num_blocks() >= 3


def test_a_map_chain_fuses_into_the_read_task_without_deprecated_remote_args(parquet_dir):
    """The preprocess's passes rely on it: blocks go from the decoder through every map in one
    task, with no trip through the object store, and no `ray_remote_args` warning on the way."""
    import warnings

    def same(batch: pa.Table) -> pa.Table:
        return batch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = read_dataset(str(parquet_dir))
        ds = ds.map_batches(same, **fusable_map_args()).map_batches(same, **fusable_map_args()).materialize()
    assert ds.count() == 6_000
    assert not [w for w in caught if "remote_args" in str(w.message)]
    operators = [line for line in ds.stats().splitlines() if line.startswith("Operator ")]
    assert len(operators) >= 1 and "MapBatches(same)->MapBatches(same)" in operators[-1], operators
    assert operators[-1].split(":")[0].count("Read") == 1, operators  # the read and both maps: one task


def test_csv_is_read_as_text_so_a_bad_value_cannot_abort_the_read(tmp_path):
    table = synthetic.generate(500, seed=2)
    path = tmp_path / "data.csv"
    pacsv.write_csv(table, path)
    text = path.read_text().splitlines()
    text[-1] = text[-1].replace(text[-1].split(",")[2], "not-a-number", 1)  # age of the last row
    path.write_text("\n".join(text) + "\n")
    ds = read_dataset(str(path))
    rows = ds.take_all()
    assert len(rows) == 500
    assert ds.schema().types[0] == pa.string()
    assert "not-a-number" in {row["age"] for row in rows}


def test_missing_path_fails_at_once_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "data.parquet"
    with pytest.raises(DataSourceError, match=f"{missing}.*no such file"):
        read_dataset(str(missing))


def test_unreadable_file_fails_naming_that_file(parquet_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    pq.write_table(synthetic.generate(10, seed=0), broken / "good.parquet")
    (broken / "bad.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(DataSourceError) as info:
        read_dataset(str(broken))
    assert info.value.path.endswith("bad.parquet")
    assert "not a readable parquet file" in str(info.value)


def test_unknown_format_and_empty_directory_are_explained(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataSourceError, match="cannot tell the format"):
        inspect_source(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataSourceError, match="holds no data files"):
        inspect_source(str(empty))


def test_read_table_matches_the_dataset(parquet_dir):
    assert read_table(str(parquet_dir)).num_rows == read_dataset(str(parquet_dir)).count()


def test_row_groups_spread_over_read_tasks_and_every_row_arrives_once(tmp_path):
    table = synthetic.generate(5_000, seed=3)
    pq.write_table(table, tmp_path / "one.parquet", row_group_size=1_000)  # 5 row groups, 1 file
    ds = read_dataset(str(tmp_path), override_num_blocks=5).materialize()
    assert ds.num_blocks() >= 5
    assert sorted(_arrow(ds).column("entity_id").to_pylist()) == sorted(table.column("entity_id").to_pylist())


def test_files_with_different_columns_read_as_one_schema(tmp_path):
    table = synthetic.generate(300, seed=4)
    pq.write_table(table, tmp_path / "full.parquet")
    narrow = table.drop_columns(["income"])
    pq.write_table(narrow, tmp_path / "narrow.parquet")
    merged = _arrow(read_dataset(str(tmp_path)))
    assert merged.num_rows == 600
    assert merged.schema.field("income").type == table.schema.field("income").type
    assert merged.column("income").null_count == table.column("income").null_count + 300


def _arrow(ds) -> pa.Table:
    import ray

    return pa.concat_tables([ray.get(ref) for ref in ds.to_arrow_refs()])


def test_an_empty_parquet_file_reads_as_no_rows_beside_a_full_one(tmp_path):
    table = synthetic.generate(50, seed=5)
    pq.write_table(table.slice(0, 0), tmp_path / "empty.parquet")
    pq.write_table(table, tmp_path / "full.parquet")
    assert read_dataset(str(tmp_path)).count() == 50
    only_empty = tmp_path / "only"
    only_empty.mkdir()
    pq.write_table(table.slice(0, 0), only_empty / "empty.parquet")
    assert read_dataset(str(only_empty)).count() == 0
