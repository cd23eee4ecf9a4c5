"""The service's log lines: each names the request it was written for, one access line per request, text or JSON.

    name_requests_in_logs()   records made while a request is handled carry its id (the X-Request-ID it answers with)
    use_json_lines()          DCGAN_LOG_FORMAT=json: every line of the process is one JSON object
    access(...)               DCGAN_ACCESS_LOG=1: one line per request answered by service/api.py

Text lines end in ` request_id=<id>`; a JSON line has it as a key, beside time, level, logger and message, and an
access line adds method, path, route, status, duration_ms, model and reason (the refusal's kind, or null). The
id is read from a ContextVar that the request handler sets for the request's task: log records are made deep in
other code (BentoML, ONNX Runtime wrappers) that cannot be handed the id as an argument.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("dcgan_request_id", default=None)
ACCESS = logging.getLogger("bentoml.dcgan.access")
ACCESS_FIELDS = ("method", "path", "route", "status", "duration_ms", "model", "reason")


def name_requests_in_logs() -> None:
    """Log records made while a request is handled get its id: `record.dcgan_request_id`, and ` request_id=<id>` at the
    end of a text message (once per process)."""
    base = logging.getLogRecordFactory()
    if getattr(base, "names_requests", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        rid = REQUEST_ID.get()
        record.dcgan_request_id = rid  # not `request_id`: BentoML's log filter sets that one to its own trace context's
        if rid is not None and not JsonLines.active:
            # The id holds no "%", so the message stays a valid format string for its args.
            record.msg = f"{record.msg} request_id={rid}"
        return record

    factory.names_requests = True
    logging.setLogRecordFactory(factory)


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id, and an access line's fields."""

    active = False  # set once installed: text ids are then not appended to the message

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "dcgan_request_id", None),
        }
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def use_json_lines() -> None:
    """Every handler of the root logger and of BentoML's loggers writes JSON lines from now on."""
    JsonLines.active = True
    formatter = JsonLines()
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            handler.setFormatter(formatter)


def access(method: str, path: str, route: str, status: int, seconds: float, model: str | None, reason: str | None) -> None:
    """The access line of one answered request (call while its REQUEST_ID is set)."""
    fields = {"method": method, "path": path, "route": route, "status": status, "duration_ms": round(seconds * 1000, 2)}
    fields.update(model=model, reason=reason)
    ACCESS.info(
        "%s %s status=%d route=%s duration_ms=%.2f model=%s reason=%s",
        method,
        f"path={path}",
        status,
        route,
        seconds * 1000,
        model,
        reason,
        extra=fields,
    )
