"""`pgcelery worker` takes -A/--app and hands every other option to Celery, in order."""

from __future__ import annotations

import pytest

from pgcelery import ConfigurationError
from pgcelery.cli import worker


def test_celery_options_pass_through_in_order() -> None:
    args = worker.parse(["-E", "-Q", "reports,celery", "--concurrency", "4", "-P", "prefork"])
    assert args.app == "pgcelery.celery_app"
    assert args.celery_args == ["-E", "-Q", "reports,celery", "--concurrency", "4", "-P", "prefork"]


@pytest.mark.parametrize(
    "argv",
    [["-A", "myservice.worker"], ["--app", "myservice.worker"], ["--app=myservice.worker"],
     ["-Amyservice.worker"]],
)  # fmt: skip
def test_the_app_is_ours(argv: list[str]) -> None:
    args = worker.parse([*argv, "-E", "--loglevel=DEBUG"])
    assert args.app == "myservice.worker"
    assert args.loglevel == "DEBUG"
    assert args.celery_args == ["-E"]


def test_an_app_option_without_a_value_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="-A needs a value"):
        worker.parse(["-A"])


def test_the_send_hint_never_prints_a_redacted_url() -> None:
    with_password = worker._send_hint("postgresql://app:s3cret@db/app")
    assert "***" not in with_password
    assert "s3cret" not in with_password
    assert "DATABASE_URL='" not in with_password
    without = worker._send_hint("postgresql://postgres@127.0.0.1:5432/pgcelery")
    assert "DATABASE_URL='postgresql://postgres@127.0.0.1:5432/pgcelery'" in without
