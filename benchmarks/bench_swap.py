#!/usr/bin/env python
"""The hot swap alone: p99 latency while the app rolls out another version vs steady state, same run.

bench_loop.py measures the swap inside the whole loop (the retrain job's driver exiting and the
monitor rebasing share the two cores with it); this isolates the rollout itself, as the monitor
does it (`rayloop.control.rollout.rollout`: a user_config update, each replica loads the new bundle
beside the old one, probes it and swaps), so changes to the swap path can be compared quickly.

Setup: a fresh local Ray (`init_ray`, 4 logical CPUs as the e2e and demo heads), two LightGBM
bundles trained in-process on synthetic rows and registered; the app deployed with the default
config (autoscaling 1-2 replicas, batching, the DriftMonitor on; retraining off so the monitor
never acts); constant open-loop traffic of one-row requests (`rayloop.traffic`) at --rate. After
--warmup-s of steady traffic it rolls out v2, v1, v2, ... every --gap-s seconds.

Baseline: steady state of the same run (p99 over the warm-up, first 3 s skipped). Swap window:
from the rollout call until 5 s after it returned (as bench_loop.py). Target (issue 6): p99 during
the swap at most 2x steady, no failed request.

    .venv/bin/python benchmarks/bench_swap.py                     # about 2 minutes
    .venv/bin/python benchmarks/bench_swap.py --swaps 6 --name swap-6

Results: benchmarks/results/<name>.json (default `swap`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MODEL = "bench-swap"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=120.0, help="requests per second (bench_loop uses 120)")
    parser.add_argument("--swaps", type=int, default=4)
    parser.add_argument("--gap-s", type=float, default=15.0, help="seconds between rollouts")
    parser.add_argument("--warmup-s", type=float, default=20.0)
    parser.add_argument("--rows", type=int, default=20_000, help="training rows per bundle")
    parser.add_argument(
        "--rounds", type=int, default=200, help="boosting rounds per bundle (bigger model: slower load)"
    )
    parser.add_argument(
        "--via",
        choices=("alias", "config"),
        default="alias",
        help="alias: move the registry's champion alias (replicas follow it, as a promotion does); "
        "config: a Serve user_config rollout to the version (a pinned rollout)",
    )
    parser.add_argument("--name", default="swap")
    args = parser.parse_args()

    os.environ.setdefault("RAYLOOP_HOME", str(ROOT / ".rayloop" / "bench-swap"))
    home = Path(os.environ["RAYLOOP_HOME"])
    shutil.rmtree(home, ignore_errors=True)
    os.environ.setdefault("RAYLOOP_PROGRESS", "0")

    import mlflow
    from bench_serve import train_bundle
    from loadgen import latency_summary, ratio
    from ray import serve

    from rayloop import registry
    from rayloop.config import ConfigSource
    from rayloop.control.rollout import rollout
    from rayloop.control.up import up
    from rayloop.data.synthetic import generate
    from rayloop.runtime import free_port, init_ray
    from rayloop.traffic import TrafficConfig, TrafficStats, run_traffic

    init_ray(num_cpus=4)
    registry.client()
    holdout = generate(2000, seed=99)
    versions = []
    for seed in (1, 2):
        bundle = train_bundle(args.rows, args.rounds, 63, seed)
        with mlflow.start_run(experiment_id=registry.experiment_id("bench-swap")):
            versions.append(registry.log_bundle(bundle, model_name=MODEL))
    registry.promote(MODEL, versions[0], holdout, tolerance=1.0)
    port = free_port()
    source = ConfigSource(overrides=(f"registry.model_name={MODEL}", f"serving.port={port}", "retrain.enabled=false"))
    url = up(source)
    print(f"app at {url}, versions {versions}; {args.rate} req/s, {args.swaps} swaps every {args.gap_s} s", flush=True)

    # the rollout runs in its own warm process, as the DriftMonitor's does: done in this process it
    # would compete with the traffic threads for this interpreter's GIL and inflate the latencies
    import ray

    @ray.remote(num_cpus=0)
    class Roller:
        def rollout(self, version: str) -> str:
            return rollout(source, version)

    roller = Roller.remote()
    ray.get(roller.__ray_ready__.remote())

    duration = args.warmup_s + args.swaps * args.gap_s + 5
    traffic = TrafficConfig(url=url, rate=args.rate, duration_s=duration, label_fraction=0.0, drift_at_s=None)
    stats = TrafficStats()
    sender = threading.Thread(target=run_traffic, args=(traffic,), kwargs={"stats": stats}, daemon=True)
    sender.start()
    swaps = []
    time.sleep(args.warmup_s)
    for i in range(args.swaps):
        target = versions[(i + 1) % 2]
        began = time.time() - stats.started
        if args.via == "config":
            ray.get(roller.rollout.remote(target))
        else:
            registry.client().set_registered_model_alias(MODEL, "champion", target)
        returned = time.time() - stats.started
        swaps.append({"to": target, "began_s": round(began, 2), "returned_s": round(returned, 2)})
        time.sleep(max(0.0, args.gap_s - (returned - began)))
    sender.join()

    answers = list(stats.answers)  # [t, latency_ms, version, correct, rows, drift]
    steady = [a[1] for a in answers if 3.0 <= a[0] < args.warmup_s]
    during_all: list[float] = []
    for swap in swaps:
        window = [a for a in answers if swap["began_s"] <= a[0] <= swap["returned_s"] + 5.0]
        new = [a[0] for a in window if a[2] == swap["to"]]
        swap["first_new_answer_s"] = round(min(new) - swap["began_s"], 2) if new else None
        swap["p99_ms"] = latency_summary([a[1] for a in window], digits=2)["p99_ms"]
        swap["max_ms"] = round(max((a[1] for a in window), default=0.0), 1)
        swap["answers"] = len(window)
        # when the slow answers came, relative to the rollout call: where the time goes
        swap["slowest"] = [
            [round(a[0] - swap["began_s"], 3), round(a[1], 1), a[2]] for a in sorted(window, key=lambda a: -a[1])[:8]
        ]
        during_all += [a[1] for a in window]
    failed = sum(n for status, n in stats.statuses.items() if status != 200)
    steady_ms = latency_summary(steady, digits=2)
    result = {
        "rate": args.rate,
        "via": args.via,
        "swaps": swaps,
        "rows": args.rows,
        "rounds": args.rounds,
        "p50_steady_ms": steady_ms["p50_ms"],
        "p99_steady_ms": steady_ms["p99_ms"],
        "p99_swap_ms": latency_summary(during_all, digits=2)["p99_ms"],
        "failed_requests": failed,
        "statuses": {str(k): v for k, v in stats.statuses.items()},
    }
    result["p99_swap_ratio"] = ratio(result["p99_swap_ms"], result["p99_steady_ms"], digits=2)
    result["targets"] = {
        "p99_swap_at_most_2x": result["p99_swap_ratio"] is not None and result["p99_swap_ratio"] <= 2.0,
        "no_failed_requests": failed == 0,
    }
    serve.shutdown()

    print(f"{'':>10} {'p99 ms':>8}")
    print(f"{'steady':>10} {result['p99_steady_ms']:>8}   (baseline: the same run before any swap)")
    for swap in swaps:
        print(
            f"{'-> v' + swap['to']:>10} {swap['p99_ms']:>8}   max {swap['max_ms']} ms, "
            f"rollout {swap['returned_s'] - swap['began_s']:.1f} s, "
            f"first new answer after {swap['first_new_answer_s']} s"
        )
    print(
        f"swap p99 {result['p99_swap_ms']} ms = {result['p99_swap_ratio']}x steady (target <= 2x); "
        f"failed requests {failed}"
    )
    out = ROOT / "benchmarks" / "results" / f"{args.name}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
