"""Facts the docs state that the code decides: revision names, the head, the app role's grants,
the migrate command of a host application (issue 20: docs that contradicted the code)."""

from __future__ import annotations

import re
from pathlib import Path

from pgcelery.schema import migrations, preflight

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _text() -> dict[str, str]:
    return {str(page.relative_to(ROOT)): page.read_text() for page in PAGES}


def test_every_revision_named_exists_and_every_head_named_is_the_head() -> None:
    for page, text in _text().items():
        for name in re.findall(r"\b(\d{4}_[a-z_]+[a-z])\b", text):
            assert name in migrations.revisions(), f"{page} names revision {name}"
        for claim in re.findall(r"(?:at head|code expects|expects) `?(\d{4}_[a-z_]+[a-z])", text):
            assert claim == migrations.head(), f"{page} says the head is {claim}"


def test_hosts_upgrade_every_head() -> None:
    """`alembic upgrade head` fails once a host's history carries pgcelery's branch."""
    for page, text in _text().items():
        for line in text.splitlines():
            if re.search(r"alembic upgrade head\b(?!s)", line):
                assert "checkout" in line or "--sql" in line or "heads" in line, f"{page}: {line}"


def test_the_grants_listed_are_the_grants_made() -> None:
    text = (ROOT / "docs/howto/migrations.md").read_text()
    listed: dict[str, set[str]] = {}
    for tables, privileges in re.findall(r"^\| (`[a-z_]+`(?:, `[a-z_]+`)*) \| `([A-Z, ]+)` \|$",
                                         text, re.MULTILINE):  # fmt: skip
        for table in re.findall(r"`([a-z_]+)`", tables):
            listed[table] = {p.strip() for p in privileges.split(",")}
    assert listed == {t: set(p) for t, p in preflight.REQUIRED_TABLE_PRIVILEGES.items()}
