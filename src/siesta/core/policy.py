"""When an awake session should go to sleep: CEL rules, a decision and its reason.

`siesta.config` compiles each policy's rules when the file loads (`compile_rule`
refuses syntax errors, unknown variables and non-boolean results, with the column);
the controller hands a due session's `Signals` to `Policy.evaluate` and gets a
`Decision`: sleep now (the reason names the rule and the values that made it true),
or look again at `next_check`, with `sleep_at` the moment it would sleep if nothing
changed (the controller warns ahead of it). A template without a policy uses
`Policy.idle`, the `idle_timeout` shorthand.

Pure: CEL runs in-process; the clock's readings arrive inside `Signals`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import cel

from . import fastrule, windows
from .duration import format_duration

SIGNALS: dict[str, str] = {
    "idle_for": "duration",
    "awake_for": "duration",
    "age": "duration",
    "connections": "int",
    "inflight": "int",
    "requests_1m": "int",
    "bytes_1m": "int",
    "cpu_percent": "double",
    "memory_bytes": "int",
    "app": "map",
    "now": "timestamp",
    "labels": "map(string, string)",
}
"""The variables a policy can read, with their CEL types."""

CLOCK_SIGNALS = frozenset({"idle_for", "awake_for", "age"})
"""Durations that grow by themselves while nothing happens."""

VOLATILE_SIGNALS = frozenset(
    {"requests_1m", "bytes_1m", "cpu_percent", "memory_bytes", "app", "now"}
)
"""Signals that can change, and make a rule true, without any traffic at the gateway."""

PROVIDER_SIGNALS = frozenset({"cpu_percent", "memory_bytes"})
"""Signals measured by the resource sampler; a rule reading them needs a provider that
measures (`Provider.measures`), checked at load."""

TRAFFIC_SIGNALS = frozenset({"connections", "inflight"})
"""Counts the gateway tells the controller about when they fall (`Decision.watch`)."""

STRICT_MARGIN = 0.001
"""Seconds after a threshold at which `idle_for > duration("15m")` becomes true."""

_TOLERANCE = 1e-6  # seconds: float noise when comparing durations the clock produced
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_CANDIDATES = 16  # future instants examined when predicting a sleep


@dataclass(slots=True)
class Signals:
    """What is known about one awake session at one moment (read-only by convention:
    not frozen, because a frozen dataclass costs microseconds to build, once per check).

    Durations are in seconds; `now` is an aware datetime; `at` is the monotonic
    time of the reading, the clock `Decision.next_check` and `sleep_at` are on.
    """

    idle_for: float = 0.0
    awake_for: float = 0.0
    age: float = 0.0
    connections: int = 0
    inflight: int = 0
    requests_1m: int = 0
    bytes_1m: int = 0
    cpu_percent: float = 0.0
    memory_bytes: int = 0
    app: Mapping[str, Any] = field(default_factory=dict)
    now: datetime = _EPOCH
    labels: Mapping[str, str] = field(default_factory=dict)
    at: float = 0.0

    def later(self, seconds: float) -> Signals:
        """These signals `seconds` later, if nothing but time changes."""
        return replace(
            self,
            idle_for=self.idle_for + seconds,
            awake_for=self.awake_for + seconds,
            age=self.age + seconds,
            now=self.now + timedelta(seconds=seconds),
            at=self.at + seconds,
        )


SAMPLE = Signals(
    idle_for=300.0,
    awake_for=3600.0,
    age=86400.0,
    connections=1,
    inflight=0,
    requests_1m=12,
    bytes_1m=40_000,
    cpu_percent=2.5,
    memory_bytes=200_000_000,
    now=datetime(2026, 3, 2, 10, 30, tzinfo=UTC),
)
"""Typical values, used to check at load time that a rule gives true or false."""

SAMPLE_IDLE = replace(
    SAMPLE, idle_for=86400.0, connections=0, requests_1m=0, bytes_1m=0, cpu_percent=0.0
)
"""A second sample, idle: `&&` and `||` stop early, so one sample can miss a branch."""


class Decision:
    """Sleep now (with the reason), or look again at `next_check` (monotonic).

    `sleep_at` is when the session would sleep if only time passed (monotonic),
    None when that cannot be foreseen; it equals the reading's time when `sleep`.
    `watch` says that open connections or requests in flight, which the rules read,
    hold the session awake: the controller asks the gateway to tell it when they
    fall, instead of polling. `reason` is put into words only when it is read (a
    sleep, a warning, `policy explain`), so a check that keeps a session awake does
    not pay for formatting it.
    """

    __slots__ = ("_reason", "next_check", "sleep", "sleep_at", "watch")

    def __init__(
        self,
        sleep: bool,
        reason: str | Callable[[], str],
        next_check: float,
        sleep_at: float | None = None,
        watch: bool = False,
    ):
        self.sleep, self._reason, self.next_check = sleep, reason, next_check
        self.sleep_at, self.watch = sleep_at, watch

    @property
    def reason(self) -> str:
        """Why: the rule and the values that made it true (or kept the session awake)."""
        reason = self._reason
        if not isinstance(reason, str):
            reason = self._reason = reason()
        return reason

    def __repr__(self) -> str:
        return (
            f"Decision(sleep={self.sleep}, reason={self.reason!r}, "
            f"next_check={self.next_check}, sleep_at={self.sleep_at}, watch={self.watch})"
        )


class PolicyError(ValueError):
    """A rule that cannot be used: `key` is the setting, `column` (1-based) where in it."""

    def __init__(
        self, key: str, problem: str, source: str, offset: int | None = None, hint: str = ""
    ):
        self.key, self.problem = key, problem
        self.line, self.column = _line_column(source, offset or 0)
        where = ""
        if offset is not None:
            where = f"column {self.column}"
            if "\n" in source.strip():
                where = f"line {self.line}, {where}"
        super().__init__((f"{problem} ({where})" if where else problem) + hint)


class EvaluationError(Exception):
    """A rule failed while running (a missing map key, a bad window spec ...)."""


def _line_column(source: str, offset: int) -> tuple[int, int]:
    before = source[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


# Reading the source -------------------------------------------------------------------

_TOKEN = re.compile(
    r'(?P<string>[rRbB]{0,2}("""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"'
    r"|'(?:[^'\\\n]|\\.)*'))"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<other>\S)"
)
_MACRO_BINDER = re.compile(
    r"\.\s*(?:all|exists|exists_one|existsOne|map|filter|transformList|transformMap)"
    r"\s*\(\s*([A-Za-z_]\w*)\s*,(?:\s*([A-Za-z_]\w*)\s*,)?"
)
_COMPARE = r"(>=|<=|>|<)"
_DURATION_LITERAL = r'duration\(\s*(?:"([^"]*)"|\'([^\']*)\')\s*\)'
_THRESHOLD = re.compile(rf"\b(idle_for|awake_for|age)\s*{_COMPARE}\s*{_DURATION_LITERAL}")
_THRESHOLD_REVERSED = re.compile(
    rf"{_DURATION_LITERAL}\s*{_COMPARE}\s*\b(idle_for|awake_for|age)\b"
)
_WINDOW_CALL = re.compile(
    r'\bin_window\(\s*"([^"]*)"\s*(?:,\s*"([^"]*)"\s*)?\)'
    r"|\bin_window\(\s*'([^']*)'\s*(?:,\s*'([^']*)'\s*)?\)"
)
_CEL_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_CEL_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_CEL_TYPE_NAMES = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"}
)
_FLIP = {">": "<", "<": ">", ">=": "<=", "<=": ">="}
_PARSE_POSITION = re.compile(r"<input>:(\d+):(\d+):\s*(?:Syntax error:\s*)?(.*)")


def _names(source: str) -> list[tuple[str, int]]:
    """Identifiers outside strings and not after a '.', with their offsets, in order."""
    found, after_dot = [], False
    for match in _TOKEN.finditer(source):
        if match["name"] is not None and not after_dot:
            found.append((match["name"], match.start()))
        after_dot = match["other"] == "."
    return found


def _cel_seconds(text: str) -> float | None:
    """Seconds in a CEL duration literal ("15m", "1h30m", "1.5s"), None if unreadable."""
    sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text)
    parts = _CEL_DURATION_PART.findall(body)
    if not parts or "".join(number + unit for number, unit in parts) != body:
        return None
    return sign * sum(float(number) * _CEL_UNITS[unit] for number, unit in parts)


@dataclass(frozen=True, slots=True)
class Threshold:
    """`signal op seconds`, e.g. idle_for > 900: where a rule can change as time passes."""

    signal: str
    op: str
    seconds: float


def _thresholds(source: str) -> tuple[tuple[Threshold, ...], bool]:
    """The duration thresholds in `source`, and whether they are all its clock signals.

    When every `idle_for`, `awake_for` and `age` in the rule is compared with a
    `duration("...")` literal, the rule can only change as time passes at those
    thresholds, which makes its next change predictable.
    """
    found: list[Threshold] = []
    for match in _THRESHOLD.finditer(source):
        seconds = _cel_seconds(match[3] if match[3] is not None else match[4])
        if seconds is not None:
            found.append(Threshold(match[1], match[2], seconds))
    for match in _THRESHOLD_REVERSED.finditer(source):
        seconds = _cel_seconds(match[1] if match[1] is not None else match[2])
        if seconds is not None:
            found.append(Threshold(match[4], _FLIP[match[3]], seconds))
    uses = sum(1 for name, _ in _names(source) if name in CLOCK_SIGNALS)
    return tuple(found), uses == len(found)


# Compiled rules -----------------------------------------------------------------------


class Rule:
    """One compiled CEL rule of a policy (`sleep_when`, `keep_awake_when`).

    `variables` are the signals it reads, in order of first appearance; `windows`
    the literal `in_window(spec, tz)` calls, so the policy knows when they flip;
    `traffic` how it compares `connections` and `inflight` with numbers, None when
    it reads them some other way. Evaluating binds the signals through one reused
    CEL context (a few µs), or runs the rule's plain-Python twin (`core.fastrule`,
    under a µs) when it has one.
    """

    def __init__(self, key: str, source: str):
        self.key, self.source = key, source
        self.program = _compile(key, source)
        names = _names(source)
        binders = _binders(source)
        self.variables = tuple(
            dict.fromkeys(n for n, _ in names if n in SIGNALS and n not in binders)
        )
        _check_unknown(key, source, self.program, names, binders)
        self.windows = _window_calls(key, source)
        self.thresholds, self.predictable = _thresholds(source)
        self.traffic = _traffic(source, names)
        self.volatile = bool(set(self.variables) & VOLATILE_SIGNALS) or len(self.windows) != len(
            re.findall(r"\bin_window\b", source)
        )
        self._signals = SAMPLE
        self._offset = 0.0
        self._context = cel.Context(functions={"in_window": self._in_window})
        self._context.set_variable_resolver(self._resolve)
        _check_result(self, source)
        self.fast = _checked_twin(self)

    def __repr__(self) -> str:
        return f"Rule({self.key}={self.source!r})"

    def holds(self, signals: Signals, offset: float = 0.0) -> bool:
        """Whether the rule is true for `signals`, or `offset` seconds after them if only
        time passed; `EvaluationError` if it fails or is not bool."""
        fast = self.fast
        if fast is not None:
            return fast(signals, offset)
        return self.holds_by_cel(signals, offset)

    def holds_by_cel(self, signals: Signals, offset: float = 0.0) -> bool:
        """`holds`, always through CEL."""
        self._signals, self._offset = signals, offset
        try:
            result = self.program.execute(self._context)
        except Exception as exc:  # CEL raises ValueError, TypeError, KeyError, RuntimeError
            raise EvaluationError(f"{self.key}: {_cel_problem(exc)}") from exc
        finally:
            self._offset = 0.0
        if not isinstance(result, bool):
            raise EvaluationError(f"{self.key}: gave {_cel_type(result)}, not true or false")
        return result

    def explain(self, signals: Signals) -> str:
        """The rule with the values of the signals it reads: `key: source [a=1, b=2]`."""
        values = ", ".join(f"{n}={_shown(n, getattr(signals, n))}" for n in self.variables)
        text = " ".join(self.source.split())
        return f"{self.key}: {text} [{values}]" if values else f"{self.key}: {text}"

    def _resolve(self, name: str) -> Any:
        if name not in SIGNALS:
            return None
        value = getattr(self._signals, name)
        if self._offset and name in CLOCK_SIGNALS:
            value += self._offset
        elif self._offset and name == "now":
            value += timedelta(seconds=self._offset)
        return _cel_value(name, value)

    def _in_window(self, spec: str, tz: str = "UTC") -> bool:
        now = self._signals.now
        if self._offset:
            now += timedelta(seconds=self._offset)
        return windows.in_window(now, spec, tz)


_TRAFFIC_COMPARE = re.compile(r"\b(connections|inflight)\s*(==|!=|<=|>=|<|>)\s*(\d+)\b(?!\.)")
_TRAFFIC_COMPARE_REVERSED = re.compile(
    r"(?<![\w.])(\d+)\s*(==|!=|<=|>=|<|>)\s*(connections|inflight)\b"
)


def _traffic(source: str, names: list[tuple[str, int]]) -> tuple[tuple[str, int], ...] | None:
    """How `source` compares connections and inflight with whole numbers, as (op, number)
    with the signal on the left; None when it also reads them some other way."""
    found = [(m[2], int(m[3])) for m in _TRAFFIC_COMPARE.finditer(source)]
    reversed_ = _TRAFFIC_COMPARE_REVERSED.finditer(source)
    found += [(_FLIP.get(m[2], m[2]), int(m[1])) for m in reversed_]
    uses = sum(1 for name, _ in names if name in TRAFFIC_SIGNALS)
    return tuple(found) if uses == len(found) else None


def _falls_to_true(traffic: tuple[tuple[str, int], ...] | None) -> bool:
    """Whether every comparison can only turn true as the counts fall (`== 0`, `< n`)."""
    return traffic is not None and all(
        op in ("<", "<=") or (op == "==" and n == 0) for op, n in traffic
    )


def _falls_to_false(traffic: tuple[tuple[str, int], ...] | None) -> bool:
    """Whether every comparison can only turn false as the counts fall (`> n`, `!= 0`)."""
    return traffic is not None and all(
        op in (">", ">=") or (op == "!=" and n == 0) for op, n in traffic
    )


def _checked_twin(rule: Rule) -> fastrule.FastRule | None:
    """The rule's plain-Python twin, if it agrees with CEL on every test reading."""
    twin = fastrule.translate(rule.source)
    if twin is None:
        return None
    for signals in _test_readings(rule):
        for offset in (0.0, 30.0):
            try:
                expected = rule.holds_by_cel(signals, offset)
            except EvaluationError:
                return None
            if twin(signals, offset) is not expected:
                return None
    return twin


def _test_readings(rule: Rule) -> list[Signals]:
    """Readings on either side of each threshold, with counts and cpu at their edges."""
    readings = [SAMPLE, SAMPLE_IDLE]
    for threshold in rule.thresholds:
        for delta in (-1.0, -STRICT_MARGIN, 0.0, STRICT_MARGIN, 1.0):
            value = max(0.0, threshold.seconds + delta)
            clock: dict[str, Any] = {threshold.signal: value}
            readings.append(replace(SAMPLE_IDLE, **clock))
    for count in (0, 1, 2, 7):
        readings.append(replace(SAMPLE_IDLE, connections=count, inflight=count))
        readings.append(replace(SAMPLE, connections=count, inflight=0, requests_1m=count))
    for cpu in (0.0, 4.9, 5.0, 5.1, 50.0, 100.0):
        readings.append(replace(SAMPLE_IDLE, cpu_percent=cpu, memory_bytes=int(cpu * 1e7)))
    return readings


def compile_rule(key: str, source: str) -> Rule:
    """Compile `source`, the setting `key`; `PolicyError` names the problem and its column."""
    return Rule(key, source)


def _compile(key: str, source: str) -> cel.Program:
    if not source.strip():
        raise PolicyError(key, "must not be empty: write a CEL expression", source)
    try:
        return cel.compile(source)
    except Exception as exc:  # the parser raises ValueError
        problem, offset = _syntax_problem(str(exc), source)
        raise PolicyError(key, problem, source, offset) from None


def _syntax_problem(message: str, source: str) -> tuple[str, int | None]:
    """The parser's first complaint in plain words, and its offset in `source`."""
    match = _PARSE_POSITION.search(message)
    if match is None:
        return f"syntax error: {message.splitlines()[0]}", None
    line, column, what = int(match[1]), int(match[2]), match[3].strip()
    lines = source.split("\n")
    offset = sum(len(text) + 1 for text in lines[: line - 1]) + column - 1
    what = re.sub(r"expecting \{.*\}", "", what).strip()
    return f"syntax error: {what}", min(offset, len(source))


def _binders(source: str) -> set[str]:
    """Names bound by comprehension macros, e.g. the `k` of `m.exists(k, ...)`."""
    return {name for match in _MACRO_BINDER.finditer(source) for name in match.groups() if name}


def _check_unknown(
    key: str, source: str, program: cel.Program, names: list[tuple[str, int]], binders: set[str]
) -> None:
    known = set(SIGNALS) | binders | _CEL_TYPE_NAMES
    for name in program.variables():
        if name in known:
            continue
        offset = next((at for n, at in names if n == name), None)
        hint = _did_you_mean(name)
        raise PolicyError(key, f"unknown variable {name!r}", source, offset, hint)


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, SIGNALS, n=1)
    return f": did you mean {close[0]!r}?" if close else f"; known: {', '.join(SIGNALS)}"


def _window_calls(key: str, source: str) -> tuple[tuple[str, str], ...]:
    """The literal `in_window` calls of `source`, each checked: a bad spec is refused."""
    calls = []
    for match in _WINDOW_CALL.finditer(source):
        spec = match[1] if match[1] is not None else match[3]
        tz = (match[2] if match[1] is not None else match[4]) or "UTC"
        try:
            windows.parse_windows(spec)
            windows.zone(tz)
        except windows.WindowError as exc:
            raise PolicyError(key, f"in_window: {exc}", source, match.start()) from None
        calls.append((spec, tz))
    return tuple(calls)


def check_app(rule: Rule, app: Mapping[str, Any]) -> None:
    """Refuse (`PolicyError`) a rule that cannot run when `app` is a typical `app` map.

    The config calls it with the sample map of a template's activity probe, so
    `app.idle_for > 60` (a duration against an int) is refused at load like any
    other type mismatch.
    """
    _check_result(rule, rule.source, app)


def _check_result(rule: Rule, source: str, app: Mapping[str, Any] | None = None) -> None:
    """Evaluate once per sample: refuse a non-boolean result or a rule that cannot run.

    A missing map key (`labels.tier`, `app.busy_kernels`) is not refused: maps are
    only known once sessions run.
    """
    for sample in (SAMPLE, SAMPLE_IDLE):
        labels = dict.fromkeys(re.findall(r"\blabels\.(\w+)", source), "sample")
        rule._signals = replace(sample, labels=labels, app=sample.app if app is None else app)
        try:
            result = rule.program.execute(rule._context)
        except KeyError:
            continue
        except Exception as exc:
            problem, offset = _sample_problem(exc, source)
            raise PolicyError(rule.key, problem, source, offset) from None
        if not isinstance(result, bool):
            raise PolicyError(
                rule.key, f"must give true or false, but gives {_cel_type(result)}", source, 0
            )
    rule._signals = SAMPLE


def _sample_problem(exc: Exception, source: str) -> tuple[str, int | None]:
    message = _cel_problem(exc)
    match = re.search(r"Undefined variable or function: '(\w+)'", str(exc))
    if match is not None:
        name = match[1]
        offset = next((at for n, at in _names(source) if n == name), None)
        return f"unknown function {name!r}", offset
    return message, None


def _cel_problem(exc: Exception) -> str:
    """A CEL error in one short line."""
    if isinstance(exc, KeyError):
        return f"no key {exc.args[0]!r} in the map (test it first with has(...))"
    text = str(exc).split(". ")[0].splitlines()[0]
    if text.startswith("No such overload"):
        return (
            "the types do not match (CEL does not convert: compare durations with "
            'duration("15m"), doubles with 5.0)'
        )
    return text


def _cel_type(value: object) -> str:
    names = {bool: "bool", int: "int", float: "double", str: "string", bytes: "bytes"}
    for kind, name in names.items():
        if type(value) is kind:
            return f"{name} ({value!r})"
    if isinstance(value, timedelta):
        return "a duration"
    if isinstance(value, datetime):
        return "a timestamp"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    return "null" if value is None else type(value).__name__


def _cel_value(name: str, value: Any) -> Any:
    """A signal as CEL wants it: durations as timedelta, `now` with a fixed UTC offset."""
    if name in CLOCK_SIGNALS:
        return timedelta(seconds=value)
    if name == "now":
        return value.astimezone(UTC)  # the binding refuses zoneinfo time zones
    return value


def _shown(name: str, value: Any) -> str:
    """A signal's value as the reason shows it: 16m2s, 0, 2.5, 2026-03-02T10:30:00+00:00."""
    if name in CLOCK_SIGNALS and isinstance(value, int | float):
        return format_duration(value)
    if isinstance(value, timedelta):  # a duration inside a map, e.g. app.idle_for
        return format_duration(value.total_seconds())
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_shown(k, v)}" for k, v in value.items()) + "}"
    return str(value)


# Policies -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Warn:
    """How a coming sleep is announced: a webhook URL (JSON POST) or a command."""

    before: float
    webhook: str | None = None
    command: tuple[str, ...] = ()


_MAX_LIFETIME, _MIN_AWAKE, _KEEP, _SLEEP, _NOT_SLEEP = range(5)  # what decided
_SLEEPS = (_MAX_LIFETIME, _SLEEP)


class Policy:
    """A named inactivity policy: when a session sleeps, and what keeps it awake.

    - `max_lifetime`: asleep after that long awake, whatever else holds;
    - `min_awake`: never asleep sooner after a wake;
    - `keep_awake_when` true: awake, whatever `sleep_when` says;
    - `sleep_when` true: asleep.

    A rule whose clock signals (`idle_for`, `awake_for`, `age`) are all compared
    with `duration("...")` literals, and which reads no signal that changes on its
    own (cpu, rates, app, now), is checked exactly when it can next become true.
    Open connections and requests in flight that hold it awake are watched: the
    gateway tells the controller when they fall (`Decision.watch`), so they are not
    polled either, as long as the rules compare them the way falling counts matter
    (`connections == 0`, `inflight < 3` in `sleep_when`; `connections > 0` in
    `keep_awake_when`). Any other policy is also re-checked every `check_every` seconds.
    """

    def __init__(
        self,
        name: str,
        sleep_when: Rule,
        *,
        keep_awake_when: Rule | None = None,
        min_awake: float = 0.0,
        max_lifetime: float | None = None,
        warn: Warn | None = None,
        check_every: float = 30.0,
    ):
        self.name, self.sleep_when, self.keep_awake_when = name, sleep_when, keep_awake_when
        self.min_awake, self.max_lifetime = min_awake, max_lifetime
        self.warn, self.check_every = warn, check_every
        self.rules = (sleep_when,) if keep_awake_when is None else (sleep_when, keep_awake_when)
        self.variables = frozenset(name for rule in self.rules for name in rule.variables)
        self.needs_provider = bool(self.variables & PROVIDER_SIGNALS)
        self.predictable = all(r.predictable and not r.volatile for r in self.rules)
        self.reads_connections = "connections" in self.variables
        self.reads_inflight = "inflight" in self.variables
        self.traffic_falls = _falls_to_true(sleep_when.traffic) and (
            keep_awake_when is None or _falls_to_false(keep_awake_when.traffic)
        )
        self._thresholds = tuple(
            (t.signal, t.seconds + STRICT_MARGIN if t.op in (">", "<=") else t.seconds)
            for rule in self.rules
            for t in rule.thresholds
        )
        self._windows = tuple(w for rule in self.rules for w in rule.windows)

    @classmethod
    def idle(cls, idle_timeout: float) -> Policy:
        """The `idle_timeout` shorthand: asleep once idle that long with nothing in flight."""
        source = f'idle_for >= duration("{_cel_duration(idle_timeout)}") && inflight == 0'
        return cls("idle_timeout", compile_rule("idle_timeout", source))

    def __repr__(self) -> str:
        return f"Policy({self.name!r}, {self.rules!r})"

    def evaluate(self, signals: Signals) -> Decision:
        """The decision for `signals`; `EvaluationError` when a rule fails to run."""
        kind = self._decide(signals)
        why = _Why(self, kind, signals)
        if kind in _SLEEPS:
            return Decision(True, why, signals.at, signals.at)
        sleep_at = self._predict(signals)
        watch = self._held_by_traffic(signals)
        next_check = sleep_at if sleep_at is not None else math.inf
        if (
            not self.predictable
            or (watch and not self.traffic_falls)
            or (sleep_at is None and not watch)
        ):
            next_check = min(next_check, signals.at + self.check_every)
        return Decision(False, why, next_check, sleep_at, watch)

    def _held_by_traffic(self, s: Signals) -> bool:
        """Open connections or requests in flight that the rules read: when they end,
        the rule may turn true, so the gateway is asked to say so."""
        return bool(
            (s.connections and self.reads_connections) or (s.inflight and self.reads_inflight)
        )

    def _decide(self, s: Signals, offset: float = 0.0) -> int:
        """What decides for `s` (`offset` seconds later): one of the kinds above."""
        awake_for = s.awake_for + offset + _TOLERANCE
        if self.max_lifetime is not None and awake_for >= self.max_lifetime:
            return _MAX_LIFETIME
        if awake_for < self.min_awake:
            return _MIN_AWAKE
        keep = self.keep_awake_when
        if keep is not None and keep.holds(s, offset):
            return _KEEP
        return _SLEEP if self.sleep_when.holds(s, offset) else _NOT_SLEEP

    def reason(self, kind: int, s: Signals) -> str:
        """The words for what decided (`kind`) on signals `s`."""
        if kind == _MAX_LIFETIME:
            return (
                f"max_lifetime: awake for {format_duration(s.awake_for)}"
                f" >= {format_duration(self.max_lifetime or 0.0)}"
            )
        if kind == _MIN_AWAKE:
            return (
                f"min_awake: awake for {format_duration(s.awake_for)}"
                f" < {format_duration(self.min_awake)}"
            )
        if kind == _KEEP:
            assert self.keep_awake_when is not None
            return self.keep_awake_when.explain(s)
        if kind == _SLEEP:
            return self.sleep_when.explain(s)
        return f"not {self.sleep_when.explain(s)}"

    def _predict(self, s: Signals) -> float | None:
        """When it would sleep if only time passed, looking at the instants rules can flip."""
        for delay in self._candidates(s):
            try:
                kind = self._decide(s, delay)
                if kind in _SLEEPS:
                    return s.at + delay
            except EvaluationError:
                return None
        return None

    def _candidates(self, s: Signals) -> list[float]:
        """Delays (s) after which some part of the policy can change by time alone."""
        delays = {self.min_awake - s.awake_for}
        for signal, seconds in self._thresholds:
            delays.add(seconds - getattr(s, signal))
        for spec, tz in self._windows:
            edge = windows.next_change(s.now, spec, tz)
            if edge is not None:
                delays.add((edge - s.now).total_seconds())
        if self.max_lifetime is not None:
            delays.add(self.max_lifetime - s.awake_for)
        return sorted(d for d in delays if d > 0)[:_MAX_CANDIDATES]


class _Why:
    """A decision's reason, put into words only when asked (`Decision.reason`)."""

    __slots__ = ("kind", "policy", "signals")

    def __init__(self, policy: Policy, kind: int, signals: Signals):
        self.policy, self.kind, self.signals = policy, kind, signals

    def __call__(self) -> str:
        return self.policy.reason(self.kind, self.signals)


def _cel_duration(seconds: float) -> str:
    """Seconds as a CEL duration literal: "15m", "1h30m", "0.5s"."""
    whole = round(seconds)
    if abs(seconds - whole) > _TOLERANCE or whole == 0:
        return f"{seconds:.6f}".rstrip("0").rstrip(".") + "s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = ((hours, "h"), (minutes, "m"), (secs, "s"))
    return "".join(f"{count}{unit}" for count, unit in parts if count)
