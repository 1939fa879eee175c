"""Logging set-up shared by every command (worker, broker, gateway, zeromesh).

One place for the ``--log-level`` and ``--log-format`` options and the line formats,
so the commands' logs read alike under supervisord and cannot drift between them.

``--log-format json`` writes one JSON object a line, for log shippers: ``time`` (UTC,
ISO 8601, milliseconds), ``level``, ``logger``, ``message``, ``pid``, and, in a line
logged while a request is handled, its ``target``, ``request_id`` and ``trace_id``
(from the providers registered with `add_log_fields`, or a call's ``extra=``), and
``exception`` with the traceback when there is one. The text format is unchanged.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["LOG_FIELDS", "JsonFormatter", "add_log_fields", "add_log_level", "setup_logging"]

_LEVELS = ("debug", "info", "warning", "error")
_FORMATS = ("text", "json")
_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
ENV_LOG_FORMAT = "ZEROMESH_LOG_FORMAT"

LOG_FIELDS = ("target", "request_id", "trace_id")
"""The request fields a JSON line carries when it is about one request."""

_providers: list[Callable[[], dict[str, Any] | None]] = []


def add_log_fields(provider: Callable[[], dict[str, Any] | None]) -> None:
    """Register ``provider``: called for each JSON line, it returns the request fields
    (`LOG_FIELDS`) of the code that logs, or None outside a request. The worker
    registers one that reads the running handler's request."""
    if provider not in _providers:
        _providers.append(provider)


class JsonFormatter(logging.Formatter):
    """One JSON object a line; see the module's docstring for the keys."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for provider in _providers:
            fields = provider()
            if fields:
                line.update(fields)
        for key in LOG_FIELDS:  # logger.info(..., extra={"target": ...}) wins
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def add_log_level(parser: argparse.ArgumentParser, default: str, help: str) -> None:
    """Add ``--log-level`` (debug, info, warning, error) and ``--log-format`` (text,
    json; default $ZEROMESH_LOG_FORMAT or text) to ``parser``."""
    parser.add_argument("--log-level", default=default, choices=_LEVELS, help=help)
    parser.add_argument(
        "--log-format",
        default=os.environ.get(ENV_LOG_FORMAT) or "text",
        choices=_FORMATS,
        help="text (default), or json: one object a line with time, level, logger, "
        "message, pid, and a request's target, id and trace id "
        f"(default ${ENV_LOG_FORMAT} or text)",
    )


def setup_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr (supervisord keeps it) at ``level``, as text lines naming logger
    and pid, or as JSON objects (``fmt="json"``)."""
    if fmt not in _FORMATS:  # from $ZEROMESH_LOG_FORMAT: argparse checks only flags
        raise SystemExit(
            f"error: log format {fmt!r} (${ENV_LOG_FORMAT}?): use one of {', '.join(_FORMATS)}"
        )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
