"""No silent bypass: Celery's own variables and config modules cannot move pgcelery's broker or
result backend off DATABASE_URL (issue 20)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pgcelery import ConfigurationError, create_app
from pgcelery.settings import Settings

URL = "postgresql://app:overrides-pw-7c1@db.example:5432/app"


def _settings() -> Settings:
    return Settings(DATABASE_URL=URL, PGCELERY_METRICS_ENABLED=False)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CELERY_BROKER_URL", "redis://localhost:6379/0"),
        ("CELERY_RESULT_BACKEND", "redis://localhost:6379/1"),
        ("CELERY_BROKER_WRITE_URL", "amqp://guest@localhost//"),
        ("CELERY_BROKER_READ_URL", "sqla+postgresql://other@elsewhere/db"),
    ],
)
def test_a_celery_variable_that_would_replace_the_broker_is_refused(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=f"unset {variable}") as refused:
        create_app("overridden", settings=_settings())
    assert "no fallback broker" in str(refused.value)
    assert "overrides-pw-7c1" not in str(refused.value)
    assert "localhost" not in str(refused.value)


def test_the_same_urls_in_celery_variables_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", f"sqla+{URL}")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", f"db+{URL}")
    app = create_app("same", settings=_settings())
    assert app.conf.broker_url == f"sqla+{URL}"
    app.close()


def test_a_config_module_that_moves_the_broker_is_refused_when_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "leftover_celeryconfig.py").write_text(
        'broker_write_url = "redis://localhost:6379/0"\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CELERY_CONFIG_MODULE", "leftover_celeryconfig")
    app = create_app("configured", settings=_settings())
    with pytest.raises(ConfigurationError, match="broker_write_url"):
        _ = app.conf.broker_url
    with pytest.raises(ConfigurationError, match="broker_write_url"):
        app.connection_for_write()
    sys.modules.pop("leftover_celeryconfig", None)


def test_config_from_object_is_checked_too() -> None:
    app = create_app("from-object", settings=_settings())
    assert app.conf.broker_url.startswith("sqla+postgresql+psycopg://")

    class Leftover:
        result_backend = "redis://localhost:6379/1"
        broker_read_url = "redis://localhost:6379/0"

    with pytest.raises(ConfigurationError, match="broker_read_url"):  # noqa: PT012
        app.config_from_object(Leftover)  # reloads at once: the app was configured
        _ = app.conf.broker_read_url


def test_the_app_is_current_in_every_thread() -> None:
    """Celery's current app is thread-local: a web server's thread must not get the default."""
    import threading

    from celery import current_app

    app = create_app("every-thread", settings=_settings())
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(current_app._get_current_object()))
    thread.start()
    thread.join(10)
    assert seen == [app]
    app.close()


def test_celery_default_app_refuses_to_send_where_pgcelery_is_configured(tmp_path: Path) -> None:
    """A process that imports its tasks (and pgcelery) but never create_app."""
    import os
    import subprocess

    code = (
        "import pgcelery\n"
        "from celery import shared_task\n"
        "@shared_task(name='svc.add')\n"
        "def add(x, y):\n"
        "    return x + y\n"
        "try:\n"
        "    add.delay(2, 3)\n"
        "except pgcelery.ConfigurationError as exc:\n"
        "    print('refused:', exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "PGCELERY_"))}
    env["DATABASE_URL"] = URL
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "refused: task 'svc.add' was sent through Celery's default app" in done.stdout
    assert "import the module that calls create_app" in done.stdout
