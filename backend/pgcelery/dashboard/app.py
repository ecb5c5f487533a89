"""The dashboard's web application: Starlette routes over server-side Jinja2 templates.

Every page is one template; a request with the ``X-Dashboard-Fragment`` header gets only the
page's content, which the page's few lines of JavaScript fetch every
``PGCELERY_DASHBOARD_REFRESH`` seconds to refresh without reloading.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery, states
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from pgcelery.dashboard import charts
from pgcelery.dashboard.actions import ACTIONS, ActionRefused, Actions
from pgcelery.dashboard.queries import Queries
from pgcelery.dashboard.security import Guard, SingleUseTokens, allowed_hosts
from pgcelery.observability import backlog
from pgcelery.settings import Settings

HERE = Path(__file__).parent
STATES = (*sorted(states.ALL_STATES - {states.PENDING}), states.PENDING)
FRAGMENT_HEADER = "x-dashboard-fragment"
#: The fixed notice shown after each action (the outcome itself is in the log).
DONE_NOTICES = {
    "retry": "Task sent again.",
    "revoke": "Task revoked.",
    "purge": "Queue purged.",
    "replay": "Dead letter put back on its queue.",
    "pause": "Queue paused: no worker claims from it until it is resumed.",
    "resume": "Queue resumed.",
}


class BasicAuth(BaseHTTPMiddleware):
    """HTTP basic auth for every path, compared in constant time."""

    def __init__(self, app: Any, user: str, password: str) -> None:
        super().__init__(app)
        self.user = user.encode()
        self.password = password.encode()

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            user, password = b"", b""
        ok = scheme.lower() == "basic"
        ok = secrets.compare_digest(user, self.user) & ok
        ok = secrets.compare_digest(password, self.password) & ok
        if not ok:
            return PlainTextResponse(
                "authentication required",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="pgcelery dashboard"'},
            )
        request.state.user = user.decode("utf-8", "replace")
        return await call_next(request)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _stamp(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _when(text: str | None) -> datetime | None:
    """A ``datetime-local`` form value, read as UTC like the stored timestamps."""
    if not text:
        return None
    try:
        found = datetime.fromisoformat(text)
    except ValueError:
        return None
    return found.astimezone(UTC).replace(tzinfo=None) if found.tzinfo else found


class Dashboard:
    def __init__(self, settings: Settings, celery_app: Celery | None = None) -> None:
        self.settings = settings
        self.queries = Queries(settings)
        self._celery = celery_app
        self.tokens = SingleUseTokens()
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["age"] = _age
        self.templates.env.filters["stamp"] = _stamp

    @property
    def actions(self) -> Actions:
        if self._celery is None:
            from pgcelery.app import create_app

            self._celery = create_app("pgcelery-dashboard", settings=self.settings)
        return Actions(self.queries, self._celery)

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.update(
            fragment=FRAGMENT_HEADER in request.headers,
            refresh=self.settings.dashboard_refresh,
            actions_enabled=self.settings.dashboard_actions,
            notice=DONE_NOTICES.get(request.query_params.get("done", "")),
            page=name.removesuffix(".html"),
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/queues", status_code=302)

    def queues(self, request: Request) -> Response:
        rows = self.queries.queues()
        chart = charts.throughput_svg(self.queries.throughput())
        return self.render(
            request,
            "queues.html",
            queues=rows,
            chart=chart,
            tenants=self.queries.tenant_backlog(),
            waits=self.queries.limit_waits(),
            top_tenants=backlog.TOP_TENANTS,
        )

    def workers(self, request: Request) -> Response:
        stale_after = 3 * self.settings.worker_heartbeat_interval
        rows = self.queries.workers()
        for row in rows:
            row["stale"] = float(row["age"]) > stale_after
        return self.render(request, "workers.html", workers=rows, stale_after=stale_after)

    def tasks(self, request: Request) -> Response:
        q = request.query_params
        state = q.get("state") or None
        filters = {
            "state": state,
            "name": q.get("name") or None,
            "tenant": q.get("tenant") or None,
            "since": q.get("since") or "",
            "until": q.get("until") or "",
        }
        if state == states.PENDING:
            pending = self.queries.pending(q.get("after"))
            after = str(pending[-1]["message_id"]) if len(pending) >= 50 else None
            return self.render(
                request,
                "pending.html",
                messages=pending,
                filters=filters,
                after=after,
                states=STATES,
            )
        page = self.queries.tasks(
            state=state,
            name=filters["name"],
            tenant=filters["tenant"],
            since=_when(filters["since"]),
            until=_when(filters["until"]),
            cursor=q.get("after"),
        )
        query = {k: v for k, v in filters.items() if v}
        return self.render(
            request, "tasks.html", results=page, filters=filters, query=query, states=STATES
        )

    def task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        detail = self.queries.task(task_id)
        if detail is None:
            return self.render(request, "missing.html", status=404, task_id=task_id)
        return self.render(request, "task.html", task=detail)

    def failures(self, request: Request) -> Response:
        hours = min(max(int(request.query_params.get("hours", "24") or 24), 1), 24 * 30)
        groups = self.queries.failures(hours)
        return self.render(request, "failures.html", groups=groups, hours=hours)

    def dead_letters(self, request: Request) -> Response:
        return self.render(request, "dead_letters.html", letters=self.queries.dead_letters())

    def confirm(self, request: Request) -> Response:
        action, target = self._action(request)
        return self.render(
            request,
            "confirm.html",
            action=action,
            target=target,
            description=self.actions.describe(action, target),
            token=self.tokens.issue(action, target),
        )

    async def perform(self, request: Request) -> Response:
        action, target = self._action(request)
        form = await request.form()
        token = str(form.get("token", ""))
        if not self.tokens.valid(token, action, target):
            return PlainTextResponse(
                "this confirmation expired or was not issued here: confirm the action again",
                status_code=403,
            )
        user = getattr(request.state, "user", None)
        try:
            outcome = await _in_thread(self.actions.run, action, target, user)
        except ActionRefused as exc:
            return PlainTextResponse(f"not done: {exc}", status_code=409)
        back = f"/tasks/{outcome.task_id}" if outcome.task_id else "/queues"
        # Only a known action name travels in the URL: a link cannot make the page say anything.
        return RedirectResponse(f"{back}?{_query({'done': action})}", status_code=303)

    def _action(self, request: Request) -> tuple[str, str]:
        action = request.path_params["action"]
        if not self.settings.dashboard_actions or action not in ACTIONS:
            from starlette.exceptions import HTTPException

            raise HTTPException(404, "actions are off: set PGCELERY_DASHBOARD_ACTIONS=true")
        return action, request.path_params["target"]


async def _in_thread(function: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(function, *args)


def _query(values: dict[str, Any]) -> str:
    from urllib.parse import urlencode

    return urlencode(values)


def create_dashboard(
    settings: Settings, celery_app: Celery | None = None, bind_host: str | None = None
) -> Starlette:
    """The dashboard as an ASGI app (serve it with ``pgcelery dashboard`` or any ASGI server);
    ``bind_host`` (default ``PGCELERY_DASHBOARD_HOST``) is an allowed ``Host`` unless
    ``PGCELERY_DASHBOARD_ALLOWED_HOSTS`` names them."""
    board = Dashboard(settings, celery_app)
    hosts = allowed_hosts(settings.dashboard_allowed_hosts, bind_host or settings.dashboard_host)
    middleware = [Middleware(Guard, hosts=hosts)]
    if settings.dashboard_user:
        middleware.append(
            Middleware(
                BasicAuth, user=settings.dashboard_user, password=settings.dashboard_password
            )
        )
    routes = [
        Route("/", board.home),
        Route("/queues", board.queues),
        Route("/workers", board.workers),
        Route("/tasks", board.tasks),
        Route("/tasks/{task_id}", board.task),
        Route("/failures", board.failures),
        Route("/dead-letters", board.dead_letters),
        Route("/actions/{action}/{target}", board.confirm, methods=["GET"]),
        Route("/actions/{action}/{target}", board.perform, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.dashboard = board
    return app
