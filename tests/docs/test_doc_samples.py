"""Every ```python block in README.md and docs/ is either run, as written, on a real database,
or marked as a fragment with the reason it cannot run.

A block is preceded (on the line above its fence) by one of three markers:

* ``<!-- runnable -->``: runs in a fresh interpreter with ``DATABASE_URL`` pointing at a fresh
  migrated database, from a directory of its own, so it relies on nothing but the installed
  package and the page's ``file:`` blocks;
* ``<!-- file: path/to/module.py -->``: written to that path in the directory where the page's
  runnable blocks run (``myservice/worker.py``), and importable from them; compiled here;
* ``<!-- fragment: REASON -->``: part of a larger program (undefined names, ``...``, a host's
  ``env.py``); compiled here, so at least its syntax is right. Say why in REASON.

How to add a page with code: mark each block, and prefer ``runnable``. The contributor guide
(docs/contributing/index.md) says the same.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
BLOCK = re.compile(
    r"^(?:<!-- (?P<kind>[a-z]+)(?::\s*(?P<arg>.*?))? -->\n)?```python\n(?P<code>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
KINDS = ("runnable", "file", "fragment")


@dataclass(frozen=True)
class Block:
    page: str
    number: int
    kind: str | None
    arg: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.page}#{self.number}"


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def blocks() -> list[Block]:
    found = []
    for page in pages():
        text = page.read_text()
        for n, match in enumerate(BLOCK.finditer(text), start=1):
            found.append(
                Block(
                    str(page.relative_to(ROOT)),
                    n,
                    match["kind"],
                    (match["arg"] or "").strip(),
                    match["code"],
                )
            )
    return found


BLOCKS = blocks()
RUNNABLE = [b for b in BLOCKS if b.kind == "runnable"]


def files_of(page: str) -> dict[str, str]:
    return {b.arg: b.code for b in BLOCKS if b.page == page and b.kind == "file"}


def test_every_python_block_is_runnable_or_says_why_not() -> None:
    unmarked = [b.name for b in BLOCKS if b.kind not in KINDS]
    assert not unmarked, f"mark these blocks (see this module's docstring): {unmarked}"
    unexplained = [b.name for b in BLOCKS if b.kind in ("fragment", "file") and not b.arg]
    assert not unexplained, f"a fragment needs a reason, a file a path: {unexplained}"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_every_python_block_compiles(block: Block) -> None:
    compile(block.code, block.name, "exec")


def test_the_pages_that_promise_runnable_samples_have_them() -> None:
    pages = {b.page for b in RUNNABLE}
    assert {
        "README.md",
        "docs/quickstart.md",
        "docs/howto/configure-database.md",
        "docs/howto/progress.md",
        "docs/howto/periodic-tasks.md",
        "docs/howto/test-your-tasks.md",
        "docs/howto/retries.md",
        "docs/howto/async-tasks.md",
        "docs/howto/transactional-enqueue.md",
    } <= pages


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.name for b in RUNNABLE])
def test_sample_runs(block: Block, database_url: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pgcelery-doc-"))
    for path, code in files_of(block.page).items():
        target = workdir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code)
        for parent in target.relative_to(workdir).parents[:-1]:
            (workdir / parent / "__init__.py").touch()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PGCELERY_", "CELERY_"))},
        "DATABASE_URL": database_url,
        "PGCELERY_METRICS_ENABLED": "false",
        "PGCELERY_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", block.code],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"{block.name} failed:\n{done.stdout}\n{done.stderr}"
