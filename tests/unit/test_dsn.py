from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgcelery import dsn
from pgcelery.exceptions import ConfigurationError

#: What sync_url adds to a URL that sets none of the client timeouts and keepalives.
DEFAULTS = "&".join(f"{key}={value}" for key, value in dsn.CLIENT_DEFAULTS)


def _defaults(*given: str) -> str:
    return "&".join(f"{k}={v}" for k, v in dsn.CLIENT_DEFAULTS if k not in given)


@pytest.mark.parametrize(
    "scheme",
    ["postgres", "postgresql", "postgresql+asyncpg", "postgresql+psycopg2", "postgresql+psycopg"],
)
def test_every_postgres_form_becomes_psycopg(scheme: str) -> None:
    url = f"{scheme}://user:pa%40ss@db.example:6543/app?sslmode=require&options=-c%20statement_timeout%3D5s"
    assert dsn.sync_url(url) == (
        "postgresql+psycopg://user:pa%40ss@db.example:6543/app"
        f"?sslmode=require&options=-c%20statement_timeout%3D5s&{DEFAULTS}"
    )


def test_broker_and_backend_urls() -> None:
    url = "postgres://u:p@h/db"
    assert dsn.broker_url(url) == f"sqla+postgresql+psycopg://u:p@h/db?{DEFAULTS}"
    assert dsn.result_backend_url(url) == f"db+postgresql+psycopg://u:p@h/db?{DEFAULTS}"


def test_client_timeouts_and_keepalives_are_added_unless_given() -> None:
    url = "postgresql://u:p@h/db?keepalives_idle=120&connect_timeout=3"
    found = dsn.sync_url(url)
    rest = _defaults("keepalives_idle", "connect_timeout")
    assert found == f"postgresql+psycopg://u:p@h/db?keepalives_idle=120&connect_timeout=3&{rest}"
    # Idempotent: the URLs derived from it (the broker's, the backend's) add nothing again.
    assert dsn.sync_url(found) == found
    assert dsn.libpq_url(dsn.broker_url(url).removeprefix("sqla+")) == dsn.libpq_url(url)


def test_unix_socket_host_parameter_is_kept() -> None:
    url = "postgresql://postgres@/appdb?host=/var/run/postgresql&port=5433"
    assert (
        dsn.sync_url(url)
        == f"postgresql+psycopg://postgres@/appdb?host=/var/run/postgresql&port=5433&{DEFAULTS}"
    )


@pytest.mark.parametrize(
    ("given_ssl", "mode"),
    [("require", "require"), ("true", "require"), ("verify-full", "verify-full")],
)
def test_asyncpg_ssl_is_translated(given_ssl: str, mode: str) -> None:
    url = f"postgresql+asyncpg://u:p@h/db?ssl={given_ssl}&timeout=10"
    assert dsn.sync_url(url) == (
        f"postgresql+psycopg://u:p@h/db?sslmode={mode}&connect_timeout=10&"
        f"{_defaults('connect_timeout')}"
    )


def test_asyncpg_only_parameter_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="prepared_statement_cache_size"):
        dsn.sync_url("postgresql+asyncpg://u:secret@h/db?prepared_statement_cache_size=0")


@pytest.mark.parametrize(
    "url",
    [
        "redis://:secret@localhost:6379/0",
        "amqp://guest:secret@localhost//",
        "sqlite:///tmp/x.db",
        "mysql://root:secret@localhost/db",
        "",
        "   ",
        "not a url at all",
        "postgresql:/missing-slashes",
    ],
)
def test_non_postgres_is_refused_without_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        dsn.sync_url(url)
    message = str(info.value)
    assert "DATABASE_URL" in message
    assert "postgresql://" in message
    assert "secret" not in message


def test_redact_netloc_and_parameter() -> None:
    assert dsn.redact("postgresql://u:s3cr%40t@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert dsn.redact("postgresql://u@h/db?password=hunter2&sslmode=require") == (
        "postgresql://u@h/db?password=***&sslmode=require"
    )
    assert dsn.redact("postgresql://h/db") == "postgresql://h/db"


# Wrapped in a marker no other component can contain, so "not in" checks are meaningful.
passwords = st.text(min_size=0, max_size=40).map(lambda p: f"Zq{p}Zq")
users = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)
hosts = st.sampled_from(["localhost", "db.internal", "10.0.0.5", "[::1]"])
dbs = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
schemes = st.sampled_from(dsn.ACCEPTED_SCHEMES)
queries = st.lists(
    st.sampled_from(
        ["sslmode=require", "application_name=api", "host=/tmp/sock", "connect_timeout=5"]
    ),
    max_size=3,
    unique=True,
)


@given(
    scheme=schemes, user=users, password=passwords, host=hosts, port=st.integers(1, 65535), db=dbs
)
def test_redact_never_leaks_a_password(
    scheme: str, user: str, password: str, host: str, port: int, db: str
) -> None:
    encoded = quote(password, safe="")
    url = f"{scheme}://{user}:{encoded}@{host}:{port}/{db}"
    redacted = dsn.redact(url)
    assert redacted == f"{scheme}://{user}:***@{host}:{port}/{db}"
    assert "Zq" not in redacted
    for derived in (dsn.sync_url(url), dsn.broker_url(url), dsn.result_backend_url(url)):
        assert "Zq" not in dsn.redact(derived)
    param_url = f"{scheme}://{user}@{host}/{db}?sslmode=require&password={encoded}"
    assert "Zq" not in dsn.redact(param_url)


@given(
    scheme=schemes,
    user=users,
    password=passwords,
    host=hosts,
    port=st.integers(1, 65535),
    db=dbs,
    query=queries,
)
def test_sync_url_keeps_every_component(
    scheme: str, user: str, password: str, host: str, port: int, db: str, query: list[str]
) -> None:
    encoded = quote(password, safe="")
    suffix = f"?{'&'.join(query)}" if query else ""
    url = f"{scheme}://{user}:{encoded}@{host}:{port}/{db}{suffix}"
    kept = f"postgresql+psycopg://{user}:{encoded}@{host}:{port}/{db}{suffix}"
    rest = _defaults(*(part.partition("=")[0] for part in query))
    assert dsn.sync_url(url) == f"{kept}{'&' if query else '?'}{rest}"
    assert dsn.password_of(url) == encoded
