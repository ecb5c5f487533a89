"""Every ```python block marked ``<!-- runnable -->`` in docs/ runs, as written, on a real database.

Each block runs in a fresh interpreter with ``DATABASE_URL`` pointing at a fresh migrated
database, from an empty directory, so it can rely on nothing but the installed package.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MARKED = re.compile(r"^<!-- runnable -->\n```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def samples() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for n, match in enumerate(MARKED.finditer(page.read_text()), start=1):
            found.append((f"{page.relative_to(DOCS)}#{n}", match.group(1)))
    return found


SAMPLES = samples()


def test_the_pages_that_promise_runnable_samples_have_them() -> None:
    pages = {name.partition("#")[0] for name, _ in SAMPLES}
    assert {
        "quickstart.md",
        "howto/configure-database.md",
        "howto/progress.md",
        "howto/periodic-tasks.md",
        "howto/test-your-tasks.md",
    } <= pages


@pytest.mark.parametrize(("name", "code"), SAMPLES, ids=[name for name, _ in SAMPLES])
def test_sample_runs(name: str, code: str, database_url: str) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PGCELERY_")},
        "DATABASE_URL": database_url,
        "PGCELERY_METRICS_ENABLED": "false",
        "PGCELERY_LOG_LEVEL": "WARNING",
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tempfile.mkdtemp(prefix="pgcelery-doc-"),
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
