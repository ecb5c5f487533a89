"""The worker's own HTTP server: ``/metrics``, ``/health`` and ``/livez``.

One server per worker node, in the worker's main process, under every pool: a bootstep starts
it before the consumer connects (so ``/livez`` and ``/health`` answer while the database is
down) and stops it at shutdown. Under prefork the children write their metrics to the node's
multiprocess directory, chosen and emptied in ``worker_init`` before they fork; each scrape
builds a fresh registry over those files. A port that is taken is logged and the worker goes on
processing tasks without the server.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import psycopg
from celery import Celery, bootsteps
from celery import signals as celery_signals
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from psycopg_pool import PoolTimeout

from pgcelery.observability import logging as json_logging
from pgcelery.observability import metrics, signals
from pgcelery.observability.bounded_http import BoundedHTTPServer, HeadReadingHandler
from pgcelery.observability.health import DatabaseProbe
from pgcelery.settings import Settings, settings_of

log = logging.getLogger(__name__)

#: A scrape re-runs the health checks when the last result is older than this.
HEALTH_MAX_AGE = 10.0
_NODE: dict[str, Any] = {"directory": None, "owned": False, "server": None}


class ScrapeCollector:
    """The gauges computed at scrape time: worker state, broker tables, last health check."""

    def __init__(self, hostname: str, probe: DatabaseProbe) -> None:
        self.hostname = hostname
        self.probe = probe

    def collect(self) -> Iterator[Metric]:
        from celery.worker import state

        yield from metrics.worker_families(self.hostname, len(state.active_requests))
        try:
            yield from metrics.queue_families(self.probe.queue_stats())
        except (psycopg.Error, PoolTimeout):
            # /health says why; the queue gauges are simply absent from this scrape.
            log.debug("pgcelery.metrics.queue_stats_failed", exc_info=True)
        try:
            yield from metrics.backlog_families(*self.probe.backlog_stats())
        except (psycopg.Error, PoolTimeout):
            log.debug("pgcelery.metrics.backlog_failed", exc_info=True)
        last = self.probe.last
        if last is None or time.time() - last.checked_at > HEALTH_MAX_AGE:
            last = self.probe.check()
        passed = {name: check.status == "ok" for name, check in last.checks.items()}
        yield from metrics.health_families(passed, last.duration)


class ObservabilityServer:
    """``/metrics``, ``/health`` and ``/livez`` on one port, served from a daemon thread."""

    def __init__(self, settings: Settings, hostname: str, directory: Path) -> None:
        self.host = settings.metrics_host
        self.port = settings.metrics_port
        self.directory = directory
        self.probe = DatabaseProbe(settings)
        self.collector = ScrapeCollector(hostname, self.probe)
        self.httpd: BoundedHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Bind and serve; ``False`` (after logging why) when the port cannot be bound."""
        try:
            # Bounded: half-sent requests wait in one thread, complete ones are served by a
            # small pool (pgcelery.observability.bounded_http).
            self.httpd = BoundedHTTPServer((self.host, self.port), _handler_for(self))
        except OSError as exc:
            log.error(
                "pgcelery.observability.port_in_use: cannot serve /metrics and /health on "
                "%s:%s (%s); the worker keeps processing tasks without them. Set "
                "PGCELERY_METRICS_PORT to a free port, or PGCELERY_METRICS_ENABLED=false.",
                self.host,
                self.port,
                exc.strerror or exc,
                extra={"port": self.port, "host": self.host},
            )
            self.probe.close()
            return False
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="pgcelery-metrics", daemon=True
        )
        self._thread.start()
        log.info(
            "pgcelery.observability.serving on %s:%s (/metrics, /health, /livez)",
            self.host,
            self.port,
            extra={"port": self.port, "host": self.host},
        )
        return True

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
        self.probe.close()

    def close_inherited_socket(self) -> None:
        """In a forked child: drop the copy of the listening socket, leaving the parent's."""
        if self.httpd is not None:
            self.httpd.socket.close()
            self.httpd = None

    # -- responses -----------------------------------------------------------------------------

    def metrics_body(self) -> bytes:
        metrics.mark_dead_processes(self.directory)
        return generate_latest(metrics.scrape_registry(self.directory, self.collector))

    def health(self) -> tuple[int, dict[str, Any]]:
        report = self.probe.check()
        return (200 if report.ok else 503), report.as_json()


def _handler_for(server: ObservabilityServer) -> type[BaseHTTPRequestHandler]:
    class Handler(HeadReadingHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    self._reply(200, server.metrics_body(), CONTENT_TYPE_LATEST)
                elif path == "/health":
                    status, body = server.health()
                    self._json(status, body)
                elif path == "/livez":
                    self._json(200, {"status": "ok"})
                else:
                    self._json(404, {"error": "not found: try /metrics, /health or /livez"})
            except Exception:
                log.exception("pgcelery.observability.request_failed", extra={"path": path})
                self._json(500, {"error": "internal error; see the worker log"})

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._reply(status, json.dumps(body).encode(), "application/json")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes every second would flood the worker log at INFO.
            log.debug("pgcelery.observability.request " + format, *args)

    return Handler


# -- worker lifecycle ---------------------------------------------------------------------------


def _enabled(app: Celery) -> bool:
    return bool(getattr(app, "pgcelery_observability", False)) and settings_of(app).metrics_enabled


def _metrics_directory() -> tuple[Path, bool]:
    given = os.environ.get(metrics.MULTIPROC_ENV)
    if given:
        return Path(given), False
    return Path(tempfile.mkdtemp(prefix="pgcelery-metrics-")), True


def on_worker_init(sender: Any = None, **_: Any) -> None:
    """Main process, before the pool forks: choose the metrics directory and start counting."""
    if sender is None or not _enabled(sender.app):
        return
    directory, owned = _metrics_directory()
    metrics.enable_multiprocess(directory)
    _NODE.update(directory=directory, owned=owned)
    signals.activate(sender.hostname)
    json_logging.set_hostname(sender.hostname)


def on_child_init(**_: Any) -> None:
    server: ObservabilityServer | None = _NODE["server"]
    if server is not None:
        server.close_inherited_socket()
        _NODE["server"] = None


def on_child_shutdown(pid: int | None = None, **_: Any) -> None:
    directory: Path | None = _NODE["directory"]
    if directory is not None:
        metrics.mark_dead(pid or os.getpid(), directory)


class ObservabilityStep(bootsteps.StartStopStep):
    """Worker bootstep: the HTTP server lives from worker start to worker stop."""

    label = "pgcelery observability"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.server: ObservabilityServer | None = None

    def include_if(self, parent: Any) -> bool:
        return _enabled(parent.app) and _NODE["directory"] is not None

    def start(self, parent: Any) -> None:
        self.server = ObservabilityServer(
            settings_of(parent.app), parent.hostname, _NODE["directory"]
        )
        if self.server.start():
            _NODE["server"] = self.server
        else:
            self.server = None

    def stop(self, parent: Any) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
            _NODE["server"] = None
        signals.deactivate()
        directory: Path | None = _NODE["directory"]
        if directory is not None and _NODE["owned"]:
            shutil.rmtree(directory, ignore_errors=True)
            _NODE.update(directory=None, owned=False)

    shutdown = stop


def install(app: Celery) -> None:
    """Run the server with this app's workers (idempotent)."""
    app.steps["worker"].add(ObservabilityStep)
    uid = __name__
    celery_signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid=f"{uid}.init")
    celery_signals.worker_process_init.connect(
        on_child_init, weak=False, dispatch_uid=f"{uid}.child_init"
    )
    celery_signals.worker_process_shutdown.connect(
        on_child_shutdown, weak=False, dispatch_uid=f"{uid}.child_shutdown"
    )
