"""Logging set-up shared by the long-running commands (worker, broker, gateway).

One place for the ``--log-level`` option and the log line format, so the commands'
logs read alike under supervisord and the option cannot drift between them.
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["add_log_level", "setup_logging"]

_LEVELS = ("debug", "info", "warning", "error")
_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def add_log_level(parser: argparse.ArgumentParser, default: str, help: str) -> None:
    """Add ``--log-level`` (debug, info, warning, error) to ``parser``."""
    parser.add_argument("--log-level", default=default, choices=_LEVELS, help=help)


def setup_logging(level: str) -> None:
    """Log to stderr (supervisord keeps it) at ``level``, naming logger and pid."""
    logging.basicConfig(level=level.upper(), format=_FORMAT, stream=sys.stderr)
