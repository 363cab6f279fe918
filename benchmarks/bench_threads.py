#!/usr/bin/env python
"""LightGBM threads in local mode: as many as the idle cores (rayloop) vs as many as the cores
(the baseline: LightGBM's own default, and what "free logical CPUs" gave on a serving node).

The rule behind `rayloop.training.placement`'s local threads. Plain `lightgbm.train` on synthetic
float32 data (20 features, 100 rounds, 31 leaves, binary, validation on a fifth of the rows, the
demo config's learning rate), at several row counts, on an idle machine and with `--busy` cores
kept busy by spinning processes (standing in for Serve replicas answering traffic). Each cell is
the best of `--repeat` runs. Ours uses max(1, idle cores) threads: all cores when idle, fewer when
some are busy.

    .venv/bin/python benchmarks/bench_threads.py                 # about 2 min on 2 cores
    .venv/bin/python benchmarks/bench_threads.py --rows 10000 100000 --busy 0 1

Results: benchmarks/results/threads.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from common import loadavg, machine_info, print_table, run_identity, save_results  # noqa: E402


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def _fit_seconds(rows: int, threads: int, seed: int) -> float:
    import lightgbm as lgb
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 20)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=rows) > 0).astype(np.float64)
    train = lgb.Dataset(x, y, free_raw_data=False)
    valid = lgb.Dataset(x[: rows // 5], y[: rows // 5], reference=train)
    params = {
        "objective": "binary",
        "metric": ["binary_logloss", "auc"],
        "verbosity": -1,
        "num_threads": threads,
        "learning_rate": 0.05,
        "num_leaves": 31,
    }
    start = time.perf_counter()
    lgb.train(params, train, num_boost_round=100, valid_sets=[valid])
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 700_000])
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1], help="cores kept busy, per scenario")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--name", default="threads")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    code = run_identity(extra_files=(), dirty_paths=("benchmarks/bench_threads.py",))
    results: list[dict[str, Any]] = []
    for busy in args.busy:
        stop = mp.Event()
        spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            ours_threads, baseline_threads = max(1, cores - busy), cores
            for rows in args.rows:
                times = {
                    t: min(_fit_seconds(rows, t, seed) for seed in range(args.repeat))
                    for t in sorted({ours_threads, baseline_threads})
                }
                results.append(
                    {
                        "busy_cores": busy,
                        "rows": rows,
                        "ours_threads": ours_threads,
                        "baseline_threads": baseline_threads,
                        "ours_s": round(times[ours_threads], 3),
                        "baseline_s": round(times[baseline_threads], 3),
                        "ratio": round(times[ours_threads] / times[baseline_threads], 3),
                        "loadavg": loadavg(),
                    }
                )
                print(results[-1], flush=True)
        finally:
            stop.set()
            for p in spinners:
                p.join()
    print_table(
        f"LightGBM, 100 rounds: threads = idle cores (ours) vs = all {cores} cores (baseline)",
        ["busy cores", "rows", "ours threads", "ours s", "baseline threads", "baseline s", "ours / baseline"],
        [
            [r["busy_cores"], f"{r['rows']:,}", r["ours_threads"], r["ours_s"], r["baseline_threads"], r["baseline_s"]]
            + [f"{r['ratio']:.2f}x"]
            for r in results
        ],
    )
    path = save_results(
        args.name,
        {
            "benchmark": "threads",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine_info(["lightgbm", "numpy"]),
            "code": code,
            "cores": cores,
            "results": results,
        },
    )
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
