#!/usr/bin/env python
"""Evidently's default data-drift preset as a worker for bench_drift.py, in its own venv.

Evidently 0.7.x does not import with pandas 3 (rayloop's venv), so bench_drift.py runs this file
with the interpreter of a separate venv built from benchmarks/requirements-evidently.txt. It never
imports rayloop.

Protocol (one process for the whole benchmark, strictly request/response, so it never runs at
the same time as the driver):

- argv: `--reference PATH` (Parquet, the raw reference sample), `--numerical COL...`,
  `--categorical COL...`;
- stdout, first line: {"ready": true, "versions": {...}, "import_s": ..., "reference_rows": ...}
  (or {"ready": false, "error": ...} and exit code 1);
- stdin: one Arrow IPC stream; every record batch is one window, with the feature columns and an
  int8 column `__full__` (1: also run the full preset, see below);
- stdout: one JSON line per window.

Per window, two readings of the same preset, `evidently.presets.DataDriftPreset()` with its
defaults (drift_share 0.5, the per-column method chosen by Evidently, the method's threshold):

- `fast`, for every window: Evidently's own decision code without its report. Per column exactly
  what `legacy.calculations.data_drift.get_one_column_drift` does before it builds plot data:
  drop NaN/inf, `get_stattest(reference, current, type, DataDriftOptions().get_feature_stattest_func)`
  (for a reference over 1,000 rows: normed Wasserstein for numeric columns with more than 5
  values, Jensen-Shannon for categorical ones), called with `DataDriftOptions().get_threshold`;
  then the dataset drifts when the share of drifted columns is >= drift_share, as
  `get_dataset_drift`. About 10x cheaper than the full report, which spends most of its time
  building plotly figures.
- `full`, where `__full__` is 1: `Report([DataDriftPreset()]).run(current, reference)` with an
  explicit DataDefinition, read from `DriftedColumnsCount`; the driver checks that both agree
  and reports this path's time as what a user of the preset pays per window.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings


def emit(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True)
    parser.add_argument("--numerical", nargs="*", default=[])
    parser.add_argument("--categorical", nargs="*", default=[])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    try:
        from importlib import metadata

        import numpy as np
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq
        from evidently import DataDefinition, Dataset, Report
        from evidently.legacy.calculations.stattests.registry import get_stattest
        from evidently.legacy.core import ColumnType
        from evidently.legacy.options.data_drift import DataDriftOptions
        from evidently.presets import DataDriftPreset

        import_s = time.perf_counter() - start
        reference = pq.read_table(args.reference).to_pandas()
        definition = DataDefinition(numerical_columns=list(args.numerical), categorical_columns=list(args.categorical))
        reference_ds = Dataset.from_pandas(reference, data_definition=definition)
        preset = DataDriftPreset()
        options = DataDriftOptions()
        columns = [(c, ColumnType.Numerical) for c in args.numerical] + [
            (c, ColumnType.Categorical) for c in args.categorical
        ]
        ref_clean = {c: reference[c].replace([-np.inf, np.inf], np.nan).dropna() for c, _ in columns}
        versions = {name: metadata.version(name) for name in ("evidently", "pandas", "numpy", "scipy", "pyarrow")}
    except Exception as exc:  # noqa: BLE001  (reported to the driver, which goes on without Evidently)
        emit({"ready": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]})
        return 1
    emit(
        {
            "ready": True,
            "versions": versions,
            "import_s": round(import_s, 3),
            "reference_rows": len(reference),
            "drift_share": preset.drift_share,
            "columns": [[c, t.value] for c, t in columns],
        }
    )

    def fast(current: pd.DataFrame) -> dict:
        t0 = time.perf_counter()
        drifted, scores, methods = [], {}, {}
        for column, ctype in columns:
            cur = current[column].replace([-np.inf, np.inf], np.nan).dropna()
            ref = ref_clean[column]
            if cur.empty:  # Evidently raises on an empty column; count it as not drifted
                scores[column] = None
                continue
            test = get_stattest(ref, cur, ctype, options.get_feature_stattest_func(column, ctype.value))
            result = test(ref, cur, ctype, options.get_threshold(column, ctype.value))
            scores[column] = float(result.drift_score)
            methods[column] = test.name
            if result.drifted:
                drifted.append(column)
        share = len(drifted) / len(columns)
        return {
            "count": len(drifted),
            "share": share,
            "dataset_drift": bool(share >= preset.drift_share),
            "drifted": drifted,
            "scores": scores,
            "methods": methods,
            "seconds": time.perf_counter() - t0,
        }

    def full(current: pd.DataFrame) -> dict:
        t0 = time.perf_counter()
        snapshot = Report([DataDriftPreset()]).run(
            Dataset.from_pandas(current, data_definition=definition), reference_ds
        )
        seconds = time.perf_counter() - t0
        metrics = snapshot.dict()["metrics"]
        value = next(m["value"] for m in metrics if m["metric_name"].startswith("DriftedColumnsCount"))
        return {
            "count": int(value["count"]),
            "share": float(value["share"]),
            "dataset_drift": bool(float(value["share"]) >= preset.drift_share),
            "seconds": seconds,
        }

    reader = pa.ipc.open_stream(pa.PythonFile(sys.stdin.buffer, mode="r"))
    for batch in reader:
        t0 = time.perf_counter()
        try:
            want_full = bool(batch.column(batch.schema.get_field_index("__full__"))[0].as_py())
            current = pa.Table.from_batches([batch]).drop_columns(["__full__"]).to_pandas()
            convert_s = time.perf_counter() - t0
            out = {"fast": fast(current), "convert_s": convert_s, "rows": len(current)}
            if want_full:
                out["full"] = full(current)
        except Exception as exc:  # noqa: BLE001  (one window failing is reported, the rest go on)
            out = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
