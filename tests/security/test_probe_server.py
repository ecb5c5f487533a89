"""Attacks on the worker's HTTP server: half-sent requests that tie up its threads, and
``/health`` failure details that tell a passer-by where the database is and who logs in."""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest

from pgcelery.observability import bounded_http
from pgcelery.observability.health import DatabaseProbe
from pgcelery.observability.server import ObservabilityServer
from pgcelery.settings import Settings
from tests.support.waiting import wait_until

HALF_OPEN = 300


@pytest.fixture
def probe_server(database_url: str) -> Iterator[ObservabilityServer]:
    settings = Settings(
        DATABASE_URL=database_url, PGCELERY_METRICS_HOST="127.0.0.1", PGCELERY_METRICS_PORT=0
    )
    server = ObservabilityServer(settings, "security@test", Path(tempfile.mkdtemp()))
    assert server.start()
    yield server
    server.stop()


def _get(port: int, path: str, timeout: float) -> tuple[int, dict[str, object]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
        return reply.status, json.loads(reply.read())


def test_half_open_connections_leave_health_answering(probe_server: ObservabilityServer) -> None:
    _get(probe_server.port, "/health", timeout=10)  # the probe's first connection
    threads_before = threading.active_count()
    with ExitStack() as stack:
        for _ in range(HALF_OPEN):
            client = stack.enter_context(socket.create_connection(("127.0.0.1", probe_server.port)))
            client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
        # A server that made /health wait behind the half-sent requests would answer a read
        # timeout later at the soonest; under half of one, it did not wait (a tighter bound
        # only measured how busy the machine was: it failed once in CI at 1 s).
        bound = bounded_http.READ_TIMEOUT / 2
        started = time.monotonic()
        status, body = _get(probe_server.port, "/health", timeout=bound)
        assert time.monotonic() - started < bound
        assert (status, body["status"]) == (200, "ok")
        # Not a thread per connection: the half-sent requests wait in one thread.
        assert threading.active_count() - threads_before < 20


def test_a_request_that_never_finishes_is_closed_after_the_read_timeout(
    probe_server: ObservabilityServer,
) -> None:
    with socket.create_connection(("127.0.0.1", probe_server.port)) as client:
        client.sendall(b"GET /livez HTTP/1.1\r\n")
        client.settimeout(bounded_http.READ_TIMEOUT * 4)
        started = time.monotonic()
        assert client.recv(1024) == b"", "the server must close the connection"
        assert time.monotonic() - started < bounded_http.READ_TIMEOUT * 3


def test_a_request_head_too_large_is_dropped(probe_server: ObservabilityServer) -> None:
    with socket.create_connection(("127.0.0.1", probe_server.port)) as client:
        client.settimeout(30)
        try:
            client.sendall(b"GET /livez HTTP/1.1\r\nX-Pad: " + b"a" * 100_000)
        except (BrokenPipeError, ConnectionResetError):
            return
        with suppress(ConnectionResetError):
            assert client.recv(1024) == b""


def test_the_waiting_room_is_bounded() -> None:
    server = bounded_http.BoundedHTTPServer(
        ("127.0.0.1", 0), bounded_http.HeadReadingHandler, max_waiting=10
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with ExitStack() as stack:
            for _ in range(50):
                stack.enter_context(socket.create_connection(server.server_address[:2]))
            wait_until(lambda: len(server._waiting) == 10, timeout=30, what="oldest dropped")
    finally:
        server.shutdown()
        server.server_close()


def test_health_details_name_no_host_or_user() -> None:
    settings = Settings(DATABASE_URL="postgresql://intruder_user:pw@127.0.0.1:1/secretdb")
    probe = DatabaseProbe(settings)
    try:
        text = json.dumps(probe.check().as_json())
    finally:
        probe.close()
    assert "unreachable" in text
    for leaked in ("intruder_user", "127.0.0.1", "secretdb"):
        assert leaked not in text
