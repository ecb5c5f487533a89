"""An HTTP server for probes that a slow or hostile client cannot exhaust.

The standard library's ``ThreadingHTTPServer`` gives every connection a thread that blocks
reading the request for as long as the client likes: a few hundred half-sent requests tie up as
many threads in the worker's main process, and ``/health`` stops answering. Here a connection
gets a thread only once its whole request head has arrived:

* one thread (the *waiting room*) reads every connection's request head without blocking, from a
  selector; a head must arrive within ``read_timeout`` seconds and fit in ``MAX_HEAD_BYTES``;
* at most ``max_waiting`` connections wait there; past that the oldest is dropped;
* complete requests are served by a fixed pool of ``handlers`` threads, and each connection's
  socket has ``read_timeout`` as its timeout for the reply too (a client that stops reading).

Only requests without a body (``GET``) are served, which is all the probe server needs.
"""

from __future__ import annotations

import contextlib
import io
import selectors
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

MAX_HEAD_BYTES = 16_384
READ_TIMEOUT = 5.0
MAX_WAITING = 1024
HANDLERS = 4
_HEAD_END = b"\r\n\r\n"


class _Waiting:
    __slots__ = ("address", "buffer", "deadline")

    def __init__(self, address: Any, deadline: float) -> None:
        self.address = address
        self.buffer = bytearray()
        self.deadline = deadline


class BoundedHTTPServer(HTTPServer):
    """``HTTPServer`` with a waiting room for request heads and a bounded handler pool."""

    daemon_threads = True
    #: Connections the kernel queues before accept (socketserver's default of 5 makes clients
    #: beyond it wait for SYN retries, seconds, while the waiting room would take them at once).
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        read_timeout: float = READ_TIMEOUT,
        max_waiting: int = MAX_WAITING,
        handlers: int = HANDLERS,
    ) -> None:
        # Everything server_close needs exists before the bind, which closes the server when
        # it fails (a port in use).
        self.read_timeout = read_timeout
        self.max_waiting = max_waiting
        self._heads: dict[socket.socket, bytes] = {}
        self._waiting: OrderedDict[socket.socket, _Waiting] = OrderedDict()
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._pool = ThreadPoolExecutor(handlers, thread_name_prefix="pgcelery-http")
        self._closing = False
        self._room: threading.Thread | None = None
        super().__init__(address, handler)
        self._room = threading.Thread(target=self._run_room, name="pgcelery-http-room", daemon=True)
        self._room.start()

    # -- accepting: hand the connection to the waiting room ------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        conn: socket.socket = request
        conn.setblocking(False)
        with self._lock:
            if len(self._waiting) >= self.max_waiting:
                oldest, _ = self._waiting.popitem(last=False)
                self._forget(oldest)
            self._waiting[conn] = _Waiting(client_address, time.monotonic() + self.read_timeout)
            self._selector.register(conn, selectors.EVENT_READ)
        self._wake_w.send(b"\0")

    def _forget(self, conn: socket.socket) -> None:
        """Drop a waiting connection (with the lock held)."""
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        conn.close()

    # -- the waiting room ----------------------------------------------------------------------

    def _run_room(self) -> None:
        while not self._closing:
            for key, _ in self._selector.select(timeout=0.5):
                if key.fileobj is self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(4096)
                    continue
                self._read(key.fileobj)  # type: ignore[arg-type]
            self._expire()

    def _read(self, conn: socket.socket) -> None:
        with self._lock:
            waiting = self._waiting.get(conn)
            if waiting is None:
                return
            try:
                chunk = conn.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            waiting.buffer += chunk
            if not chunk or len(waiting.buffer) > MAX_HEAD_BYTES:
                del self._waiting[conn]
                self._forget(conn)
                return
            if _HEAD_END not in waiting.buffer:
                return
            del self._waiting[conn]
            self._selector.unregister(conn)
        conn.setblocking(True)
        conn.settimeout(self.read_timeout)
        self._heads[conn] = bytes(waiting.buffer)
        self._pool.submit(self._serve, conn, waiting.address)

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            late = [conn for conn, w in self._waiting.items() if w.deadline < now]
            for conn in late:
                del self._waiting[conn]
                self._forget(conn)

    def _serve(self, conn: socket.socket, address: Any) -> None:
        try:
            self.finish_request(conn, address)
        except Exception:
            self.handle_error(conn, address)
        finally:
            self._heads.pop(conn, None)
            self.shutdown_request(conn)

    def head_of(self, conn: socket.socket) -> bytes:
        """The request head the waiting room read for ``conn``."""
        return self._heads.get(conn, b"")

    def server_close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._wake_w.send(b"\0")
        if self._room is not None:
            self._room.join(timeout=5)
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for conn in list(self._waiting):
                self._forget(conn)
            self._waiting.clear()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


class HeadReadingHandler(BaseHTTPRequestHandler):
    """A handler that reads its request from the head the waiting room already read."""

    server: BoundedHTTPServer

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BytesIO(self.server.head_of(self.request))
