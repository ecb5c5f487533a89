"""The queue page's backlog per tenant and its tasks waiting on a limit."""

from __future__ import annotations

import re

from celery import Celery
from starlette.testclient import TestClient

from pgcelery.broker.limits import TENANT_HEADER
from pgcelery.observability.backlog import TOP_TENANTS
from tests.support.backlog import TENANT_QUEUE, backlog, many_tenants


def _row(page: str, marker: str) -> str:
    found = re.search(rf"<tr {re.escape(marker)}>.*?</tr>", page, re.S)
    assert found is not None, f"no row {marker}"
    return found.group(0)


def test_queue_page_shows_tenant_backlog_and_tasks_waiting_on_a_limit(
    client: TestClient, app: Celery
) -> None:
    with backlog(app) as made:
        page = client.get("/queues")
    assert page.status_code == 200
    text = page.text
    limited = _row(text, 'data-limit-wait="celery" data-task="tests.limited"')
    assert '<td class="n waiting">2</td>' in limited
    rated = _row(text, 'data-limit-wait="celery" data-task="tests.rated"')
    assert '<td class="n waiting">2</td>' in rated
    assert 'data-task="tests.roomy"' not in text, "free slots: waiting for a worker, not a limit"
    a = _row(text, f'data-backlog="{TENANT_QUEUE}" data-tenant="{made.tenant_a}"')
    assert '<td class="n pending">3</td>' in a
    b = _row(text, f'data-backlog="{TENANT_QUEUE}" data-tenant="{made.tenant_b}"')
    assert '<td class="n pending">2</td>' in b
    global_tasks = _row(text, f'data-backlog="{TENANT_QUEUE}" data-tenant="global"')
    assert "<em>global tasks</em>" in global_tasks
    assert '<td class="n pending">1</td>' in global_tasks
    # The biggest backlog comes first within its queue.
    assert text.index(made.tenant_a) < text.index(made.tenant_b)


def test_queue_page_lists_only_the_top_tenants_of_a_queue(client: TestClient, app: Celery) -> None:
    tenants = many_tenants(app, TOP_TENANTS + 3)
    text = client.get("/queues").text
    listed = re.findall(rf'data-backlog="{TENANT_QUEUE}" data-tenant="([^"]+)"', text)
    assert listed == list(reversed(tenants[-TOP_TENANTS:]))


def test_queue_page_says_when_nothing_waits(client: TestClient, app: Celery) -> None:
    text = client.get("/queues").text
    assert "No pending messages." in text
    assert "No task is waiting on a concurrency or rate limit." in text


def test_a_tenant_id_written_behind_pgcelery_s_back_is_escaped(
    client: TestClient, app: Celery
) -> None:
    # The broker copies the (unverified) header into the row; the page must not trust it.
    app.send_task("tests.add", (1, 1), queue=TENANT_QUEUE, headers={TENANT_HEADER: "<b>x</b>"})
    text = client.get("/queues").text
    assert "<b>x</b>" not in text
    assert "&lt;b&gt;x&lt;/b&gt;" in text
