"""Read Parquet and CSV from any pyarrow filesystem URI into Ray Datasets (and write them back).

`inspect_source` runs on the driver before any Ray work: it lists the files, reads every
Parquet footer / CSV header, and fails at once naming the path when something is missing or
unreadable, instead of failing minutes later inside a read task.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayloop.errors import DataSourceError

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "SourceInfo",
    "MalformedRowSink",
    "inspect_source",
    "read_dataset",
    "read_table",
    "read_malformed",
    "fusable_map_args",
    "resolve_filesystem",
]

Format = Literal["parquet", "csv"]
_SUFFIXES: dict[str, Format] = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv"}


@dataclass(frozen=True)
class SourceInfo:
    """A resolved data source: its files, format, filesystem and unified schema."""

    uri: str
    format: Format
    files: tuple[str, ...]
    filesystem: pafs.FileSystem
    schema: pa.Schema
    file_columns: dict[str, tuple[str, ...]]
    # Parquet: per file, per row group, (rows, uncompressed bytes), from the footer read above
    row_groups: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)

    def read_options(self, malformed_dir: str | None = None) -> dict:
        """Reader kwargs. CSV columns are read as text so one bad value can never abort a read:
        validation parses them row by row and rejects what does not parse. CSV lines with the
        wrong number of fields are skipped by the reader and kept by a MalformedRowSink."""
        if self.format == "csv":
            return {
                "convert_options": pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in self.schema.names}, strings_can_be_null=True
                ),
                "parse_options": pacsv.ParseOptions(invalid_row_handler=MalformedRowSink(malformed_dir)),
            }
        return {}


class MalformedRowSink:
    """CSV invalid-row handler: keeps each unparseable line as JSON under `directory` (when given)
    instead of failing the read, so the rejects table can list it."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory

    def __call__(self, row) -> str:
        if self.directory:
            path = Path(self.directory) / f"{os.getpid()}-{threading.get_ident()}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            record = {"text": row.text, "expected_columns": row.expected_columns, "actual_columns": row.actual_columns}
            with open(path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        return "skip"


def read_malformed(directory: str | Path) -> list[dict]:
    """The lines a MalformedRowSink kept."""
    records: list[dict] = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        records.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return records


def resolve_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A local path (relative or absolute), file://, s3://, gs://, hdfs:// ... -> (filesystem, path)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise DataSourceError(uri, f"unsupported or malformed URI ({exc})") from exc


def _format_of(path: str) -> Format | None:
    lower = path.lower()
    for suffix, fmt in _SUFFIXES.items():
        if lower.endswith(suffix):
            return fmt
    return None


def _list_files(fs: pafs.FileSystem, path: str, uri: str) -> list[str]:
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise DataSourceError(uri, str(exc)) from exc
    if info.type == pafs.FileType.NotFound:
        raise DataSourceError(uri, "no such file or directory")
    if info.type == pafs.FileType.File:
        return [path]
    selector = pafs.FileSelector(path, recursive=True)
    files = [
        f.path
        for f in fs.get_file_info(selector)
        if f.type == pafs.FileType.File and not os.path.basename(f.path).startswith(("_", "."))
    ]
    if not files:
        raise DataSourceError(uri, "directory holds no data files")
    return sorted(files)


def inspect_source(uri: str, format: Literal["auto", "parquet", "csv"] = "auto") -> SourceInfo:
    """Resolve, list and open every file's metadata; raise DataSourceError naming the bad path."""
    fs, path = resolve_filesystem(uri)
    files = _list_files(fs, path, uri)
    if format == "auto":
        formats = {_format_of(f) for f in files}
        if None in formats or len(formats) != 1:
            odd = [f for f in files if _format_of(f) is None][:3]
            raise DataSourceError(
                uri,
                f"cannot tell the format from file names (e.g. {odd or files[:3]}); "
                "set data.format to parquet or csv, or keep one format per source",
            )
        fmt: Format = formats.pop()  # type: ignore[assignment]
    else:
        fmt = format
    opened = [_open_file(fs, f, fmt) for f in files]
    schemas = [schema for schema, _ in opened]
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataSourceError(uri, f"files have incompatible schemas: {exc}") from exc
    return SourceInfo(
        uri=uri,
        format=fmt,
        files=tuple(files),
        filesystem=fs,
        schema=schema,
        file_columns={f: tuple(s.names) for f, s in zip(files, schemas)},
        row_groups={f: groups for f, (_, groups) in zip(files, opened) if fmt == "parquet"},
    )


CSV_SAMPLE_BYTES = 1 << 20  # the sample a CSV file's column types are inferred from


def _csv_type(inferred: pa.DataType) -> pa.DataType:
    """A column empty in the sample is text until a declared schema says otherwise."""
    return pa.string() if pa.types.is_null(inferred) else inferred


def _open_file(fs: pafs.FileSystem, path: str, fmt: Format) -> tuple[pa.Schema, tuple[tuple[int, int], ...]]:
    """The file's schema and, for Parquet, its row groups' (rows, bytes): one footer read."""
    try:
        if fmt == "parquet":
            meta = pq.read_metadata(path, filesystem=fs)
            groups = tuple(
                (meta.row_group(i).num_rows, meta.row_group(i).total_byte_size) for i in range(meta.num_row_groups)
            )
            return meta.schema.to_arrow_schema(), groups
        with fs.open_input_stream(path, compression="detect") as stream:
            # pyarrow infers each column's type from the first block (numbers, booleans,
            # timestamps); the rows are still read as text and validated against these types,
            # so a later row that does not fit goes to the rejects instead of failing the read
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(block_size=CSV_SAMPLE_BYTES),
                convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
                parse_options=pacsv.ParseOptions(invalid_row_handler=MalformedRowSink(None)),
            )
            return pa.schema([(f.name, _csv_type(f.type)) for f in reader.schema]), ()
    except (OSError, pa.ArrowInvalid, pa.ArrowException) as exc:
        raise DataSourceError(path, f"not a readable {fmt} file: {exc}") from exc


def read_dataset(
    source: SourceInfo | str, *, override_num_blocks: int | None = None, malformed_dir: str | None = None
) -> ray.data.Dataset:
    """A lazy Ray Dataset over the source.

    Parquet goes through rayloop.data.parquet_stream (read tasks per file or row-group range,
    a few thousand rows decoded at a time), not `ray.data.read_parquet`, which decodes whole row
    groups. Without `override_num_blocks` there is a read task per row group.
    """
    import ray.data

    from rayloop.data.parquet_stream import StreamingParquetDatasource  # ray.data at import

    info = source if isinstance(source, SourceInfo) else inspect_source(source)
    if info.format == "parquet":
        datasource = StreamingParquetDatasource(info)
        return ray.data.read_datasource(datasource, override_num_blocks=override_num_blocks or datasource.max_tasks)
    ctx = ray.data.DataContext.get_current()
    # The v2 datasource read 8 files as one block in one task and ignored override_num_blocks.
    ctx.use_datasource_v2 = False
    kwargs = {
        "filesystem": info.filesystem,
        "override_num_blocks": override_num_blocks,
        **info.read_options(malformed_dir),
    }
    return ray.data.read_csv(list(info.files), **kwargs)


def fusable_map_args() -> dict:
    """`map_batches` arguments that let Ray fuse a map chain into the read task.

    Ray fuses a map into the read only when their remote args are compatible and no map in the
    chain sets a `batch_size` (reads may change row counts). Reads carry the context's
    scheduling strategy, and since Ray 2.60 a map that names none inherits it, so passing no
    remote args fuses (passing the strategy through `**ray_remote_args`, as rayloop did before,
    is deprecated there and removed in Ray 2.64). Fused, a block goes from the Parquet decoder
    through validation and features without a trip through the object store; blocks stay small
    through `DataContext.target_max_block_size` (see rayloop.runtime).
    """
    return {"batch_format": "pyarrow"}


def read_table(source: SourceInfo | str, columns: Sequence[str] | None = None) -> pa.Table:
    """The whole source as one in-memory table: for small data, tests and baselines, not pipelines."""
    info = source if isinstance(source, SourceInfo) else inspect_source(source)
    tables = []
    for path in info.files:
        if info.format == "parquet":
            tables.append(pq.read_table(path, filesystem=info.filesystem, columns=columns))
        else:
            with info.filesystem.open_input_stream(path, compression="detect") as stream:
                table = pacsv.read_csv(stream, **info.read_options())
            tables.append(table.select(list(columns)) if columns else table)
    return pa.concat_tables(tables, promote_options="permissive")
