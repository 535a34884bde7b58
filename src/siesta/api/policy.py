"""`/api/sessions/{id}/explain`: a session's policy read against its signals now.

The controller (which the admin API must not import) is reached through the
`PolicySource` protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from fastapi import APIRouter

from siesta.api.deps import PathSession, Svc
from siesta.api.errors import ApiProblem, responses
from siesta.api.models import DecisionView, Explanation, RuleView
from siesta.core.duration import format_duration
from siesta.core.model import Session
from siesta.core.policy import SIGNALS, Decision, EvaluationError, Policy, Rule, Signals

router = APIRouter(prefix="/api/sessions", tags=["policy"])


@runtime_checkable
class PolicySource(Protocol):
    """What `explain` needs of the controller."""

    def policy_of(self, session: Session) -> Policy: ...

    def next_due(self, session_id: str) -> float | None: ...

    def measured(self, session_id: str) -> bool: ...

    async def current_signals(self, session_id: str) -> Signals | None: ...


@router.get(
    "/{id}/explain",
    summary="Each rule of the session's policy with the signal values it reads, whether it "
    "holds, and when the session would sleep",
    responses=responses(e404="no such session", e503="the controller is not running yet"),
)
async def explain(session: PathSession, svc: Svc) -> Explanation:
    controller = svc.controller()
    if not isinstance(controller, PolicySource):
        raise ApiProblem(503, "the controller is not running yet")
    policy = controller.policy_of(session)
    signals = await controller.current_signals(session.id)
    answer = explanation(session, policy, signals, controller.next_due(session.id))
    if signals is not None and policy.needs_provider and not controller.measured(session.id):
        answer.note = (
            "cpu_percent and memory_bytes have no window yet (two samples of the backend's "
            "usage): they read 0 here, and the policy is not checked until they have one"
        )
    return answer


def explanation(
    session: Session, policy: Policy, signals: Signals | None, next_due: float | None
) -> Explanation:
    """The answer of `GET /api/sessions/{id}/explain`.

    `signals` is None unless the session is awake (a sleeping session is not checked);
    `next_due` is the controller's next check (monotonic, on the clock of `signals.at`).
    """
    answer = Explanation(
        session=session.id,
        template=session.template,
        state=session.state,
        policy=policy.name,
        signals=None,
        rules=[_limit_view(policy, k, signals) for k in _LIMITS if _has_limit(policy, k)]
        + [_rule_view(rule, signals) for rule in _ordered(policy)],
        decision=None,
        note=None,
    )
    if signals is None:
        answer.note = (
            f"the session is {session.state.value}: its policy is checked only while it is "
            "awake, so there are no signal values; the next request wakes it"
        )
        return answer
    answer.signals = {name: _plain(getattr(signals, name)) for name in SIGNALS}
    try:
        decision = policy.evaluate(signals)
    except EvaluationError as exc:
        answer.note = f"a rule failed to run, so the session is kept awake: {exc}"
        return answer
    answer.decision = _decision_view(policy, decision, signals, next_due)
    return answer


_LIMITS = ("max_lifetime", "min_awake")
_EFFECT = {
    "max_lifetime": "sleep, whatever else holds",
    "min_awake": "stay awake",
    "keep_awake_when": "stay awake, whatever sleep_when says",
    "sleep_when": "sleep",
}


def _has_limit(policy: Policy, key: str) -> bool:
    return policy.max_lifetime is not None if key == "max_lifetime" else policy.min_awake > 0


def _ordered(policy: Policy) -> list[Rule]:
    """The rules in the order `Policy.evaluate` looks at them."""
    keep = policy.keep_awake_when
    return [policy.sleep_when] if keep is None else [keep, policy.sleep_when]


def _limit_view(policy: Policy, key: str, signals: Signals | None) -> RuleView:
    if key == "max_lifetime":
        limit, op = policy.max_lifetime or 0.0, ">="
        holds = None if signals is None else signals.awake_for + 1e-6 >= limit
    else:
        limit, op = policy.min_awake, "<"
        holds = None if signals is None else signals.awake_for + 1e-6 < limit
    return RuleView(
        key=key,
        source=f"awake_for {op} {format_duration(limit)}",
        effect=_EFFECT[key],
        values={} if signals is None else {"awake_for": signals.awake_for},
        holds=holds,
        error=None,
    )


def _rule_view(rule: Rule, signals: Signals | None) -> RuleView:
    holds: bool | None = None
    error = None
    if signals is not None:
        try:
            holds = rule.holds(signals)
        except EvaluationError as exc:
            error = str(exc)
    return RuleView(
        key=rule.key,
        source=" ".join(rule.source.split()),
        effect=_EFFECT.get(rule.key, "sleep"),
        values={}
        if signals is None
        else {name: _plain(getattr(signals, name)) for name in rule.variables},
        holds=holds,
        error=error,
    )


def _decision_view(
    policy: Policy, decision: Decision, signals: Signals, next_due: float | None
) -> DecisionView:
    """The decision, with its times relative to the reading (seconds) and as wall clock."""
    wall = signals.now.timestamp()
    sleep_in = None if decision.sleep_at is None else max(0.0, decision.sleep_at - signals.at)
    check_in = None if next_due is None else max(0.0, next_due - signals.at)
    warn_in = None
    if policy.warn is not None and sleep_in is not None:
        warn_in = max(0.0, sleep_in - policy.warn.before)
    return DecisionView(
        sleep=decision.sleep,
        reason=decision.reason,
        sleep_in=sleep_in,
        sleep_at=None if sleep_in is None else wall + sleep_in,
        next_check_in=check_in,
        warn_in=warn_in,
        check_every=None if policy.predictable else policy.check_every,
    )


def _plain(value: Any) -> Any:
    """A signal's value as JSON: durations in seconds, times in ISO 8601, maps as objects."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
