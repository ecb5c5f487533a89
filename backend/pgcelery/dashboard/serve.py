"""Serving the dashboard: where it may bind, and the uvicorn server that runs it."""

from __future__ import annotations

import ipaddress
import logging

from pgcelery.exceptions import ConfigurationError
from pgcelery.settings import Settings

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, settings: Settings, insecure_no_auth: bool = False) -> None:
    """Refuse to expose the dashboard beyond this machine without authentication."""
    if is_loopback(host) or settings.dashboard_user:
        return
    if insecure_no_auth or settings.dashboard_insecure_no_auth:
        log.warning(
            "pgcelery.dashboard.no_auth: serving on %s without authentication",
            host,
            extra={"host": host},
        )
        return
    raise ConfigurationError(
        f"refusing to serve the dashboard on {host} without authentication: set "
        "PGCELERY_DASHBOARD_USER and PGCELERY_DASHBOARD_PASSWORD, bind 127.0.0.1, or pass "
        "--insecure-no-auth (PGCELERY_DASHBOARD_INSECURE_NO_AUTH=true) when a proxy in front "
        "authenticates"
    )


def serve(settings: Settings, host: str, port: int, insecure_no_auth: bool = False) -> None:
    """Run the dashboard until interrupted."""
    check_bind(host, settings, insecure_no_auth)
    try:
        import uvicorn
    except ImportError:
        raise ConfigurationError(
            "the dashboard needs its extra: pip install 'pgcelery[dashboard]'"
        ) from None
    from pgcelery.dashboard.app import create_dashboard

    log.info(
        "pgcelery.dashboard.serving on http://%s:%s (database %s)",
        host,
        port,
        settings.redacted_url,
        extra={"host": host, "port": port},
    )
    uvicorn.run(
        create_dashboard(settings, bind_host=host),
        host=host,
        port=port,
        log_level="info",
        server_header=False,
    )
