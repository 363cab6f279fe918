"""The tabular model deployment: one FastAPI ingress replica that validates, batches and scores.

Validation, batching and the model live in the same replica, so a request crosses one hop
(proxy -> replica), not two. `@serve.batch` gathers concurrent requests into one call of
`FittedFeatures.transform` and the backend; its wait adapts to load (no wait for a lone
request, the configured wait when others are in flight).

Hot swap: Serve calls `reconfigure(user_config)` when only the user config changes and the code
version does not (declarative deploys: `rayloop.control.deploy`, `serve deploy`; Ray 2.60's
`serve.run` gives each deploy a new code version and starts new replicas instead). The replica
loads the target version beside the serving one, builds its backend (with the parity check),
checks it on a probe batch, then replaces one reference. A request keeps the model it was
validated against until it is answered, so none fails during a swap.
"""


# no `from __future__ import annotations` here: FastAPI reads the route signatures at runtime

import asyncio
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve

from rayloop import metrics, registry
from rayloop.bundle import ModelBundle
from rayloop.config import MonitoringConfig
from rayloop.data.schema import ARROW_TYPES
from rayloop.serving.api import (
    RecordParser,
    RequestError,
    error_detail,
    feedback_model,
    json_bytes,
    require_json,
    response_schema,
)
from rayloop.serving.app_args import ServerArgs
from rayloop.serving.backends import Backend, build_backend, probe_matrix
from rayloop.serving.monitor_client import MonitorClient

__all__ = ["TabularServer", "app"]

log = logging.getLogger("ray.serve")

PREDICTION_SAMPLE = 8  # predictions per request that feed the probability histogram
_ID_SPACE = 2**128


@dataclass
class Loaded:
    """One servable model version: everything a request needs, swapped as a unit."""

    ref: str
    version: str
    bundle: ModelBundle
    backend: Backend
    parser: RecordParser
    arrow_schema: pa.Schema  # the model's input columns
    log_schema: pa.Schema  # what the monitor logs per row: the inputs plus the id and timestamp sent
    feedback: type[BaseModel]  # /v1/feedback's body: the label in the task's type
    info: dict[str, Any] = field(default_factory=dict)


app = FastAPI(
    title="rayloop tabular model",
    description="Scores raw rows with the registered champion; features are applied inside the model bundle.",
    version="1",
)


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json_bytes(payload), status_code=status, media_type="application/json", headers=headers)


def _replica_id() -> str | None:
    """Which replica answered (operators and the hot-swap test: a rollout keeps the replicas)."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (unit tests)
        return None


def _node_ip() -> str | None:
    """The address of the node this replica runs on (which node answered, on a cluster)."""
    try:
        return ray.util.get_node_ip_address()
    except Exception:  # outside Ray (unit tests)
        return None


@dataclass
class _Answer:
    predictions: list[dict[str, Any]]  # the JSON answer, one per row
    score: np.ndarray  # what the monitor's `score` column holds (rayloop.monitoring.core)
    predicted: list[int] | None  # predicted class codes (None: a regression)
    classes: np.ndarray | None  # a multiclass model's probabilities (rows x classes)


def _answers(state: Loaded, scores: np.ndarray, ids: list[str], threshold: float) -> _Answer:
    """The task's answer per row (rayloop.serving.api's response models)."""
    task, version = state.bundle.task, state.version
    if task.kind == "regression":
        values = np.asarray(scores, dtype=np.float64)
        bounds = state.bundle.interval(values)
        predictions = [
            {
                "request_id": rid,
                "prediction": float(v),
                "interval": None if bounds is None else [float(bounds[0][i]), float(bounds[1][i])],
                "model_version": version,
            }
            for i, (rid, v) in enumerate(zip(ids, values))
        ]
        return _Answer(predictions, values, None, None)
    codes = task.predicted_codes(scores, threshold)
    labels = task.decode(codes)
    if task.kind == "binary":
        probs = np.asarray(scores, dtype=np.float64)
        predictions = [
            {"request_id": rid, "probability": float(p), "label": label, "model_version": version}
            for rid, p, label in zip(ids, probs, labels)
        ]
        return _Answer(predictions, probs, codes.tolist(), None)
    matrix = np.asarray(scores, dtype=np.float64)
    names = [str(c) for c in task.classes]
    predictions = [
        {
            "request_id": rid,
            "label": label,
            "probabilities": dict(zip(names, row.tolist())),
            "model_version": version,
        }
        for rid, label, row in zip(ids, labels, matrix)
    ]
    return _Answer(predictions, matrix.max(axis=1), codes.tolist(), matrix)


def _check_probe(bundle: ModelBundle, version: str, probe: np.ndarray) -> None:
    """A version serves only if its outputs on a probe batch have the task's shape and range."""
    task, n = bundle.task, 32
    if task.kind == "multiclass":
        ok = probe.shape == (n, task.n_classes) and np.allclose(probe.sum(axis=1), 1.0, atol=1e-3)
        what = f"{task.n_classes} class probabilities per row"
    elif task.kind == "binary":
        ok = probe.shape == (n,) and bool(np.all((probe >= 0) & (probe <= 1)))
        what = "probabilities"
    else:
        ok = probe.shape == (n,) and bool(np.all(np.isfinite(probe)))
        what = "finite values"
    if not ok:
        raise ValueError(f"version {version} failed the probe batch: outputs are not {what} (shape {probe.shape})")


# helpers above the deployment: Serve ships the class by value with the globals defined before it
@serve.deployment(name="TabularServer")
@serve.ingress(app)
class TabularServer:
    def __init__(self, args: dict[str, Any]) -> None:
        self.args = ServerArgs.model_validate(args)
        if self.args.tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = self.args.tracking_uri
        self.state: Loaded | None = None
        self._swap_lock = asyncio.Lock()
        self._ref: str | None = None  # the user config's model_ref: an alias is followed
        self._follower: asyncio.Task | None = None
        self._inflight = 0  # requests waiting in the batch queue
        self._requests = 0  # /v1/predict requests anywhere in the handler (reading, parsing, scoring)
        self._token = os.environ.get(self.args.serving.auth_token_env) or None
        self._score.set_max_batch_size(self.args.serving.max_batch_size)
        self._score.set_batch_wait_timeout_s(0.0)
        self.m = {spec.name: metrics.create(spec) for spec in metrics.SERVING}
        self.monitor = self._monitor_client(self.args.monitoring)
        app.openapi = self._openapi  # /docs shows the request schema of the model being served

    def _monitor_client(self, config: MonitoringConfig | None) -> Any:
        if config is None or not config.enabled:
            return None
        return MonitorClient(
            self.args.model_name,
            sample_rate=config.sample_rate,
            buffer_size=config.buffer_size,
            send_batch_rows=config.send_batch_rows,
            send_interval_s=config.send_interval_s,
            on_count=lambda outcome, n: self.m[metrics.MONITOR_SAMPLES.name].inc(n, tags={"outcome": outcome}),
        )

    def _openapi(self) -> dict[str, Any]:
        from fastapi.openapi.utils import get_openapi

        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        if self.state is not None:
            spec["paths"]["/v1/predict"]["post"]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": self.state.parser.json_schema()}},
            }
            spec["paths"]["/v1/feedback"]["post"]["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": self.state.feedback.model_json_schema()}},
            }
            spec["paths"]["/v1/predict"]["post"]["responses"]["200"] = {
                "description": f"the {self.state.bundle.task.kind} model's predictions, one per record",
                "content": {"application/json": {"schema": response_schema(self.state.bundle.task)}},
            }
        return spec

    # ---- model lifecycle --------------------------------------------------------------------
    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        ref = str(user_config.get("model_ref", "champion"))
        self._ref = ref
        await self._swap(ref)
        if self._follower is None and self.args.serving.follow_alias_s > 0:
            self._follower = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        """Serve what the alias says: when `champion` moves in the registry, load the new version
        beside the old one and swap, as a reconfigure does.

        A promotion then needs no Serve config change. A user_config change takes each replica out
        of routing while it reconfigures and makes Serve reload HAProxy twice (the replica leaves
        and rejoins the backend list), so requests fall back to the slower proxy and p99 rises
        during the rollout (benchmarks/bench_swap.py). A pinned version is not followed.
        """
        failures, refused = 0, None
        while True:
            await asyncio.sleep(self.args.serving.follow_alias_s)
            ref = self._ref
            if ref is None or ref.isdigit() or self.state is None:
                continue
            try:
                version = await asyncio.to_thread(registry.resolve_version, self.args.model_name, ref)
                failures = 0
            except Exception as exc:  # registry unreachable: keep serving, say so now and then
                failures += 1
                if failures in (1, 60) or failures % 600 == 0:
                    log.warning(
                        "cannot resolve %s@%s (serving version %s): %s",
                        self.args.model_name,
                        ref,
                        self.state.version,
                        exc,
                    )
                continue
            if version is not None and version not in (self.state.version, refused) and ref == self._ref:
                await self._swap(ref)
                if self.state.version != version:
                    refused = version  # failed to load or probe (logged, counted): not retried every second

    async def _swap(self, ref: str) -> None:
        async with self._swap_lock:
            try:
                loaded = await asyncio.to_thread(self._load, ref)
            except Exception as exc:
                self._count("MODEL_SWAPS", outcome="failed")
                if self.state is None:
                    raise  # nothing to serve: let Serve report the replica as failed
                log.error("model swap to %s failed; still serving version %s: %s", ref, self.state.version, exc)
                return
            if loaded is self.state:
                return  # already serving that version
            previous, self.state = self.state, loaded
            if previous is not None and previous.version != loaded.version:
                self.m[metrics.MODEL_VERSION.name].set(
                    0, tags={"model": self.args.model_name, "version": previous.version}
                )
            self.m[metrics.MODEL_VERSION.name].set(1, tags={"model": self.args.model_name, "version": loaded.version})
            self._count("MODEL_SWAPS", outcome="swapped" if previous else "loaded")
            log.info("serving %s version %s with backend %s", self.args.model_name, loaded.version, loaded.backend.name)

    def _load(self, ref: str) -> Loaded:
        version = registry.resolve_version(self.args.model_name, ref)
        if version is None:
            raise LookupError(f"model {self.args.model_name!r} has no version or alias {ref!r}")
        if self.state is not None and self.state.version == version:
            return self.state
        bundle = registry.load_bundle(self.args.model_name, version)
        backend = build_backend(
            bundle,
            self.args.serving.backend,
            max_batch_size=self.args.serving.max_batch_size,
            tolerance=self.args.serving.parity_tolerance,
            cache_dir=Path(self.args.engine_cache_dir) if self.args.engine_cache_dir else None,
            on_fallback=lambda name, reason: self._count("PARITY_FALLBACKS", backend=name, reason=reason),
        )
        _check_probe(bundle, version, backend.predict(probe_matrix(bundle.fitted, rows=32, seed=1)))
        task = bundle.task
        columns = bundle.input_columns
        types = {c.name: ARROW_TYPES[c.dtype] for c in bundle.schema.columns}
        others = [n for n in bundle.schema.names if n not in columns]  # id, timestamp, label
        parser = RecordParser(
            bundle.schema,
            columns,
            self.args.serving.max_records_per_request,
            self.args.serving.max_body_bytes,
            passthrough=others,
        )
        info = {
            "name": self.args.model_name,
            "version": version,
            "ref": ref,
            "kind": bundle.kind,
            "task": task.kind,
            "classes": task.classes,
            "backend": backend.name,
            "backend_max_abs_diff": backend.max_abs_diff,
            "features_hash": bundle.fitted.content_hash,
            "input_columns": columns,
            "metrics": bundle.metrics,
            "lineage": {
                k: bundle.lineage.get(k) for k in ("preprocess_run_id", "data_fingerprint", "config_hash", "trained_at")
            },
        }
        schema = pa.schema([(name, types[name]) for name in columns])
        logged = pa.schema([*schema, *((n, types[n]) for n in others if n != task.label)])
        return Loaded(ref, version, bundle, backend, parser, schema, logged, feedback_model(task), info)

    def check_health(self) -> None:
        if self.state is None:
            raise RuntimeError("no model loaded")
        # re-set on every health check (every few seconds) so the series never goes stale
        self.m[metrics.MODEL_VERSION.name].set(1, tags={"model": self.args.model_name, "version": self.state.version})

    # ---- scoring ----------------------------------------------------------------------------
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def _score(self, items: list[tuple[Loaded, list[dict[str, Any]]]]) -> list[np.ndarray]:
        results: list[np.ndarray | None] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (state, _) in enumerate(items):
            groups.setdefault(id(state), []).append(i)
        for indices in groups.values():
            state = items[indices[0]][0]
            probs = self._score_rows(state, [row for i in indices for row in items[i][1]])
            start = 0
            for i in indices:
                n = len(items[i][1])
                results[i] = probs[start : start + n]
                start += n
        return results  # type: ignore[return-value]

    def _score_rows(self, state: Loaded, rows: list[dict[str, Any]]) -> np.ndarray:
        table = pa.Table.from_pylist(rows, schema=state.arrow_schema)
        probs = state.backend.predict(state.bundle.fitted.transform(table))
        self.m[metrics.BATCH_ROWS.name].observe(len(rows), tags={"model_version": state.version})
        return probs

    async def _predict(self, state: Loaded, rows: list[dict[str, Any]]) -> np.ndarray:
        await asyncio.sleep(0)  # let requests that are already here reach the handler first
        if self._requests == 1:
            # the only request in the replica: nothing to batch with, so skip the batch queue's
            # hand-off to its own task
            return self._score_rows(state, rows)
        self._inflight += 1
        try:
            # a lone request goes at once; with company, wait a little for a fuller batch
            self._score.set_batch_wait_timeout_s(self.args.serving.batch_wait_timeout_s if self._inflight > 1 else 0.0)
            return await self._score((state, rows))
        finally:
            self._inflight -= 1

    # ---- HTTP -------------------------------------------------------------------------------
    def _count(self, key: str, **tags: str) -> None:
        self.m[getattr(metrics, key).name].inc(1, tags=tags)

    def _finish(self, route: str, started: float, response: Response, version: str | None = None) -> Response:
        """Count the answer; `version` is the model that served it (default: the one serving now)."""
        if version is None:
            version = self.state.version if self.state is not None else "none"
        status = str(response.status_code)
        self.m[metrics.REQUESTS.name].inc(1, tags={"route": route, "status": status, "model_version": version})
        self.m[metrics.LATENCY_MS.name].observe(
            (time.perf_counter() - started) * 1000, tags={"route": route, "model_version": version}
        )
        return response

    def _unauthorized(self, request: Request) -> Response | None:
        if self._token is None:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), self._token.encode()):
            return None
        detail = [{"field": "authorization", "rule": "bearer_token", "message": "missing or wrong bearer token"}]
        return _json(401, {"detail": detail}, {"WWW-Authenticate": "Bearer"})

    async def _body(self, request: Request) -> bytes:
        """The body, refused as soon as it passes the limit (by header or while streaming)."""
        limit = self.args.serving.max_body_bytes
        declared = request.headers.get("content-length")
        too_large = RequestError(
            413, [{"field": "body", "rule": "max_bytes", "message": f"body is larger than {limit} bytes"}]
        )
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/v1/predict", summary="Score one record or a list of records")
    async def predict(self, request: Request) -> Response:
        self._requests += 1
        try:
            return await self._predict_request(request)
        finally:
            self._requests -= 1

    async def _predict_request(self, request: Request) -> Response:
        started = time.perf_counter()
        refused = self._unauthorized(request)
        if refused is not None:
            return self._finish("predict", started, refused)
        state = self.state
        if state is None:
            return self._finish("predict", started, _json(503, {"detail": "no model loaded yet"}, {"Retry-After": "1"}))
        try:
            rows = state.parser.parse(await self._body(request), request.headers.get("content-type"))
        except RequestError as exc:
            return self._finish("predict", started, _json(exc.status, exc.body()), state.version)
        try:
            scores = await self._predict(state, rows)
        except Exception:  # answered and counted as a 500 (the error-rate alert reads the count)
            log.exception("scoring failed with version %s", state.version)
            failed = {"detail": "scoring failed; see the replica log"}
            return self._finish("predict", started, _json(500, failed), state.version)
        self.m[metrics.ROWS.name].inc(len(rows), tags={"model_version": state.version})
        first = secrets.randbits(128)  # one random draw per request; rows count up from it
        ids = [f"{(first + i) % _ID_SPACE:032x}" for i in range(len(rows))]
        answer = _answers(state, scores, ids, self.args.serving.decision_threshold)
        if self.monitor is not None:
            self.monitor.offer(
                state.log_schema, state.version, rows, answer.score, ids, answer.predicted, answer.classes
            )
        if state.bundle.task.is_classifier:  # probabilities; a regression's values have no fixed buckets
            for p in answer.score[:PREDICTION_SAMPLE]:  # a per-request sample keeps large requests cheap
                self.m[metrics.PREDICTIONS.name].observe(float(p), tags={"model_version": state.version})
        return self._finish("predict", started, _json(200, {"predictions": answer.predictions}), state.version)

    @app.post("/v1/feedback", status_code=202, summary="The true label of an earlier prediction")
    async def feedback(self, request: Request) -> Response:
        started = time.perf_counter()
        refused = self._unauthorized(request)
        if refused is not None:
            return self._finish("feedback", started, refused)
        try:
            body = await self._body(request)
            require_json(request.headers.get("content-type"))
            state = self.state
            if state is None:
                return self._finish("feedback", started, _json(503, {"detail": "no model loaded yet"}))
            item = state.feedback.model_validate_json(body)
        except RequestError as exc:
            return self._finish("feedback", started, _json(exc.status, exc.body()))
        except ValidationError as exc:
            detail = error_detail(exc, "feedback")
            status = 400 if any(e["rule"] == "json_invalid" for e in detail) else 422
            return self._finish("feedback", started, _json(status, {"detail": detail}))
        if self.monitor is not None and not self.monitor.offer_label(item.request_id, item.label):
            busy = {"detail": "the label buffer is full; retry later"}
            return self._finish("feedback", started, _json(503, busy, {"Retry-After": "1"}))
        # classes are few; a regression's values would make a series each
        self._count("FEEDBACK", label=str(item.label) if state.bundle.task.is_classifier else "value")
        body = {"accepted": True, "request_id": item.request_id, "monitored": self.monitor is not None}
        return self._finish("feedback", started, _json(202, body))

    @app.get("/v1/model", summary="The model this replica serves")
    async def model(self, request: Request) -> Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        if self.state is None:
            return _json(503, {"detail": "no model loaded yet"}, {"Retry-After": "1"})
        return JSONResponse({**self.state.info, "replica": _replica_id(), "node": _node_ip()})

    @app.get("/healthz", summary="Liveness: 200 once a model is loaded")
    async def healthz(self) -> Response:
        if self.state is None:
            return _json(503, {"status": "loading"})
        return _json(200, {"status": "ok", "model_version": self.state.version})
