"""One logging set-up for every cloud service entry point (ingest, alerts run, ota serve, api serve).

    from cloud.runtime import logs
    logs.setup(verbose)           # before anything logs

MICROFLEET_LOG_LEVEL (debug, info, warning, error; default info, debug with --verbose) and
MICROFLEET_LOG_FORMAT: `text` (default: `time level logger: message`, for a terminal) or `json` (one JSON
object per line with time (ISO 8601, UTC), level, logger, message, thread and, when there is one,
exception (the traceback as text): for a log collector such as Loki, CloudWatch or Elasticsearch).
Secrets never reach the logs: URLs are logged redacted by the code that logs them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error", "critical")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogSettingError(ValueError):
    """MICROFLEET_LOG_LEVEL or MICROFLEET_LOG_FORMAT has a value we do not know."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, thread, and exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def settings(verbose: bool = False, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """(level, format) from the environment; LogSettingError names the variable and the choices."""
    e = os.environ if env is None else env
    fmt = e.get("MICROFLEET_LOG_FORMAT", "").strip().lower() or "text"
    if fmt not in FORMATS:
        raise LogSettingError(f"MICROFLEET_LOG_FORMAT={fmt!r}: use {' or '.join(FORMATS)}")
    name = e.get("MICROFLEET_LOG_LEVEL", "").strip().lower() or ("debug" if verbose else "info")
    if name not in LEVELS:
        raise LogSettingError(f"MICROFLEET_LOG_LEVEL={name!r}: use one of {', '.join(LEVELS)}")
    level = logging.DEBUG if verbose else getattr(logging, name.upper())
    return int(level), fmt


def setup(
    verbose: bool = False, *, env: Mapping[str, str] | None = None, stream: IO[str] | None = None
) -> None:
    """Configure the root logger (replacing its handlers) to write to stderr in the chosen format."""
    level, fmt = settings(verbose, env)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
