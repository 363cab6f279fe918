"""The preprocess stage and its run: read -> validate -> split -> fit features on train ->
transform every split -> write, into one run directory that `PreprocessRun` names and reads.

Streaming end to end: each stage is a lazy Ray Data pass over the source, so memory stays
flat as rows grow. Pure batch functions (schema.validate, split.assign_*, FittedFeatures.transform)
do the work; this module only wires them into Ray Data and writes the run directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import yaml

from rayloop import paths
from rayloop.config import DataConfig, RayloopConfig, config_hash
from rayloop.data import synthetic
from rayloop.data.io import (
    SourceInfo,
    fusable_map_args,
    inspect_source,
    read_dataset,
    read_malformed,
)
from rayloop.data.schema import REASON_COLUMN, FeatureSchema
from rayloop.data.split import (
    SPLIT_COLUMN,
    SPLITS,
    assign_by_content,
    assign_by_hash,
    assign_by_time,
    time_cutoff_quantiles,
)
from rayloop.errors import ConfigError, PreprocessRunError, RejectRatioError
from rayloop.features.aggregates import compute_stats
from rayloop.features.pipeline import FeaturePipeline, FittedFeatures
from rayloop.features.profile import ReferenceProfile
from rayloop.features.stats import block_stats, numeric_summary
from rayloop.latency import Laps
from rayloop.tasks import LabelSummary, Task, check_known_task, resolve_task, summarize_labels

__all__ = [
    "PREPROCESS_COMMAND",
    "PreprocessResult",
    "PreprocessRun",
    "resolve_schema",
    "resolve_source",
    "run_preprocess",
]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]

WRITE_BATCH_ROWS = 65_536
PREPROCESS_COMMAND = "`rayloop preprocess` (or `python -m workloads.preprocess`)"


@dataclass(frozen=True)
class PreprocessRun:
    """One preprocess run's directory (RAYLOOP_HOME/runs/<id>): every file in it named here once,
    read back as values. `open` checks that what training reads is there."""

    run_id: str
    directory: Path

    FEATURES: ClassVar[str] = "features"  # feature tables, partitioned by split=train|validation|test
    REJECTS: ClassVar[str] = "rejects"  # rows that failed validation, with a reason column
    MALFORMED: ClassVar[str] = "malformed"  # unparseable CSV lines, before they join the rejects
    HOLDOUT: ClassVar[str] = "holdout"  # the raw rows of the test split: the gate scores raw rows
    FITTED_FEATURES: ClassVar[str] = "fitted_features.json"
    PROFILE: ClassVar[str] = "profile.json"  # the reference profile of the train split
    SCHEMA: ClassVar[str] = "schema.json"  # the declared or inferred input schema
    SUMMARY: ClassVar[str] = "summary.json"  # counts and timings (PreprocessResult)
    CONFIG: ClassVar[str] = "config.yaml"  # the effective config of the run
    TASK: ClassVar[str] = "task.json"  # the task resolved on the train split (rayloop.tasks.Task)
    LATEST: ClassVar[str] = "LATEST"  # in the runs dir: the id of the newest finished run
    # what training, tuning and the gate read; a run missing one is not usable
    REQUIRED: ClassVar[tuple[str, ...]] = (FITTED_FEATURES, PROFILE, SCHEMA, TASK, SUMMARY, FEATURES, HOLDOUT)

    @classmethod
    def create(cls, run_id: str | None = None) -> PreprocessRun:
        run_id = run_id or f"pre-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        return cls(run_id, paths.ensure(paths.run_dir(run_id)))

    @classmethod
    def latest_id(cls) -> str | None:
        marker = paths.runs_dir() / cls.LATEST
        return marker.read_text().strip() if marker.exists() else None

    @classmethod
    def open(cls, run_id: str | None = None) -> PreprocessRun:
        """A finished run (the latest when `run_id` is None); a PreprocessRunError names the run,
        what is missing and the command that makes it."""
        chosen = run_id or cls.latest_id()
        if chosen is None:
            raise PreprocessRunError(
                f"no preprocess run under {paths.runs_dir()}: run {PREPROCESS_COMMAND} first", run_id=None
            )
        directory = paths.run_dir(chosen)
        if not directory.is_dir():
            latest = cls.latest_id()
            raise PreprocessRunError(
                f"preprocess run {chosen!r} does not exist (no {directory}): run {PREPROCESS_COMMAND} first, "
                f"or set data.preprocess_run to an existing run (latest: {latest or 'none'})",
                run_id=chosen,
            )
        missing = [name for name in cls.REQUIRED if not (directory / name).exists()]
        if missing:
            raise PreprocessRunError(
                f"preprocess run {chosen!r} has no {', '.join(missing)} in {directory} (unfinished or from an "
                f"older rayloop): run {PREPROCESS_COMMAND} again",
                run_id=chosen,
                missing=missing,
            )
        return cls(chosen, directory)

    # ---- where things are --------------------------------------------------------------------
    @property
    def features_dir(self) -> Path:
        return self.directory / self.FEATURES

    def split_dir(self, split: str) -> Path:
        return self.features_dir / f"{SPLIT_COLUMN}={split}"

    @property
    def rejects_dir(self) -> Path:
        return self.directory / self.REJECTS

    @property
    def malformed_dir(self) -> Path:
        return self.directory / self.MALFORMED

    @property
    def holdout_dir(self) -> Path:
        return self.directory / self.HOLDOUT

    # ---- what it holds -----------------------------------------------------------------------
    def fitted(self) -> FittedFeatures:
        return FittedFeatures.from_json((self.directory / self.FITTED_FEATURES).read_text())

    def profile(self) -> ReferenceProfile:
        return ReferenceProfile.from_json((self.directory / self.PROFILE).read_text())

    def schema(self) -> FeatureSchema:
        return FeatureSchema.model_validate_json((self.directory / self.SCHEMA).read_text())

    def task(self) -> Task:
        return Task.model_validate_json((self.directory / self.TASK).read_text())

    def summary(self) -> dict[str, Any]:
        return json.loads((self.directory / self.SUMMARY).read_text())

    def holdout(self, max_rows: int | None = None) -> pa.Table:
        """The raw, validated rows of the test split (the gate's default holdout)."""
        table = pads.dataset(str(self.holdout_dir), format="parquet").to_table()
        return table.slice(0, max_rows) if max_rows is not None else table

    def rows_in(self, directory: Path) -> int:
        """Rows in the Parquet files under one of the run's folders (from their footers)."""
        return _parquet_rows(directory)

    # ---- writing it ----------------------------------------------------------------------------
    def write_results(
        self,
        *,
        fitted: FittedFeatures,
        profile: ReferenceProfile,
        schema: FeatureSchema,
        task: Task,
        config: RayloopConfig,
        result: PreprocessResult,
    ) -> None:
        """The run's small files, then the LATEST marker: a run is finished once they exist."""
        (self.directory / self.TASK).write_text(task.model_dump_json(indent=2))
        (self.directory / self.FITTED_FEATURES).write_text(fitted.to_json())
        (self.directory / self.PROFILE).write_text(profile.to_json())
        (self.directory / self.SCHEMA).write_text(schema.model_dump_json(indent=2))
        (self.directory / self.CONFIG).write_text(
            yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False)
        )
        (self.directory / self.SUMMARY).write_text(json.dumps(result.to_dict(), indent=2))
        (paths.runs_dir() / self.LATEST).write_text(self.run_id)


@dataclass
class PreprocessResult:
    run_id: str
    run_dir: str
    source: str
    rows_total: int
    rows_good: int
    rows_rejected: int
    rows_per_split: dict[str, int]
    split_method: str
    task: dict[str, Any]
    label_counts: dict[str, dict[str, Any]]
    features_hash: str
    n_features: int
    feature_names: list[str]
    config_hash: str
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def reject_ratio(self) -> float:
        return self.rows_rejected / self.rows_total if self.rows_total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reject_ratio": self.reject_ratio}


# ---- source and schema ------------------------------------------------------------------
def resolve_source(data: DataConfig) -> str:
    """The source URI; `synthetic` generates (once, cached by its parameters) under RAYLOOP_HOME/data."""
    if data.source != "synthetic":
        return data.source
    spec = data.synthetic.model_dump(mode="json")
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    target = paths.data_dir() / f"synthetic-{key}"
    if (target / "_SUCCESS").exists():
        return str(target)
    tmp = paths.ensure(paths.data_dir()) / f".tmp-{key}-{uuid.uuid4().hex[:6]}"
    synthetic.write_parquet(
        tmp,
        data.synthetic.n_rows,
        data.synthetic.seed,
        data.synthetic.scenario,
        rows_per_file=data.synthetic.rows_per_file,
        bad_row_fraction=data.synthetic.bad_row_fraction,
        task=data.synthetic.task,
    )
    (tmp / "_SUCCESS").write_text(json.dumps(spec))
    try:
        tmp.rename(target)
    except OSError:  # another process generated it first
        pass
    return str(target)


def resolve_schema(data: DataConfig, info: SourceInfo | None) -> FeatureSchema:
    """The declared schema, or one inferred from the source's types (label/id/time not nullable).

    The label is never nullable, even where a declared schema says so: a row without a label
    cannot train, so it goes to the rejects with its reason instead of reaching a trainer."""
    if data.schema_ is not None:
        schema = data.schema_
        columns = [
            c.model_copy(update={"nullable": False}) if c.name == data.label_column else c for c in schema.columns
        ]
        return FeatureSchema(columns=columns)
    if info is None:
        raise ConfigError("rows without a source to infer their schema from need data.schema_ (declared)")
    if data.label_column not in info.schema.names:
        raise ConfigError(
            f"data.label_column={data.label_column!r} is not a column of {info.uri} (columns: {info.schema.names})"
        )
    required = [c for c in (data.label_column, data.timestamp_column, data.id_column) if c]
    return FeatureSchema.infer(info.schema, non_nullable=required)


# ---- batch functions (run inside Ray Data tasks) -------------------------------------------
def _rejects_batch(batch: pa.Table, schema: FeatureSchema, source: str) -> pa.Table:
    return schema.validate(batch, source)[1]


def _good_batch(batch: pa.Table, schema: FeatureSchema, source: str) -> pa.Table:
    return schema.validate(batch, source)[0]


def _split_batch(batch: pa.Table, method: str, column: str | None, arg: list, seed: int) -> pa.Table:
    if method == "time":
        split = assign_by_time(batch.column(column), arg)
    elif method == "hash":
        split = assign_by_hash(batch.column(column), arg, seed)
    else:
        split = assign_by_content(batch, batch.column_names, arg, seed)
    return batch.append_column(SPLIT_COLUMN, split)


def _label_summaries(batch: pa.Table, label: str, cap: int) -> pa.Table:
    """Per split of the batch, its LabelSummary (pickled: a few hundred bytes per batch)."""
    names, summaries = [], []
    for name in SPLITS:
        part = _only_split(batch, name)
        if part.num_rows:
            names.append(name)
            summaries.append(pickle.dumps(summarize_labels(part.column(label), cap)))
    return pa.table({"split": pa.array(names, pa.string()), "summary": pa.array(summaries, pa.binary())})


def _only_split(batch: pa.Table, name: str) -> pa.Table:
    return batch.filter(pc.equal(batch.column(SPLIT_COLUMN), name))


def _epoch_us(batch: pa.Table, column: str) -> pa.Table:
    micros = batch.column(column).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).cast(pa.float64())
    return pa.table({"_t": micros})


def _feature_batch(batch: pa.Table, fitted: FittedFeatures, keep: list[str], holdout_dir: str, task: Task) -> pa.Table:
    """The feature table of a batch, its label as the codes a model trains on (rayloop.tasks); as
    a side output, its raw test rows go to the holdout.

    The quality gate scores champion and challenger on raw rows (each applies its own features),
    so the test split is kept raw too. Writing it here saves a second pass over the source. The
    file name is a digest of the rows, so a retried task overwrites its own file, never adds one.
    """
    test = _only_split(batch, "test")
    if test.num_rows:
        raw = test.drop_columns([SPLIT_COLUMN])
        sink = pa.BufferOutputStream()
        pq.write_table(raw, sink)
        data = sink.getvalue()
        target = Path(holdout_dir) / f"part-{hashlib.sha256(data).hexdigest()[:24]}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        partial.write_bytes(data.to_pybytes())
        partial.rename(target)
    table = fitted.feature_table(batch, keep=keep)
    index = table.schema.get_field_index(task.label)
    return table.set_column(index, task.label, pa.array(task.encode(batch.column(task.label))))


# ---- the two ways to run the stage ---------------------------------------------------------
class _RayFrames:
    """The stage over Ray Data: every step a lazy, streaming pass over the source (any size, any
    cluster). Frames are Ray Datasets."""

    def __init__(self) -> None:
        self.fmap = fusable_map_args()

    def map(self, frame, fn: Callable[..., pa.Table], kwargs: dict[str, Any], **ray_args):
        return frame.map_batches(fn, fn_kwargs=kwargs, **self.fmap, **ray_args)

    def write(self, frame, directory: Path, partition_cols: list[str] | None = None) -> None:
        frame.write_parquet(str(directory), **({"partition_cols": partition_cols} if partition_cols else {}))

    def rows(self, frame) -> int:
        return frame.count()

    def rows_of(self, frame) -> list[dict[str, Any]]:
        return frame.take_all()

    def numeric_stats(self, frame, column: str) -> dict[str, Any]:
        return compute_stats(frame, [column], [], precision=800)["numeric"][column]

    def fit(self, pipeline: FeaturePipeline, frame) -> tuple[FittedFeatures, ReferenceProfile]:
        return pipeline.fit_with_profile(frame)


class _TableFrames:
    """The same steps on a table already in this process's memory (the retrain job's window): no
    Ray Data executor, tasks or object-store copies, which cost a small table more than its work
    (benchmarks/README.md). Frames are pyarrow Tables; the statistics are one block's, as a
    single-block Ray pass computes them."""

    def map(self, frame: pa.Table, fn: Callable[..., pa.Table], kwargs: dict[str, Any], **_ray_args) -> pa.Table:
        return fn(frame, **kwargs)

    def write(self, frame: pa.Table, directory: Path, partition_cols: list[str] | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if partition_cols:
            pq.write_to_dataset(frame, str(directory), partition_cols=partition_cols)
        elif frame.num_rows:
            pq.write_table(frame, str(directory / "part-0.parquet"))

    def rows(self, frame: pa.Table) -> int:
        return frame.num_rows

    def rows_of(self, frame: pa.Table) -> list[dict[str, Any]]:
        return frame.to_pylist()

    def numeric_stats(self, frame: pa.Table, column: str) -> dict[str, Any]:
        return block_stats(frame, [column], [], precision=800)["numeric"][column]

    def fit(self, pipeline: FeaturePipeline, frame: pa.Table) -> tuple[FittedFeatures, ReferenceProfile]:
        return pipeline.fit_table(frame)


# ---- the pipeline --------------------------------------------------------------------------
def run_preprocess(
    config: RayloopConfig,
    *,
    run_id: str | None = None,
    progress: Progress | None = None,
    task: Task | None = None,
    table: pa.Table | None = None,
) -> PreprocessResult:
    """Run the whole preprocessing stage on the connected Ray cluster; returns counts and paths.

    `task`: a known task (a retrain keeps its champion's task and classes); labels outside its
    classes are a LabelError. Without it, `data.task` is resolved on the train split.
    `table`: rows already in memory (with `data.schema_` declared), processed in this process by
    the same batch functions instead of reading `data.source` with Ray Data."""
    say = progress or (lambda msg: log.info(msg))
    data = config.data
    lap = Laps()

    run = PreprocessRun.create(run_id)
    frames: _RayFrames | _TableFrames
    rejects_dir, malformed_dir = run.rejects_dir, run.malformed_dir
    if table is None:
        say("resolving the source")
        uri = resolve_source(data)
        info = inspect_source(uri, data.format)
        schema = resolve_schema(data, info)
        for path, columns in info.file_columns.items():
            schema.check_columns(columns, source=path)
        lap("inspect")
        frames = _RayFrames()
        ds = read_dataset(info, override_num_blocks=data.read_blocks)
        # this pass alone keeps unparseable CSV lines; later passes skip them silently
        first_pass = read_dataset(info, override_num_blocks=data.read_blocks, malformed_dir=str(malformed_dir))
    else:
        uri = data.source
        schema = resolve_schema(data, None)
        schema.check_columns(table.column_names, source=uri)
        lap("inspect")
        frames = _TableFrames()
        ds = first_pass = table
    args = {"schema": schema, "source": uri}

    say("validating rows; writing rejects")
    frames.write(frames.map(first_pass, _rejects_batch, args, zero_copy_batch=True), rejects_dir)
    malformed = _write_malformed(schema, malformed_dir, rejects_dir)
    rows_rejected = _parquet_rows(rejects_dir)
    rows_total = frames.rows(ds) + malformed
    lap("validate")
    if rows_total and rows_rejected / rows_total > data.max_reject_ratio:
        raise RejectRatioError(rows_rejected, rows_total, data.max_reject_ratio, str(rejects_dir))
    good = frames.map(ds, _good_batch, args, zero_copy_batch=True)

    fractions = [data.split.train, data.split.validation, data.split.test]
    method = split_method(data, schema)
    if method == "content":
        say(
            f"no timestamp column ({data.timestamp_column!r}) and no id column ({data.id_column!r}): "
            "splitting by a seeded hash of each row's content (the same split on every run)"
        )
    if method == "time":
        say("computing time cut-offs")
        stats = frames.numeric_stats(frames.map(good, _epoch_us, {"column": data.timestamp_column}), "_t")
        cutoffs = [int(q) for q in numeric_summary(stats, time_cutoff_quantiles(fractions))["quantiles"]]
        split_args = {"method": "time", "column": data.timestamp_column, "arg": cutoffs, "seed": 0}
    else:
        column = data.id_column if method == "hash" else None
        split_args = {"method": method, "column": column, "arg": fractions, "seed": data.split.seed}
    with_split = frames.map(good, _split_batch, split_args)
    lap("split")

    say("reading the label: its task and classes")
    task, label_counts = _resolve_task(frames, with_split, data, schema, known=task)
    say(f"task: {task.kind}" + (f", classes {task.classes}" if task.is_classifier else ""))
    lap("task")

    say("fitting features and the reference profile on the train split")
    pipeline = FeaturePipeline(
        config.features,
        schema,
        label_column=data.label_column,
        timestamp_column=data.timestamp_column,
        id_column=data.id_column,
    )
    fitted, profile = frames.fit(pipeline, frames.map(with_split, _only_split, {"name": "train"}))
    lap("fit")

    say("transforming every split; writing feature tables")
    keep = [c for c in (data.label_column, data.id_column, data.timestamp_column) if c and c in schema.names]
    keep.append(SPLIT_COLUMN)
    features_dir = run.features_dir
    features = frames.map(
        with_split,
        _feature_batch,
        {"fitted": fitted, "keep": keep, "holdout_dir": str(run.holdout_dir), "task": task},
        # A batch size keeps this map out of the read task on purpose: Ray's Parquet sink holds
        # every block of its task in memory, so writes go in small tasks
        batch_size=WRITE_BATCH_ROWS,
    )
    frames.write(features, features_dir, partition_cols=[SPLIT_COLUMN])
    rows_per_split = {name: _parquet_rows(run.split_dir(name)) for name in SPLITS}
    lap("transform")

    result = PreprocessResult(
        run_id=run.run_id,
        run_dir=str(run.directory),
        source=uri,
        rows_total=rows_total,
        rows_good=sum(rows_per_split.values()),
        rows_rejected=rows_rejected,
        rows_per_split=rows_per_split,
        split_method=method,
        task=task.model_dump(mode="json"),
        label_counts=label_counts,
        features_hash=fitted.content_hash,
        n_features=len(fitted.feature_names),
        feature_names=fitted.feature_names,
        config_hash=config_hash(config),
        seconds=lap.seconds,
    )
    run.write_results(fitted=fitted, profile=profile, schema=schema, task=task, config=config, result=result)
    return result


def split_method(data: DataConfig, schema: FeatureSchema) -> str:
    """`data.split.method`, with `auto` resolved: time, else entity-id hash, else content hash."""
    has_time = data.timestamp_column in schema.names
    has_id = data.id_column in schema.names
    method = data.split.method
    if method == "auto":
        return "time" if has_time else "hash" if has_id else "content"
    if method == "time" and not has_time:
        raise ConfigError(f"data.split.method=time needs data.timestamp_column among the columns {schema.names}")
    if method == "hash" and not has_id:
        raise ConfigError(f"data.split.method=hash needs data.id_column among the columns {schema.names}")
    return method


def _resolve_task(
    frames: _RayFrames | _TableFrames, with_split, data: DataConfig, schema: FeatureSchema, known: Task | None = None
) -> tuple[Task, dict]:
    """The task of `data.task` (or the `known` one) from a pass over the labels of every split
    (rayloop.tasks)."""
    cap = data.max_classes + 1
    parts = frames.rows_of(frames.map(with_split, _label_summaries, {"label": data.label_column, "cap": cap}))
    merged: dict[str, LabelSummary] = {}
    for row in parts:
        summary = pickle.loads(row["summary"])
        merged[row["split"]] = merged[row["split"]].merge(summary, cap) if row["split"] in merged else summary
    for name in SPLITS:
        merged.setdefault(name, LabelSummary())
    if known is not None:
        check_known_task(known, merged)
        counts = {name: summary.to_dict() for name, summary in merged.items()} if known.is_classifier else {}
        return known, counts
    task = resolve_task(
        data.task,
        label=data.label_column,
        dtype=schema.column(data.label_column).dtype,
        splits=merged,
        max_classes=data.max_classes,
    )
    counts = {name: summary.to_dict() for name, summary in merged.items()} if task.is_classifier else {}
    return task, counts


def _write_malformed(schema: FeatureSchema, malformed_dir: Path, rejects_dir: Path) -> int:
    """Unparseable CSV lines join the rejects table: all columns null, the raw line in the reason."""
    records = read_malformed(malformed_dir) if malformed_dir.exists() else []
    if not records:
        return 0
    reasons = [
        f"column=* rule=malformed value={r['text']} "
        f"(expected {r['expected_columns']} fields, got {r['actual_columns']})"
        for r in records
    ]
    columns = {c.name: pa.nulls(len(records), pa.string()) for c in schema.columns}
    columns[REASON_COLUMN] = pa.array(reasons, pa.string())
    paths.ensure(rejects_dir)
    pq.write_table(pa.table(columns, schema=schema.rejects_schema()), rejects_dir / "malformed-lines.parquet")
    return len(records)


def _parquet_rows(directory: Path) -> int:
    if not directory.exists():
        return 0
    return sum(pq.read_metadata(f).num_rows for f in sorted(directory.rglob("*.parquet")))
