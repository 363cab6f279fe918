#!/usr/bin/env python
"""Preprocessing: the rayloop pipeline (Ray Data, streaming) vs plain pandas in one process.

Both arms do the same work on the same generated Parquet data (1M rows per file, 0.1% corrupted
rows): read every file, validate against the declared schema of configs/demo.yaml and write the
rejects with reasons, split by time at the 70%/85% timestamp quantiles, fit the features on the
train split (mean/std per numeric column, missing indicators where train had missing values,
top-K vocabularies, hour/day-of-week sin/cos, plus the reference profile rayloop also fits),
transform every row and write the feature table partitioned by split.

Each arm runs as its own subprocess of this script and is measured from outside
(benchmarks/common.py `measure`): wall time and the peak summed RSS and PSS of the whole process
tree (for rayloop: the driver, gcs_server, raylet, agents and every Ray worker). The target
(the issue): rayloop's peak memory stays flat as rows grow (streaming), and at 10M rows it is
at most 1/3 of pandas' peak.

    .venv/bin/python benchmarks/bench_preprocess.py                   # 1M and 10M rows
    .venv/bin/python benchmarks/bench_preprocess.py --rows 200000     # quick smoke run
    .venv/bin/python benchmarks/bench_preprocess.py --rows 10000000 --arms rayloop \
        --object-store-mb 1024 --ctx target_max_block_size=33554432 --name preprocess-exp1

Data lives under $RAYLOOP_HOME/bench-data/<rows> (generated once, reused when its _SUCCESS
marker exists); each arm writes under $RAYLOOP_HOME/bench-out/, deleted after each run.
Results: benchmarks/results/<name>.json (default name `preprocess`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from common import MiB, fmt, machine_info, measure, print_table, run_identity, save_results, warn_if_changed  # noqa: E402

ARMS = ("rayloop", "pandas")
SEED = 7
ROWS_PER_FILE = 1_000_000
BAD_ROW_FRACTION = 0.001
MAX_REJECT_RATIO = 0.05
# Peak memory counts as "flat" when it grows by at most this factor while rows grow 10x.
FLAT_GROWTH_LIMIT = 1.5
TARGET_MEMORY_RATIO = 1 / 3
# Ray's temp dir must be short (Unix socket paths); see rayloop.paths.MAX_RAY_TEMP_DIR_CHARS.
RAY_TEMP_LIMIT = 43


# ---- data ---------------------------------------------------------------------------------
def home() -> Path:
    from rayloop import paths

    return paths.home()


def ensure_data(rows: int) -> Path:
    """$RAYLOOP_HOME/bench-data/<rows>: generated once (bounded memory, one file at a time)."""
    from rayloop.data import synthetic

    target = home() / "bench-data" / str(rows)
    if (target / "_SUCCESS").exists():
        return target
    spec = {
        "n_rows": rows,
        "seed": SEED,
        "rows_per_file": ROWS_PER_FILE,
        "bad_row_fraction": BAD_ROW_FRACTION,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{rows}-{uuid.uuid4().hex[:6]}"
    print(f"generating {rows:,} rows under {target} ...", flush=True)
    start = time.perf_counter()
    synthetic.write_parquet(tmp, rows, SEED, rows_per_file=ROWS_PER_FILE, bad_row_fraction=BAD_ROW_FRACTION)
    (tmp / "_SUCCESS").write_text(json.dumps(spec))
    if target.exists():  # an unfinished earlier attempt (no _SUCCESS)
        shutil.rmtree(target)
    tmp.rename(target)
    print(f"  generated in {time.perf_counter() - start:.1f} s", flush=True)
    return target


def data_bytes(source: Path) -> int:
    return sum(f.stat().st_size for f in source.glob("*.parquet"))


# ---- arm: rayloop -------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def apply_data_context(settings: list[str], limit_object_store_mb: int | None) -> dict[str, Any]:
    """Documented DataContext knobs for experiments: `attr=value`, dotted for nested options."""
    import ray.data
    from ray.data import ExecutionResources

    ctx = ray.data.DataContext.get_current()
    applied: dict[str, Any] = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--ctx {item!r}: expected attr=value")
        value = _parse_value(raw)
        target = ctx
        parts = key.split(".")
        for part in parts[:-1]:
            target = getattr(target, part)
        if not hasattr(target, parts[-1]):
            raise SystemExit(f"--ctx {item!r}: DataContext has no attribute {key!r}")
        setattr(target, parts[-1], value)
        applied[key] = value
    if limit_object_store_mb is not None:
        ctx.execution_options.resource_limits = ExecutionResources.for_limits(
            object_store_memory=limit_object_store_mb * MiB
        )
        applied["execution_options.resource_limits.object_store_memory"] = limit_object_store_mb * MiB
    return applied


def arm_rayloop(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    import pyarrow.parquet as pq
    import ray

    from rayloop import paths
    from rayloop.preprocess import PreprocessRun, run_preprocess
    from rayloop.runtime import init_ray

    latest = paths.runs_dir() / PreprocessRun.LATEST
    previous_latest = latest.read_text() if latest.exists() else None
    imported = time.perf_counter()
    init_ray(
        num_cpus=args.num_cpus,
        object_store_memory=args.object_store_mb * MiB if args.object_store_mb else None,
    )
    ctx_applied = apply_data_context(args.ctx, args.limit_object_store_mb)
    ray_ready = time.perf_counter()
    config = _config(args)
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    result = run_preprocess(config, run_id=run_id)
    done = time.perf_counter()
    cluster = ray.cluster_resources()
    ray.shutdown()
    # A benchmark run is nobody's "latest" run (matters only when RAYLOOP_HOME is the real home).
    if previous_latest is None:
        latest.unlink(missing_ok=True)
    else:
        latest.write_text(previous_latest)

    run_dir = Path(result.run_dir)
    fitted = json.loads((run_dir / PreprocessRun.FITTED_FEATURES).read_text())
    features_dir = run_dir / PreprocessRun.FEATURES
    summary = summarize_outputs(pq, features_dir, run_dir / PreprocessRun.REJECTS)
    return {
        "arm": "rayloop",
        "rows_total": result.rows_total,
        "rows_rejected": result.rows_rejected,
        "rows_good": result.rows_good,
        "rows_per_split": result.rows_per_split,
        "feature_names": result.feature_names,
        "stage_seconds": result.seconds,
        "import_s": round(imported - started, 3),
        "init_s": round(ray_ready - imported, 3),
        "work_s": round(done - ray_ready, 3),
        "fitted": _fitted_summary(fitted),
        "outputs": summary,
        "run_dir": str(run_dir),
        "settings": {
            "num_cpus": args.num_cpus,
            "object_store_mb": args.object_store_mb,
            "data_context": ctx_applied,
            "overrides": args.overrides,
            "cluster_object_store_bytes": cluster.get("object_store_memory"),
            "cluster_cpus": cluster.get("CPU"),
        },
    }


def _fitted_summary(fitted: dict[str, Any]) -> dict[str, Any]:
    return {
        "numeric": {f["name"]: [f["mean"], f["std"], f["missing_indicator"]] for f in fitted["numeric"]},
        "categorical": {f["name"]: f["vocabulary"] for f in fitted["categorical"]},
    }


def summarize_outputs(pq: Any, features_dir: Path, rejects_dir: Path) -> dict[str, Any]:
    """What is on disk: rows per split, rejects, the feature files' columns and sizes."""
    per_split: dict[str, int] = {}
    files = sorted(features_dir.rglob("*.parquet"))
    for f in files:
        split = next((p.split("=", 1)[1] for p in f.relative_to(features_dir).parts if p.startswith("split=")), "?")
        per_split[split] = per_split.get(split, 0) + pq.read_metadata(f).num_rows
    reject_files = sorted(rejects_dir.rglob("*.parquet"))
    rejects = sum(pq.read_metadata(f).num_rows for f in reject_files)
    reject_reason = None
    for f in reject_files:
        table = pq.read_table(f)
        if table.num_rows:
            reject_reason = table.column("reason")[0].as_py()
            break
    columns = pq.read_schema(files[0]).names if files else []
    return {
        "feature_files": len(files),
        "feature_bytes": sum(f.stat().st_size for f in files),
        "feature_file_columns": columns,
        "rows_per_split": per_split,
        "reject_files": len(reject_files),
        "rejects": rejects,
        "reject_example": reject_reason,
    }


# ---- arm: pandas --------------------------------------------------------------------------
def arm_pandas(args: argparse.Namespace) -> dict[str, Any]:
    """The same work in plain pandas, one process, vectorized, what a competent engineer writes.

    The declared rules come from the same config (plain data); validation, splitting, fitting and
    the transform are pandas/numpy, not rayloop's schema or feature modules.
    """
    started = time.perf_counter()
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    from rayloop.latency import Laps

    imported = time.perf_counter()
    config = _config(args)
    data, feats = config.data, config.features
    columns = data.schema_.columns
    out = Path(args.out)
    features_dir, rejects_dir = out / "features", out / "rejects"
    lap = Laps()

    # read
    df = pd.read_parquet(args.source)
    rows_total = len(df)
    lap("read")

    # validate: type, not-null, finite, min/max, allowed categories (vectorized)
    problems: list[tuple[str, str, np.ndarray, str]] = []

    def add(name: str, rule: str, mask: Any, detail: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            problems.append((name, rule, mask, detail))

    for col in columns:
        s = df[col.name]
        notna = s.notna().to_numpy()
        type_bad = None
        if col.dtype in ("int64", "float64"):
            if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
                type_bad = notna
            elif col.dtype == "int64" and pd.api.types.is_float_dtype(s):
                v = s.to_numpy(dtype=np.float64, na_value=np.nan)
                with np.errstate(invalid="ignore"):
                    type_bad = notna & ~(np.isfinite(v) & (np.floor(v) == v))
        elif col.dtype == "string":
            if not pd.api.types.is_string_dtype(s):
                type_bad = notna
        elif col.dtype == "timestamp":
            if not pd.api.types.is_datetime64_any_dtype(s):
                type_bad = notna
        elif col.dtype == "bool" and not pd.api.types.is_bool_dtype(s):
            type_bad = notna
        if type_bad is not None:
            add(col.name, "type", type_bad, f"expected {col.dtype}")
        if not col.nullable:
            add(col.name, "null", ~notna if type_bad is None else ~notna & ~type_bad, "column is not nullable")
        if col.dtype in ("int64", "float64") and type_bad is None:
            v = s.to_numpy()
            if col.dtype == "float64" and not col.allow_infinite and pd.api.types.is_float_dtype(s):
                add(col.name, "not_finite", np.isinf(v), "infinite values are not allowed")
            with np.errstate(invalid="ignore"):
                if col.min is not None:
                    add(col.name, "range", v < col.min, f"below min {col.min:g}")
                if col.max is not None:
                    add(col.name, "range", v > col.max, f"above max {col.max:g}")
        if col.categories is not None:
            add(col.name, "category", notna & ~s.isin(col.categories).to_numpy(), "not an allowed category")

    bad = np.zeros(rows_total, dtype=bool)
    for _, _, mask, _ in problems:
        bad |= mask
    rows_rejected = int(bad.sum())
    rejects_dir.mkdir(parents=True, exist_ok=True)
    if rows_rejected:
        sub = df.loc[bad, [c.name for c in columns]]
        text = {c.name: pd.Series([None if pd.isna(v) else str(v) for v in sub[c.name]], dtype=object) for c in columns}
        pieces = []
        for name, rule, mask, detail in problems:
            shown = text[name].fillna("null")
            piece = f"column={name} rule={rule} value=" + shown + f" ({detail})"
            pieces.append(np.where(mask[bad], piece.to_numpy(dtype=object), None))
        reason = ["; ".join(p for p in parts if p is not None) for parts in zip(*pieces)]
        pd.DataFrame({**text, "reason": reason}).to_parquet(rejects_dir / "part-0.parquet", index=False)
        del sub, text, pieces
    if rows_total and rows_rejected / rows_total > data.max_reject_ratio:
        raise SystemExit(f"reject ratio {rows_rejected / rows_total:.4f} > {data.max_reject_ratio}")
    df = df.loc[~bad]
    del bad
    problems.clear()  # frees the masks (clear, not del: the closure add() refers to the name)
    for col in columns:  # good rows carry the declared types
        if col.dtype == "int64" and df[col.name].dtype != np.int64:
            df[col.name] = df[col.name].astype(np.int64)
    lap("validate")

    # split by time at the 70% / 85% timestamp quantiles
    ts = df[data.timestamp_column]
    micros = ts.dt.as_unit("us").array.asi8
    fractions = [data.split.train, data.split.train + data.split.validation]
    cutoffs = np.quantile(micros, fractions, method="inverted_cdf").astype(np.int64)
    split_code = np.searchsorted(cutoffs, micros, side="left").astype(np.int8)
    del micros
    train = split_code == 0
    lap("split")

    # fit on train: moments, missing indicators, top-K vocabularies; the reference profile too
    skip = {data.label_column, data.id_column, data.timestamp_column, *feats.exclude}
    by_type = {c.name: c.dtype for c in columns}
    numeric = (
        [n for n, t in by_type.items() if t in ("int64", "float64", "bool") and n not in skip]
        if feats.numeric == "auto"
        else list(feats.numeric)
    )
    categorical = (
        [n for n, t in by_type.items() if t == "string" and n not in skip]
        if feats.categorical == "auto"
        else list(feats.categorical)
    )
    profile_q = [i / feats.profile_bins for i in range(1, feats.profile_bins)]
    fitted_numeric: dict[str, list[Any]] = {}
    profile: dict[str, Any] = {"numeric": {}, "categorical": {}}
    for name in numeric:
        x = df[name].to_numpy(dtype=np.float64, na_value=np.nan)[train]
        finite = x[np.isfinite(x)]
        mean, std = float(finite.mean()), float(finite.std())
        fitted_numeric[name] = [mean, std, bool(feats.missing_indicators and finite.size < x.size)]
        edges = np.quantile(finite, profile_q)
        counts = np.bincount(np.searchsorted(edges, finite, side="left"), minlength=len(edges) + 1)
        profile["numeric"][name] = {
            "edges": edges.tolist(),
            "counts": counts.tolist(),
            "missing": int(x.size - finite.size),
        }
    vocab: dict[str, list[str]] = {}
    for name in categorical:
        counts = df.loc[train, name].value_counts(dropna=True)
        kept = sorted(
            ((str(v), int(c)) for v, c in counts.items() if c >= feats.min_frequency), key=lambda kv: (-kv[1], kv[0])
        )
        vocab[name] = [v for v, _ in kept[: feats.top_k]]
        profile["categorical"][name] = dict(kept[: feats.top_k])
    profile["label_rate"] = float(df.loc[train, data.label_column].mean())
    lap("fit")

    # transform every row; write the feature table partitioned by split
    out_cols: dict[str, Any] = {}
    for name in numeric:
        mean, std, indicator = fitted_numeric[name]
        x = df[name].to_numpy(dtype=np.float64, na_value=np.nan)
        absent = ~np.isfinite(x)
        value = ((x - mean) / (std if std > 0 else 1.0)).astype(np.float32)
        value[absent] = 0.0
        out_cols[name] = value
        if indicator:
            out_cols[f"{name}__missing"] = absent.astype(np.float32)
    for name in categorical:
        s = df[name]
        codes = pd.Index(vocab[name]).get_indexer(s)
        value = np.where(codes >= 0, codes + 2, 1).astype(np.float32)
        value[s.isna().to_numpy()] = 0.0
        out_cols[name] = value
    periods = {"hour": 24.0, "day_of_week": 7.0, "day_of_month": 31.0, "month": 12.0}
    accessor = {"hour": "hour", "day_of_week": "day_of_week", "day_of_month": "day", "month": "month"}
    for part in feats.time_features:
        angle = 2.0 * np.pi * getattr(ts.dt, accessor[part]).to_numpy(dtype=np.float64) / periods[part]
        out_cols[f"{data.timestamp_column}__{part}_sin"] = np.sin(angle).astype(np.float32)
        out_cols[f"{data.timestamp_column}__{part}_cos"] = np.cos(angle).astype(np.float32)
    feature_names = list(out_cols)
    for name in (data.label_column, data.id_column):  # copies, so `del df` frees the frame
        out_cols[name] = df[name].to_numpy(copy=True)
    out_cols[data.timestamp_column] = df[data.timestamp_column].array.copy()
    out_cols["split"] = pd.Categorical.from_codes(split_code, categories=["train", "validation", "test"])
    del df, ts, train, split_code
    table = pd.DataFrame(out_cols)
    del out_cols
    table.to_parquet(features_dir, partition_cols=["split"], index=False)
    lap("transform")
    done = time.perf_counter()

    summary = summarize_outputs(pq, features_dir, rejects_dir)
    return {
        "arm": "pandas",
        "rows_total": rows_total,
        "rows_rejected": rows_rejected,
        "rows_good": rows_total - rows_rejected,
        "rows_per_split": summary["rows_per_split"],
        "feature_names": feature_names,
        "stage_seconds": lap.seconds,
        "import_s": round(imported - started, 3),
        "init_s": 0.0,
        "work_s": round(done - imported, 3),
        "fitted": {"numeric": fitted_numeric, "categorical": vocab},
        "outputs": summary,
        "settings": {},
    }


def run_arm(args: argparse.Namespace) -> int:
    if args.arm == "rayloop":
        payload = arm_rayloop(args)
    else:
        payload = arm_pandas(args)
    Path(args.result_file).write_text(json.dumps(payload))
    return 0


# ---- driver -------------------------------------------------------------------------------
def bench_out_dir() -> Path:
    return home() / "bench-out"


def child_home(bench_out: Path) -> Path:
    """Run the rayloop arm with RAYLOOP_HOME=bench-out, so its run, Ray temp dir and LATEST marker
    stay there; fall back to the real home (run id restored, run deleted) when that path is too
    long for Ray's socket paths."""
    if len(str(bench_out / "ray")) <= RAY_TEMP_LIMIT:
        return bench_out
    return home()


def run_one(args: argparse.Namespace, arm: str, rows: int, source: Path) -> dict[str, Any]:
    bench_out = bench_out_dir()
    if bench_out.exists():
        shutil.rmtree(bench_out)
    bench_out.mkdir(parents=True)
    result_file = bench_out / f"{arm}.result.json"
    log_file = bench_out / f"{arm}.log"
    out = bench_out / arm if arm == "pandas" else child_home(bench_out)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--arm",
        arm,
        "--source",
        str(source),
        "--out",
        str(out),
        "--result-file",
        str(result_file),
    ]
    for item in args.overrides:
        cmd += ["--set", item]
    if arm == "rayloop":
        if args.num_cpus:
            cmd += ["--num-cpus", str(args.num_cpus)]
        if args.object_store_mb:
            cmd += ["--object-store-mb", str(args.object_store_mb)]
        if args.limit_object_store_mb:
            cmd += ["--limit-object-store-mb", str(args.limit_object_store_mb)]
        for item in args.ctx:
            cmd += ["--ctx", item]
    env = dict(os.environ)
    env["RAYLOOP_PROGRESS"] = "0"
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if arm == "rayloop":
        env["RAYLOOP_HOME"] = str(out)
        for item in args.env:
            key, _, value = item.partition("=")
            env[key] = value
    print(f"[{rows:,} rows] {arm} ...", flush=True)
    with open(log_file, "w") as log:
        m = measure(cmd, env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=args.timeout)
    record: dict[str, Any] = {"rows": rows, "arm": arm, **m}
    if m["returncode"] == 0 and result_file.exists():
        record["result"] = json.loads(result_file.read_text())
    else:
        tail = log_file.read_text()[-4000:] if log_file.exists() else ""
        keep = home() / "bench-logs"
        keep.mkdir(parents=True, exist_ok=True)
        kept = keep / f"preprocess-{arm}-{rows}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        shutil.copy(log_file, kept)
        print(f"  FAILED (exit {m['returncode']}); log kept at {kept}; tail:\n{tail}", flush=True)
        record["error_log"] = str(kept)
    # Delete everything the arm wrote (outputs, Ray temp dir, run dir).
    run_dir = record.get("result", {}).get("run_dir")
    if run_dir and Path(run_dir).exists() and bench_out not in Path(run_dir).parents:
        shutil.rmtree(run_dir)
    shutil.rmtree(bench_out, ignore_errors=True)
    print(
        f"  wall {m['wall_s']:.1f} s, peak RSS {m['peak_rss_bytes'] / MiB:,.0f} MiB, "
        f"peak PSS {m['peak_pss_bytes'] / MiB:,.0f} MiB ({m['max_processes']} processes)",
        flush=True,
    )
    return record


def parity(ours: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Do both arms produce the same thing? Counts, features, fitted parameters."""
    num_a, num_b = ours["fitted"]["numeric"], base["fitted"]["numeric"]
    mean_diff = max(
        (abs(num_a[k][0] - num_b[k][0]) / max(abs(num_b[k][1]), 1e-12) for k in num_a if k in num_b), default=None
    )
    std_rel = max(
        (abs(num_a[k][1] - num_b[k][1]) / max(abs(num_b[k][1]), 1e-12) for k in num_a if k in num_b), default=None
    )
    split_a, split_b = ours["rows_per_split"], base["rows_per_split"]
    return {
        "rows_total_equal": ours["rows_total"] == base["rows_total"],
        "rows_rejected_equal": ours["rows_rejected"] == base["rows_rejected"],
        "rows_good_equal": ours["rows_good"] == base["rows_good"],
        "feature_names_equal": ours["feature_names"] == base["feature_names"],
        "missing_indicators_equal": all(num_a[k][2] == num_b[k][2] for k in num_a if k in num_b),
        # exact equality needs identical train rows; adjacent ranks swap when counts tie or differ by one
        "vocabularies_equal": ours["fitted"]["categorical"] == base["fitted"]["categorical"],
        "min_vocabulary_overlap": min(
            (
                len(set(v) & set(base["fitted"]["categorical"].get(k, []))) / max(len(v), 1)
                for k, v in ours["fitted"]["categorical"].items()
            ),
            default=None,
        ),
        "max_mean_diff_in_std_units": mean_diff,
        "max_std_rel_diff": std_rel,
        # time cut-offs: rayloop's come from a KLL sketch, pandas' are exact quantiles
        "max_split_count_rel_diff": max(
            (abs(split_a.get(s, 0) - split_b.get(s, 0)) / max(split_b.get(s, 0), 1) for s in split_b), default=None
        ),
    }


def summarize(records: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """Per (rows, arm): median wall, max peaks over repeats; ratios; growth from smallest to largest."""
    by: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in records:
        if r["returncode"] == 0:
            by.setdefault((r["rows"], r["arm"]), []).append(r)
    cells: dict[str, dict[str, Any]] = {}
    for (rows, arm), runs in sorted(by.items()):
        wall = statistics.median(r["wall_s"] for r in runs)
        work = statistics.median(r["result"]["work_s"] for r in runs)
        cells[f"{rows}:{arm}"] = {
            "rows": rows,
            "arm": arm,
            "runs": len(runs),
            "wall_s": round(wall, 3),
            "work_s": round(work, 3),
            "rows_per_s": round(rows / wall, 1),
            "peak_rss_mib": round(max(r["peak_rss_bytes"] for r in runs) / MiB, 1),
            "peak_pss_mib": round(max(r["peak_pss_bytes"] for r in runs) / MiB, 1),
        }
    ratios = []
    for rows in sizes:
        a, b = cells.get(f"{rows}:rayloop"), cells.get(f"{rows}:pandas")
        if a and b:
            ratios.append(
                {
                    "rows": rows,
                    "wall_ratio": round(a["wall_s"] / b["wall_s"], 3),
                    "work_ratio": round(a["work_s"] / b["work_s"], 3),
                    "peak_pss_ratio": round(a["peak_pss_mib"] / b["peak_pss_mib"], 3),
                    "peak_rss_ratio": round(a["peak_rss_mib"] / b["peak_rss_mib"], 3),
                }
            )
    growth = []
    if len(sizes) > 1:
        lo, hi = min(sizes), max(sizes)
        for arm in ARMS:
            a, b = cells.get(f"{lo}:{arm}"), cells.get(f"{hi}:{arm}")
            if a and b:
                growth.append(
                    {
                        "arm": arm,
                        "from_rows": lo,
                        "to_rows": hi,
                        "rows_factor": hi / lo,
                        "peak_pss_growth": round(b["peak_pss_mib"] / a["peak_pss_mib"], 3),
                        "peak_rss_growth": round(b["peak_rss_mib"] / a["peak_rss_mib"], 3),
                        "wall_growth": round(b["wall_s"] / a["wall_s"], 3),
                    }
                )
    target: dict[str, Any] = {
        "memory_ratio_limit": round(TARGET_MEMORY_RATIO, 4),
        "flat_growth_limit": FLAT_GROWTH_LIMIT,
    }
    largest = max(sizes)
    ratio = next((r for r in ratios if r["rows"] == largest), None)
    if ratio:
        target["rows"] = largest
        target["memory_ratio_met"] = ratio["peak_pss_ratio"] <= TARGET_MEMORY_RATIO
    ours = next((g for g in growth if g["arm"] == "rayloop"), None)
    if ours:
        target["flat_met"] = ours["peak_pss_growth"] <= FLAT_GROWTH_LIMIT
    return {"cells": list(cells.values()), "ratios": ratios, "growth": growth, "target": target}


def report(summary: dict[str, Any], records: list[dict[str, Any]]) -> None:
    print()
    print_table(
        "preprocess: rayloop (Ray Data) vs pandas (one process)",
        ["rows", "arm", "wall s", "work s", "rows/s", "peak RSS MiB", "peak PSS MiB"],
        [
            [
                fmt(c["rows"]),
                c["arm"],
                c["wall_s"],
                c["work_s"],
                fmt(c["rows_per_s"], 0),
                c["peak_rss_mib"],
                c["peak_pss_mib"],
            ]
            for c in summary["cells"]
        ],
    )
    if summary["ratios"]:
        print_table(
            "ratios rayloop / pandas (time <1: rayloop faster; memory <1: rayloop smaller)",
            ["rows", "wall", "work (no startup)", "peak PSS", "peak RSS"],
            [
                [
                    fmt(r["rows"]),
                    f"{r['wall_ratio']:.2f}x",
                    f"{r['work_ratio']:.2f}x",
                    f"{r['peak_pss_ratio']:.2f}x",
                    f"{r['peak_rss_ratio']:.2f}x",
                ]
                for r in summary["ratios"]
            ],
        )
    if summary["growth"]:
        print_table(
            "growth of peak memory as rows grow",
            ["arm", "rows", "peak PSS growth", "peak RSS growth", "wall growth"],
            [
                [
                    g["arm"],
                    f"{g['from_rows']:,} -> {g['to_rows']:,}",
                    f"{g['peak_pss_growth']:.2f}x",
                    f"{g['peak_rss_growth']:.2f}x",
                    f"{g['wall_growth']:.2f}x",
                ]
                for g in summary["growth"]
            ],
        )
    stage_rows = []
    for r in records:
        if r.get("result"):
            res = r["result"]
            stages = ", ".join(f"{k} {v:.1f}" for k, v in res["stage_seconds"].items())
            top = ", ".join(f"{k} {v / MiB:,.0f}" for k, v in list(r["peak_pss_breakdown"].items())[:4])
            stage_rows.append([fmt(r["rows"]), r["arm"], res["init_s"], stages, top])
    print_table(
        "where time and memory go (seconds; MiB of PSS at the peak)",
        ["rows", "arm", "init s", "stages s", "largest processes at peak PSS"],
        stage_rows,
    )
    t = summary["target"]
    if "memory_ratio_met" in t or "flat_met" in t:
        print(
            f"target: rayloop peak PSS <= {t['memory_ratio_limit']:.2f} x pandas at {fmt(t.get('rows'))} rows: "
            f"{'MET' if t.get('memory_ratio_met') else 'NOT MET'}; flat (growth <= {FLAT_GROWTH_LIMIT}x): "
            f"{'MET' if t.get('flat_met') else ('NOT MET' if 'flat_met' in t else 'n/a (one size)')}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument(
        "--name",
        default=None,
        help="results file name (default: preprocess; preprocess-tuned when rayloop settings are changed)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per arm run")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for both arms, e.g. data.read_blocks=40",
    )
    tune = parser.add_argument_group("rayloop arm experiments (documented Ray settings)")
    tune.add_argument("--num-cpus", type=int, default=None, help="ray.init(num_cpus=...)")
    tune.add_argument("--object-store-mb", type=int, default=None, help="ray.init(object_store_memory=...)")
    tune.add_argument(
        "--limit-object-store-mb",
        type=int,
        default=None,
        help="DataContext.execution_options.resource_limits object_store_memory",
    )
    tune.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable for the rayloop arm (Ray workers inherit it), e.g. ARROW_DEFAULT_MEMORY_POOL=system",
    )
    tune.add_argument(
        "--ctx",
        action="append",
        default=[],
        metavar="ATTR=VALUE",
        help="DataContext attribute (dotted for nested), e.g. target_max_block_size=33554432",
    )
    # internal: one arm, run as a subprocess by the driver
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.arm:
        return run_arm(args)

    tuned = any([args.num_cpus, args.object_store_mb, args.limit_object_store_mb, args.ctx, args.env, args.overrides])
    name = args.name or ("preprocess-tuned" if tuned else "preprocess")
    sizes = sorted(set(args.rows))
    code = run_identity()  # before the runs: the code the arms import (rayloop/ and configs/)
    records: list[dict[str, Any]] = []
    sources: dict[int, dict[str, Any]] = {}
    for rows in sizes:
        source = ensure_data(rows)
        sources[rows] = {"path": str(source), "files": len(list(source.glob("*.parquet"))), "bytes": data_bytes(source)}
        for rep in range(args.repeat):
            order = list(args.arms) if rep % 2 == 0 else list(reversed(args.arms))
            for arm in order:
                record = run_one(args, arm, rows, source)
                record["repeat"] = rep
                records.append(record)

    warn_if_changed(code)  # someone edited rayloop/ while this ran
    summary = summarize(records, sizes)
    checks = []
    for rows in sizes:
        for rep in range(args.repeat):
            pair = {r["arm"]: r.get("result") for r in records if r["rows"] == rows and r["repeat"] == rep}
            if pair.get("rayloop") and pair.get("pandas"):
                checks.append({"rows": rows, "repeat": rep, **parity(pair["rayloop"], pair["pandas"])})
    report(summary, records)
    for c in checks:
        print(
            f"parity at {c['rows']:,} rows: "
            + ", ".join(
                f"{k}={v if not isinstance(v, float) else f'{v:.2g}'}"
                for k, v in c.items()
                if k not in ("rows", "repeat")
            )
        )
    for r in records:  # keep the JSON readable: drop bulky per-arm details
        res = r.get("result")
        if res:
            res["fitted"] = {
                "numeric": res["fitted"]["numeric"],
                "vocabulary_sizes": {k: len(v) for k, v in res["fitted"]["categorical"].items()},
            }
    payload = {
        "benchmark": "preprocess",
        "description": "rayloop run_preprocess (Ray Data, local Ray started in the measured process tree) vs "
        "plain pandas in one process, same data and same work; memory = summed over the whole "
        "process tree, sampled every 0.1 s",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(["ray", "pandas", "pyarrow", "numpy", "psutil"]),
        "code": code,
        "data": {
            "seed": SEED,
            "rows_per_file": ROWS_PER_FILE,
            "bad_row_fraction": BAD_ROW_FRACTION,
            "sources": sources,
        },
        "settings": {
            "arms": args.arms,
            "repeat": args.repeat,
            "overrides": args.overrides,
            "num_cpus": args.num_cpus,
            "object_store_mb": args.object_store_mb,
            "limit_object_store_mb": args.limit_object_store_mb,
            "ctx": args.ctx,
            "env": args.env,
        },
        "summary": summary,
        "parity": checks,
        "runs": records,
    }
    path = save_results(name, payload)
    print(f"saved {path}")
    return 0 if all(r["returncode"] == 0 for r in records) else 1


def _config(args: argparse.Namespace):
    """The generated files read with the generator's declared schema (ranges and categories, so
    the planted bad rows are rejected as a declared schema rejects them); a file is otherwise inferred."""
    from rayloop.config import load_config
    from rayloop.data.synthetic import declared_schema

    config = load_config(
        None, [f"data.source={args.source}", f"data.max_reject_ratio={MAX_REJECT_RATIO}", *args.overrides]
    )
    return config.model_copy(update={"data": config.data.model_copy(update={"schema_": declared_schema()})})


if __name__ == "__main__":
    sys.exit(main())
