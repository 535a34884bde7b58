"""A small client of the admin API (httpx), JSON in and out.

Used by the CLI (`siesta sessions`, `wake`, `sleep`, `events`) to talk to a running
siesta. The token comes from `SIESTA_ADMIN_TOKEN`, or from the `admin-token` file
that siesta writes into its state folder at first start.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from siesta.httpclient import sync_client

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
    """Calls the admin API of the siesta listening at `host:port` (over httpx)."""

    def __init__(self, host: str, port: int, token: str | None, timeout: float = 10.0):
        host = _connect_host(host)
        self.base_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self.token = token
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = sync_client(self.base_url, timeout, headers)

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

    def session_token(self, session_id: str, *, rotate: bool = False) -> str:
        """The session's access token (a new one with `rotate`)."""
        path = f"/api/sessions/{_quote(session_id)}/token"
        return str(self.request("POST" if rotate else "GET", path)["token"])

    def explain(self, session_id: str) -> dict[str, Any]:
        """A session's policy read against its signals now."""
        return dict(self.request("GET", f"/api/sessions/{_quote(session_id)}/explain"))

    def logs(self, session_id: str, lines: int) -> str:
        """The last `lines` lines of the session's backend log."""
        path = f"/api/sessions/{_quote(session_id)}/logs"
        return str(self.request("GET", path, params=_params(lines=lines))["log"])

    def events(
        self, session: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        """Stored events, oldest first."""
        return list(
            self.request("GET", "/api/events", params=_params(session=session, since=since))
        )

    def stream(
        self, session: str | None = None, since: float | None = None, timeout: float = 60.0
    ) -> Iterator[dict[str, Any]]:
        """New events as they happen (server-sent events), until the server ends the stream."""
        params = _params(session=session, since=since)
        with self._call(
            "GET", "/api/events/stream", None, timeout, params, accept="text/event-stream"
        ) as response:
            data: list[str] = []
            for line in _lines(response):
                if line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    yield json.loads("\n".join(data))
                    data = []

    # -- transport ----------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        timeout: float | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        """Send one request; the decoded JSON answer, or `AdminError`."""
        with self._call(method, path, body, timeout or self.timeout, params) as response:
            payload = _read(response, self.base_url, timeout or self.timeout)
        return json.loads(payload) if payload else None

    @contextlib.contextmanager
    def _call(
        self,
        method: str,
        path: str,
        body: object,
        timeout: float,
        params: dict[str, str] | None = None,
        accept: str = "application/json",
    ) -> Iterator[httpx.Response]:
        """The streamed answer to one request, once its status says it succeeded."""
        request = self._http.build_request(
            method,
            path,
            json=body,
            params=params,
            headers={"Accept": accept},
            timeout=timeout,
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.TimeoutException:
            raise AdminError(f"no answer within {timeout:g}s from {self.base_url}") from None
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        try:
            if response.is_error:
                response.read()
                raise _http_error(response)
            yield response
        finally:
            response.close()

    def _unreachable(self, exc: httpx.TransportError) -> AdminError:
        if isinstance(exc, httpx.ConnectError) and _refused(exc):
            return NotRunning(
                f"siesta is not running: nothing listens at {self.base_url} (gateway.admin_listen)"
            )
        return AdminError(f"cannot reach siesta at {self.base_url}: {exc or type(exc).__name__}")


def _refused(exc: BaseException | None) -> bool:
    """Whether a connection refusal is behind `exc` (httpx wraps httpcore's error)."""
    while exc is not None:
        if isinstance(exc, ConnectionRefusedError) or "Connection refused" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _read(response: httpx.Response, base_url: str, timeout: float) -> bytes:
    try:
        return response.read()
    except httpx.TimeoutException:
        raise AdminError(f"no answer within {timeout:g}s from {base_url}") from None
    except httpx.TransportError as exc:
        raise AdminError(f"siesta at {base_url} broke off its answer: {exc}") from None


def _lines(response: httpx.Response) -> Iterator[str]:
    """The lines of a streamed answer; the end of the stream when the connection breaks."""
    try:
        yield from response.iter_lines()
    except httpx.TransportError:
        return


def _http_error(response: httpx.Response) -> AdminError:
    """An error answer as `AdminError`, with the API's own message when it sent one."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = body.get("error") if isinstance(body, dict) else None
    retry = body.get("retry_after") if isinstance(body, dict) else None
    if response.status_code == 401:
        hint = f"set {TOKEN_ENV}, or give the config (-c) of that siesta"
        message = f"{message or 'unauthorized'}: {hint}"
    return AdminError(
        str(message or f"HTTP {response.status_code} {response.reason_phrase}"),
        status=response.status_code,
        retry_after=float(retry) if isinstance(retry, int | float) else None,
    )


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _params(**params: object) -> dict[str, str]:
    return {k: str(v) for k, v in params.items() if v is not None}
