"""A plain-Python twin of simple CEL rules, so the controller's checks cost microseconds.

`core.policy.Rule` asks `translate` for every rule it compiles. A rule made only of
comparisons between signals and literals of the same type (`idle_for >
duration("15m")`, `connections == 0`, `cpu_percent < 5.0`), `in_window(...)` calls,
`true`/`false`, `!`, `&&`, `||` and parentheses becomes a Python function of the
signals and a time offset (seconds added to the clock signals and `now`, for
predicting when the rule turns true). Anything else (`labels`, `app`, `now` in a
comparison, `has()`, arithmetic, mixed types) gives None, and CEL runs the rule.

The twin cannot fail at run time: every comparison it accepts is between values of
one type, which CEL answers without error, so CEL's error-absorbing `&&` and `||`
reduce to Python's `and` and `or`. `Rule` checks the twin against CEL on sample
signals at load and drops it on any disagreement. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from . import windows

FastRule = Callable[[Any, float], bool]
"""(signals, offset seconds) -> whether the rule holds `offset` seconds after the reading."""

CLOCK = frozenset({"idle_for", "awake_for", "age"})
INTS = frozenset({"connections", "inflight", "requests_1m", "bytes_1m", "memory_bytes"})
DOUBLES = frozenset({"cpu_percent"})

_TOKENS = re.compile(
    r"\s*(?:(?P<dur>duration\(\s*(?:\"[^\"]*\"|'[^']*')\s*\))"
    r"|(?P<win>in_window\(\s*(?:\"[^\"]*\"|'[^']*')\s*(?:,\s*(?:\"[^\"]*\"|'[^']*')\s*)?\))"
    r"|(?P<num>\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>&&|\|\||==|!=|<=|>=|<|>|!|\(|\)))"
)
_STRING = re.compile(r"\"([^\"]*)\"|'([^']*)'")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_COMPARE = frozenset({"==", "!=", "<", "<=", ">", ">="})


class _Unsupported(Exception):
    """The rule uses something the twin does not handle: CEL runs it."""


def _seconds(literal: str) -> float:
    body = _STRING.search(literal)
    assert body is not None
    text = body[1] if body[1] is not None else body[2]
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise _Unsupported(literal)
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _tokens(source: str) -> list[tuple[str, str]]:
    found, at = [], 0
    source = source.strip()
    while at < len(source):
        match = _TOKENS.match(source, at)
        if match is None or match.end() == at:
            raise _Unsupported(source[at:])
        kind = match.lastgroup
        assert kind is not None
        found.append((kind, match[kind]))
        at = match.end()
    return found


class _Parser:
    """Recursive descent over the accepted subset; builds Python source."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens, self.at = tokens, 0
        self.windows: list[tuple[str, str]] = []

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise _Unsupported("end")
        self.at += 1
        return token

    def expression(self) -> str:
        parts = [self.conjunction()]
        while self.peek() == ("op", "||"):
            self.take()
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"

    def conjunction(self) -> str:
        parts = [self.unary()]
        while self.peek() == ("op", "&&"):
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else "(" + " and ".join(parts) + ")"

    def unary(self) -> str:
        if self.peek() == ("op", "!"):
            self.take()
            return f"(not {self.unary()})"
        return self.primary()

    def primary(self) -> str:
        token = self.peek()
        if token == ("op", "("):
            self.take()
            inner = self.expression()
            if self.take() != ("op", ")"):
                raise _Unsupported("(")
            return inner
        if token is not None and token[0] == "win":
            self.take()
            strings = [a if a is not None else b for a, b in _STRING.findall(token[1])]
            spec, tz = strings[0], strings[1] if len(strings) > 1 else "UTC"
            self.windows.append((spec, tz))
            return f"_w(s, o, {spec!r}, {tz!r})"
        if token in (("name", "true"), ("name", "false")):
            self.take()
            return "True" if token[1] == "true" else "False"
        return self.comparison()

    def comparison(self) -> str:
        left, left_type = self.operand()
        kind, op = self.take()
        if kind != "op" or op not in _COMPARE:
            raise _Unsupported(op)
        right, right_type = self.operand()
        if left_type != right_type or left_type == "literal":
            raise _Unsupported("types")
        return f"({left} {op} {right})"

    def operand(self) -> tuple[str, str]:
        kind, text = self.take()
        if kind == "dur":
            return repr(_seconds(text)), "duration"
        if kind == "num":
            return (
                (repr(float(text)), "double")
                if "." in text or "e" in text.lower()
                else (
                    text,
                    "int",
                )
            )
        if kind == "name" and text in CLOCK:
            return f"(s.{text} + o)", "duration"
        if kind == "name" and text in INTS:
            return f"s.{text}", "int"
        if kind == "name" and text in DOUBLES:
            return f"s.{text}", "double"
        raise _Unsupported(text)


def _in_window(signals: Any, offset: float, spec: str, tz: str) -> bool:
    now = signals.now + timedelta(seconds=offset) if offset else signals.now
    return windows.in_window(now, spec, tz)


def translate(source: str) -> FastRule | None:
    """The Python twin of the CEL rule `source`, or None when it is outside the subset."""
    try:
        parser = _Parser(_tokens(source))
        body = parser.expression()
        if parser.peek() is not None:
            return None
    except (_Unsupported, IndexError, ValueError):
        return None
    if "s." not in body and "_w(" not in body:
        return None  # a constant: CEL runs it, nothing to gain
    code = compile(f"lambda s, o: {body}", "<rule>", "eval")
    function: FastRule = eval(code, {"_w": _in_window, "__builtins__": {}})
    return function
