"""A Parquet datasource that decodes a few thousand rows at a time instead of whole row groups.

Ray Data's `read_parquet` scans through `pyarrow.dataset`, which decodes a whole row group
before it hands out the first batch, so a read task of a file with one big row group holds all
of it decoded; `ParquetFile.iter_batches` over a buffered stream holds one batch
(benchmarks/README.md, preprocessing).

Read tasks follow the files and, when more blocks are asked for than there are files, their row
groups. Every batch is conformed to the source's unified schema, so files that lack a nullable
column or store a narrower type still produce one schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

if TYPE_CHECKING:
    from ray.data.context import DataContext

__all__ = ["ParquetFiles", "StreamingParquetDatasource", "conform", "plan_units"]


class ParquetFiles(Protocol):
    """What the datasource reads (`rayloop.data.io.SourceInfo` is one): files on a filesystem,
    their row groups from the footers, and the schema every batch is conformed to."""

    filesystem: pafs.FileSystem
    schema: pa.Schema
    row_groups: dict[str, tuple[tuple[int, int], ...]]  # per file, per row group: (rows, uncompressed bytes)


BATCH_ROWS = 65_536  # rows decoded at a time; Ray joins them into blocks of target_max_block_size
BUFFER_BYTES = 1 << 20  # buffered column-chunk reads instead of loading each chunk whole

Unit = tuple[str, tuple[int, ...]]  # a file and some of its row groups


def plan_units(row_groups: dict[str, int], parallelism: int) -> list[list[Unit]]:
    """Group (file, row groups) units into about `parallelism` read tasks, files kept whole
    unless there are fewer files than tasks; then their row groups are dealt out evenly."""
    files = [f for f, n in row_groups.items() if n > 0]
    if not files:
        return []
    parallelism = max(1, parallelism)
    if parallelism <= len(files):
        tasks: list[list[Unit]] = [[] for _ in range(parallelism)]
        for i, path in enumerate(files):
            tasks[i * parallelism // len(files)].append((path, tuple(range(row_groups[path]))))
        return [t for t in tasks if t]
    per_file = -(-parallelism // len(files))  # ceil: tasks per file
    tasks = []
    for path in files:
        groups = range(row_groups[path])
        pieces = min(per_file, len(groups))
        for k in range(pieces):
            chunk = tuple(groups[k * len(groups) // pieces : (k + 1) * len(groups) // pieces])
            tasks.append([(path, chunk)])
    return tasks


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table in the unified schema's column order and types; absent columns are null."""
    if table.schema.equals(schema):
        return table
    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            columns.append(column if column.type == field.type else column.cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


class StreamingParquetDatasource(Datasource):
    """Parquet files of a resolved source, read batch by batch (see the module docstring)."""

    def __init__(self, info: ParquetFiles, batch_rows: int = BATCH_ROWS) -> None:
        super().__init__()
        self._info = info
        self._batch_rows = batch_rows
        self._groups = info.row_groups  # per file, per row group: (rows, uncompressed bytes)

    def get_name(self) -> str:
        return "ParquetStream"

    @property
    def max_tasks(self) -> int:
        """One task per row group at most: Ray's size-based default asks for more on files with
        one big group, and then splits every block after the read (SplitBlocks)."""
        return max(1, sum(len(groups) for groups in self._groups.values()))

    def estimate_inmemory_data_size(self) -> int:
        return sum(size for groups in self._groups.values() for _, size in groups)

    def _unit_sum(self, unit: Unit, field: int) -> int:
        groups = self._groups[unit[0]]
        return sum(groups[i][field] for i in unit[1])

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: DataContext | None = None
    ) -> list[ReadTask]:
        plan = plan_units({path: len(groups) for path, groups in self._groups.items()}, parallelism)
        info, batch_rows = self._info, self._batch_rows
        tasks = []
        for units in plan:
            metadata = BlockMetadata(
                num_rows=sum(self._unit_sum(u, 0) for u in units),
                size_bytes=sum(self._unit_sum(u, 1) for u in units),
                exec_stats=None,
                input_files=tuple(path for path, _ in units),
            )

            def read(units: list[Unit] = units) -> Iterator[pa.Table]:
                for path, groups in units:
                    with info.filesystem.open_input_file(path) as handle:
                        reader = pq.ParquetFile(handle, buffer_size=BUFFER_BYTES, pre_buffer=False)
                        for batch in reader.iter_batches(
                            batch_size=batch_rows, row_groups=list(groups), use_threads=False
                        ):
                            yield conform(pa.Table.from_batches([batch]), info.schema)

            tasks.append(ReadTask(read, metadata, schema=info.schema, per_task_row_limit=per_task_row_limit))
        return tasks
