"""The retrain job's body (`workloads.retrain` on the cluster): a training window from the
reference data and the labelled inference log, a challenger trained on it, the gate on recent
labelled rows training never saw.

1. the window (`rayloop.monitoring.retrain_window`, pure): the recent labelled rows, the newest
   of them held out for the gate, the rest repeated beside a sample of the original data;
2. preprocess the training window in this process (it is in memory already; Ray Data's passes
   cost a small window more than its work), split by entity hash (a time split would put all the
   recent rows into validation and test);
3. train (or tune) -> register `challenger` -> `registry.promote` on the holdout.

The new bundle's reference profile describes the recent window, not the mixed training data: it
is what the monitor compares traffic with after the rollout, so traffic that stays like the
recent window raises no new alarm. Its test metrics are measured on the same holdout as the gate.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from rayloop import audit, paths, registry
from rayloop.config import RayloopConfig
from rayloop.constants import SUBMISSION_ID_ENV_VAR
from rayloop.control.train import EvaluationData, train_or_tune
from rayloop.data.io import inspect_source, read_table
from rayloop.data.schema import FeatureSchema
from rayloop.errors import RetrainError
from rayloop.features.pipeline import FeaturePipeline
from rayloop.latency import Laps
from rayloop.monitoring.inference_log import InferenceLog
from rayloop.monitoring.retrain_window import assemble, recent_rows, sample_rows, split_recent
from rayloop.preprocess import PreprocessRun, resolve_source, run_preprocess

__all__ = ["RetrainResult", "run_retrain"]

log = logging.getLogger(__name__)


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
    seconds: dict[str, float]  # startup (process start -> this function), assemble, preprocess, train, gate
    training: dict[str, Any]  # local mode or workers, and why; seconds of fit / evaluate / refit / register
    timeline: dict[str, float]  # epoch seconds: process_started, run_started, finished

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_reference_sample(config: RayloopConfig, schema: FeatureSchema, rows: int) -> pa.Table:
    """About `rows` valid rows drawn at random from the original training data, streamed file by
    file and batch by batch (the sample is all that is held in memory)."""
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
    for attempt in range(3):  # the monitor may compact a write-ahead file while we read it
        try:
            return InferenceLog(paths.inference_log_root(root, model_name)).joined(since)
        except FileNotFoundError:
            if attempt == 2:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path))


def run_retrain(config: RayloopConfig) -> RetrainResult:
    """The whole job (see the module docstring); a refused gate is a result, not an error."""
    lap = Laps(digits=2)
    run_started_at = time.time()
    process_started_at = psutil.Process().create_time()
    since = config.retrain.since
    submission_id = os.environ.get(SUBMISSION_ID_ENV_VAR)
    model_name = config.registry.model_name
    data_cfg = config.data
    champion = registry.resolve_version(model_name, registry.CHAMPION)
    if champion is None:
        raise RetrainError(f"model {model_name!r} has no champion: run the pipeline first")
    champion_bundle = registry.load_bundle(model_name, champion)
    schema, task = champion_bundle.schema, champion_bundle.task
    root = config.monitoring.storage or str(paths.home())
    audit.record("retrain_job_started", model=model_name, submission_id=submission_id, champion=champion, since=since)

    recent = recent_rows(_read_log(root, model_name, since), since)
    roles = {
        "label": task.label,
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
    lap("assemble")

    window = config.model_copy(
        update={
            "data": data_cfg.model_copy(
                update={
                    "source": str(work / "train"),
                    "format": "parquet",
                    # repeats of a recent row stay in one split: by the id the row was logged with
                    # (or made up for it), else by its content
                    "split": data_cfg.split.model_copy(
                        update={"method": "hash" if data_cfg.id_column in schema.names else "content"}
                    ),
                    "schema_": schema,
                    "label_column": task.label,
                    "task": task.kind,
                    "preprocess_run": None,
                }
            ),
            "tuning": config.tuning.model_copy(update={"enabled": config.retrain.tune}),
        }
    )
    # the window is in memory already: preprocessed in this process, not read back through Ray Data
    run = PreprocessRun.open(run_preprocess(window, task=task, table=data.train).run_id)
    pipeline = FeaturePipeline(
        window.features,
        schema,
        label_column=task.label,
        timestamp_column=data_cfg.timestamp_column,
        id_column=data_cfg.id_column,
    )
    # judged on the newest labelled rows; traffic is compared afterwards with the recent feature
    # profile (not the mixed training window) and with the scores of rows no fit trained on
    evaluation = EvaluationData(
        holdout=data.holdout, reference_rows=data.unseen, profile=pipeline.fit_table(data.recent)[1]
    )
    lap("preprocess")

    outcome = train_or_tune(window, run, evaluation=evaluation)
    lap("train")
    mlflow_client = registry.client()
    if submission_id:
        mlflow_client.set_model_version_tag(model_name, outcome.version, registry.RETRAIN_TAG, submission_id)
    mlflow_client.set_model_version_tag(model_name, outcome.version, "rayloop.retrain.window", json.dumps(data.counts))
    decision = registry.promote(
        model_name,
        outcome.version,
        data.holdout,
        metric=config.registry.gate_metric,
        tolerance=config.registry.tolerance,
        judge=outcome.evaluation_bundle,  # the fit that never saw the holdout; the refit is served
        loaded={champion: champion_bundle},
    )
    lap("gate")
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
            # the interpreter, rayloop's imports, the config and Ray's connection, before any work
            "startup": round(run_started_at - process_started_at, 2),
            **lap.seconds,
        },
        training={**outcome.placement, "seconds": outcome.phases},
        timeline={
            "process_started": round(process_started_at, 3),
            "run_started": round(run_started_at, 3),
            "finished": round(time.time(), 3),
        },
    )
    (work / "result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    audit.record(
        "retrain_job_finished", **{k: v for k, v in result.to_dict().items() if k != "gate"}, reason=decision.reason
    )
    return result
