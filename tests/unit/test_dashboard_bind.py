"""The dashboard never listens beyond this machine without authentication unless told to."""

from __future__ import annotations

import pytest

from pgcelery.cli import main
from pgcelery.dashboard.serve import check_bind
from pgcelery.exceptions import ConfigurationError
from pgcelery.settings import Settings

URL = "postgresql://u@127.0.0.1:5432/db"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_needs_no_auth(host: str) -> None:
    check_bind(host, Settings(DATABASE_URL=URL))


def test_public_bind_without_auth_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigurationError, match="PGCELERY_DASHBOARD_USER"):
        check_bind("0.0.0.0", Settings(DATABASE_URL=URL))


def test_public_bind_with_auth_or_explicit_opt_out() -> None:
    check_bind(
        "0.0.0.0",
        Settings(DATABASE_URL=URL, PGCELERY_DASHBOARD_USER="a", PGCELERY_DASHBOARD_PASSWORD="b"),
    )
    check_bind("0.0.0.0", Settings(DATABASE_URL=URL), insecure_no_auth=True)
    check_bind("0.0.0.0", Settings(DATABASE_URL=URL, PGCELERY_DASHBOARD_INSECURE_NO_AUTH=True))


def test_user_without_password_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="must be set together"):
        Settings(DATABASE_URL=URL, PGCELERY_DASHBOARD_USER="a")


def test_cli_refuses_a_public_bind(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", URL)
    assert main(["dashboard", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "refusing to serve the dashboard on 0.0.0.0" in capsys.readouterr().err
