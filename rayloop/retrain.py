"""The retrain job's body: a training window from the reference data and the labelled inference
log, a challenger trained on it, the gate on recent labelled rows training never saw.

`assemble` is pure (pyarrow in, pyarrow out) and unit-tested. `run_retrain` is what
`workloads.retrain` runs on the cluster:

1. the recent window: inference-log rows served since the drift began (`retrain.since`), joined
   with their first label;
2. the gate's holdout: the most recent `holdout_fraction` of the labelled recent rows;
3. the training window: the other labelled recent rows, each repeated `recent_weight` times, plus
   a random sample of the original training data, `reference_ratio` rows per recent row (so the
   old data informs but cannot drown the new), split by entity hash (a time split would put all
   the recent rows into validation and test);
4. preprocess -> train (or tune) -> register `challenger` -> `registry.promote` on the holdout.

The new bundle's reference profile describes the recent window, not the mixed training data: it
is what the monitor compares traffic with after the rollout, so traffic that stays like the
recent window raises no new alarm. Its test metrics are measured on the same holdout as the gate.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayloop import audit, paths
from rayloop.jobs import SUBMISSION_ENV
from rayloop.config import RayloopConfig, RetrainConfig
from rayloop.data.schema import FeatureSchema
from rayloop.errors import RetrainError

__all__ = ["RetrainData", "RetrainResult", "assemble", "recent_rows", "run_retrain", "sample_rows", "split_recent"]

log = logging.getLogger(__name__)


@dataclass
class RetrainData:
    train: pa.Table  # schema columns, reference sample + weighted recent rows
    holdout: pa.Table  # schema columns, the most recent labelled rows
    recent: pa.Table  # schema columns, every recent row (label null where none arrived): the new profile
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class RetrainResult:
    submission_id: str | None
    model_name: str
    version: str
    promoted: bool
    champion: str | None
    previous_champion: str | None
    gate: dict[str, Any]
    test_metrics: dict[str, float]
    counts: dict[str, int]
    since: float | None
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recent_rows(log_table: pa.Table, since: float | None) -> pa.Table:
    """Inference-log rows (joined with labels) served at or after `since` (epoch seconds), oldest first."""
    if log_table.num_rows == 0 or "ts" not in log_table.column_names:
        return log_table
    if since is not None:
        cutoff = pa.scalar(int(since * 1000), pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
        log_table = log_table.filter(
            pc.greater_equal(log_table.column("ts").cast(pa.timestamp("ms", tz="UTC")), cutoff)
        )
    return log_table.sort_by([("ts", "ascending")])


def _entity_ids(request_ids: pa.ChunkedArray | pa.Array) -> pa.Array:
    # logged requests carry no entity id: a stable one per request keeps a row's repeats in one split
    import pandas as pd

    hashed = pd.util.hash_array(np.asarray(request_ids.to_pylist(), dtype=object), hash_key="rayloopretrain00")
    return pa.array((hashed >> np.uint64(2)).astype(np.int64))


def _as_schema_rows(
    recent: pa.Table, schema: FeatureSchema, *, label: str, id_column: str | None, timestamp_column: str | None
) -> pa.Table:
    """Log rows -> the training data's columns: entity ids made up, the serving time as event time
    when the request had none, the label from the feedback join."""
    target = schema.arrow_schema()
    columns = {}
    for name in target.names:
        if name == label:
            values = recent.column("label") if "label" in recent.column_names else pa.nulls(recent.num_rows)
        elif name in recent.column_names:
            values = recent.column(name)
        elif name == id_column:
            values = _entity_ids(recent.column("request_id"))
        elif name == timestamp_column:
            values = recent.column("ts")
        else:
            values = pa.nulls(recent.num_rows)
        columns[name] = pc.cast(values, target.field(name).type, safe=False)
    return pa.table(columns, schema=target)


def split_recent(
    recent: pa.Table,
    schema: FeatureSchema,
    config: RetrainConfig,
    *,
    label: str,
    id_column: str | None,
    timestamp_column: str | None,
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(every recent row, labelled rows to train on, the newest labelled rows held out), in the
    training data's columns. Raises RetrainError when too few recent rows are labelled."""
    rows = _as_schema_rows(recent, schema, label=label, id_column=id_column, timestamp_column=timestamp_column)
    labelled = rows.filter(pc.is_valid(rows.column(label)))
    if labelled.num_rows < config.min_labelled_rows:
        raise RetrainError(
            f"only {labelled.num_rows} labelled rows in the recent window (retrain.min_labelled_rows="
            f"{config.min_labelled_rows}); the champion keeps serving"
        )
    n_holdout = max(1, math.ceil(labelled.num_rows * config.holdout_fraction))
    # the newest labelled rows are the gate's holdout: the most like tomorrow's traffic
    return rows, labelled.slice(0, labelled.num_rows - n_holdout), labelled.slice(labelled.num_rows - n_holdout)


def sample_rows(batches: Iterable[pa.RecordBatch | pa.Table], fraction: float, seed: int) -> pa.Table | None:
    """A seeded Bernoulli sample of a stream of batches, holding only the sample in memory."""
    rng = np.random.default_rng(seed)
    kept = []
    for batch in batches:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        kept.append(table.filter(pa.array(rng.random(table.num_rows) < fraction)))
    return pa.concat_tables(kept, promote_options="permissive") if kept else None


def assemble(
    reference_sample: pa.Table, split: tuple[pa.Table, pa.Table, pa.Table], config: RetrainConfig
) -> RetrainData:
    """The training window (the reference sample + the recent labelled rows, repeated
    `recent_weight` times) and the gate's holdout, from `split_recent`'s split; see the module docstring."""
    rows, recent_train, holdout = split
    sample = reference_sample.select(rows.column_names).cast(rows.schema, safe=False)
    train = pa.concat_tables([sample, *([recent_train] * config.recent_weight)])
    counts = {
        "recent_rows": rows.num_rows,
        "recent_labelled": recent_train.num_rows + holdout.num_rows,
        "recent_train": recent_train.num_rows,
        "holdout": holdout.num_rows,
        "reference_kept": sample.num_rows,
        "train_rows": train.num_rows,
        "recent_weight": config.recent_weight,
    }
    return RetrainData(train=train, holdout=holdout, recent=rows, counts=counts)


def _read_reference_sample(config: RayloopConfig, schema: FeatureSchema, rows: int) -> pa.Table:
    """About `rows` valid rows drawn at random from the original training data, streamed file by
    file and batch by batch (the sample is all that is held in memory)."""
    import pyarrow.parquet as pq

    from rayloop.data.io import inspect_source, read_table
    from rayloop.preprocess import resolve_source

    info = inspect_source(resolve_source(config.data), config.data.format)
    if info.format == "parquet":
        files = [pq.ParquetFile(info.filesystem.open_input_file(f)) for f in info.files]
        total = sum(f.metadata.num_rows for f in files)
        batches: Iterable[pa.RecordBatch | pa.Table] = (b for f in files for b in f.iter_batches(batch_size=65_536))
    else:  # CSV has no row count up front: read it whole (CSV sources are small)
        table = read_table(info)
        total, batches = table.num_rows, [table]
    fraction = min(1.0, rows / total) if total else 0.0
    sample = sample_rows(batches if fraction > 0 else [], fraction, config.retrain.seed)
    if sample is None:
        return schema.arrow_schema().empty_table()
    valid, _ = schema.validate(sample, source="reference")
    return valid


def _read_log(root: str, model_name: str, since: float | None) -> pa.Table:
    from rayloop.monitoring.inference_log import InferenceLog

    for attempt in range(3):  # the monitor may compact a write-ahead file while we read it
        try:
            return InferenceLog(paths.inference_log_root(root, model_name)).joined(since)
        except FileNotFoundError:
            if attempt == 2:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


def _write(table: pa.Table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path))


def run_retrain(config: RayloopConfig) -> RetrainResult:
    """The whole job (see the module docstring); a refused gate is a result, not an error."""
    from rayloop import registry
    from rayloop.features.pipeline import FeaturePipeline
    from rayloop.preprocess import HOLDOUT_DIR, PROFILE_FILE, REFERENCE_ROWS_DIR, run_preprocess
    from rayloop.training.workflow import train_or_tune

    started = time.perf_counter()
    since = config.retrain.since
    submission_id = os.environ.get(SUBMISSION_ENV)
    model_name = config.registry.model_name
    data_cfg = config.data
    champion = registry.resolve_version(model_name, registry.CHAMPION)
    if champion is None:
        raise RetrainError(f"model {model_name!r} has no champion: run the pipeline first")
    schema = registry.load_bundle(model_name, champion).schema
    root = config.monitoring.storage or str(paths.home())
    audit.record("retrain_job_started", model=model_name, submission_id=submission_id, champion=champion, since=since)

    recent = recent_rows(_read_log(root, model_name, since), since)
    roles = {
        "label": data_cfg.label_column,
        "id_column": data_cfg.id_column,
        "timestamp_column": data_cfg.timestamp_column,
    }
    split = split_recent(recent, schema, config.retrain, **roles)  # fails fast when labels are short
    reference = _read_reference_sample(config, schema, int(config.retrain.reference_ratio * split[1].num_rows))
    data = assemble(reference, split, config.retrain)
    log.info("retrain window: %s", data.counts)
    work = paths.ensure(paths.home() / "retrain" / (submission_id or f"manual-{int(time.time())}"))
    shutil.rmtree(work / "train", ignore_errors=True)
    _write(data.train, work / "train" / "part-0.parquet")
    assembled = time.perf_counter()

    window = config.model_copy(
        update={
            "data": data_cfg.model_copy(
                update={
                    "source": str(work / "train"),
                    "format": "parquet",
                    "split": data_cfg.split.model_copy(update={"method": "hash"}),
                    "preprocess_run": None,
                }
            ),
            "tuning": config.tuning.model_copy(update={"enabled": config.retrain.tune}),
        }
    )
    pre = run_preprocess(window)
    run_dir = paths.run_dir(pre.run_id)
    # the gate's holdout and the new reference: the recent traffic, not the mixed training window
    shutil.rmtree(run_dir / HOLDOUT_DIR, ignore_errors=True)
    _write(data.holdout, run_dir / HOLDOUT_DIR / "part-recent.parquet")
    _write(data.recent, run_dir / REFERENCE_ROWS_DIR / "part-recent.parquet")  # the score histogram's rows
    pipeline = FeaturePipeline(
        window.features,
        schema,
        label_column=data_cfg.label_column,
        timestamp_column=data_cfg.timestamp_column,
        id_column=data_cfg.id_column,
    )
    (run_dir / PROFILE_FILE).write_text(pipeline.fit_table(data.recent)[1].to_json())
    preprocessed = time.perf_counter()

    outcome = train_or_tune(window, pre.run_id)
    trained = time.perf_counter()
    mlflow_client = registry.client()
    if submission_id:
        mlflow_client.set_model_version_tag(model_name, outcome.version, registry.RETRAIN_TAG, submission_id)
    mlflow_client.set_model_version_tag(model_name, outcome.version, "rayloop.retrain.window", json.dumps(data.counts))
    decision = registry.promote(
        model_name,
        outcome.version,
        data.holdout,
        label=data_cfg.label_column,
        metric=config.registry.gate_metric,
        tolerance=config.registry.tolerance,
    )
    result = RetrainResult(
        submission_id=submission_id,
        model_name=model_name,
        version=outcome.version,
        promoted=decision.promote,
        champion=registry.resolve_version(model_name, registry.CHAMPION),
        previous_champion=champion,
        gate=decision.to_dict(),
        test_metrics=outcome.test_metrics,
        counts=data.counts,
        since=since,
        seconds={
            "assemble": round(assembled - started, 2),
            "preprocess": round(preprocessed - assembled, 2),
            "train": round(trained - preprocessed, 2),
            "gate": round(time.perf_counter() - trained, 2),
        },
    )
    (work / "result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    audit.record(
        "retrain_job_finished", **{k: v for k, v in result.to_dict().items() if k != "gate"}, reason=decision.reason
    )
    return result
