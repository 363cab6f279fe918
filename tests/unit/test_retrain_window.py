"""The retrain window: reference sample + weighted recent labelled rows, the newest held out."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rayloop.config import RetrainConfig, load_config
from rayloop.data.synthetic import generate
from rayloop.errors import RetrainError
from rayloop.monitoring.retrain_window import assemble, recent_rows, sample_rows, split_recent

CONFIG = load_config()
SCHEMA = CONFIG.data.schema_


def _log(n: int, start_s: float, labelled_every: int = 1) -> pa.Table:
    """Inference-log rows as the monitor stores them: no entity id, no label column of the source."""
    rows = generate(n, seed=3).drop_columns(["entity_id"])
    labels = rows.column("label").to_pylist()
    rows = rows.drop_columns(["label"])
    ts = pa.array([int((start_s + i) * 1000) for i in range(n)], pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    return (
        rows.append_column("request_id", pa.array([f"r{i}" for i in range(n)]))
        .append_column("ts", ts)
        .append_column("score", pa.array([0.5] * n))
        .append_column(
            "label", pa.array([v if i % labelled_every == 0 else None for i, v in enumerate(labels)], pa.int8())
        )
    )


def _assemble(reference: pa.Table, recent: pa.Table, **changes) -> object:
    config = RetrainConfig(**{"min_labelled_rows": 20, **changes})
    roles = {"label": "label", "id_column": "entity_id", "timestamp_column": "event_time"}
    return assemble(reference, split_recent(recent, SCHEMA, config, **roles), config)


def test_holdout_is_the_newest_labelled_rows_and_never_trained_on():
    reference = generate(1000, seed=1)
    recent = _log(400, 1_000.0, labelled_every=2)  # 200 labelled
    data = _assemble(reference, recent, holdout_fraction=0.25, recent_weight=3)
    assert data.holdout.num_rows == 50 and data.counts["recent_labelled"] == 200
    newest = recent.filter(pc.is_valid(recent.column("label"))).slice(150).column("event_time")
    assert data.holdout.column("event_time").equals(newest)
    held = set(data.holdout.column("entity_id").to_pylist())
    assert held.isdisjoint(data.train.column("entity_id").to_pylist())
    # 150 recent rows three times each, plus the reference sample it was given
    assert data.counts["recent_train"] == 150 and data.counts["reference_kept"] == 1000
    assert data.train.num_rows == 1000 + 450
    assert data.train.schema.equals(SCHEMA.arrow_schema()) and data.holdout.schema.equals(SCHEMA.arrow_schema())
    # every recent row (labelled or not) describes the new traffic for the profile
    assert data.recent.num_rows == 400 and data.recent.column("entity_id").null_count == 0
    # the output reference: rows no fit trained on (the 50 held out + the 200 never labelled)
    assert data.unseen.num_rows == 250
    assert set(data.unseen.column("entity_id").to_pylist()).isdisjoint(data.train.column("entity_id").to_pylist())


def test_id_and_time_sent_with_a_request_win_over_the_logged_ones():
    log = _log(40, 500.0)
    # typed as the schema's columns: serving refuses an id or a time of another type
    sent_ids = pa.array([10_000 + i if i % 2 == 0 else None for i in range(40)], pa.int64())
    sent_times = pa.array([1_700_000_000_000 + i if i % 4 == 0 else None for i in range(40)], pa.int64())
    at = log.schema.get_field_index("event_time")
    log = log.append_column("entity_id", sent_ids).set_column(
        at, "event_time", sent_times.cast(log.schema.field(at).type)
    )
    data = _assemble(generate(0, seed=2), log, holdout_fraction=0.5, recent_weight=1)
    ids = data.recent.column("entity_id").to_pylist()
    assert ids[0] == 10_000 and ids[2] == 10_002
    assert ids[1] is not None and ids[1] != ids[3]  # a row with none gets one from its request id
    times = data.recent.column("event_time").cast(pa.int64()).to_pylist()
    assert times[0] == 1_700_000_000_000 and times[4] == 1_700_000_000_004
    # none sent: the serving time
    served = log.column("ts").to_pylist()
    stamped = data.recent.column("event_time").to_pylist()
    assert stamped[1] == served[1] and stamped[2] == served[2]


def test_repeats_of_a_row_share_one_entity_id_so_a_hash_split_keeps_them_together():
    data = _assemble(generate(0, seed=2), _log(100, 0.0), recent_weight=4, holdout_fraction=0.5)
    ids = data.train.column("entity_id")
    assert data.train.num_rows == 200 and len(pc.unique(ids)) == 50


def test_the_reference_sample_streams_batches_reproducibly_at_the_asked_rate():
    table = generate(20_000, seed=4)
    batches = table.to_batches(max_chunksize=3000)
    a = sample_rows(batches, 0.1, seed=9)
    assert a.equals(sample_rows(table.to_batches(max_chunksize=3000), 0.1, seed=9))
    assert 1800 < a.num_rows < 2200 and a.schema.equals(table.schema)
    assert sample_rows([], 0.5, seed=1) is None
    assert sample_rows(batches, 0.0, seed=1).num_rows == 0


def test_too_few_labelled_rows_is_a_clear_error():
    with pytest.raises(RetrainError, match=r"only 10 labelled rows .*retrain.min_labelled_rows=20"):
        _assemble(generate(100, seed=5), _log(100, 0.0, labelled_every=10))


def test_recent_rows_start_at_since():
    log = _log(50, 100.0)
    assert recent_rows(log, 130.0).num_rows == 20
    assert recent_rows(log, None).num_rows == 50
