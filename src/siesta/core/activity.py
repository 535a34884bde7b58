"""What an activity probe's answers mean: the `app` map a policy reads.

`siesta.probes` fetches JSON from a session's app and hands it here: the Jupyter
preset turns Jupyter Server's `/api/status` and `/api/kernels` into counts, a
last-activity timestamp and the idle duration since; a generic probe picks fields
out of a JSON document by dotted path. `siesta.config` reads the keys and sample
values to check, at load, the `app.*` keys a policy names.

Every map has `ok` (the last probe answered) and `error` (why it did not, else "").
Values are what CEL compares directly: int, double, bool, string, a `timedelta`
for a duration, an aware `datetime` for a timestamp. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

JUPYTER_KEYS: Mapping[str, str] = {
    "ok": "bool: the last probe was answered",
    "error": 'string: why the last probe failed, "" when it did not',
    "last_activity": "timestamp: the server's last activity (a request, a kernel message)",
    "idle_for": "duration: from last_activity to the last probe",
    "kernels": "int: running kernels",
    "busy_kernels": "int: kernels whose execution_state is busy",
    "connections": "int: open kernel connections (websockets)",
}
"""The keys of the Jupyter preset's `app` map, with their CEL types."""

BASE_KEYS = ("ok", "error")
"""Keys every probe's `app` map has."""

JUPYTER_SAMPLE: Mapping[str, Any] = {
    "ok": True,
    "error": "",
    "last_activity": datetime(2026, 3, 2, 10, 25, tzinfo=UTC),
    "idle_for": timedelta(minutes=5),
    "kernels": 1,
    "busy_kernels": 0,
    "connections": 1,
}
"""Typical values, to check at load that a policy reading `app.*` runs on them."""


class AnswerError(ValueError):
    """An app answered, but not in the shape its probe expects."""


def jupyter_app(status: Any, kernels: Any, now: datetime) -> dict[str, Any]:
    """The `app` map from Jupyter Server's `/api/status` and `/api/kernels` answers."""
    if not isinstance(status, dict):
        raise AnswerError("/api/status did not answer a JSON object")
    if not isinstance(kernels, list):
        raise AnswerError("/api/kernels did not answer a JSON list")
    last = _timestamp(status.get("last_activity"))
    busy = sum(1 for k in kernels if isinstance(k, dict) and k.get("execution_state") == "busy")
    return {
        "ok": True,
        "error": "",
        "last_activity": last,
        "idle_for": max(timedelta(0), now - last),
        "kernels": _count(status, "kernels", len(kernels)),
        "busy_kernels": busy,
        "connections": _count(status, "connections", 0),
    }


def jupyter_unknown(now: datetime, error: str) -> dict[str, Any]:
    """The Jupyter map before any answer: nothing known, so nothing looks idle."""
    return {
        "ok": False,
        "error": error,
        "last_activity": now,
        "idle_for": timedelta(0),
        "kernels": 0,
        "busy_kernels": 0,
        "connections": 0,
    }


def failed(last: Mapping[str, Any], error: str, now: datetime) -> dict[str, Any]:
    """`last` (the previous map) marked failed: its values kept, `idle_for` brought up to date.

    A probe that fails says nothing new about the app, so the last answer stands,
    with `ok` false; a policy decides what a failure means (`app.ok && ...`).
    """
    app = {**last, "ok": False, "error": error}
    last_activity = app.get("last_activity")
    if isinstance(last_activity, datetime) and "idle_for" in app:
        app["idle_for"] = max(timedelta(0), now - last_activity)
    return app


def mapped_app(document: Any, paths: Mapping[str, str] | None) -> dict[str, Any]:
    """The `app` map of a generic probe: `paths` maps each key to a dotted JSON path.

    Without `paths`, the top-level fields of a JSON object are taken as they are.
    A path that leads nowhere (or to null) leaves its key out: a policy can test
    it with `has(app.key)`.
    """
    app: dict[str, Any] = {"ok": True, "error": ""}
    if paths is None:
        if not isinstance(document, dict):
            raise AnswerError("the answer is not a JSON object: give `map` to pick fields")
        app.update((k, v) for k, v in document.items() if v is not None and k not in BASE_KEYS)
        return app
    for key, path in paths.items():
        value = pick(document, path)
        if value is not None:
            app[key] = value
    return app


def pick(document: Any, path: str) -> Any:
    """The value at a dotted `path` ("a.b", "items.0.state") in `document`, or None."""
    value = document
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _timestamp(value: Any) -> datetime:
    """Jupyter's ISO 8601 time ("2026-03-02T10:25:00.123456Z") as an aware UTC datetime."""
    if not isinstance(value, str):
        raise AnswerError("/api/status has no last_activity")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise AnswerError(f"/api/status: last_activity {value!r} is not a time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _count(document: Mapping[str, Any], key: str, default: int) -> int:
    value = document.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AnswerError(f"/api/status: {key} is not a whole number")
    return value
