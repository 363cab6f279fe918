"""The monitor's logic without Ray: windows, alarms, the label join, policy hand-off, restarts."""

from __future__ import annotations

import secrets
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rayloop.bundle import prediction_histogram
from rayloop.config import MonitoringConfig
from rayloop.data.synthetic import generate
from rayloop.monitoring.core import MonitorCore, Reference, live_metric_se, live_metrics, summarize_state
from rayloop.monitoring.inference_log import InferenceLog, label_table
from rayloop.tasks import Task
from rayloop.training.evaluate import roc_auc
from tests.support import fitted_synthetic

FEATURES = ["age", "income", "channel", "region", "risk_score", "tenure_months"]


def _score(table: pa.Table) -> np.ndarray:
    """A stand-in model: any fixed function of the features will do for the monitor."""
    risk = np.nan_to_num(table.column("risk_score").to_numpy(zero_copy_only=False).astype(float))
    return 1.0 / (1.0 + np.exp(-risk))


@pytest.fixture(scope="module")
def reference() -> Reference:
    _, table, _, profile = fitted_synthetic(30_000, seed=11)
    profile = profile.model_copy(update={"prediction_histogram": prediction_histogram(_score(table))})
    return Reference(version="1", profile=profile, metrics={"auc": 0.80, "accuracy": 0.75})


def _batch(table: pa.Table, version: str = "1", start: float | None = None) -> pa.Table:
    """Sampled rows as a replica sends them; times from `start` (default now), 10 ms apart."""
    n = table.num_rows
    start = time.time() if start is None else start
    probs = _score(table)
    ids = [secrets.token_hex(16) for _ in range(n)]
    ts = pa.array(((start + np.arange(n) * 0.01) * 1000).astype(np.int64)).cast(pa.timestamp("ms", tz="UTC"))
    return pa.table(
        {
            "request_id": ids,
            "ts": ts,
            "model_version": [version] * n,
            "score": probs,
            "predicted_label": (probs >= 0.5).astype(np.int64),
            **{name: table.column(name) for name in FEATURES},
        }
    )


def _core(tmp_path: Path, reference: Reference, events: list | None = None, **overrides) -> MonitorCore:
    config = MonitoringConfig(**{"window_size": 1000, "consecutive_windows": 2, "min_labels": 50, **overrides})
    sink = events if events is not None else []
    return MonitorCore.open(
        config, "m", str(tmp_path), lambda version: reference, on_event=lambda e, f: sink.append((e, f))
    )


def _shifted(table: pa.Table) -> pa.Table:
    i = table.schema.get_field_index("income")
    return table.set_column(i, "income", pc.multiply(table.column("income"), 1.5))


def test_reference_traffic_closes_windows_without_alarm(tmp_path, reference):
    core = _core(tmp_path, reference)
    live = generate(3000, seed=12)
    closed = []
    for k in range(6):  # batches that straddle window boundaries
        closed += core.ingest(f"b{k}", _batch(live.slice(k * 500, 500)))["windows"]
    assert [w["window"] for w in closed] == [0, 1, 2]
    assert all(w["rows"] == 1000 for w in closed)
    assert not any(w["alarm"] for w in closed)
    assert core.state.rows_received == 3000 and core.state.alarms == 0


def test_a_shift_alarms_naming_the_feature_and_sustained_drift_raises_one_decision(tmp_path, reference):
    events: list = []
    core = _core(tmp_path, reference, events)
    live = _shifted(generate(4000, seed=13))
    windows = [w for k in range(4) for w in core.ingest(f"s{k}", _batch(live.slice(k * 1000, 1000)))["windows"]]
    assert all(w["alarm"] for w in windows)
    assert windows[0]["drifted"][0] == "income"
    assert "channel" not in windows[0]["drifted"]
    alarms = [f for e, f in events if e == "drift_alarm"]
    assert len(alarms) == 4 and "income" in alarms[0]["features"] and alarms[0]["psi"]["income"] > 0.1
    decisions = [f for e, f in events if e == "retrain_decision"]
    assert len(decisions) == 1 and decisions[0]["trigger"] == "drift" and decisions[0]["window"] == 1
    assert [f["suppressed_by"] for e, f in events if e == "retrain_suppressed"] == ["pending"]
    taken = core.take_decision()
    assert taken is not None and taken["action"] == "retrain"
    assert core.take_decision() is None


def test_labels_join_by_request_id_and_count_duplicates_unknown_and_late(tmp_path, reference):
    core = _core(tmp_path, reference, label_horizon_s=3600)
    table = _batch(generate(400, seed=14), start=1_790_000_000.0)
    core.ingest("p0", table)
    ids = table.column("request_id").to_pylist()
    truth = generate(400, seed=14).column("label").to_pylist()
    sent_at = 1_790_000_000.0 + 60
    outcome = core.ingest_labels("l0", label_table(ids[:300], truth[:300], [sent_at] * 300))
    assert outcome == {"joined": 300, "late": 0, "duplicate": 0, "unknown": 0}
    outcome = core.ingest_labels(
        "l1", label_table([ids[0], "f" * 32, ids[300]], [1, 0, 1], [sent_at, sent_at, sent_at + 7200])
    )
    assert outcome == {"joined": 0, "late": 1, "duplicate": 1, "unknown": 1}
    auc, n = core.live_quality()
    expected = roc_auc(truth[:300], table.column("score").to_numpy()[:300])
    assert n == 300 and auc == pytest.approx(expected)
    assert core.ingest_labels("l1", label_table(["x"], [1])) == {"duplicate_batch": 1}  # a retried send
    assert core.state.labels == {"joined": 300, "late": 1, "duplicate": 1, "unknown": 1}
    assert core.summary()["label_lag_p50_s"] == pytest.approx(60, abs=5)


def test_a_restart_keeps_windows_counters_and_every_acknowledged_row(tmp_path, reference):
    core = _core(tmp_path, reference, flush_rows=700)
    live = generate(2500, seed=15)
    sent = []
    for k in range(3):
        batch = _batch(live.slice(k * 500, 500))
        sent += batch.column("request_id").to_pylist()
        core.ingest(f"r{k}", batch)
        core.tick()  # compacts to Parquet once 700 rows are pending
    ids = sent[:10]
    core.ingest_labels("lab", label_table(ids, [1] * 10))
    # the process dies after logging a batch but before applying it
    orphan = _batch(live.slice(1500, 400), start=1_790_000_100.0)
    sent += orphan.column("request_id").to_pylist()
    core.log.predictions.append("r3", orphan)
    windows_before = core.state.windows_seen
    del core

    again = _core(tmp_path, reference, flush_rows=700)
    assert again.state.restarts == 1
    assert again.state.windows_seen == windows_before + 0 and again.state.rows_received == 1900
    assert again.state.window["rows"] == 900  # 1900 rows: one closed window, 900 in the open one
    assert again.state.labels["joined"] == 10
    assert again.ingest("r2", _batch(live.slice(0, 10)))["duplicate_batch"]  # the retry of an acked batch
    assert again.ingest_labels("l2", label_table(ids[:2], [0, 0])) == {
        "joined": 0,
        "late": 0,
        "duplicate": 2,
        "unknown": 0,
    }
    again.flush()
    logged = InferenceLog(str(tmp_path / "inference_log" / "m")).predictions.read(include_pending=False)
    assert sorted(logged.column("request_id").to_pylist()) == sorted(sent)  # every row once


def test_a_replayed_compaction_writes_the_same_parts_no_duplicates(tmp_path):
    log = InferenceLog(str(tmp_path))
    rows = label_table([f"id{i}" for i in range(50)], [i % 2 for i in range(50)])
    log.labels.append("a", rows.slice(0, 25))
    log.labels.append("b", rows.slice(25))
    wal = Path(log.labels.wal)
    backup = tmp_path / "backup"
    shutil.copytree(wal, backup)
    assert log.labels.flush() == 50
    shutil.rmtree(wal)
    shutil.copytree(backup, wal)  # as if the process died before deleting the write-ahead files
    again = InferenceLog(str(tmp_path))
    assert [b for b, _ in again.labels.recover()] == ["a", "b"]
    again.labels.flush()
    assert again.labels.read().num_rows == 50
    assert all("/date=" in p and "/hour=" in p for p in again.labels.files())


def test_compacted_parts_hold_what_was_logged_with_dictionaries_only_for_categories(tmp_path):
    log = InferenceLog(str(tmp_path))
    batch = _batch(generate(300, seed=17))
    log.predictions.append("p", batch)
    assert log.predictions.flush() == 300
    back = log.predictions.read(include_pending=False)
    assert back.sort_by("request_id").equals(batch.sort_by("request_id"))
    meta = pq.ParquetFile(log.predictions.files()[0]).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    assert "RLE_DICTIONARY" in encodings["channel"] and "RLE_DICTIONARY" in encodings["model_version"]
    assert not any("DICTIONARY" in e for e in encodings["request_id"] + encodings["age"])


def test_compaction_puts_each_row_in_the_utc_date_and_hour_of_its_timestamp(tmp_path):
    midnight = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    times = [midnight - 3600.5, midnight - 0.001, midnight, midnight + 0.001, midnight + 7199.999, midnight - 0.001]
    log = InferenceLog(str(tmp_path))
    log.labels.append("a", label_table([f"id{i}" for i in range(len(times))], [1] * len(times), times))
    assert log.labels.flush() == len(times)
    found = {}
    for path in log.labels.files():
        for ts in pq.read_table(path).column("label_ts").to_pylist():
            found.setdefault(path.split("/labels/")[1].rsplit("/", 1)[0], []).append(
                ts.strftime("%Y-%m-%d %H:%M:%S.%f")
            )
    assert found == {
        "date=2025-12-31/hour=22": ["2025-12-31 22:59:59.500000"],
        "date=2025-12-31/hour=23": ["2025-12-31 23:59:59.999000", "2025-12-31 23:59:59.999000"],
        "date=2026-01-01/hour=00": ["2026-01-01 00:00:00.000000", "2026-01-01 00:00:00.001000"],
        "date=2026-01-01/hour=01": ["2026-01-01 01:59:59.999000"],
    }


def test_a_restart_rebuilds_the_label_index_from_the_newest_hours_only(tmp_path, reference):
    live = generate(300, seed=21)
    now = time.time()
    core = _core(tmp_path, reference, max_pending_labels=150, flush_rows=1)
    old, recent = _batch(live.slice(0, 100), start=now - 6 * 3600), _batch(live.slice(100, 200), start=now)
    old_ids, recent_ids = old.column("request_id").to_pylist(), recent.column("request_id").to_pylist()
    core.ingest("old", old)
    core.tick()
    core.ingest("recent", recent)
    core.ingest_labels("l1", label_table(recent_ids[-5:], [1] * 5))
    core.flush()
    old_parts = [p for p in core.log.predictions.files() if f"hour={time.gmtime(now - 6 * 3600).tm_hour:02d}" in p]
    assert old_parts and len(core.log.predictions.files()) > len(old_parts)
    for path in old_parts:  # history a restart must not need: reading it would fail now
        Path(path).write_bytes(b"not parquet")
    del core

    again = _core(tmp_path, reference, max_pending_labels=150, flush_rows=1)
    assert list(again.pending) == recent_ids[-150:]  # the newest, oldest first, as before the restart
    outcome = again.ingest_labels("l2", label_table([*recent_ids[-10:], old_ids[0], recent_ids[0]], [0] * 12))
    assert outcome == {"joined": 5, "late": 0, "duplicate": 5, "unknown": 2}


def test_joined_gives_each_prediction_its_first_label(tmp_path, reference):
    core = _core(tmp_path, reference)
    table = _batch(generate(20, seed=16))
    core.ingest("p", table)
    ids = table.column("request_id").to_pylist()
    core.ingest_labels(
        "l", label_table([ids[0], ids[0], ids[1]], [1, 0, 0], [1_790_000_010.0, 1_790_000_020.0, 1_790_000_010.0])
    )
    joined = core.log.joined()
    assert joined.num_rows == 20
    labels = dict(zip(joined.column("request_id").to_pylist(), joined.column("label").to_pylist()))
    assert labels[ids[0]] == 1 and labels[ids[1]] == 0 and labels[ids[2]] is None


def test_joined_since_reads_no_parts_of_earlier_hours(tmp_path, reference):
    live = generate(60, seed=23)
    now = time.time()
    core = _core(tmp_path, reference, flush_rows=1)
    old, recent = _batch(live.slice(0, 30), start=now - 6 * 3600), _batch(live.slice(30, 30), start=now)
    core.ingest("old", old)
    core.ingest("recent", recent)
    recent_ids = recent.column("request_id").to_pylist()
    core.ingest_labels("l", label_table([old.column("request_id")[0].as_py(), recent_ids[0]], [1, 1]))
    core.flush()
    for path in core.log.predictions.files():
        if f"hour={time.gmtime(now - 6 * 3600).tm_hour:02d}" in path:
            Path(path).write_bytes(b"not parquet")  # a retrain since `now` must not need it
    joined = core.log.joined(since=now - 60)
    assert sorted(joined.column("request_id").to_pylist()) == sorted(recent_ids)
    labels = dict(zip(joined.column("request_id").to_pylist(), joined.column("label").to_pylist()))
    assert labels[recent_ids[0]] == 1 and labels[recent_ids[1]] is None


def test_rebase_restarts_the_open_window_against_the_new_reference(tmp_path, reference):
    core = _core(tmp_path, reference)
    core.ingest("p", _batch(generate(300, seed=17)))
    assert core.state.window["rows"] == 300
    core.rebase(Reference(version="2", profile=reference.profile, metrics={"auc": 0.9}))
    assert core.state.window["rows"] == 0 and core.state.reference_version == "2"
    again = _core(tmp_path, reference)
    assert again.state.reference_version == "2"
    # the rebase was saved: a reopened monitor keeps the counters and the restarted window
    assert again.summary()["rows_received"] == 300 and again.state.window["rows"] == 0


def test_rebase_forgets_the_old_models_live_quality_and_drift_streak(tmp_path, reference):
    core = _core(tmp_path, reference, min_labels=50)
    old = _batch(generate(200, seed=18), start=time.time() - 30)
    core.ingest("old", old)
    core.state.policy = {**core.policy_state.model_dump(mode="json"), "consecutive_drift": 3}
    core.rebase(Reference(version="2", profile=reference.profile, metrics={"auc": 0.9}))
    assert core.policy_state.consecutive_drift == 0 and core.state.quality_pairs == []
    truth = generate(200, seed=18).column("label").to_pylist()
    # labels of the old model's predictions still join (and are logged), but no longer count as live quality
    outcome = core.ingest_labels("l-old", label_table(old.column("request_id").to_pylist(), truth))
    assert outcome["joined"] == 200 and core.state.quality_pairs == []
    new = _batch(generate(100, seed=19))
    core.ingest("new", new)
    core.ingest_labels("l-new", label_table(new.column("request_id").to_pylist(), [1] * 100))
    assert len(core.state.quality_pairs) == 100


def test_status_reads_the_settings_the_monitor_saved_not_its_own(tmp_path, reference):
    core = _core(tmp_path, reference, window_size=300, min_labels=20)
    core.ingest("b0", _batch(generate(100, seed=12)))
    core.save()
    saved = MonitorCore.read_state(str(tmp_path), "m")
    shown = summarize_state("m", saved, MonitoringConfig(window_size=1000))  # the CLI's config differs
    assert shown["window_size"] == 300 and shown["open_window_rows"] == 100
    restarted = _core(tmp_path, reference, window_size=300, min_labels=20)  # the extra key does not break a restart
    assert restarted.state.rows_received == 100 and restarted.state.restarts == 1


def _labelled_reference(reference: Reference, labels: np.ndarray) -> Reference:
    counts = np.bincount(labels.astype(np.int64), minlength=2).tolist()
    return Reference(
        version="1", profile=reference.profile.model_copy(update={"label_class_counts": counts}), metrics={}
    )


@pytest.mark.parametrize("shift", [False, True])
def test_arrived_labels_are_tested_against_the_held_out_labels_in_windows_of_their_own(tmp_path, reference, shift):
    held_out = generate(20_000, seed=15).column("label").to_numpy()
    events: list = []
    core = _core(tmp_path, _labelled_reference(reference, held_out), events)
    live = generate(2500, seed=16)
    table = _batch(live)
    core.ingest("p0", table)
    truth = live.column("label").to_numpy()
    if shift:  # a prior shift: most of the positives become negatives
        truth = np.where(np.random.default_rng(1).random(truth.size) < 0.7, 0, truth)
    ids = table.column("request_id").to_pylist()
    for k in range(5):
        core.ingest_labels(f"l{k}", label_table(ids[k * 500 : (k + 1) * 500], truth[k * 500 : (k + 1) * 500].tolist()))
    found = core.state.label_drift
    assert core.state.label_windows_seen == 2 and core.state.label_window["rows"] == 500  # 1000 labels a window
    assert found["name"] == "label" and found["n"] == 1000 and found["window"] == 1
    assert found["drifted"] is shift
    assert [e for e, _ in events if e == "label_drift"] == (["label_drift"] * 2 if shift else [])
    assert core.summary()["label_drift"]["drifted"] is shift


def test_a_regressions_label_drift_compares_values(tmp_path, reference):
    from rayloop.bundle import value_histogram
    from rayloop.tasks import Task

    rng = np.random.default_rng(3)
    profile = reference.profile.model_copy(
        update={"label_histogram": value_histogram(rng.normal(100, 20, 5000)), "label_class_counts": None}
    )
    task = Task(kind="regression", label="label", label_type="float")
    core = _core(tmp_path, Reference(version="1", profile=profile, metrics={}, task=task), window_size=500)
    table = _batch(generate(1000, seed=17))
    core.ingest("p0", table)
    ids = table.column("request_id").to_pylist()
    core.ingest_labels("same", label_table(ids[:500], rng.normal(100, 20, 500).tolist()))
    assert core.state.label_drift["drifted"] is False
    core.ingest_labels("higher", label_table(ids[500:], rng.normal(115, 20, 500).tolist()))
    assert core.state.label_drift["drifted"] is True and core.state.label_drift["window"] == 1


def test_the_live_metrics_standard_error_is_the_bootstrap_spread_and_shrinks_with_labels():
    regression = Task(kind="regression", label="label", label_type="float")
    rng = np.random.default_rng(3)
    truth = rng.normal(100, 20, 1600)
    pairs = np.c_[truth + rng.normal(0, 8, 1600), truth]
    errors = np.abs(pairs[:, 0] - pairs[:, 1])
    small, large = (live_metric_se(regression, pairs[:n], "mae", 100) for n in (400, 1600))
    # the MAE's standard error is sd(|error|) / sqrt(n); 4x the labels halve it
    assert small == pytest.approx(errors[:400].std() / 20, rel=0.15)
    assert large == pytest.approx(errors.std() / 40, rel=0.15) and small / large == pytest.approx(2, rel=0.2)
    assert live_metrics(regression, pairs, 100)["mae"] == pytest.approx(errors.mean())
    assert live_metric_se(regression, pairs[:99], "mae", 100) is None  # fewer than min_labels
    binary = Task(kind="binary", label="label", label_type="int", classes=[0, 1])
    one_class = np.c_[rng.random(300), np.zeros(300)]
    assert live_metric_se(binary, one_class, "auc", 100) is None  # AUC over one class is undefined
