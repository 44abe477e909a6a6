"""The errors a call raises, one class per error code of the HTTP API
(`{"error": {"code", "message"}}`)."""

from __future__ import annotations

import json
from collections.abc import Mapping


class OutriggerError(Exception):
    """Any error the sidecar answered, or not answering at all."""

    code = "error"

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class InvalidArgument(OutriggerError):
    """400: the request is malformed (the message says how)."""

    code = "invalid_argument"


class Unauthorized(OutriggerError):
    """401: no valid token (`OUTRIGGER_TOKEN`)."""

    code = "unauthenticated"


class PermissionDenied(OutriggerError):
    """403: a plugin's policy refused the call."""

    code = "permission_denied"


class NotFound(OutriggerError):
    """404: no such thing (a rate-limit policy, a route)."""

    code = "not_found"


class Conflict(OutriggerError):
    """409: the object is in a state that refuses the call."""

    code = "conflict"


class PreconditionFailed(OutriggerError):
    """412: a conditional write whose condition did not hold."""

    code = "precondition_failed"


class TooLarge(OutriggerError):
    """413: a key, value or batch over its limit."""

    code = "too_large"


class RateLimited(OutriggerError):
    """429: denied by a rate limit; `retry_after` says when to come back, in
    seconds."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: float, status: int = 429) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class Unavailable(OutriggerError):
    """503: Redis is down and the primitive refuses meanwhile (the message
    says why), or the sidecar is at a capacity limit; also raised when the
    sidecar cannot be reached or does not answer in time."""

    code = "unavailable"


class LockLost(OutriggerError):
    """A lock held with `client.lock(...)` was lost (its lease ran out, or
    another holder took it): what it protected is no longer exclusive."""

    code = "lock_lost"


_BY_CODE: dict[str, type[OutriggerError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        Unauthorized,
        PermissionDenied,
        NotFound,
        Conflict,
        PreconditionFailed,
        TooLarge,
        Unavailable,
    )
}
# A full sidecar, a full Redis refusing writes: try again later.
_BY_CODE["exhausted"] = Unavailable
_BY_CODE["out_of_memory"] = Unavailable
_BY_STATUS: dict[int, type[OutriggerError]] = {
    400: InvalidArgument,
    401: Unauthorized,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    413: TooLarge,
    503: Unavailable,
    507: Unavailable,
}


def error_from(status: int, headers: Mapping[str, str], body: bytes) -> OutriggerError:
    """The error an answer carries."""
    code, message = "", f"HTTP {status}"
    try:
        detail = json.loads(body)["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        if body:
            message = f"HTTP {status}: {body[:200]!r}"
    if status == 429 or code == "rate_limited":
        retry: str | None = headers.get("retry-after")
        return RateLimited(message, float(retry) if retry else 0.0, status)
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status, OutriggerError)
    return cls(message, status)
