"""X-Request-ID: every response carries one, and every log line written while a request is handled names it.

A client's `X-Request-ID` (1 to 128 of the characters A-Z a-z 0-9 . _ : -, as proxies and tracing systems
generate them) is kept; anything else, or none, gets a new one (32 hex digits). The outermost of the service's
middlewares, so that its own 4xx answers carry the id too. Log lines (the service's, and BentoML's access log
when DCGAN_ACCESS_LOG=1) end in `request_id=<id>`: a log record factory appends it while the request is in progress.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REQUEST_ID: ContextVar[str | None] = ContextVar("dcgan_request_id", default=None)


def request_id_for(given: str | None) -> str:
    """The client's id if it is a valid one, else a new one."""
    return given if given is not None and VALID.fullmatch(given) else uuid.uuid4().hex


class RequestId:
    """Sets REQUEST_ID for the request and adds X-Request-ID to its response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = request_id_for(Headers(scope=scope).get(HEADER))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = rid
            await send(message)

        token = REQUEST_ID.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


def name_requests_in_logs() -> None:
    """Log records made while a request is in progress end in ` request_id=<id>` (once per process)."""
    base = logging.getLogRecordFactory()
    if getattr(base, "names_requests", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        rid = REQUEST_ID.get()
        if rid is not None:
            # The id holds no "%", so the message stays a valid format string for its args.
            record.msg = f"{record.msg} request_id={rid}"
        return record

    factory.names_requests = True
    logging.setLogRecordFactory(factory)
