"""`serve deploy configs/serve/tabular.yaml` against a real head (token auth on): the native Serve
config file deploys the app, which serves the registered champion over HTTP on 127.0.0.1, asks for
its bearer token when one is set, and leaves `rayloop doctor` nothing unsafe to report."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import lightgbm as lgb
import mlflow
import pytest
import yaml

from rayloop import registry
from rayloop.bundle import ModelBundle
from rayloop.data.synthetic import generate
from rayloop.runtime import free_port
from tests.support import ROOT, fitted_synthetic, wait_for

pytestmark = pytest.mark.slow

MODEL = "e2e-serve"


def _external_addresses() -> list[str]:
    import psutil

    return [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]


def test_serve_deploy_of_the_config_file_serves_the_champion(ray_head, tmp_path):
    config, train, fitted, profile = fitted_synthetic(3000, seed=51)
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1},
        lgb.Dataset(
            fitted.transform(train), train.column("label").to_numpy(), categorical_feature=fitted.categorical_indices
        ),
        num_boost_round=20,
    )
    registry.client()
    with mlflow.start_run(experiment_id=registry.experiment_id("e2e-serve")):
        version = registry.log_bundle(
            ModelBundle("lightgbm", booster, fitted, config.data.schema_, profile), model_name=MODEL
        )
    holdout = generate(300, seed=52)
    assert registry.promote(MODEL, version, holdout).promote

    spec = yaml.safe_load((ROOT / "configs" / "serve" / "tabular.yaml").read_text())
    port = free_port()
    spec["http_options"]["port"] = port
    spec["applications"][0]["args"]["overrides"] = [f"registry.model_name={MODEL}"]
    # the Serve API's optional bearer token: an env var on the replicas (serving.auth_token_env),
    # never a config value; a cluster sets it from a secret, this test through runtime_env
    token = secrets.token_hex(16)
    spec["applications"][0]["runtime_env"] = {"env_vars": {"RAYLOOP_SERVE_TOKEN": token}}
    target = tmp_path / "tabular.yaml"
    target.write_text(yaml.safe_dump(spec))
    serve = str(ROOT / ".venv" / "bin" / "serve")

    done = subprocess.run(
        [serve, "deploy", str(target), "--address", ray_head.dashboard],
        env=ray_head.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    try:
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(healthy, 240, interval_s=2, what="the deployed app")
        except TimeoutError:
            status = subprocess.run(
                [serve, "status", "--address", ray_head.dashboard],
                env=ray_head.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            raise AssertionError(f"app not healthy:\n{status.stdout[-3000:]}{status.stderr[-2000:]}") from None
        row = holdout.drop_columns(["label", "entity_id"]).slice(0, 1).to_pylist()[0]
        row["event_time"] = row["event_time"].isoformat()
        refused = httpx.post(f"{base}/v1/predict", json=row, timeout=30)
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"] == "Bearer"
        wrong = httpx.post(f"{base}/v1/predict", json=row, headers={"Authorization": "Bearer nope"}, timeout=30)
        assert wrong.status_code == 401
        got = httpx.post(f"{base}/v1/predict", json=row, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert got.status_code == 200, got.text
        assert got.json()["predictions"][0]["model_version"] == version
        # doctor sees Ray, Serve and HAProxy listening, all on the loopback, and the Jobs API
        # refusing a request without the cluster token
        rayloop = str(Path(sys.executable).parent / "rayloop")
        checked = subprocess.run(
            [rayloop, "doctor", "--address", ray_head.dashboard],
            env={**ray_head.env, "COLUMNS": "250"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-2000:]
        assert "all on the loopback" in checked.stdout and "refuses a request without the token" in checked.stdout
        # the one exception, reported as such: Ray binds Serve's inter-deployment gRPC server itself
        warned = [line for line in checked.stdout.splitlines() if "warn" in line]
        assert all("ServeReplica" in line for line in warned), warned
        # the HTTP port listens on 127.0.0.1 only: the machine's other addresses refuse it
        for address in _external_addresses():
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://{address}:{port}/healthz", timeout=3)
    finally:
        subprocess.run(
            [serve, "shutdown", "-y", "--address", ray_head.dashboard],
            env=ray_head.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
