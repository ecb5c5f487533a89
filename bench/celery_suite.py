"""``make celery-suite``: Celery's own integration suite (``t/integration``) run on pgcelery.

Celery's integration tests are a good guide to what users expect from a broker and a result
backend. This downloads the sdist of the Celery version pgcelery is locked to into
``.tools/celery-suite/`` (Celery's code is never copied into this repository), builds a
throwaway virtualenv there from ``uv.lock`` plus the pytest plugins Celery's conftest uses,
creates and migrates a fresh database, and runs the suite with ``bench.celery_suite_plugin``,
which points ``TEST_BROKER``/``TEST_BACKEND`` at pgcelery. It needs the network (PyPI), so it
is not part of ``make test``. Results: docs/reference/celery-compatibility.md.

    python -m bench.celery_suite                      # t/integration/test_tasks.py
    python -m bench.celery_suite --defaults           # with pgcelery's production defaults
    python -m bench.celery_suite --stock              # stock kombu sqla + Celery db backend
    python -m bench.celery_suite -- -k revoke -x      # anything after -- goes to pytest

The database server: BENCH_DATABASE_URL / TEST_DATABASE_URL, else 127.0.0.1:5432, else an
embedded one (bench/environment.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

from bench.environment import drop_database, fresh_database, postgres_server

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".tools" / "celery-suite"
#: What Celery's integration conftest and tasks import beyond Celery itself (its
#: requirements/test*.txt); tblib lets the prefork test worker forward logged tracebacks.
PLUGINS = (
    "pytest-timeout==2.4.0",
    "pytest-rerunfailures==16.7",
    "pytest-subtests==0.15.0",
    "pytest-order==1.5.0",
    "tblib==3.2.2",
)
DEFAULT_TESTS = ("t/integration/test_tasks.py",)


def _run(argv: list[str]) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True)


def sources(celery_version: str) -> Path:
    """Celery's sdist, downloaded and unpacked once per version."""
    tree = WORK / f"celery-{celery_version}"
    if (tree / "t" / "integration" / "conftest.py").exists():
        return tree
    WORK.mkdir(parents=True, exist_ok=True)
    archive = WORK / f"celery-{celery_version}.tar.gz"
    if not archive.exists():
        _run(
            [
                *_pip(sys.executable),
                "download",
                f"celery=={celery_version}",
                "--no-binary",
                ":all:",
                "--no-deps",
                "--dest",
                str(WORK),
            ]
        )
    with tarfile.open(archive) as tar:
        tar.extractall(WORK, filter="data")
    return tree


def _pip(python: str) -> list[str]:
    """pip for ``python``: its own, else uv's (a uv-made venv has no pip)."""
    found = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, check=False)
    if found.returncode == 0:
        return [python, "-m", "pip"]
    return [str(ROOT / ".tools" / "bin" / "uv"), "pip", "--python", python]


def virtualenv(celery_version: str) -> Path:
    """A venv with the locked runtime dependencies and Celery's test plugins (not pgcelery's)."""
    venv = WORK / "venv"
    python = venv / "bin" / "python"
    marker = venv / f".installed-{celery_version}"
    if marker.exists():
        return python
    _run([sys.executable, "-m", "venv", "--clear", str(venv)])
    requirements = WORK / "requirements.txt"
    exported = subprocess.run(
        [
            str(ROOT / ".tools" / "bin" / "uv"),
            "export",
            "--frozen",
            "--no-dev",
            "--no-emit-project",
            "--no-hashes",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requirements.write_text(exported)
    redis = f"redis=={version('redis')}"  # t/integration/tasks.py imports it (lazily)
    pytest = f"pytest=={version('pytest')}"
    install = [str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)]
    _run([*install, pytest, redis, *PLUGINS])
    marker.touch()
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--defaults", action="store_true", help="pgcelery's production defaults")
    mode.add_argument("--stock", action="store_true", help="stock kombu sqla + Celery db")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args(argv)

    celery_version = version("celery")
    tree = sources(celery_version)
    python = virtualenv(celery_version)
    with postgres_server() as admin_url:
        url = fresh_database(admin_url)
        try:
            if not args.stock:  # stock kombu and Celery create their own tables
                from pgcelery.schema import migrations

                migrations.upgrade(url)
            target = url.split("://", 1)[1]
            env = {
                **os.environ,
                "TEST_BROKER": f"sqla+postgresql+psycopg://{target}",
                "TEST_BACKEND": f"db+postgresql+psycopg://{target}",
                "DATABASE_URL": url,
                "PYTHONPATH": f"{ROOT / 'backend'}:{ROOT}:{tree}",
            }
            if args.defaults:
                env["PGCELERY_SUITE_DEFAULTS"] = "1"
            plugins = ["-p", "celery.contrib.pytest"]
            if not args.stock:
                plugins += ["-p", "bench.celery_suite_plugin"]
            tests = list(args.pytest_args)
            if not any(arg.startswith("t/") for arg in tests):
                tests = [*DEFAULT_TESTS, *tests]
            command = [str(python), "-m", "pytest", *plugins, "-p", "no:cacheprovider"]
            command += ["-rfEsxXR", *tests]
            print("+", " ".join(command), flush=True)
            return subprocess.run(command, cwd=tree, env=env, check=False).returncode
        finally:
            drop_database(admin_url, url)


if __name__ == "__main__":
    sys.exit(main())
