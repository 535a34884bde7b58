"""The ledger: each session's running account of awake and asleep time, wakes, wake
times and the resources its backend used, kept up to date one event at a time.

Pure: an `Account` is a frozen value; `apply`, `add_usage` and `closed_at` return new
ones. So the arithmetic is tested without a clock, a store or a lifecycle, and an
account costs the same to update whether the store holds ten events or ten million.

Who uses it: `siesta.savings.keeper` keeps one account per session (a lifecycle
observer) and writes it to the store on every transition; `siesta.savings.costing`
turns accounts into money, energy and CO2e; `accounts_from` rebuilds accounts from an
event log once (a store written before the ledger existed) and in tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from siesta.core.model import State, Transition

RUNNING = frozenset({State.WAKING, State.AWAKE, State.STOPPING})
"""States in which a backend process exists (starting, serving or stopping): they cost."""

HOURS = 24
DAY = 86400.0
_ZEROS: tuple[float, ...] = (0.0,) * HOURS

SKETCH_ACCURACY = 0.01
"""Relative accuracy of the wake-time quantiles: p50 and p95 are within 1 % of the true
values, however many wakes were seen, in a few dozen counters (a DDSketch)."""
_GAMMA = (1 + SKETCH_ACCURACY) / (1 - SKETCH_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
_SMALLEST = 1e-6  # seconds: shorter wake times share one bucket


@dataclass(frozen=True, slots=True)
class Sketch:
    """Counts of values in logarithmic buckets: quantiles within `SKETCH_ACCURACY`.

    The DDSketch of Masson, Rim and Lee (VLDB 2019): bucket i holds the values in
    (gamma^(i-1), gamma^i]; two sketches merge by adding their counts.
    """

    buckets: tuple[tuple[int, int], ...] = ()

    @property
    def count(self) -> int:
        """How many values were added."""
        return sum(n for _, n in self.buckets)

    def add(self, value: float) -> Sketch:
        """This sketch with `value` counted."""
        index = math.ceil(math.log(max(value, _SMALLEST)) / _LOG_GAMMA)
        counts = dict(self.buckets)
        counts[index] = counts.get(index, 0) + 1
        return Sketch(tuple(sorted(counts.items())))

    def merge(self, other: Sketch) -> Sketch:
        """The sketch of both sketches' values."""
        counts = dict(self.buckets)
        for index, n in other.buckets:
            counts[index] = counts.get(index, 0) + n
        return Sketch(tuple(sorted(counts.items())))

    def quantile(self, q: float) -> float | None:
        """The value at quantile `q` (0 to 1), or None when the sketch is empty."""
        total = self.count
        if total == 0:
            return None
        rank = q * (total - 1)
        seen = 0
        for index, n in self.buckets:
            seen += n
            if seen > rank:
                return 2 * _GAMMA**index / (_GAMMA + 1)
        return 2 * _GAMMA ** self.buckets[-1][0] / (_GAMMA + 1)


@dataclass(frozen=True, slots=True)
class Account:
    """One session's ledger.

    Time is wall clock (seconds since the epoch). Closed spans are summed in
    `awake_seconds` and `asleep_seconds`; the span since `since` is open and counted
    by `closed_at(now)`. `awake_by_hour` and `tracked_by_hour` split the closed time by
    UTC hour of day (for hourly grid intensities and `siesta advise`). The resource
    figures are what the backend used while awake, as the sampler measured it;
    `peak_cores` is the highest average CPU (in cores) over one awake period.
    """

    session: str
    template: str
    created: float
    running: bool = False
    since: float = 0.0
    running_since: float | None = None
    awake_seconds: float = 0.0
    asleep_seconds: float = 0.0
    wakes: int = 0
    sleeps: int = 0
    awake_by_hour: tuple[float, ...] = _ZEROS
    tracked_by_hour: tuple[float, ...] = _ZEROS
    wake_times: Sketch = field(default_factory=Sketch)
    last_run_seconds: float = 0.0
    cpu_seconds: float = 0.0
    memory_gib_hours: float = 0.0
    peak_memory_bytes: int = 0
    peak_cores: float = 0.0

    @property
    def tracked_seconds(self) -> float:
        """Closed time in all: what an always-on backend would have run."""
        return self.awake_seconds + self.asleep_seconds


def open_account(session: str, template: str, created: float) -> Account:
    """A new session's account: asleep since `created`."""
    return Account(session, template, created, since=created)


def apply(account: Account, event: Transition) -> Account:
    """`account` after `event`: the open span closes at the event, a new one opens.

    An event stamped before the account's open span (a wall-clock step back) closes
    nothing: time never goes negative.
    """
    at = max(event.at, account.since)
    closed = closed_at(account, at)
    running = event.new in RUNNING
    woke = event.old is State.WAKING and event.new is State.AWAKE
    slept = event.old is State.AWAKE and event.new in (State.STOPPING, State.ASLEEP)
    sketch = closed.wake_times
    if woke and event.wake_seconds is not None:
        sketch = sketch.add(event.wake_seconds)
    running_since, last_run = closed.running_since, closed.last_run_seconds
    if running and not account.running:
        running_since = at
    elif account.running and not running:
        last_run = at - (running_since if running_since is not None else account.since)
        running_since = None
    return replace(
        closed,
        running=running,
        running_since=running_since,
        last_run_seconds=last_run,
        wakes=closed.wakes + woke,
        sleeps=closed.sleeps + slept,
        wake_times=sketch,
    )


def closed_at(account: Account, now: float) -> Account:
    """`account` with its open span counted up to `now` (and reopened there)."""
    end = max(now, account.since)
    span = end - account.since
    if span <= 0:
        return account
    hours = spread(account.since, end)
    tracked = _plus(account.tracked_by_hour, hours)
    if account.running:
        return replace(
            account,
            since=end,
            awake_seconds=account.awake_seconds + span,
            awake_by_hour=_plus(account.awake_by_hour, hours),
            tracked_by_hour=tracked,
        )
    return replace(
        account, since=end, asleep_seconds=account.asleep_seconds + span, tracked_by_hour=tracked
    )


def add_usage(
    account: Account,
    cpu_seconds: float,
    memory_gib_hours: float,
    peak_memory_bytes: int,
    period: float,
) -> Account:
    """`account` plus what the backend used over one awake period of `period` seconds."""
    cores = cpu_seconds / period if period > 0 else 0.0
    return replace(
        account,
        cpu_seconds=account.cpu_seconds + max(0.0, cpu_seconds),
        memory_gib_hours=account.memory_gib_hours + max(0.0, memory_gib_hours),
        peak_memory_bytes=max(account.peak_memory_bytes, peak_memory_bytes),
        peak_cores=max(account.peak_cores, cores),
    )


def spread(start: float, end: float) -> tuple[float, ...]:
    """The seconds of [start, end) falling in each UTC hour of day (0 to 23)."""
    if end <= start:
        return _ZEROS
    days = math.floor((end - start) / DAY)
    bins = [days * 3600.0] * HOURS
    t = start + days * DAY
    while t < end:
        hour = int((t % DAY) // 3600)
        step = min(end, t - (t % 3600) + 3600) - t
        bins[hour] += step
        t += step
    return tuple(bins)


def _plus(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(x + y for x, y in zip(a, b, strict=True))


def accounts_from(
    events: Iterable[Transition],
    sessions: Mapping[str, tuple[str, float]],
) -> dict[str, Account]:
    """Accounts rebuilt from an event log, for `sessions` (id -> template, created).

    A session's events before its creation belong to an earlier session of the same
    id and are ignored. Events are applied in time order.
    """
    accounts = {sid: open_account(sid, t, created) for sid, (t, created) in sessions.items()}
    for event in sorted(events, key=lambda e: e.at):
        account = accounts.get(event.session)
        if account is not None and event.at >= account.created:
            accounts[event.session] = apply(account, event)
    return accounts


def to_record(account: Account) -> dict[str, object]:
    """`account` as plain JSON data (what a store keeps)."""
    return {
        "session": account.session,
        "template": account.template,
        "created": account.created,
        "running": account.running,
        "since": account.since,
        "running_since": account.running_since,
        "awake_seconds": account.awake_seconds,
        "asleep_seconds": account.asleep_seconds,
        "wakes": account.wakes,
        "sleeps": account.sleeps,
        "awake_by_hour": list(account.awake_by_hour),
        "tracked_by_hour": list(account.tracked_by_hour),
        "wake_times": [list(b) for b in account.wake_times.buckets],
        "last_run_seconds": account.last_run_seconds,
        "cpu_seconds": account.cpu_seconds,
        "memory_gib_hours": account.memory_gib_hours,
        "peak_memory_bytes": account.peak_memory_bytes,
        "peak_cores": account.peak_cores,
    }


def from_record(data: Mapping[str, object]) -> Account:
    """The account `to_record` wrote; `ValueError` (naming the field) if it is damaged."""
    try:
        return Account(
            session=str(data["session"]),
            template=str(data["template"]),
            created=_number(data["created"]),
            running=bool(data["running"]),
            since=_number(data["since"]),
            running_since=None if data["running_since"] is None else _number(data["running_since"]),
            awake_seconds=_number(data["awake_seconds"]),
            asleep_seconds=_number(data["asleep_seconds"]),
            wakes=int(_number(data["wakes"])),
            sleeps=int(_number(data["sleeps"])),
            awake_by_hour=_hours(data["awake_by_hour"]),
            tracked_by_hour=_hours(data["tracked_by_hour"]),
            wake_times=Sketch(_buckets(data["wake_times"])),
            last_run_seconds=_number(data["last_run_seconds"]),
            cpu_seconds=_number(data["cpu_seconds"]),
            memory_gib_hours=_number(data["memory_gib_hours"]),
            peak_memory_bytes=int(_number(data["peak_memory_bytes"])),
            peak_cores=_number(data["peak_cores"]),
        )
    except KeyError as exc:
        raise ValueError(f"ledger record lacks {exc.args[0]!r}") from None


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"ledger record: {value!r} is not a number")
    return float(value)


def _hours(value: object) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != HOURS:
        raise ValueError("ledger record: an hours-of-day field needs 24 numbers")
    return tuple(_number(v) for v in value)


def _buckets(value: object) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list):
        raise ValueError("ledger record: wake_times must be a list of [bucket, count]")
    pairs = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise ValueError("ledger record: wake_times must be a list of [bucket, count]")
        pairs.append((int(_number(item[0])), int(_number(item[1]))))
    return tuple(sorted(pairs))
