"""A small client of the admin API: the standard library only, JSON in and out.

Used by the CLI (`siesta sessions`, `wake`, `sleep`, `events`) to talk to a running
siesta. The token comes from `SIESTA_ADMIN_TOKEN`, or from the `admin-token` file
that siesta writes into its state folder at first start.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

TOKEN_FILE = "admin-token"
"""The file in the state folder holding the admin token (mode 0600)."""

TOKEN_ENV = "SIESTA_ADMIN_TOKEN"
"""The environment variable that gives the admin token (siesta and the CLI read it)."""


class AdminError(Exception):
    """The admin API answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class NotRunning(AdminError):
    """Nothing listens at the admin address: siesta is not running."""


def read_token(state_dir: Path) -> str | None:
    """The admin token from the environment, else from the state folder; None if neither."""
    given = os.environ.get(TOKEN_ENV, "").strip()
    if given:
        return given
    try:
        return (state_dir / TOKEN_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AdminError(f"cannot read the admin token {state_dir / TOKEN_FILE}: {exc}") from exc


def _connect_host(host: str) -> str:
    """Where to connect for a listen address: a wildcard address means this machine."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


class AdminClient:
    """Calls the admin API of the siesta listening at `host:port`."""

    def __init__(self, host: str, port: int, token: str | None, timeout: float = 10.0):
        host = _connect_host(host)
        self.base_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self.token = token
        self.timeout = timeout

    # -- endpoints ----------------------------------------------------------------

    def sessions(self) -> list[dict[str, Any]]:
        """Every session."""
        return list(self.request("GET", "/api/sessions"))

    def session(self, session_id: str) -> dict[str, Any]:
        """One session."""
        return dict(self.request("GET", f"/api/sessions/{_quote(session_id)}"))

    def create(self, session_id: str, template: str, labels: dict[str, str]) -> dict[str, Any]:
        """Create a session from a template."""
        body = {"id": session_id, "template": template, "labels": labels}
        return dict(self.request("POST", "/api/sessions", body))

    def delete(self, session_id: str) -> None:
        """Stop a session's backend and forget the session."""
        self.request("DELETE", f"/api/sessions/{_quote(session_id)}")

    def wake(self, session_id: str, timeout: float) -> dict[str, Any]:
        """Wake a session and wait (at most `timeout` seconds) until it is awake."""
        path = f"/api/sessions/{_quote(session_id)}/wake"
        return dict(self.request("POST", path, timeout=timeout))

    def sleep(self, session_id: str, timeout: float) -> dict[str, Any]:
        """Put a session to sleep and wait until its backend stopped."""
        path = f"/api/sessions/{_quote(session_id)}/sleep"
        return dict(self.request("POST", path, timeout=timeout))

    def logs(self, session_id: str, lines: int) -> str:
        """The last `lines` lines of the session's backend log."""
        path = f"/api/sessions/{_quote(session_id)}/logs" + _query(lines=lines)
        return str(self.request("GET", path)["log"])

    def events(
        self, session: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        """Stored events, oldest first."""
        return list(self.request("GET", "/api/events" + _query(session=session, since=since)))

    def stream(
        self, session: str | None = None, since: float | None = None, timeout: float = 60.0
    ) -> Iterator[dict[str, Any]]:
        """New events as they happen (server-sent events), until the server ends the stream."""
        path = "/api/events/stream" + _query(session=session, since=since)
        with self._open("GET", path, None, timeout, accept="text/event-stream") as response:
            data: list[str] = []
            for raw in response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    yield json.loads("\n".join(data))
                    data = []

    # -- transport ----------------------------------------------------------------

    def request(
        self, method: str, path: str, body: object = None, timeout: float | None = None
    ) -> Any:
        """Send one request; the decoded JSON answer, or `AdminError`."""
        with self._open(method, path, body, timeout or self.timeout) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def _open(
        self,
        method: str,
        path: str,
        body: object,
        timeout: float,
        accept: str = "application/json",
    ) -> HTTPResponse:
        headers = {"Accept": accept}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.base_url + path, data=data, headers=headers, method=method
        )
        try:
            response: HTTPResponse = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except TimeoutError:
            raise AdminError(f"no answer within {timeout:g}s from {self.base_url}") from None
        return response

    def _unreachable(self, reason: object) -> AdminError:
        if isinstance(reason, ConnectionRefusedError):
            return NotRunning(
                f"siesta is not running: nothing listens at {self.base_url} (gateway.admin_listen)"
            )
        if isinstance(reason, TimeoutError):
            return AdminError(f"siesta did not answer at {self.base_url}")
        return AdminError(f"cannot reach siesta at {self.base_url}: {reason}")


def _http_error(exc: urllib.error.HTTPError) -> AdminError:
    """An error answer as `AdminError`, with the API's own message when it sent one."""
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        body = {}
    message = body.get("error") if isinstance(body, dict) else None
    retry = body.get("retry_after") if isinstance(body, dict) else None
    if exc.code == 401:
        hint = f"set {TOKEN_ENV}, or give the config (-c) of that siesta"
        message = f"{message or 'unauthorized'}: {hint}"
    return AdminError(
        str(message or f"HTTP {exc.code} {exc.reason}"),
        status=exc.code,
        retry_after=float(retry) if isinstance(retry, int | float) else None,
    )


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _query(**params: object) -> str:
    given = {k: str(v) for k, v in params.items() if v is not None}
    return "?" + urllib.parse.urlencode(given) if given else ""
