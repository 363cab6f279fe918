"""The model registry on MLflow: bundles in, aliases `champion`/`challenger`, a quality gate, rollback.

- `log_bundle` logs a ModelBundle as one pyfunc model, registers it and points `challenger` at it.
- `promote` scores challenger and champion on the same labelled holdout and moves `champion` only
  when the challenger is at least as good within the tolerance (`gate`, pure); the decision is
  tagged on the version and written to the audit log either way.
- `rollback` points `champion` back at the previous champion (the registered model keeps the
  history in a tag).

The default store is sqlite under RAYLOOP_HOME with artifacts beside it; MLFLOW_TRACKING_URI
points everything at a real MLflow server instead.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from rayloop import audit, paths
from rayloop.bundle import ModelBundle
from rayloop.errors import RegistryError
from rayloop.tasks import higher_is_better
from rayloop.training.evaluate import metric_function, paired_difference_interval

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "CHAMPION",
    "CHALLENGER",
    "HISTORY_TAG",
    "GateDecision",
    "gate",
    "client",
    "experiment_id",
    "log_bundle",
    "load_bundle",
    "model_uri",
    "resolve_version",
    "promote",
    "retrain_result",
    "rollback",
]

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "rayloop.champion_history"


# ---- the gate (pure) -------------------------------------------------------------------------
@dataclass(frozen=True)
class GateDecision:
    promote: bool
    metric: str
    challenger: float
    champion: float | None
    tolerance: float
    reason: str
    # 95% paired-bootstrap interval of challenger - champion on the holdout: how much of the
    # margin is noise (informs a person; the decision is the tolerance rule alone)
    difference_interval: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate(metric: str, challenger: float, champion: float | None, tolerance: float) -> GateDecision:
    """Promote when the challenger is at least the champion's score minus the tolerance
    (plus, for a loss); the first model of a name passes when its score is a number."""
    if challenger is None or math.isnan(challenger):
        return GateDecision(False, metric, challenger, champion, tolerance, f"challenger {metric} is not a number")
    if champion is None or math.isnan(champion):
        return GateDecision(True, metric, challenger, champion, tolerance, "no champion to beat")
    if not higher_is_better(metric):
        bound, ok, word = champion + tolerance, challenger <= champion + tolerance, "above"
    else:
        bound, ok, word = champion - tolerance, challenger >= champion - tolerance, "below"
    if ok:
        reason = f"challenger {metric} {challenger:.4f} vs champion {champion:.4f} (tolerance {tolerance})"
    else:
        reason = (
            f"challenger {metric} {challenger:.4f} is {word} the champion's {champion:.4f} "
            f"by more than the tolerance {tolerance} (bound {bound:.4f})"
        )
    return GateDecision(ok, metric, challenger, champion, tolerance, reason)


# ---- MLflow wiring ---------------------------------------------------------------------------
def client() -> MlflowClient:
    """An MlflowClient on our store; also points the fluent API (mlflow.log_*) at it."""
    import mlflow

    uri = paths.mlflow_tracking_uri()
    if uri.startswith("sqlite:///"):
        paths.ensure(paths.home())
    user_set = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # mlflow.set_*_uri also export the URI to the environment, where it would pass for a user's
    # MLFLOW_TRACKING_URI and pin child processes with another RAYLOOP_HOME to this store
    for key, value in user_set.items():
        if value is None:
            os.environ.pop(key, None)
    return client_for(uri)


def client_for(uri: str) -> MlflowClient:
    """An MlflowClient whose runs and registry are both at `uri` (e.g. a cluster's MLflow server),
    leaving the process's global URIs alone. Both are named: an unset registry URI follows
    whatever `mlflow.set_registry_uri` last set in this process, not `uri`."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(name: str) -> str:
    """The experiment's id, created on first use with artifacts under RAYLOOP_HOME (local store)."""
    mlflow_client = client()
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if paths.mlflow_tracking_uri().startswith("sqlite:"):
        location = paths.ensure(paths.mlflow_artifacts()).as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # created by a concurrent process in between
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def model_uri(name: str, ref: str = CHAMPION) -> str:
    """`models:/<name>@<alias>` for an alias, `models:/<name>/<version>` for a version number."""
    return f"models:/{name}/{ref}" if str(ref).isdigit() else f"models:/{name}@{ref}"


def resolve_version(name: str, ref: str) -> str | None:
    """The version number behind an alias or number; None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client()
    try:
        if str(ref).isdigit():
            return str(mlflow_client.get_model_version(name, str(ref)).version)
        return str(mlflow_client.get_model_version_by_alias(name, ref).version)
    except MlflowException:
        return None


def log_bundle(
    bundle: ModelBundle, *, model_name: str, alias: str | None = CHALLENGER, example: pa.Table | None = None
) -> str:
    """Log the bundle as a pyfunc model in the active MLflow run, register it, set `alias`;
    returns the new version number."""
    import mlflow

    from rayloop.pyfunc import MODEL_CODE, requirements, signature_for  # mlflow at import

    mlflow_client = client()
    with tempfile.TemporaryDirectory() as scratch:
        directory = bundle.save(Path(scratch) / "bundle")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"bundle": str(directory)},
            signature=signature_for(bundle),
            input_example=_example(bundle, example),
            pip_requirements=requirements(bundle.kind),
            registered_model_name=model_name,
        )
    version = str(info.registered_model_version)
    tags = {
        "rayloop.kind": bundle.kind,
        "rayloop.task": bundle.task.kind,
        "rayloop.features_hash": bundle.fitted.content_hash,
        "rayloop.data_fingerprint": str(bundle.lineage.get("data_fingerprint", "")),
        "rayloop.config_hash": str(bundle.lineage.get("config_hash", "")),
        **{f"rayloop.test_{k}": f"{v:.6g}" for k, v in bundle.metrics.items() if isinstance(v, (int, float))},
        # how it was trained: local mode or workers, and why (rayloop.training.placement)
        **{f"rayloop.training.{k}": str(v) for k, v in (bundle.lineage.get("training") or {}).items()},
    }
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(model_name, version, key, value)
    if alias:
        mlflow_client.set_registered_model_alias(model_name, alias, version)
    audit.record("registered", model=model_name, version=version, alias=alias, kind=bundle.kind, metrics=bundle.metrics)
    return version


def _example(bundle: ModelBundle, rows: pa.Table | None):
    """A few raw rows as the model's input example, timestamps as ISO text (JSON has no datetime)."""
    if rows is None or rows.num_rows == 0:
        return None
    frame = rows.select(bundle.input_columns).slice(0, 3).to_pandas()
    for name in frame.columns:
        if str(frame[name].dtype).startswith("datetime"):
            frame[name] = frame[name].map(lambda t: t.isoformat())
    return frame


def load_bundle(name: str, ref: str = CHAMPION) -> ModelBundle:
    """The ModelBundle behind an alias or version, loaded exactly as `mlflow.pyfunc.load_model` does."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client()
    try:
        return mlflow.pyfunc.load_model(model_uri(name, ref)).unwrap_python_model().bundle
    except MlflowException as exc:
        raise RegistryError(f"cannot load {model_uri(name, ref)}: {exc.message}") from exc


def _history(mlflow_client, name: str) -> list[str]:
    raw = mlflow_client.get_registered_model(name).tags.get(HISTORY_TAG)
    return json.loads(raw) if raw else []


def _set_champion(mlflow_client, name: str, version: str, history: list[str]) -> None:
    mlflow_client.set_registered_model_alias(name, CHAMPION, version)
    mlflow_client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-50:]))


def _labels(holdout: pa.Table, bundle: ModelBundle) -> np.ndarray:
    label = bundle.task.label
    if label not in holdout.column_names:
        raise RegistryError(f"the holdout has no label column {label!r}; it has {holdout.column_names}")
    return bundle.task.encode(holdout.column(label))


def promote(
    name: str,
    version: str,
    holdout: pa.Table,
    *,
    metric: str | None = None,
    tolerance: float = 0.005,
    judge: ModelBundle | None = None,
    loaded: Mapping[str, ModelBundle] | None = None,
) -> GateDecision:
    """Move `champion` to `version` when it passes the gate on `holdout` (raw labelled rows).

    `metric` defaults to the task's (rayloop.tasks: auc, macro_f1, rmse), each judged in its own
    direction. `judge` scores the challenger's side instead of the version itself: a refit that
    trained on every split is promoted on what its evaluation fit, which never saw the holdout,
    scores there (rayloop.control.train). `loaded` maps versions to bundles the caller already
    holds (a retrain job loaded the champion for its window), used instead of loading them again:
    keyed by version, so a champion moved meanwhile is still loaded from the registry."""
    mlflow_client = client()
    resolved = resolve_version(name, version)
    if resolved is None:
        raise RegistryError(f"model {name!r} has no version or alias {version!r}")
    version = resolved
    champion_version = resolve_version(name, CHAMPION)
    if champion_version == version:
        raise RegistryError(f"version {version} of {name!r} is already the champion")
    challenger = load_bundle(name, version)
    task = challenger.task
    metric = task.check_metric(metric, "gate")
    fn = metric_function(task.kind, metric)
    # the holdout may come from anywhere (a CSV of recent labels): the challenger's schema
    # coerces types and drops invalid rows, and both models are scored on the same rows
    holdout, rejected = challenger.schema.validate(holdout, source="holdout")
    if holdout.num_rows == 0:
        raise RegistryError(f"no valid rows in the holdout ({rejected.num_rows} rejected)")
    y = _labels(holdout, challenger)
    challenger_scores = (judge or challenger).predict_scores(holdout)
    challenger_score = float(fn(y, challenger_scores))
    champion_scores, champion_score, unscored = None, None, None
    if champion_version:
        champion = (loaded or {}).get(champion_version) or load_bundle(name, champion_version)
        if champion.task.kind != task.kind or champion.task.classes != task.classes:
            unscored = f"the champion v{champion_version} predicts another task or classes ({champion.task.kind})"
        else:
            champion_scores = champion.predict_scores(holdout)
            champion_score = float(fn(y, champion_scores))
    decision = gate(metric, challenger_score, champion_score, tolerance)
    if unscored:
        decision = replace(decision, reason=f"{decision.reason}: {unscored}")
    if champion_scores is not None and not math.isnan(challenger_score) and not math.isnan(champion_score):
        lo, hi = paired_difference_interval(y, challenger_scores, champion_scores, metric, kind=task.kind)
        decision = replace(
            decision,
            difference_interval=[lo, hi],
            reason=f"{decision.reason}; challenger - champion 95% bootstrap interval "
            f"[{lo:+.4f}, {hi:+.4f}] over {len(y)} rows",
        )
    for key, value in {
        "rayloop.gate.decision": "promoted" if decision.promote else "refused",
        "rayloop.gate.reason": decision.reason,
        f"rayloop.gate.{metric}": f"{challenger_score:.6g}",
        "rayloop.gate.champion_version": champion_version or "",
        "rayloop.gate.champion_score": "" if champion_score is None else f"{champion_score:.6g}",
        "rayloop.gate.metric": metric,
        "rayloop.gate.holdout_rows": str(holdout.num_rows),
        "rayloop.gate.difference_interval": json.dumps(decision.difference_interval),
    }.items():
        mlflow_client.set_model_version_tag(name, version, key, value)
    if decision.promote:
        history = _history(mlflow_client, name)
        if champion_version and (not history or history[-1] != champion_version):
            history.append(champion_version)  # the alias was moved outside rayloop
        _set_champion(mlflow_client, name, version, [*history, version])
        if resolve_version(name, CHALLENGER) == version:
            mlflow_client.delete_registered_model_alias(name, CHALLENGER)
    event = "promoted" if decision.promote else "promotion_refused"
    audit.record(
        event,
        model=name,
        version=version,
        previous=champion_version,
        holdout_rows=holdout.num_rows,
        **decision.to_dict(),
    )
    log.info("%s %s v%s: %s", event, name, version, decision.reason)
    return decision


RETRAIN_TAG = "rayloop.retrain.submission_id"  # set by the retrain job on the version it registered


def retrain_result(name: str, submission_id: str) -> dict[str, Any] | None:
    """The version a retrain job registered and its gate outcome, read back from the registry
    (what any node can see, unlike the job's local files); None when it registered none."""
    found = client().search_model_versions(f"name = '{name}' and tags.`{RETRAIN_TAG}` = '{submission_id}'")
    if not found:
        return None
    version = max(found, key=lambda v: int(v.version))
    tags = dict(version.tags or {})
    gate_tags = {k.removeprefix("rayloop.gate."): v for k, v in tags.items() if k.startswith("rayloop.gate.")}
    metric = gate_tags.get("metric", "")
    return {
        "version": str(version.version),
        "decision": gate_tags.get("decision"),
        "reason": gate_tags.get("reason"),
        "metric": metric,
        "challenger_score": _number(gate_tags.get(metric)),
        "champion_score": _number(gate_tags.get("champion_score")),
        "champion_version": gate_tags.get("champion_version") or None,
        "holdout_rows": int(gate_tags.get("holdout_rows") or 0),
    }


def _number(text: str | None) -> float | None:
    return float(text) if text else None


def rollback(name: str) -> tuple[str, str]:
    """Point `champion` back at the previous champion; returns (from_version, to_version)."""
    mlflow_client = client()
    current = resolve_version(name, CHAMPION)
    if current is None:
        raise RegistryError(f"model {name!r} has no champion to roll back")
    history = _history(mlflow_client, name)
    if history and history[-1] == current:
        history = history[:-1]
    if not history:
        raise RegistryError(f"model {name!r} has no previous champion before version {current}")
    previous = history[-1]
    _set_champion(mlflow_client, name, previous, history)
    mlflow_client.set_model_version_tag(name, current, "rayloop.rolled_back", "true")
    audit.record("rolled_back", model=name, version=previous, previous=current)
    return current, previous
