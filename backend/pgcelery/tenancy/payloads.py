"""Typed task arguments: a task declares a Pydantic model and receives one validated instance.

An invalid payload raises :class:`~pgcelery.exceptions.PayloadInvalid` naming each bad field:
at ``delay``/``apply_async`` before anything is published, and on the worker for a message sent
by name. The worker check runs before the task body, outside any ``autoretry_for`` wrapper, so
an invalid payload fails once and is never retried (retrying would fail the same way).

    class Resize(BaseModel):
        image_id: int
        width: int = Field(gt=0)

    @typed_task(name="images.resize", payload=Resize)
    def resize(payload: Resize) -> None: ...

    resize.delay(image_id=7, width=640)      # or resize.delay(Resize(image_id=7, width=640))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celery import Task, shared_task

from pgcelery.exceptions import PayloadInvalid

if TYPE_CHECKING:
    # Only a task that declares a payload model needs pydantic, and its model has imported it
    # by then: every tenant task's base class lives here, so a worker that declares none does
    # not pay pydantic's ~14.5 MB of RSS (issue 19).
    from pydantic import BaseModel, ValidationError


def describe(task_name: str, exc: ValidationError) -> str:
    """One line naming every invalid field and its rule, never the submitted values."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        field = ".".join(str(part) for part in error["loc"]) or "payload"
        problems.append(f"{field}: {error['msg']}")
    return f"Invalid payload for task {task_name}: " + "; ".join(problems)


def validate(task_name: str, model: type[BaseModel], values: Mapping[str, Any]) -> BaseModel:
    """``values`` as an instance of ``model``, or PayloadInvalid naming the bad fields."""
    from pydantic import ValidationError

    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        raise PayloadInvalid(describe(task_name, exc)) from None


def keyword_values(
    task_name: str,
    model: type[BaseModel],
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The payload's fields as keywords, from keywords or from one instance of ``model``."""
    values = dict(kwargs or {})
    if not args:
        return values
    if len(args) == 1 and isinstance(args[0], model):
        return {**args[0].model_dump(mode="json"), **values}
    raise PayloadInvalid(
        f"Invalid payload for task {task_name}: pass the fields of {model.__name__} as keyword "
        f"arguments or one {model.__name__} instance, not positional arguments"
    )


class PayloadTask(Task):
    """A task whose keyword arguments are validated into its ``payload`` model before it runs.

    With no ``payload`` declared it behaves exactly like a plain Celery task.
    """

    payload: type[BaseModel] | None = None
    throws: tuple[type[BaseException], ...] = (PayloadInvalid,)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *rest: Any,
        **options: Any,
    ) -> Any:
        if self.payload is not None:
            values = keyword_values(self.name, self.payload, args, kwargs)
            # Publish the normalised JSON form, so the worker sees exactly what was validated.
            kwargs = validate(self.name, self.payload, values).model_dump(mode="json")
            args = ()
        return super().apply_async(args, kwargs, *rest, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.payload is None:
            return super().__call__(*args, **kwargs)
        values = keyword_values(self.name, self.payload, args, kwargs)
        return super().__call__(validate(self.name, self.payload, values))


def typed_task(
    *, payload: type[BaseModel], **options: Any
) -> Callable[[Callable[..., Any]], PayloadTask]:
    """Like ``shared_task``, for a function taking one argument: an instance of ``payload``."""
    options.setdefault("base", PayloadTask)
    # Celery's own argument check compares the keywords with the function's signature, which
    # takes the one model instance instead; validation replaces it.
    options.setdefault("typing", False)
    decorator: Callable[[Callable[..., Any]], PayloadTask] = shared_task(payload=payload, **options)
    return decorator
