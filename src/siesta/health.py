"""Named degraded modes: what siesta depends on, and whether it works right now.

Failure is a state, not an exception: a dependency that fails (the store, Redis, a
container engine) is marked degraded here with the reason, siesta keeps serving
what it safely can, and the mode goes back to ok when the dependency answers again.
Background tasks count their errors here too. Written by the store's write-behind
queue (`siesta.store.writer`), the replica coordination and the app's guarded tasks;
read by `/healthz` and `/metrics` (`siesta.api`, `siesta.metrics`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

OK = "ok"
DEGRADED = "degraded"


@dataclass(slots=True)
class Dependency:
    """One dependency's mode: `ok` or `degraded` (with why, and since when, wall clock)."""

    mode: str = OK
    detail: str = ""
    since: float = field(default_factory=time.time)
    errors: int = 0  # failed operations since siesta started
    lost: int = 0  # times its data was found gone (deleted, replaced, emptied) and rewritten


class Health:
    """Every dependency's mode, and the errors of background tasks."""

    def __init__(self) -> None:
        self.dependencies: dict[str, Dependency] = {}
        self.task_errors: dict[str, int] = {}

    def of(self, name: str) -> Dependency:
        """The dependency called `name` (ok until told otherwise)."""
        dep = self.dependencies.get(name)
        if dep is None:
            dep = self.dependencies[name] = Dependency()
        return dep

    def degraded(self, name: str, detail: str) -> bool:
        """Mark `name` degraded because of `detail`; True if it was ok until now."""
        dep = self.of(name)
        dep.errors += 1
        dep.detail = detail
        if dep.mode == DEGRADED:
            return False
        dep.mode, dep.since = DEGRADED, time.time()
        return True

    def ok(self, name: str) -> bool:
        """Mark `name` working again; True if it was degraded until now."""
        dep = self.of(name)
        if dep.mode == OK:
            return False
        dep.mode, dep.detail, dep.since = OK, "", time.time()
        return True

    def task_failed(self, task: str) -> None:
        """Count an error of the background task `task` (it is retried)."""
        self.task_errors[task] = self.task_errors.get(task, 0) + 1

    @property
    def status(self) -> str:
        """ "ok" when every dependency is, else "degraded"."""
        return OK if all(d.mode == OK for d in self.dependencies.values()) else DEGRADED
