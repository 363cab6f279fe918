"""The training half of the loop in one call: preprocess -> tune or train -> register -> gate.

`workloads.pipeline` and `rayloop run` call `run_pipeline`; the retrain job trains and gates the
same way on its own window (`rayloop.control.retrain_job`).
A refused gate is an outcome, not a failure: the champion keeps serving and the reason is
recorded on the version, in the audit log and in the returned result.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from rayloop import audit, paths, registry
from rayloop.config import RayloopConfig
from rayloop.control.train import train_or_tune
from rayloop.preprocess import PreprocessRun, run_preprocess

__all__ = ["PipelineResult", "run_pipeline", "train_and_gate"]

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    preprocess_run_id: str
    model_name: str
    version: str
    promoted: bool
    champion: str | None
    gate: dict[str, Any]
    test_metrics: dict[str, float]
    training: dict[str, Any]
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_and_gate(config: RayloopConfig, run: PreprocessRun) -> PipelineResult:
    """Tune or train on a finished preprocess run, register the challenger, run the gate on the
    run's raw test rows."""
    started = time.perf_counter()
    outcome = train_or_tune(config, run)
    trained = time.perf_counter()
    decision = registry.promote(
        outcome.model_name,
        outcome.version,
        run.holdout(),
        metric=config.registry.gate_metric,
        tolerance=config.registry.tolerance,
        judge=outcome.evaluation_bundle,  # the fit that never saw the holdout; the refit is served
    )
    result = PipelineResult(
        preprocess_run_id=outcome.preprocess_run_id,
        model_name=outcome.model_name,
        version=outcome.version,
        promoted=decision.promote,
        champion=registry.resolve_version(outcome.model_name, registry.CHAMPION),
        gate=decision.to_dict(),
        test_metrics=outcome.test_metrics,
        training=outcome.to_dict(),
        seconds={"train": round(trained - started, 2), "gate": round(time.perf_counter() - trained, 2)},
    )
    report = paths.ensure(paths.reports_dir()) / f"pipeline-{result.model_name}-v{result.version}.json"
    report.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return result


def run_pipeline(config: RayloopConfig, progress: Callable[[str], None] | None = None) -> PipelineResult:
    """Preprocess, then `train_and_gate` on the new run."""
    say = progress or log.info
    audit.record("pipeline_started", model=config.registry.model_name, source=config.data.source)
    started = time.perf_counter()
    say("preprocessing")
    pre = run_preprocess(config, progress=say)
    preprocessed = time.perf_counter()
    say("tuning and training" if config.tuning.enabled else "training")
    result = train_and_gate(config, PreprocessRun.open(pre.run_id))
    result.seconds = {"preprocess": round(preprocessed - started, 2), **result.seconds}
    audit.record(
        "pipeline_finished",
        model=result.model_name,
        version=result.version,
        promoted=result.promoted,
        champion=result.champion,
        seconds=result.seconds,
    )
    return result
