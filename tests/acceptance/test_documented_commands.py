"""The shell commands of the README, the quickstart and the Procfile pages, run as written
against a fresh (empty) database, with the service modules the pages define (issue 20).

``pip install`` and ``make dist`` lines are not run here (the package under test is already
installed; CI runs ``make dist`` as a step of its own); every other command is.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.docs.test_doc_samples import BLOCKS, files_of
from tests.support.waiting import wait_until
from tests.support.workers import ROOT

BIN = Path(sys.executable).parent
SHELL_BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
PROCFILE_BLOCK = re.compile(r"^```\n((?:(?:release|worker|beat|web): .*\n)+)```$", re.MULTILINE)
SKIPPED = ("pip ", "make ")


class Process:
    """A long-running documented command (a worker, beat), its output in a file."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.log = Path(tempfile.mkstemp(prefix="pgcelery-doc-cmd-", suffix=".log")[1])
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=out)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextmanager
def service(page: str, database_url: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """A directory holding the page's ``file:`` modules, and the environment to run in it."""
    workdir = Path(tempfile.mkdtemp(prefix="pgcelery-service-"))
    for path, code in files_of(page).items():
        target = workdir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code)
        (target.parent / "__init__.py").touch()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PGCELERY_", "CELERY_"))},
        "DATABASE_URL": database_url,
        "PGCELERY_METRICS_ENABLED": "false",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")]),
    }
    yield workdir, env


def shell_lines(page: str) -> list[str]:
    text = (ROOT / page).read_text()
    lines = []
    for block in SHELL_BLOCK.findall(text):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command and not command.startswith((*SKIPPED, "#")):
                lines.append(command)
    return lines


def procfile(text: str) -> dict[str, list[str]]:
    return {
        kind: shlex.split(command)
        for kind, _, command in (line.partition(": ") for line in text.strip().splitlines())
    }


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def ready(process: Process) -> None:
    wait_until(
        lambda: " ready." in process.output() or process.proc.poll() is not None,
        timeout=180,
        interval=0.2,
        what=f"{process.proc.args} to be ready",
    )
    assert process.proc.poll() is None, process.output()


def send(code: str, cwd: Path, env: dict[str, str]) -> None:
    run([sys.executable, "-c", code], cwd, env)


ROUND_TRIP = (
    "import myservice.worker\nfrom myservice.tasks import add\n"
    "assert add.delay(2, 3).get(timeout=60) == 5\n"
)


@pytest.mark.parametrize("page", ["docs/quickstart.md", "README.md"])
def test_the_service_pages_commands_run_as_written(page: str, empty_database_url: str) -> None:
    with service(page, empty_database_url) as (workdir, env), ExitStack() as stack:
        commands = shell_lines(page)
        assert any(c.startswith("celery -A myservice.worker worker") for c in commands)
        for command in commands:
            if command.startswith("export "):
                name = command.removeprefix("export ").partition("=")[0]
                assert name == "DATABASE_URL", command  # the test database stands in for it
                continue
            argv = shlex.split(command)
            if argv[0] == "celery":
                process = Process(argv, workdir, env)
                stack.callback(process.stop)
                ready(process)
            else:
                run(argv, workdir, env)
        samples = [
            b
            for b in BLOCKS
            if b.page == page
            and "myservice" in b.code  # the page's self-contained samples have workers of their own
            and (b.kind == "runnable" or "test_documented_commands" in b.arg)
        ]
        assert samples
        for block in samples:
            send(block.code, workdir, env)
        send(ROUND_TRIP, workdir, env)


@pytest.mark.parametrize(
    ("source", "page"),
    [("Procfile", None), ("docs/howto/deploy-procfile.md", "docs/howto/deploy-procfile.md"),
     ("README.md", "README.md")],
)  # fmt: skip
def test_procfiles_release_worker_and_beat(
    source: str, page: str | None, empty_database_url: str
) -> None:
    text = (ROOT / source).read_text()
    found = text if source == "Procfile" else PROCFILE_BLOCK.findall(text)[0]
    lines = procfile(found)
    files_page = page if page and files_of(page) else "README.md"
    with service(files_page, empty_database_url) as (workdir, env), ExitStack() as stack:
        out = run(lines["release"], workdir, env)
        assert "pgcelery schema: empty -> " in out
        worker = Process(lines["worker"], workdir, env)
        stack.callback(worker.stop)
        beat = Process(lines["beat"], workdir, env)
        stack.callback(beat.stop)
        ready(worker)
        app = lines["worker"][lines["worker"].index("-A") + 1]
        send(
            f"from {app} import app\n"
            "assert app.send_task('housekeeping.ping').get(timeout=60)['status'] == 'ok'\n",
            workdir,
            env,
        )
        if app == "myservice.worker":
            send(ROUND_TRIP, workdir, env)
        wait_until(
            lambda: "leader_elected" in beat.output() or beat.proc.poll() is not None,
            timeout=120,
            interval=0.2,
            what="beat to lead",
        )
        assert beat.proc.poll() is None, beat.output()


def _kubernetes_containers() -> list[dict[str, Any]]:
    import yaml

    text = (ROOT / "docs/howto/deploy-kubernetes.md").read_text()
    containers: list[dict[str, Any]] = []
    for block in re.findall(r"^```yaml\n(.*?)^```$", text, re.MULTILINE | re.DOTALL):
        spec = yaml.safe_load(block)["spec"]["template"]["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            containers.append(container)
    return containers


def _memory_bytes(quantity: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    return int(quantity[:-2]) * units[quantity[-2:]]


def test_the_kubernetes_worker_fits_its_own_memory_rule() -> None:
    """The limit must exceed PGCELERY_MAX_MEMORY_PER_CHILD times the concurrency plus the parent."""
    (worker,) = [c for c in _kubernetes_containers() if c["name"] == "worker"]
    command = list(worker["command"])
    concurrency = int(command[command.index("-c") + 1])
    env = {e["name"]: e["value"] for e in worker.get("env", [])}
    per_child_kib = int(env.get("PGCELERY_MAX_MEMORY_PER_CHILD", 512_000))
    limit = _memory_bytes(worker["resources"]["limits"]["memory"])
    assert per_child_kib * 1024 * concurrency + 100 * 1024**2 < limit


def test_the_kubernetes_commands_run(empty_database_url: str) -> None:
    containers = {str(c["name"]): c for c in _kubernetes_containers()}
    with service("README.md", empty_database_url) as (workdir, env), ExitStack() as stack:
        run(["pgcelery", "migrate"], workdir, env)  # the migration Job
        run(list(containers["check"]["command"]), workdir, env)
        processes = {}
        for name in ("worker", "beat"):
            extra = {e["name"]: e["value"] for e in containers[name].get("env", [])}
            extra["PGCELERY_METRICS_ENABLED"] = "false"
            process = Process(list(containers[name]["command"]), workdir, {**env, **extra})
            stack.callback(process.stop)
            processes[name] = process
        ready(processes["worker"])
        send(ROUND_TRIP, workdir, env)
        beat = processes["beat"]
        wait_until(
            lambda: "leader_elected" in beat.output() or beat.proc.poll() is not None,
            timeout=120,
            interval=0.2,
            what="beat to lead",
        )
        assert beat.proc.poll() is None, beat.output()
