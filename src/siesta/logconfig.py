"""How `siesta up` logs: text or JSON lines, written by a thread off the event loop.

Used by the CLI (`--log-format`, `SIESTA_LOG_FORMAT`). Text in a terminal is Rich's
(coloured, aligned to the terminal); text anywhere else is one plain line per
record, with an ISO 8601 time and no padding or wrapping; JSON is one object per
line. A log call adds structured fields with `extra=fields(session=..., state=...)`:
JSON shows them as keys, text leaves them out (the message says them in words).
A traceback is shown only at debug level (`--verbose`); otherwise an error's
exception is summed up in one line.
"""

from __future__ import annotations

import copy
import json
import logging
import logging.handlers
import queue
import traceback
from datetime import datetime
from typing import IO, Any, Literal

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")
FORMAT_ENV = "SIESTA_LOG_FORMAT"

FIELDS = ("session", "state", "old_state", "reason", "duration", "event_id", "path", "address")
"""The structured fields a record may carry (see `fields`)."""


def fields(**given: object) -> dict[str, object]:
    """`extra=` for a log call: the structured fields that are not None."""
    unknown = set(given) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown log fields: {', '.join(sorted(unknown))}")
    return {name: value for name, value in given.items() if value is not None}


def iso_time(created: float) -> str:
    """A record's time as ISO 8601 with the local offset, to the millisecond."""
    return datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")


class _Prepared(logging.handlers.QueueHandler):
    """Puts records on the queue with their message made, and an exception turned into
    text (`error` in one line, `trace` in full) so that the thread decides what to show."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.message = record.getMessage()
        record.msg, record.args = record.message, None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.error = f"{type(exc).__name__}: {exc}"
            record.trace = "".join(traceback.format_exception(exc)).rstrip()
        record.exc_info = record.exc_text = None
        record.stack_info = None
        return record


class TextFormatter(logging.Formatter):
    """`2026-05-01T10:00:00.123+02:00 INFO siesta.lifecycle: alice: ASLEEP -> WAKING (...)`."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        line = f"{iso_time(record.created)} {record.levelname} {record.name}: {_text(record)}"
        return _with_trace(line, record, self.verbose)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then the fields."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        error = getattr(record, "error", None)
        if error is not None:
            out["error"] = error
            if self.verbose:
                out["traceback"] = getattr(record, "trace", "")
        return json.dumps(out, default=str, ensure_ascii=False)


class _RichText(logging.Formatter):
    """The message for Rich's handler, with the error (or, verbose, the traceback)."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        return _with_trace(_text(record), record, self.verbose)


def _text(record: logging.LogRecord) -> str:
    error = getattr(record, "error", None)
    message = record.getMessage()
    return f"{message}: {error}" if error and error not in message else message


def _with_trace(line: str, record: logging.LogRecord, verbose: bool) -> str:
    trace = getattr(record, "trace", None)
    return f"{line}\n{trace}" if verbose and trace else line


def handler_for(log_format: LogFormat, stream: IO[str], verbose: bool) -> logging.Handler:
    """The handler writing records to `stream`: Rich in a terminal, else plain lines."""
    from rich.console import Console  # here: the modules that log import `fields` only
    from rich.logging import RichHandler

    if log_format == "json":
        json_handler = logging.StreamHandler(stream)
        json_handler.setFormatter(JsonFormatter(verbose))
        return json_handler
    console = Console(file=stream, stderr=True)
    if console.is_terminal:
        rich = RichHandler(console=console, show_path=False, log_time_format="%H:%M:%S")
        rich.setFormatter(_RichText(verbose))
        return rich
    plain = logging.StreamHandler(stream)
    plain.setFormatter(TextFormatter(verbose))
    return plain


def start(log_format: LogFormat, stream: IO[str], verbose: bool) -> logging.handlers.QueueListener:
    """Log through a queue: records are formatted and written by a thread, so a wake's
    log lines cost the event loop a queue put, not a terminal write. Stop the listener
    that is returned to flush what is left."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        handlers=[_Prepared(records)],
        force=True,
    )
    listener = logging.handlers.QueueListener(records, handler_for(log_format, stream, verbose))
    listener.start()
    return listener
