"""Tenant-scoped tasks: the tenant travels with every message and is applied while a task runs.

A producer names the tenant with ``tenant_id=`` or sends inside :func:`tenant_context`; the ids
travel in message headers; on the worker they are bound to contextvars for exactly the task's
run (reset in a ``finally``, with the ``task_prerun``/``task_postrun`` signals as a backstop),
and :mod:`pgcelery.tenancy.db` turns them into transaction-local Postgres settings. Tasks the
running task sends inherit the ids. A tenant task without a valid tenant is refused: at ``delay``
before anything is published, or on the worker as a FAILURE that is never retried.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from contextvars import Token
from typing import Any

from celery import Task, shared_task
from celery.signals import before_task_publish, task_postrun, task_prerun

from pgcelery.exceptions import ConfigurationError, ForgedMessage, PayloadInvalid, TenancyError
from pgcelery.tenancy import signing
from pgcelery.tenancy.payloads import PayloadTask, keyword_values
from pgcelery.tenancy.scope import (
    _CORRELATION,
    _TENANT,
    TenantScope,
    bound,
    current_correlation_id,
    current_scope,
    current_tenant_id,
    new_correlation_id,
    parse_correlation_id,
    parse_tenant_id,
    tenant_or_none,
)

TENANT_HEADER = "pgcelery_tenant_id"
CORRELATION_HEADER = "pgcelery_correlation_id"

log = logging.getLogger(__name__)


def _header(request: Any, name: str) -> Any:
    # A published message's headers become request attributes; an eager run keeps them in
    # request.headers instead.
    found = getattr(request, name, None)
    if found is None:
        headers = getattr(request, "headers", None)
        if isinstance(headers, Mapping):
            found = headers.get(name)
    return found


def _check_signature(request: Any, task_name: str) -> bool:
    """ForgedMessage unless the message's tenant headers carry their signature; False when
    nothing was checked: no key, or a run that had no message (eager, or a direct call)."""
    if (
        not signing.enabled()
        or getattr(request, "is_eager", False)
        or getattr(request, "called_directly", False)
    ):
        return False
    signing.check(
        request.id,
        task_name,
        _header(request, TENANT_HEADER),
        _header(request, CORRELATION_HEADER),
        _header(request, signing.SIGNATURE_HEADER),
    )
    return True


#: Set on a request by the ``task_prerun`` check, so a tenant task's run does not check again.
_VERDICT = "pgcelery_signature_verdict"


def _verified(request: Any, task_name: str) -> bool:
    """Like :func:`_check_signature`, reusing the verdict ``task_prerun`` reached."""
    verdict = getattr(request, _VERDICT, None)
    if verdict == "forged":
        raise ForgedMessage()
    if verdict == "ok":
        return True
    return _check_signature(request, task_name)


class _Parameters:
    """Which of the ids a task's function takes as keyword arguments."""

    def __init__(self, task: Task) -> None:
        model = getattr(task, "payload", None)
        if model is not None:
            names = set(model.model_fields)
            self.var_keyword = False
        else:
            parameters = inspect.signature(task.run).parameters.values()
            names = {p.name for p in parameters if p.kind is not p.VAR_KEYWORD}
            self.var_keyword = any(p.kind is p.VAR_KEYWORD for p in parameters)
        self.tenant = "tenant_id" in names
        self.correlation = "correlation_id" in names


class TenantTask(PayloadTask):
    """Base class of :func:`tenant_task` tasks; subclass it for a custom base."""

    throws = (TenancyError, PayloadInvalid)
    _pgcelery_parameters: _Parameters | None = None

    def _parameters(self) -> _Parameters:
        cls = type(self)
        if cls._pgcelery_parameters is None:
            cls._pgcelery_parameters = _Parameters(self)
        return cls._pgcelery_parameters

    def _with_ids(self, kwargs: Mapping[str, Any], scope: TenantScope) -> dict[str, Any]:
        """``kwargs`` with the ids the function takes filled in and the ones it cannot removed."""
        params = self._parameters()
        values = dict(kwargs)
        if params.tenant:
            values["tenant_id"] = scope.tenant_id
        elif not params.var_keyword:
            values.pop("tenant_id", None)
        if params.correlation and values.get("correlation_id") is None:
            values["correlation_id"] = scope.correlation_id
        return values

    def _refuse(self, error: TenancyError, task_id: str | None, where: str) -> TenancyError:
        log.warning(
            "pgcelery.tenancy.refused",
            extra={
                "task_name": self.name,
                "task_id": task_id,
                "where": where,
                "reason": type(error).__name__,
            },
        )
        return error

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> Any:
        if self.payload is not None:
            kwargs = keyword_values(self.name, self.payload, args, kwargs)
            args = ()
        values = dict(kwargs or {})
        raw = values.get("tenant_id")
        try:
            tenant = parse_tenant_id(current_tenant_id() if raw is None else raw)
        except TenancyError as exc:
            raise self._refuse(exc, task_id, "publish") from None
        correlation = (
            parse_correlation_id(values.get("correlation_id"))
            or current_correlation_id()
            or new_correlation_id()
        )
        scope = TenantScope(tenant, correlation)
        headers = dict(options.pop("headers", None) or {})
        headers[TENANT_HEADER] = tenant
        headers[CORRELATION_HEADER] = correlation
        return super().apply_async(
            args,
            self._with_ids(values, scope),
            task_id,
            producer,
            link,
            link_error,
            shadow,
            headers=headers,
            **options,
        )

    def _worker_scope(self, kwargs: Mapping[str, Any]) -> TenantScope:
        request = self.request
        raw = kwargs.get("tenant_id")
        if raw is None:
            raw = _header(request, TENANT_HEADER)
        if raw is None:
            raw = current_tenant_id()
        try:
            tenant = parse_tenant_id(raw)
            if _verified(request, self.name) and tenant != tenant_or_none(
                _header(request, TENANT_HEADER)
            ):
                # The signature covers the header; a tenant_id argument must agree with it.
                raise ForgedMessage()
        except TenancyError as exc:
            raise self._refuse(exc, request.id, "worker") from None
        correlation = (
            parse_correlation_id(kwargs.get("correlation_id"))
            or parse_correlation_id(_header(request, CORRELATION_HEADER))
            or current_correlation_id()
            or new_correlation_id()
        )
        return TenantScope(tenant, correlation)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        scope = self._worker_scope(kwargs)
        with bound(scope):
            return super().__call__(*args, **self._with_ids(kwargs, scope))


class GlobalTask(Task):
    """Base class of tasks that act on all tenants: they always run with no tenant set."""

    pgcelery_global = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        scope = TenantScope(None, current_correlation_id() or new_correlation_id())
        with bound(scope):
            return super().__call__(*args, **kwargs)


def tenant_task(*args: Any, **options: Any) -> Any:
    """Like ``celery.shared_task``, for a task that always runs on behalf of one tenant.

    Use it bare (``@tenant_task``) or with Celery's task options (``@tenant_task(bind=True,
    name=...)``) and optionally ``payload=`` a Pydantic model (see
    :mod:`pgcelery.tenancy.payloads`).
    """
    install()
    base = options.setdefault("base", TenantTask)
    if not (isinstance(base, type) and issubclass(base, TenantTask)):
        raise ConfigurationError("tenant_task(base=...) must be a subclass of TenantTask")
    if options.get("payload") is not None:
        options.setdefault("typing", False)
    if len(args) == 1 and callable(args[0]):
        return shared_task(**options)(args[0])
    if args:
        raise TypeError("tenant_task takes the task function or keyword options only")
    decorator: Callable[[Callable[..., Any]], Any] = shared_task(**options)
    return decorator


# --- signals: propagation to every message, and the worker-side backstop ---------------------

_RUNNING: dict[tuple[int, str], tuple[Token[str | None], Token[str | None]]] = {}
_RUNNING_LOCK = threading.Lock()
_INSTALLED = False
_INSTALL_LOCK = threading.Lock()


def _stamp_headers(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Carry the sender's ids to the worker; ids a tenant task set explicitly win."""
    if headers is None:
        return
    scope = current_scope()
    if scope.tenant_id is not None:
        headers.setdefault(TENANT_HEADER, scope.tenant_id)
    if scope.correlation_id is not None:
        headers.setdefault(CORRELATION_HEADER, scope.correlation_id)
    signing.sign(headers, TENANT_HEADER, CORRELATION_HEADER)


def _bind_before_run(task_id: str | None = None, task: Task | None = None, **_: Any) -> None:
    """Bind the message's ids for the run, replacing whatever the thread held before."""
    if task is None or task_id is None:
        return
    request = task.request
    if getattr(request, "is_eager", False):
        # Run in the caller's thread: the caller's ids are the sender's ids.
        inherited = current_scope()
        tenant, correlation = inherited.tenant_id, inherited.correlation_id
    else:
        # A worker thread's leftover ids must never reach the next task: start from the headers.
        tenant, correlation = None, None
    tenant = tenant_or_none(_header(request, TENANT_HEADER)) or tenant
    if tenant is not None and not _signed(request, task):
        tenant = None
    if getattr(task, "pgcelery_global", False):
        tenant = None
    correlation = (
        parse_correlation_id(_header(request, CORRELATION_HEADER))
        or correlation
        or new_correlation_id()
    )
    tokens = (_TENANT.set(tenant), _CORRELATION.set(correlation))
    with _RUNNING_LOCK:
        _RUNNING[(threading.get_ident(), task_id)] = tokens


def _signed(request: Any, task: Task) -> bool:
    """Whether a message's tenant may be bound. A tenant task refuses a forged message itself
    (FAILURE ForgedMessage); any other task runs without the forged tenant, which is also
    removed from its request so that a retry or a child task cannot re-sign it. Either way the
    forged tenant is never bound, so nothing (not even the stored result) is written as it."""
    try:
        checked = _check_signature(request, task.name)
    except ForgedMessage:
        if isinstance(task, TenantTask):
            # Its __call__ refuses the message (and needs the header to say why).
            setattr(request, _VERDICT, "forged")
            return False
        for name in (TENANT_HEADER, signing.SIGNATURE_HEADER):
            if hasattr(request, name):
                setattr(request, name, None)
            headers = getattr(request, "headers", None)
            if isinstance(headers, dict):
                headers.pop(name, None)
        return False
    if checked:
        setattr(request, _VERDICT, "ok")
    return True


def _reset_after_run(task_id: str | None = None, **_: Any) -> None:
    """Restore the ids the thread had before the task, whatever the task body did."""
    with _RUNNING_LOCK:
        tokens = _RUNNING.pop((threading.get_ident(), task_id or ""), None)
    if tokens is None:
        return
    tenant_token, correlation_token = tokens
    try:
        _CORRELATION.reset(correlation_token)
        _TENANT.reset(tenant_token)
    except ValueError:
        # The tokens belong to another context (a pool that switched contexts): fail closed.
        _CORRELATION.set(None)
        _TENANT.set(None)


def install() -> None:
    """Connect the signals that carry and bind the ids; idempotent, once per process."""
    global _INSTALLED
    with _INSTALL_LOCK:
        if _INSTALLED:
            return
        before_task_publish.connect(_stamp_headers, weak=False, dispatch_uid="pgcelery.tenancy")
        task_prerun.connect(_bind_before_run, weak=False, dispatch_uid="pgcelery.tenancy")
        task_postrun.connect(_reset_after_run, weak=False, dispatch_uid="pgcelery.tenancy")
        _INSTALLED = True
