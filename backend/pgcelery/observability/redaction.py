"""Keep the ``DATABASE_URL`` password out of logs, stored task results and health reasons.

The password is scrubbed in every form it can take in text: as written in the URL (often
percent-encoded), decoded, and percent-encoded from the decoded form. Scrubbing works on text
rather than on URL syntax, so it also catches a password that an exception message or a library
quoted in its own way.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any
from urllib.parse import quote, quote_plus, unquote

from pgcelery import dsn

MASK = "***"
_SECRETS: set[str] = set()
_LOCK = threading.Lock()
# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def secret_forms(password: str) -> set[str]:
    """Every spelling of ``password`` that may show up in text."""
    decoded = unquote(password)
    forms = {
        password,
        decoded,
        quote(decoded),
        quote(decoded, safe=""),
        quote_plus(decoded, safe=""),
    }
    return {form for form in forms if form}


def register_url(url: str) -> None:
    """Scrub the password of ``url`` (if it has one) from everything from now on."""
    password = dsn.password_of(url)
    if password:
        with _LOCK:
            _SECRETS.update(secret_forms(password))


def registered() -> bool:
    """Whether any secret is being scrubbed (tests use this to check the wiring)."""
    return bool(_SECRETS)


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    if not _SECRETS or not text:
        return text
    # Longest first, so an encoded form is masked whole rather than around its decoded core.
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub_value(value: Any) -> Any:
    """``value`` with secrets scrubbed from strings, recursively through lists/tuples/dicts."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, bytes):
        return scrub(value.decode("utf-8", "replace")).encode("utf-8")
    if isinstance(value, list | tuple):
        return type(value)(scrub_value(item) for item in value)
    if isinstance(value, dict):
        return {key: scrub_value(item) for key, item in value.items()}
    return value


def scrub_exception(exc: BaseException) -> BaseException:
    """A copy of ``exc`` whose args no longer carry a secret (``exc`` itself if it had none)."""
    args = getattr(exc, "args", ())
    clean = scrub_value(args)
    if clean == args and scrub(str(exc)) == str(exc):
        return exc
    try:
        scrubbed = copy.copy(exc)
    except Exception:  # an exception type that does not copy: scrub it in place instead
        scrubbed = exc
    scrubbed.args = clean
    return scrubbed


class RedactingFilter(logging.Filter):
    """A handler filter that renders each record's text and scrubs secrets from it.

    The message, the formatted exception and stack, and string ``extra`` values are rendered
    and scrubbed here, so every formatter after this filter sees clean text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _SECRETS:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format: keep logging's own error path
            return True
        record.msg = scrub(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_ATTRS:
                record.__dict__[key] = scrub_value(value)
        return True


def install_filter(handler: logging.Handler) -> None:
    """Add the redacting filter to ``handler`` once."""
    if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
        handler.addFilter(RedactingFilter())
