"""The admin API (FastAPI) and `/metrics`, on a second listener.

`siesta.app` builds an `AdminServer` and runs it inside siesta's own event loop;
the CLI (`siesta.adminclient`) and operators' tools call it. Routes are grouped by
area, one module each (`sessions`, `events`, `policy`, `savings`, `system`), with
their request and answer shapes in `models`; `app` assembles them (see there how to
add one), and /openapi.json and /docs are generated from them. Every route needs
`Authorization: Bearer <token>` except the open ones of `auth`. Errors are JSON:
`{"error": "..."}`. It reads and changes sessions only through the lifecycle, and
reads events from the store.
"""

from siesta.api.auth import load_token
from siesta.api.server import AdminServer

__all__ = ["AdminServer", "load_token"]
