"""A deployment that runs tenant tasks without a signing key is told so."""

from __future__ import annotations

import pytest

from pgcelery.schema import preflight


def test_pgcelery_check_reports_a_missing_signing_key(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.delenv("PGCELERY_SIGNING_KEY", raising=False)
    findings: list[preflight.Finding] = []
    assert preflight.run_checks(findings.append) == preflight.Exit.OK
    signing = [f for f in findings if f.name == "signing"]
    assert signing
    assert "PGCELERY_SIGNING_KEY is not set" in signing[0].detail

    monkeypatch.setenv("PGCELERY_SIGNING_KEY", "set")
    findings.clear()
    assert preflight.run_checks(findings.append) == preflight.Exit.OK
    assert [f for f in findings if f.name == "signing"] == []
