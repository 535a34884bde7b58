"""Recording a running siesta's signals as a trace that `siesta policy replay` reads.

`siesta policy record` polls the admin API's `/api/signals` (`siesta.api.signals`)
every `--every` seconds; `Recorder.rows` turns the difference between two snapshots
into trace rows (`time,session,event,value`, see `siesta.replay.TRACE_HELP`):

- new requests become `request` rows (their bytes shared among them), placed at the
  session's last byte when it fell between the snapshots;
- bytes without a new request (websocket messages, a long download) a `bytes` row;
- connections opened or closed become `connect` / `disconnect` rows;
- a changed cpu_percent (to 0.1) a `cpu` row, a changed probe map an `app` row.

The first snapshot lists every session, to learn where their counters stand; nothing
before it is written, except what is open then (connections, cpu, the probe's map).
Counters that went down mean siesta restarted: the session starts over from there.
No I/O here: the CLI does the polling and the writing.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

HEADER = "time,session,event,value\n"

Row = tuple[float, str, str, str]
"""(seconds since the epoch, session, event, value)."""


@dataclass(slots=True)
class _Seen:
    """Where a session stood at the last snapshot."""

    requests: int
    bytes: int
    connections: int
    cpu: str | None
    app: str | None


class Recorder:
    """Turns successive `/api/signals` snapshots into trace rows."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}
        self._last_at: float | None = None

    @property
    def started(self) -> bool:
        """Whether the first snapshot (which lists every session) was taken."""
        return self._last_at is not None

    def rows(self, snapshot: Mapping[str, Any]) -> list[Row]:
        """The rows for what changed since the previous snapshot, in time order."""
        at = float(snapshot["at"])
        since = self._last_at
        rows: list[Row] = []
        for item in snapshot["sessions"]:
            rows += self._session(item, at, since)
        self._last_at = at
        rows.sort(key=lambda row: row[0])
        return rows

    def _session(self, item: Mapping[str, Any], at: float, since: float | None) -> list[Row]:
        sid = str(item["id"])
        now = _Seen(
            int(item["requests"]),
            int(item["bytes"]),
            int(item["connections"]),
            _cpu(item.get("cpu_percent")),
            _app(item.get("app")),
        )
        seen = self._seen.get(sid)
        self._seen[sid] = now
        if seen is None or now.requests < seen.requests or now.bytes < seen.bytes:
            # the first look at it (or siesta restarted): only what is open now counts
            seen = _Seen(now.requests, now.bytes, 0, None, None)
        rows = [(at, sid, "connect", "")] * max(0, now.connections - seen.connections)
        last = item.get("last_activity")
        when = float(last) if last and since is not None and since < float(last) <= at else at
        rows += _traffic(sid, when, now.requests - seen.requests, now.bytes - seen.bytes)
        rows += [(at, sid, "disconnect", "")] * max(0, seen.connections - now.connections)
        if now.cpu is not None and now.cpu != seen.cpu:
            rows.append((at, sid, "cpu", now.cpu))
        if now.app is not None and now.app != seen.app:
            rows.append((at, sid, "app", now.app))
        return rows


def _traffic(sid: str, at: float, requests: int, nbytes: int) -> list[Row]:
    """`requests` request rows sharing `nbytes`, or one `bytes` row without requests."""
    if requests <= 0:
        return [(at, sid, "bytes", str(nbytes))] if nbytes > 0 else []
    share, rest = divmod(max(0, nbytes), requests)
    rows = [(at, sid, "request", str(share))] * (requests - 1)
    return [*rows, (at, sid, "request", str(share + rest))]


def _cpu(value: Any) -> str | None:
    return None if value is None else f"{float(value):.1f}"


def _app(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return None
    return json.dumps({k: v for k, v in value.items() if k != "error"}, sort_keys=True)


def format_rows(rows: Iterable[Row]) -> str:
    """`rows` as CSV lines (times in ISO 8601, UTC, to the millisecond)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for at, sid, event, value in rows:
        moment = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
        writer.writerow([moment, sid, event, value] if value else [moment, sid, event])
    return out.getvalue()
