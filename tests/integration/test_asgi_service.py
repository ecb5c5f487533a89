"""An ASGI service (Starlette, in-process through httpx) on pgcelery's async API, real workers.

The service of docs/howto/fastapi.md: it returns task ids, awaits results with ``aget``, and
enqueues inside its own transaction with the tenant's GUCs set, while a worker process runs the
tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
import pytest
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import pgcelery
from pgcelery import aget, asend, create_app, db, send_in_transaction, tenant_context
from pgcelery.settings import Settings
from tests.support import postgres
from tests.support.workers import worker_process

A = "6f1f3c39-8a4e-4a65-9a2b-0d7a0e6f3b11"


def service(app: Celery, settings: Settings) -> Starlette:
    add = app.signature("tests.add")

    async def start_add(request: Request) -> JSONResponse:
        body = await request.json()
        result = await asend(add.clone(args=(body["x"], body["y"])))
        return JSONResponse({"task_id": result.id}, status_code=202)

    async def task_result(request: Request) -> JSONResponse:
        result = app.AsyncResult(request.path_params["task_id"])
        try:
            value = await aget(result, timeout=float(request.query_params.get("wait", "60")))
        except CeleryTimeoutError:
            return JSONResponse({"state": result.state}, status_code=202)
        return JSONResponse({"state": "SUCCESS", "result": value})

    async def place_order(request: Request) -> JSONResponse:
        body = await request.json()
        with tenant_context(request.headers["x-tenant-id"]):
            async with db.async_connection(settings) as conn:
                tenant = await (
                    await conn.execute("SELECT current_setting('app.current_tenant_id', true)")
                ).fetchone()
                await conn.execute("INSERT INTO orders (item) VALUES (%s)", (body["item"],))
                result = await send_in_transaction(conn, app.signature("tests.echo", (body,)))
                if body.get("fail"):
                    raise RuntimeError("the order is refused after the task was sent")
        return JSONResponse({"task_id": result.id, "tenant": tenant[0] if tenant else None})

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await pgcelery.aclose()

    return Starlette(
        routes=[
            Route("/add", start_add, methods=["POST"]),
            Route("/tasks/{task_id}", task_result),
            Route("/orders", place_order, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


@pytest.fixture
def served(database_url: str) -> Iterator[tuple[Celery, Settings]]:
    with psycopg.connect(postgres.libpq(database_url), autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)")
    settings = Settings(DATABASE_URL=database_url, PGCELERY_METRICS_ENABLED=False)
    client = create_app(settings=settings)
    argv = ["celery", "-A", "tests.support.app", "worker", "-P", "solo", "--loglevel=WARNING"]
    with worker_process(database_url, argv=argv):
        yield client, settings
    client.close()


def call(web: Starlette, scenario: Any) -> Any:
    async def main() -> Any:
        async with web.router.lifespan_context(web):
            transport = httpx.ASGITransport(app=web)
            async with httpx.AsyncClient(transport=transport, base_url="http://svc") as http:
                return await scenario(http)

    return asyncio.run(main())


def test_a_service_returns_task_ids_and_awaits_results(served: tuple[Celery, Settings]) -> None:
    app, settings = served

    async def scenario(http: httpx.AsyncClient) -> list[Any]:
        async def one(i: int) -> Any:
            started = await http.post("/add", json={"x": i, "y": 100})
            assert started.status_code == 202
            done = await http.get(f"/tasks/{started.json()['task_id']}")
            return done.json()

        return await asyncio.gather(*(one(i) for i in range(200)))

    replies = call(service(app, settings), scenario)
    assert replies == [{"state": "SUCCESS", "result": i + 100} for i in range(200)]


def test_a_result_not_ready_in_time_answers_with_its_state(
    served: tuple[Celery, Settings],
) -> None:
    app, settings = served

    async def scenario(http: httpx.AsyncClient) -> Any:
        result = await asend(app.signature("tests.sleep", args=(3,)))
        return (await http.get(f"/tasks/{result.id}", params={"wait": "0.3"})).status_code

    assert call(service(app, settings), scenario) == 202


def test_an_order_and_its_task_commit_or_roll_back_together(
    served: tuple[Celery, Settings], database_url: str
) -> None:
    app, settings = served

    async def scenario(http: httpx.AsyncClient) -> tuple[Any, Any]:
        headers = {"x-tenant-id": A}
        placed = await http.post("/orders", json={"item": "book"}, headers=headers)
        echoed = await aget(app.AsyncResult(placed.json()["task_id"]), timeout=60)
        with pytest.raises(RuntimeError, match="refused"):
            await http.post("/orders", json={"item": "pen", "fail": True}, headers=headers)
        # Sent after the refused one: had that one been queued, it would have run by now.
        after = await asend(app.signature("tests.add", args=(1, 1)))
        assert await aget(after, timeout=60) == 2
        return placed.json(), echoed

    placed, echoed = call(service(app, settings), scenario)
    assert placed["tenant"] == A
    assert echoed["args"] == [{"item": "book"}]
    with psycopg.connect(postgres.libpq(database_url)) as conn:
        items = conn.execute("SELECT item FROM orders").fetchall()
        echoes = conn.execute(
            "SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS' AND result IS NOT NULL"
        ).fetchone()
    assert items == [("book",)]
    assert echoes == (2,)  # the book's echo and the 1 + 1, nothing for the pen
