"""Turn one ``DATABASE_URL`` into the URLs that SQLAlchemy, the broker and the result backend use.

Only PostgreSQL is accepted; there is deliberately no fallback to another broker. The URL is
rewritten as text rather than parsed and re-rendered, so percent-encoded passwords and query
values reach libpq exactly as the operator wrote them.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from pgcelery.exceptions import ConfigurationError

ACCEPTED_SCHEMES = (
    "postgres",
    "postgresql",
    "postgresql+psycopg",
    "postgresql+psycopg2",
    "postgresql+asyncpg",
)
SYNC_SCHEME = "postgresql+psycopg"
BROKER_SCHEME = "sqla+postgresql+psycopg"
RESULT_BACKEND_SCHEME = "db+postgresql+psycopg"

# asyncpg's ``ssl`` values map one to one onto libpq's ``sslmode``.
_ASYNCPG_SSL = {
    "disable": "disable",
    "allow": "allow",
    "prefer": "prefer",
    "require": "require",
    "verify-ca": "verify-ca",
    "verify-full": "verify-full",
    "true": "require",
    "false": "disable",
}
# asyncpg connect() keywords that libpq has no URI parameter for.
_ASYNCPG_ONLY = frozenset(
    {
        "prepared_statement_cache_size",
        "statement_cache_size",
        "max_cached_statement_lifetime",
        "max_cacheable_statement_size",
        "command_timeout",
        "server_settings",
        "direct_tls",
        "prepared_statement_name_func",
    }
)
#: libpq parameters every connection pgcelery opens gets, unless DATABASE_URL sets them itself:
#: an unreachable server fails a connect in 10 s, and a half-open connection (a server gone
#: without a FIN: failover, a cut network) is dropped within about a minute, not TCP's two hours.
CLIENT_DEFAULTS = (
    ("connect_timeout", "10"),
    ("keepalives", "1"),
    ("keepalives_idle", "30"),
    ("keepalives_interval", "10"),
    ("keepalives_count", "3"),
    ("tcp_user_timeout", "60000"),
)
_SCHEME_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>.*)$", re.DOTALL)
_PASSWORD_PARAM = re.compile(r"(?i)(?P<key>[&;]password=)(?P<value>[^&#]*)")


def _accepted() -> str:
    return ", ".join(f"{s}://" for s in ACCEPTED_SCHEMES)


def _split(database_url: str) -> tuple[str, str]:
    if not isinstance(database_url, str) or not database_url.strip():
        raise ConfigurationError(
            f"DATABASE_URL is empty: set it to a PostgreSQL URL ({_accepted()})."
        )
    match = _SCHEME_RE.match(database_url.strip())
    if match is None:
        raise ConfigurationError(
            f"DATABASE_URL is not a URL: expected a PostgreSQL URL ({_accepted()}), "
            f"for example postgresql://user:password@host:5432/dbname."
        )
    scheme = match["scheme"].lower()
    if scheme not in ACCEPTED_SCHEMES:
        raise ConfigurationError(
            f"DATABASE_URL must point at PostgreSQL; got a {scheme}:// URL. pgcelery runs on "
            f"PostgreSQL alone (no Redis, RabbitMQ or other fallback). Accepted: {_accepted()}."
        )
    return scheme, match["rest"]


def _translate_query(scheme: str, query: str) -> str:
    """Rewrite asyncpg-only query parameters into libpq ones, refusing those with no equivalent."""
    if not query:
        return query
    parts: list[str] = []
    for raw in query.split("&"):
        if not raw:
            continue
        raw_key, sep, raw_value = raw.partition("=")
        key = unquote(raw_key)
        value = unquote(raw_value)
        if key == "ssl":
            mode = _ASYNCPG_SSL.get(value.lower())
            if mode is None:
                raise ConfigurationError(
                    f"DATABASE_URL has ssl={value!r}, which libpq does not understand; use "
                    f"sslmode=disable|allow|prefer|require|verify-ca|verify-full instead."
                )
            parts.append(f"sslmode={mode}")
        elif key == "timeout" and scheme == "postgresql+asyncpg":
            parts.append(f"connect_timeout={quote(value, safe='')}")
        elif key in _ASYNCPG_ONLY:
            raise ConfigurationError(
                f"DATABASE_URL has the asyncpg-only parameter {key!r}, which psycopg/libpq does "
                f"not understand; remove it from DATABASE_URL (pgcelery connects with psycopg 3)."
            )
        else:
            parts.append(raw if sep else raw_key)
    return "&".join(parts)


def _with_client_defaults(query: str) -> str:
    given = {unquote(part.partition("=")[0]) for part in query.split("&") if part}
    missing = [f"{key}={value}" for key, value in CLIENT_DEFAULTS if key not in given]
    return "&".join(filter(None, [query, *missing]))


def sync_url(database_url: str) -> str:
    """Return ``DATABASE_URL`` as a ``postgresql+psycopg://`` URL for SQLAlchemy.

    User, password, host, port, database and libpq query parameters are kept verbatim;
    asyncpg-only parameters are translated or refused with :class:`ConfigurationError`; the
    timeouts and keepalives of :data:`CLIENT_DEFAULTS` are added where the URL has none.
    """
    scheme, rest = _split(database_url)
    location, qmark, query = rest.partition("?")
    if "#" in query or (not qmark and "#" in location):
        raise ConfigurationError("DATABASE_URL must not contain a #fragment.")
    query = _with_client_defaults(_translate_query(scheme, query))
    return f"{SYNC_SCHEME}://{location}?{query}"


def broker_url(database_url: str) -> str:
    """Return the broker URL (``sqla+postgresql+psycopg://…``) for ``DATABASE_URL``."""
    return f"sqla+{sync_url(database_url)}"


def result_backend_url(database_url: str) -> str:
    """Return the result backend URL (``db+postgresql+psycopg://…``) for ``DATABASE_URL``."""
    return f"db+{sync_url(database_url)}"


def _parts(url: str) -> tuple[str, str, str, str] | None:
    """Split ``url`` into (scheme, userinfo, rest of location, query); userinfo may be empty.

    The credentials end at the last ``@`` before the query: a password that contains ``@``
    unencoded is then still treated as a password, never printed as a host.
    """
    match = _SCHEME_RE.match(url.strip()) if isinstance(url, str) else None
    if match is None:
        return None
    location, _, query = match["rest"].partition("?")
    userinfo, at, host = location.rpartition("@")
    if not at:
        return match["scheme"], "", location, query
    return match["scheme"], userinfo, host, query


def password_of(url: str) -> str | None:
    """The password in ``url`` (netloc or ``password=`` parameter), as written, or ``None``."""
    parts = _parts(url)
    if parts is None:
        return None
    _, userinfo, _, query = parts
    _, colon, password = userinfo.partition(":")
    if colon and password:
        return password
    param = _PASSWORD_PARAM.search("&" + query)
    return param["value"] if param is not None and param["value"] else None


def redact(url: str) -> str:
    """Return ``url`` with its password (in the netloc or a ``password=`` parameter) as ``***``."""
    parts = _parts(url)
    if parts is None:
        return url
    scheme, userinfo, host, query = parts
    location = host
    if userinfo:
        user, colon, _ = userinfo.partition(":")
        location = f"{user}:***@{host}" if colon else f"{user}@{host}"
    if query:
        query = "?" + _PASSWORD_PARAM.sub(lambda m: f"{m['key']}***", "&" + query)[1:]
    return f"{scheme}://{location}{query}"


def libpq_url(database_url: str) -> str:
    """``DATABASE_URL`` as a plain ``postgresql://`` URI that psycopg/libpq accept directly."""
    return "postgresql" + sync_url(database_url)[len(SYNC_SCHEME) :]
