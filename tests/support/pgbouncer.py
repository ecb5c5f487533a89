"""A real PgBouncer in transaction pooling mode in front of the test database.

Debian's ``pgbouncer`` package provides the binary (``.ci/run`` installs it). PgBouncer refuses to
run as root, so when the tests are root it is started with ``-u nobody``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from pgcelery import dsn
from tests.support.waiting import wait_until
from tests.support.workers import free_port


def binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None
    )


def require_binary() -> str:
    found = binary()
    if found is None:
        message = "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@contextmanager
def transaction_pooler(database_url: str, pool_size: int = 2) -> Iterator[str]:
    """Yields a URL for ``database_url``'s database through PgBouncer, transaction pooling."""
    target = make_url(dsn.sync_url(database_url))
    user = target.username or "postgres"
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="pgcelery-pgbouncer-"))
    # Writable by "nobody", the user PgBouncer runs as when started by root (its log).
    work.chmod(0o777)
    (work / "users.txt").write_text(f'"{user}" "{target.password or ""}"\n')
    (work / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{target.database} = host={target.host or '127.0.0.1'} port={target.port or 5432}"
        f" dbname={target.database} user={user}"
        + (f" password={target.password}" if target.password else "")
        + "\n[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {work / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 200\n"
        f"logfile = {work / 'pgbouncer.log'}\n"
    )
    for path in work.iterdir():
        path.chmod(0o644)
    command = [require_binary(), str(work / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]
    output = (work / "output.txt").open("wb")
    proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        url = f"postgresql://{user}@127.0.0.1:{port}/{target.database}"
        wait_until(lambda: _accepts(url) or proc.poll() is not None, timeout=20, what="pgbouncer")
        assert proc.poll() is None, (work / "output.txt").read_text(errors="replace")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        output.close()


def _accepts(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(dsn.libpq_url(url), prepare_threshold=None, autocommit=True) as c:
            c.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True
