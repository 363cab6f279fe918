"""The traffic simulator's bookkeeping and the demo report, without a server."""

from __future__ import annotations

import re

from rayloop.control.demo import PREVIOUS_DIR, archive_previous_run, write_report
from rayloop.data.synthetic import generate
from rayloop.traffic import TrafficStats, request_rows


def _stats() -> TrafficStats:
    stats = TrafficStats(started=0.0)
    # [t, latency ms, version, correct rows, rows, drift]
    stats.answers = [
        [1.0, 2.0, "1", 1, 1, False],
        [2.0, 4.0, "1", 0, 1, False],
        [6.0, 3.0, "1", 0, 1, True],
        [7.0, 50.0, "2", 1, 1, True],
        [8.0, 5.0, "2", 1, 1, True],
    ]
    stats.statuses.update({200: 5, 503: 1})
    stats.sent = 6
    return stats


def test_accuracy_by_version_and_phase_and_the_timeline():
    stats = _stats()
    assert stats.errors == 1
    assert stats.quality(drift=False) == 0.5
    assert stats.quality(version="1", drift=True) == 0.0 and stats.quality(version="2") == 1.0
    assert stats.quality(version="3") is None
    buckets = stats.timeline(5.0)
    assert [b["t"] for b in buckets] == [0.0, 5.0]
    assert buckets[1]["versions"] == {"1": 1, "2": 2} and buckets[1]["drift"] and buckets[1]["p99_ms"] == 50.0
    assert stats.summary()["statuses"] == {"200": 5, "503": 1}


def test_request_rows_are_json_records_without_the_label_and_id():
    records, labels = request_rows(generate(5, seed=1))
    assert len(records) == len(labels) == 5 and set(labels) <= {0, 1}
    assert "label" not in records[0] and "entity_id" not in records[0]
    assert isinstance(records[0]["event_time"], str) and "T" in records[0]["event_time"]


def test_the_report_embeds_the_plot_and_lists_the_events(tmp_path):
    windows = [
        {
            "t": 10.0 * i,
            "window": i,
            "alarm": i >= 3,
            "max_psi": 0.05 if i < 3 else 4.0,
            "drifted": [],
            "live": None,
            "version": "1",
        }
        for i in range(6)
    ]
    events = [
        {"t": 25.0, "kind": "drift_start", "text": "[bold]drift starts[/bold]"},
        {"t": 40.0, "kind": "submitted", "text": "retrain job <x> submitted"},
        {"t": 70.0, "kind": "outcome", "text": "retrain: [green]promoted[/green]"},
    ]
    target = write_report(
        tmp_path / "r.html", windows=windows, quality=_stats().timeline(5.0), events=events, summary={"model": "m"}
    )
    html = target.read_text()
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', html)
    assert "retrain job &lt;x&gt; submitted" in html and "[green]" not in html and "promoted" in html


def test_a_new_demo_moves_the_previous_monitor_state_and_log_aside(monkeypatch, tmp_path):
    from rayloop import paths

    monkeypatch.setenv("RAYLOOP_HOME", str(tmp_path))
    assert archive_previous_run("m") == []  # a first demo: nothing to move
    state = tmp_path / "monitor" / "m" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"windows_seen": 16}')
    part = paths.inference_log_dir() / "m" / "date=2026-11-27" / "part-0.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"PAR1")
    other = tmp_path / "monitor" / "another-model" / "state.json"  # another model's monitor stays
    other.parent.mkdir(parents=True)
    other.write_text("{}")
    moved = archive_previous_run("m")
    previous = tmp_path / PREVIOUS_DIR
    assert moved == [previous / "monitor" / "m", previous / "inference_log" / "m"]
    assert not state.exists() and not part.exists() and other.exists()
    assert (previous / "monitor" / "m" / "state.json").read_text() == '{"windows_seen": 16}'
    assert (previous / "inference_log" / "m" / "date=2026-11-27" / "part-0.parquet").exists()
    state.parent.mkdir(parents=True)
    state.write_text('{"windows_seen": 3}')
    archive_previous_run("m")  # the next demo replaces the one before
    assert (previous / "monitor" / "m" / "state.json").read_text() == '{"windows_seen": 3}'
    assert not (previous / "inference_log").exists()
