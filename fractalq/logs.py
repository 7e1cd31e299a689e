"""The log of the long-running commands: a level, and text or JSON lines, on stderr.

``--log-format json`` writes one JSON object a line, with ``time`` (UTC, ISO
8601), ``level``, ``logger`` and ``message``, then whatever extra fields the
call gave (``log.info("...", extra={"job": job_id})``), ``exc_info`` with a
traceback, and ``object`` (the Kubernetes object) in the operator's lines.
The JSON comes from python-json-logger, which kopf uses for its own JSON logs.

Either way every line passes :mod:`fractalq.security.logs` first, so no
secret reaches it, a traceback's text and the JSON's extra fields included.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Iterable
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What kopf adds to its records: its settings object and flags, not for a log line;
# the Kubernetes object a line is about goes out as "object".
_KOPF_ATTRIBUTES = ("k8s_skip", "k8s_ref", "settings")


class JsonLines(JsonFormatter):
    """One JSON object per record: time, level, logger, message, then the extras."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            reserved_attrs=[*RESERVED_ATTRS, *_KOPF_ATTRIBUTES],
            timestamp="time",
        )

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and record.exc_text:
            # The secrets filter has rewritten the traceback's text: print that
            # one, not the traceback formatted anew from the exception.
            record = copy.copy(record)
            record.exc_info = None
        return str(super().format(record))

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        reference = getattr(record, "k8s_ref", None)
        if reference is not None:
            log_data["object"] = reference
        # The time first, as in the text lines.
        time = log_data.pop("time", None)
        rest = dict(log_data)
        log_data.clear()
        log_data["time"] = time
        log_data.update(rest)


def formatter(log_format: str) -> logging.Formatter:
    return JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def setup(
    level: str = "info", log_format: str = "text", secrets: Iterable[str | None] = ()
) -> None:
    """One handler on stderr at ``level``, in ``log_format``; no secret in it at any
    level (:mod:`fractalq.security.logs`), ``secrets`` included."""
    from fractalq.security.logs import protect_logs

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    protect_logs(secret for secret in secrets if secret)
