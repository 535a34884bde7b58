"""Traffic that is served but is not activity: polls of an app's own front end, health
checks, websocket pings. Used by the gateway for templates whose `activity.ignore` (or
the Jupyter preset's default list) says so.

An ignored request is forwarded as any other, and counts in `inflight` while it runs,
but it neither resets `idle_for` nor counts in `requests_1m` or `bytes_1m`. An ignored
websocket upgrade (`GET /api/events/subscribe`) makes the whole websocket quiet: none
of its frames, in either direction, is activity. Patterns:

- `requests`: `"[METHOD ]PATH"`, PATH relative to the session's base URL, `*` any run
  of characters (`/` included), `?` one character; the query string is not matched.
  `GET /api/kernels` ignores only that method; `/healthz` any method.
- `methods`: methods ignored on any path (e.g. OPTIONS).
- `user_agents`: patterns of the User-Agent header (e.g. `kube-probe/*`).
- `websocket_control`: ping and pong frames are not activity (data frames are).

Pure: compiled once at load into two regular expressions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

JUPYTER_IGNORE = (
    "GET /api/contents",
    "GET /api/contents/*",
    "GET /api/sessions",
    "GET /api/kernels",
    "GET /api/kernelspecs",
    "GET /api/terminals",
    "GET /api/me",
    "GET /api/status",
    "/lab/api/workspaces",
    "/lab/api/workspaces/*",
    "GET /api/events/subscribe",
)
"""What an untouched JupyterLab 4 tab asks on its own, measured against JupyterLab 4.6
in headless Chromium (tests/test_jupyterlab.py, Chromium's network log): every 10 s
GET /api/contents (the file browser's listing), /api/sessions, /api/kernels,
/api/terminals, GET /lab/api/workspaces (the Running panel) and PUT
/lab/api/workspaces/default (the Lab saves its own layout, ~1.5 KB, by itself); every
minute or so /api/me and /api/kernelspecs; /api/status is what monitors ask. The
server answers each listing with jupyter_events frames (`contents_service` "get", 115
and 107 bytes) on the /api/events/subscribe websocket: that websocket only reports
what the server did, so none of it counts. Websocket pings and pongs are control
frames. Saving a file (PUT /api/contents/...), running cells (kernel websocket
messages) and opening, renaming or deleting files (other methods on /api/contents)
still count."""


def _glob(pattern: str) -> str:
    """A glob (`*`, `?`) as a regular expression, anchored at its end."""
    out = []
    for char in pattern:
        out.append(".*" if char == "*" else "." if char == "?" else re.escape(char))
    return "".join(out)


class ActivityFilter:
    """Says which requests and websocket frames of a template are not activity."""

    __slots__ = ("_agents", "_requests", "websocket_control")

    def __init__(
        self,
        requests: Iterable[str] = (),
        *,
        methods: Iterable[str] = (),
        user_agents: Iterable[str] = (),
        websocket_control: bool = True,
    ):
        parts = []
        for spec in requests:
            method, _, path = spec.strip().rpartition(" ")
            parts.append(f"{re.escape(method.upper()) if method else '[A-Z]+'} {_glob(path)}")
        parts += [f"{re.escape(m.upper())} .*" for m in methods]
        self._requests = re.compile(("(?:" + "|".join(parts) + r")\Z").encode()) if parts else None
        agents = [_glob(a) for a in user_agents]
        self._agents = re.compile(("(?:" + "|".join(agents) + r")\Z").encode()) if agents else None
        self.websocket_control = websocket_control

    def ignores(self, method: bytes, path: bytes, user_agent: bytes | None) -> bool:
        """Whether a request (its path relative to the base URL, query kept or not) is
        not activity."""
        requests = self._requests
        if requests is not None:
            cut = path.find(b"?")
            if requests.match(method + b" " + (path if cut < 0 else path[:cut])):
                return True
        agents = self._agents
        return agents is not None and user_agent is not None and bool(agents.match(user_agent))
