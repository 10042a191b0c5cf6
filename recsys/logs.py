"""Logging for the services: plain or JSON lines, a request id on every record, user ids masked.

- `REQUEST_ID` holds the id of the request being served on this thread. The servers' metrics
  interceptor (`recsys.metrics`) takes it from the `x-request-id` metadata or makes one up, and
  the inference server's feature client sends it on, so one id names a request in the logs of
  both services.
- `configure(json_lines=True)` writes one JSON object per record: ts, level, logger, message,
  request_id (when one is set) and any `extra={...}` fields given to the log call.
- `user_ref(user_id)` is what goes into a log line instead of a user id: a keyed hash
  (HMAC-SHA256, first 16 hex digits) under the key in `RECSYS_LOG_KEY`, or under a random key
  made per process when that is unset (then the same user matches within one process's logs
  only; set the same key on both services to follow a user across them). With
  `configure(log_user_ids=True)` user ids are logged in clear.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import time
import uuid

__all__ = ["REQUEST_ID", "REQUEST_ID_HEADER", "configure", "new_request_id", "user_ref"]

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("recsys_request_id", default="")
MAX_REQUEST_ID_CHARS = 128

_state = {"log_user_ids": False, "key": os.environ.get("RECSYS_LOG_KEY", "").encode() or secrets.token_bytes(32)}

# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}


def new_request_id() -> str:
    return uuid.uuid4().hex


def clean_request_id(value: str | bytes | None) -> str:
    """A client's request id as given when it is short printable ASCII, else a fresh one."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if value and len(value) <= MAX_REQUEST_ID_CHARS and value.isascii() and value.isprintable():
        return value
    return new_request_id()


def user_ref(user_id: str) -> str:
    """What to write in a log line for `user_id` (see the module docstring)."""
    if _state["log_user_ids"]:
        return user_id
    digest = hmac.new(_state["key"], user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return f"user:{digest[:16]}"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [request_id]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", "") or REQUEST_ID.get()
        return f"{text} [request_id={request_id}]" if request_id else text


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "") or REQUEST_ID.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(*, verbose: bool = False, json_lines: bool = False, log_user_ids: bool = False, stream=None) -> None:
    """Sets up the root logger for a service process (the CLI calls this once)."""
    _state["log_user_ids"] = log_user_ids
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
