from __future__ import annotations

import io
import logging
import uuid
from urllib.parse import quote

from pgcelery.observability import redaction


def _register() -> str:
    password = f"p{uuid.uuid4().hex}@/:%"
    redaction.register_url(f"postgresql://u:{quote(password, safe='')}@h:5432/db")
    return password


def test_every_form_of_the_password_is_scrubbed() -> None:
    password = _register()
    for form in (password, quote(password, safe=""), quote(password)):
        assert redaction.scrub(f"before {form} after") == "before *** after"
    assert password not in redaction.scrub(f"postgresql://u:{password}@h/db")


def test_exception_copy_is_scrubbed_and_the_original_untouched() -> None:
    password = _register()
    original = RuntimeError(f"cannot reach {password}", 3)
    clean = redaction.scrub_exception(original)
    assert clean.args == ("cannot reach ***", 3)
    assert password in str(original)
    same = ValueError("nothing secret")
    assert redaction.scrub_exception(same) is same


def test_log_filter_scrubs_message_args_exception_and_extra() -> None:
    password = _register()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s %(url)s"))
    redaction.install_filter(handler)
    redaction.install_filter(handler)
    assert len(handler.filters) == 1
    logger = logging.getLogger(f"test.redaction.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    try:
        raise RuntimeError(password)
    except RuntimeError:
        logger.exception("url %s", password, extra={"url": password})
    text = stream.getvalue()
    assert password not in text
    assert "url *** ***" in text
    assert "RuntimeError: ***" in text
