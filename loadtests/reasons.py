"""Why a request failed, in one form for the users (``locustfile``) and the verdict
(``cli``): ``401 unauthorized``, the status and the problem+json code, so failures add
up by cause."""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["clean", "reason"]

_WRAPPED = re.compile(r"^CatchResponseError\((['\"])(.*)\1\)$", re.S)


def reason(r: Any) -> str:
    """Why a request failed, in a form that adds up: ``401 unauthorized`` (status and the
    problem+json code), ``503``, or ``no answer: ConnectionRefusedError``."""
    status = int(getattr(r, "status_code", 0) or 0)
    if status == 0:
        error = getattr(r, "error", None)
        return f"no answer: {type(error).__name__ if error is not None else 'connection'}"
    code = ""
    try:
        body = json.loads(r.text or "")
        if isinstance(body, dict) and isinstance(body.get("code"), str):
            code = body["code"]
    except (ValueError, TypeError):
        pass
    return f"{status} {code}".strip()


def clean(error: object) -> str:
    """A failure as Locust keeps it (``CatchResponseError('429 rate_limited')``, an
    exception's repr) as the reason alone."""
    text = error if isinstance(error, str) else repr(error)
    m = _WRAPPED.match(text)
    return m.group(2) if m else text
