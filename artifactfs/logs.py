"""Logging set-up: human-readable or JSON lines, and never a credential.

Every record passes through :class:`RedactingFilter`, which scrubs URL
userinfo and authorization headers from the formatted message, whatever
module produced it (including httpx's own request logs).

Logging writes to a stream only. A background daemon's stream is its
``daemon.log``, which the CLI opens once through :func:`artifactfs.state.open_private`
(owner-only, never through a symlink) and hands over as the daemon's stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal, TextIO, get_args

from artifactfs.redaction import redact

LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)
DEFAULT_LOG_FORMAT: LogFormat = "text"
DEFAULT_LOG_LEVEL: LogLevel = "info"


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            document["exception"] = record.exc_text
        return json.dumps(document)


def configure(
    *,
    level: LogLevel = DEFAULT_LOG_LEVEL,
    log_format: LogFormat = DEFAULT_LOG_FORMAT,
    stream: TextIO | None = None,
) -> None:
    """Send all ArtifactFS (and library) logging to ``stream`` (default stderr), redacted."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    if log_format == "json":
        handler.setFormatter(JsonLinesFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
