"""Every error the service answers, as an exception that carries its HTTP status: raised where it is found, answered
as it is (nothing renames it on the way out).

The body is always `{"error": one line, "errors": [{"field", "rule"}, ...]}`. A refusal by design (the request was
fine, the server could not take it now) also carries the `reason` the metric `dcgan_refused_total` counts it under,
and 429/503 carry `Retry-After`.
"""

from __future__ import annotations

import json

RETRY_AFTER_S = 1  # a batch on the committed model takes well under a second; come back then


class HttpError(Exception):
    status = 400
    reason: str | None = None  # set on refusals by design: the label of dcgan_refused_total

    def __init__(self, message: str, errors: list[dict] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        return json.dumps({"error": str(self), "errors": self.errors}).encode()


class BadRequest(HttpError):
    status = 400


class Unprocessable(HttpError):
    status = 422


class NotFound(HttpError):
    status = 404


class Forbidden(HttpError):
    status = 403


class Conflict(HttpError):
    """A model version refused by its checks or the limits: the version serving before keeps serving."""

    status = 409


class MethodNotAllowed(HttpError):
    status = 405


class PayloadTooLarge(HttpError):
    status = 413


class UnsupportedMediaType(HttpError):
    status = 415


class PreconditionFailed(HttpError):
    status = 412


class Unauthorised(HttpError):
    status = 401
    reason = "unauthorised"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class BodyTimeout(HttpError):
    status = 408
    reason = "body_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class RetryLater(HttpError):
    """A refusal by design: the client should come back after Retry-After."""

    status = 503

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}; retry after {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})


class Busy(RetryLater):
    """DCGAN_MAX_INFLIGHT requests already in progress."""

    status = 429
    reason = "overloaded"


class Overloaded(RetryLater):
    """The queue is full, or the generator is restarting: new work cannot be taken now."""

    reason = "overloaded"


class PastDeadline(Overloaded):
    """The request could not be served within its deadline (by the queue ahead, or it waited past it)."""

    reason = "deadline"


class Draining(RetryLater):
    """SIGTERM: the server finishes what it admitted and takes nothing new; the retry finds another pod."""

    reason = "draining"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers["Connection"] = "close"


class ClientGone(HttpError):
    """The client disconnected while its request waited: nobody is left to answer (logged as nginx's 499)."""

    status = 499
    reason = "client_gone"


class InternalError(HttpError):
    """A fault of the service itself, never of the request: logged with its traceback."""

    status = 500
