"""The shapes the admin API takes and answers, as pydantic models.

The routes declare them, FastAPI validates requests against them, and the OpenAPI
document at /openapi.json is generated from them: one definition, no drift. Times
are seconds since the epoch (`at`, `created`, `sleep_at`) or durations in seconds.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from siesta.config import NAME_PATTERN
from siesta.core.model import State

NAME_RULE = "must be 1 to 63 letters, digits, '_' or '-', starting with a letter or digit"


class ErrorBody(BaseModel):
    """Every error answer: what went wrong, and when to retry if it is worth it."""

    error: str = Field(description="What went wrong, in one line.")
    retry_after: float | None = Field(
        default=None, description="Seconds to wait before retrying (also in Retry-After)."
    )


class SessionInfo(BaseModel):
    """A session as the API shows it."""

    id: str
    template: str
    labels: dict[str, str]
    state: State
    endpoint: str | None = Field(description="host:port of the backend, while it runs")
    pid: int | None
    created: float = Field(description="seconds since the epoch")
    awake_for: float | None = Field(description="seconds since it woke; null unless running")
    idle_for: float | None = Field(description="seconds since its last byte; null unless awake")
    next_check_in: float | None = Field(description="seconds to the next policy check")
    connections: int
    inflight: int
    held: int
    requests: int
    bytes: int
    failures: int = Field(description="failed starts in a row")
    failure: str | None = Field(
        default=None, description="why the last start failed; null once a start succeeds"
    )
    retry_in: float | None = Field(description="seconds until a FAILED session may wake again")


class NewSession(BaseModel):
    """A session to create (ASLEEP) from a configured template."""

    id: str = Field(pattern=NAME_PATTERN, description=f"The session id: {NAME_RULE}.")
    template: str = Field(description="The name of a configured template.")
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form key: value tags.")


NEW_SESSION_RULES = {
    "id": f"id {NAME_RULE}",
    "template": "template must be the name of a configured template",
    "labels": "labels must be a mapping of strings to strings",
}
"""The message for a bad value of each `NewSession` field."""


class SessionToken(BaseModel):
    """A session's access token (gateway.auth mode token)."""

    token: str = Field(
        description="Send it as Authorization: Bearer <token>, or once as ?siesta_token=<token>"
        " (exchanged for a cookie)."
    )


class Deleted(BaseModel):
    """The answer to a DELETE."""

    deleted: str = Field(description="the id of the session deleted")


class Event(BaseModel):
    """A recorded transition of a session."""

    session: str
    at: float = Field(description="seconds since the epoch")
    old: State
    new: State
    reason: str
    wake_seconds: float | None = Field(
        default=None, description="how long the wake took (on WAKING -> AWAKE)"
    )


class DependencyView(BaseModel):
    """One dependency's mode (`siesta.health`)."""

    mode: str = Field(description='"ok", or "degraded" while it fails (siesta goes on)')
    detail: str = Field(description="the last error while degraded, else empty")
    since: float = Field(description="when the mode began (seconds since the epoch)")
    errors: int = Field(description="failed operations since siesta started")
    lost: int = Field(description="times its data was found gone and written again")


class Health(BaseModel):
    """Liveness (the answer is 200 whenever siesta runs), and each dependency's mode."""

    status: str = Field(description='"ok", or "degraded" while a dependency is')
    sessions: int = Field(description="sessions known")
    dependencies: dict[str, DependencyView] = Field(
        default_factory=dict, description="by name: store (and replicas with Redis)"
    )
    pending_writes: int = Field(0, description="records not yet durable in the store")
    task_errors: dict[str, int] = Field(
        default_factory=dict, description="errors of background tasks (each was retried)"
    )


class RuleView(BaseModel):
    """One rule of a policy, read against the signals now."""

    key: str = Field(description="max_lifetime, min_awake, keep_awake_when or sleep_when")
    source: str
    effect: str = Field(description="what it does when it holds")
    values: dict[str, Any] = Field(description="the signals it reads, with their values now")
    holds: bool | None = Field(description="null when the session is not awake")
    error: str | None


class DecisionView(BaseModel):
    """The policy's decision now, with its times."""

    sleep: bool
    reason: str
    sleep_in: float | None = Field(
        description="seconds until it sleeps if only time passes; null when that cannot be foreseen"
    )
    sleep_at: float | None = Field(description="the same, seconds since the epoch")
    next_check_in: float | None
    warn_in: float | None
    check_every: float | None = Field(
        description="how often the rules are re-checked when their time cannot be foreseen"
    )


class Explanation(BaseModel):
    """Each rule of a session's policy, the signals it reads, and when it would sleep."""

    session: str
    template: str
    state: State
    policy: str
    signals: dict[str, Any] | None = Field(
        description="every signal now (durations in seconds, `now` ISO 8601); null unless "
        "the session is awake"
    )
    rules: list[RuleView] = Field(
        description="max_lifetime, min_awake, keep_awake_when, sleep_when: those the policy "
        "has, in the order they are looked at"
    )
    decision: DecisionView | None = Field(description="null unless awake")
    note: str | None


class LogLines(BaseModel):
    """The last lines of a session's backend log."""

    session: str = Field(description="the session id")
    lines: int = Field(description="how many lines were asked for")
    log: str = Field(description="the last lines, oldest first")


class SessionSignals(BaseModel):
    """One running session's counters and measurements, as `siesta policy record` reads
    them: the counters are cumulative since siesta started, so two snapshots give the
    traffic between them."""

    id: str
    state: State
    requests: int = Field(description="requests forwarded since siesta started")
    bytes: int = Field(description="bytes moved (both ways) since siesta started")
    connections: int = Field(description="open client connections now")
    inflight: int = Field(description="requests in flight now")
    last_activity: float | None = Field(description="seconds since the epoch of the last byte")
    cpu_percent: float | None = Field(
        description="CPU over the template's cpu_window (100 = one core); null when not measured"
    )
    memory_bytes: int | None = Field(description="resident memory now; null when not measured")
    app: dict[str, Any] | None = Field(
        description="the activity probe's map (durations in seconds, times ISO 8601)"
    )


class SignalsSnapshot(BaseModel):
    """The signals of every session that is not asleep, at one moment."""

    at: float = Field(description="seconds since the epoch of the snapshot")
    sessions: list[SessionSignals]
