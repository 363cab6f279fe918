"""The traffic simulator's resends against a flaky HTTP server on 127.0.0.1: every other predict
fails first (a dropped connection or a 500, as when a replica's node dies mid-request)."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rayloop.traffic import TrafficConfig, run_traffic


class _Flaky(BaseHTTPRequestHandler):
    calls = 0
    lock = threading.Lock()
    failure = "500"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(404, {"detail": "no model info"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/v1/feedback":
            return self._answer(202, {"accepted": True})
        with _Flaky.lock:
            _Flaky.calls += 1
            fail = _Flaky.calls % 2 == 1  # the first try of each request, at one request in flight
        if fail and _Flaky.failure == "drop":
            self.close_connection = True
            self.connection.close()
            return
        if fail:
            return self._answer(500, {"detail": "replica lost"})
        rid = uuid.uuid4().hex
        self._answer(200, {"predictions": [{"request_id": rid, "probability": 0.9, "label": 1, "model_version": "1"}]})


@pytest.fixture
def flaky():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Flaky.calls = 0
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _run(url: str, retries: int):
    config = TrafficConfig(
        url=url,
        rate=20,
        duration_s=1.0,
        concurrency=1,
        retries=retries,
        retry_backoff_s=0.0,
        label_delay_s=0.0,
        keep_request_ids=True,
        pool_rows=100,
        token_env=None,
    )
    return run_traffic(config)


@pytest.mark.parametrize("failure", ["500", "drop"])
def test_a_resend_turns_a_lost_answer_into_an_answer_and_is_counted(flaky, failure):
    _Flaky.failure = failure
    stats = _run(flaky, retries=2)
    assert stats.sent >= 10 and stats.errors == 0, stats.summary()
    # every request failed once and was answered on its first resend
    assert stats.resent == stats.recovered == stats.statuses[200] == stats.sent
    assert len(stats.answered_ids) == stats.sent and len({rid for _, rid in stats.answered_ids}) == stats.sent


def test_without_retries_the_failures_are_counted_as_errors(flaky):
    _Flaky.failure = "500"
    stats = _run(flaky, retries=0)
    # every other call fails, and nothing is sent again
    assert stats.resent == stats.recovered == 0
    assert stats.errors == stats.statuses[500] == (stats.sent + 1) // 2
    assert len(stats.answered_ids) == stats.statuses[200] == stats.sent // 2
