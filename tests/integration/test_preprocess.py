"""The preprocess stage on a real local Ray: rejects, counts, splits, outputs, skew."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from rayloop.config import RayloopConfig, load_config
from rayloop.data import synthetic
from rayloop.data.schema import REASON_COLUMN
from rayloop.errors import ConfigError, MissingColumnsError, RejectRatioError
from rayloop.features.pipeline import FeaturePipeline
from rayloop.preprocess import PreprocessRun, run_preprocess

pytestmark = pytest.mark.usefixtures("ray_session")


def _read_dir(path: Path) -> pa.Table:
    """A written dataset, with hive partition columns (split=...) as plain strings."""
    table = pads.dataset(str(path), format="parquet", partitioning="hive").to_table()
    if "split" in table.column_names:
        table = table.set_column(
            table.schema.get_field_index("split"), "split", table.column("split").cast(pa.string())
        )
    return table


def _declared(source: Path, *overrides: str) -> RayloopConfig:
    """A config reading `source` with the generator's declared schema, as a user declares one for
    a file (types, ranges, categories); a file's schema is otherwise inferred."""
    config = load_config(None, [f"data.source={source}", *overrides])
    return config.model_copy(update={"data": config.data.model_copy(update={"schema_": synthetic.declared_schema()})})


@pytest.fixture(scope="module")
def dirty_csv(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A CSV with one row per kind of defect, each tagged by entity_id, plus good rows."""
    table = synthetic.generate(3_000, seed=5)
    path = tmp_path_factory.mktemp("dirty") / "data.csv"
    pacsv.write_csv(table, path)
    lines = path.read_text().splitlines()
    header = lines[0].replace('"', "").split(",")
    col = {name: i for i, name in enumerate(header)}
    defects = {
        "wrong type": ("age", "forty"),
        "out of range": ("credit_utilization", "1.7"),
        "unknown category": ("channel", '"fax"'),
        "null in required column": ("label", ""),
        "bad timestamp": ("event_time", '"yesterday"'),
    }
    lines.insert(50, "1,2,3")  # a line with the wrong number of fields
    expected: dict[str, str] = {}
    for offset, (column, value) in enumerate(defects.values()):
        i = 10 + offset * 100
        cells = lines[i].split(",")
        cells[col[column]] = value
        cells[col["entity_id"]] = str(900_000_000 + offset)
        lines[i] = ",".join(cells)
        expected[str(900_000_000 + offset)] = column
    path.write_text("\n".join(lines) + "\n")
    return path, expected


def test_every_bad_row_lands_in_rejects_with_its_reason_and_counts_add_up(dirty_csv):
    path, expected = dirty_csv
    config = _declared(path)
    result = run_preprocess(config)
    rejects = _read_dir(Path(result.run_dir) / "rejects")
    by_id = dict(zip(rejects.column("entity_id").to_pylist(), rejects.column(REASON_COLUMN).to_pylist()))
    malformed = [r for r in by_id.values() if "rule=malformed" in r]
    assert malformed == ["column=* rule=malformed value=1,2,3 (expected 16 fields, got 3)"]
    del by_id[None]
    assert set(by_id) == set(expected)
    for entity, column in expected.items():
        assert f"column={column} " in by_id[entity]
    rules = " ".join(by_id.values())
    for rule in ("rule=type", "rule=range", "rule=category", "rule=null"):
        assert rule in rules
    assert result.rows_total == 3_001
    assert result.rows_rejected == len(expected) + 1
    assert result.rows_good == 3_000 - len(expected)
    assert sum(result.rows_per_split.values()) == result.rows_good
    features = _read_dir(Path(result.run_dir) / "features")
    assert features.num_rows == result.rows_good
    assert not set(expected) & {str(v) for v in features.column("entity_id").to_pylist()}


def test_missing_column_fails_before_any_work_naming_file_and_columns(tmp_path):
    table = synthetic.generate(100, seed=0).drop_columns(["channel", "label"])
    pq.write_table(table, tmp_path / "part.parquet")
    config = _declared(tmp_path)
    with pytest.raises(MissingColumnsError) as info:
        run_preprocess(config)
    assert info.value.missing == ["channel", "label"]
    assert info.value.path.endswith("part.parquet")


def test_too_many_rejects_fails_and_still_keeps_the_rejects(tmp_path):
    table, bad = synthetic.corrupt(synthetic.generate(1_000, seed=4), 0.2, seed=4)
    pq.write_table(table, tmp_path / "part.parquet")
    config = _declared(tmp_path, "data.max_reject_ratio=0.1")
    with pytest.raises(RejectRatioError) as info:
        run_preprocess(config)
    assert info.value.rejected == len(bad) and info.value.total == 1_000
    assert _read_dir(Path(info.value.rejects_path)).num_rows == len(bad)


@pytest.fixture(scope="module")
def demo_run():
    config = load_config(None, ["data.synthetic.n_rows=8000", "data.synthetic.rows_per_file=3000"])
    return config, run_preprocess(config)


def test_demo_run_writes_every_output_and_a_time_split(demo_run):
    config, result = demo_run
    run = PreprocessRun.open(result.run_id)
    run_dir, fitted, profile, summary = run.directory, run.fitted(), run.profile(), run.summary()
    assert summary["rows_total"] == 8_000 and summary["split_method"] == "time"
    assert fitted.content_hash == result.features_hash
    assert profile.n_rows == result.rows_per_split["train"]
    for name in ("schema.json", "config.yaml", "summary.json"):
        assert (run_dir / name).exists()
    features = _read_dir(run_dir / "features")
    assert set(fitted.feature_names) <= set(features.column_names)
    times = {
        split: features.filter(pc.equal(features.column("split"), split)).column("event_time")
        for split in ("train", "validation", "test")
    }
    assert pc.max(times["train"]).as_py() <= pc.min(times["validation"]).as_py()
    assert pc.max(times["validation"]).as_py() <= pc.min(times["test"]).as_py()
    fractions = {k: v / result.rows_good for k, v in result.rows_per_split.items()}
    assert fractions["train"] == pytest.approx(0.70, abs=0.03)
    assert json.loads((run_dir / "summary.json").read_text())["features_hash"] == fitted.content_hash


def test_ray_fit_matches_the_in_memory_fit(demo_run):
    """Block-wise aggregation + merge gives the same features as one pass over all rows."""
    config, result = demo_run
    run = PreprocessRun.open(result.run_id)
    run_dir, fitted, profile = run.directory, run.fitted(), run.profile()
    source = _read_dir(Path(result.source))
    good, _ = config.data.schema_.validate(source)
    features = _read_dir(run_dir / "features")
    train_ids = features.filter(pc.equal(features.column("split"), "train"))
    train = good.filter(pc.is_in(good.column("event_time"), train_ids.column("event_time")))
    pipeline = FeaturePipeline(
        config.features, config.data.schema_, label_column="label", timestamp_column="event_time", id_column="entity_id"
    )
    local, local_profile = pipeline.fit_table(train)
    assert [f.vocabulary for f in local.categorical] == [f.vocabulary for f in fitted.categorical]
    for ray_f, mem_f in zip(fitted.numeric, local.numeric):
        assert ray_f.mean == pytest.approx(mem_f.mean, rel=1e-9)
        assert ray_f.std == pytest.approx(mem_f.std, rel=1e-9)
        assert ray_f.missing_indicator == mem_f.missing_indicator
    assert [c.counts for c in profile.categorical] == [c.counts for c in local_profile.categorical]


def test_batch_path_and_one_row_transform_give_identical_features(demo_run):
    """Contract 1: Ray Data's map_batches and per-request transform produce the same matrix,
    including unseen categories and missing values."""
    config, result = demo_run
    fitted = PreprocessRun.open(result.run_id).fitted()
    table = synthetic.generate(400, seed=11)
    # unseen categories and missing values in every kind of column
    merchant = table.column("merchant_id").to_pylist()
    region = table.column("region").to_pylist()
    income = table.column("income").to_pylist()
    device = table.column("device_type").to_pylist()
    for i in range(0, 390, 7):
        merchant[i] = f"never-seen-{i}"
        region[i + 1] = None
        income[i + 2] = None
        device[i + 3] = "smart-fridge"
    table = table.set_column(table.schema.get_field_index("merchant_id"), "merchant_id", pa.array(merchant))
    table = table.set_column(table.schema.get_field_index("region"), "region", pa.array(region))
    table = table.set_column(table.schema.get_field_index("income"), "income", pa.array(income, pa.float64()))
    table = table.set_column(table.schema.get_field_index("device_type"), "device_type", pa.array(device))
    table = table.append_column("row_id", pa.array(range(table.num_rows)))  # entity ids repeat
    import ray.data

    ds = ray.data.from_arrow(table).repartition(4)
    batched = ds.map_batches(
        lambda b: fitted.feature_table(b, keep=["row_id"]), batch_format="pyarrow", batch_size=37
    ).take_all()
    by_id = {row["row_id"]: np.array([row[n] for n in fitted.feature_names], dtype=np.float32) for row in batched}
    names = fitted.feature_names
    assert any(v[names.index("merchant_id")] == 1.0 for v in by_id.values())  # out-of-vocabulary
    assert any(v[names.index("region")] == 0.0 for v in by_id.values())  # missing
    for row in table.to_pylist():
        single = fitted.transform(row)[0]
        np.testing.assert_array_equal(single, by_id[row["row_id"]])
    assert len(by_id) == table.num_rows


def test_hash_split_keeps_each_entity_in_one_split(tmp_path):
    pq.write_table(synthetic.generate(3_000, seed=8), tmp_path / "part.parquet")
    config = _declared(tmp_path, "data.split.method=hash")
    result = run_preprocess(config)
    assert result.split_method == "hash"
    features = _read_dir(Path(result.run_dir) / "features")
    pairs = set(zip(features.column("entity_id").to_pylist(), features.column("split").to_pylist()))
    assert len(pairs) == len(set(features.column("entity_id").to_pylist()))


def test_a_split_without_its_column_is_a_config_error(tmp_path):
    pq.write_table(synthetic.generate(100, seed=8), tmp_path / "part.parquet")
    config = _declared(tmp_path, "data.split.method=hash", "data.id_column=null")
    with pytest.raises(ConfigError, match="data.split.method=hash needs data.id_column"):
        run_preprocess(config)


def test_an_in_memory_table_gives_the_same_run_as_the_ray_passes():
    """The retrain job's path (`table=`: the batch functions in this process) writes what the Ray
    Data passes write for the same rows: rejects, splits, fitted features, feature tables, holdout."""
    config = load_config(
        None, ["data.synthetic.n_rows=6000", "data.synthetic.rows_per_file=2000", "data.split.method=hash"]
    )
    via_ray = run_preprocess(config)
    raw = _read_dir(Path(via_ray.source))
    in_memory = run_preprocess(config, table=raw)

    assert via_ray.rows_rejected > 0  # the generator's bad rows: the rejects path is exercised
    for field in ("rows_total", "rows_good", "rows_rejected", "rows_per_split", "split_method", "task", "n_features"):
        assert getattr(in_memory, field) == getattr(via_ray, field), field
    a, b = PreprocessRun.open(via_ray.run_id), PreprocessRun.open(in_memory.run_id)
    assert [f.vocabulary for f in a.fitted().categorical] == [f.vocabulary for f in b.fitted().categorical]
    for x, y in zip(a.fitted().numeric, b.fitted().numeric):
        assert (x.name, x.missing_indicator) == (y.name, y.missing_indicator)
        assert x.mean == pytest.approx(y.mean, rel=1e-9) and x.std == pytest.approx(y.std, rel=1e-9)

    def rows(directory: Path, key: str = "entity_id") -> pa.Table:
        table = _read_dir(directory)
        return table.sort_by([(key, "ascending"), *((c, "ascending") for c in table.column_names if c != key)])

    reasons = [rows(run.rejects_dir).column(REASON_COLUMN).to_pylist() for run in (a, b)]
    assert reasons[0] == reasons[1]
    for split in ("train", "validation", "test"):
        ours, theirs = rows(b.split_dir(split)), rows(a.split_dir(split))
        assert ours.column_names == theirs.column_names
        assert ours.equals(theirs.cast(ours.schema)), split
    assert rows(b.holdout_dir).equals(rows(a.holdout_dir).cast(rows(b.holdout_dir).schema))
