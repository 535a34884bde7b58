"""The `allow` rule of `gateway.auth` and `admin.auth`: who may reach which session.

A CEL expression over an identity and, on the gateway, the session asked for:
`claims` (an OIDC login's claims), `headers` (a forward-auth answer's headers, names
in lower case) and `session` (`session.id`, `session.labels`). Compiled once when
the config is loaded (`compile_allow`: errors name the column), evaluated per
decision (`AllowRule.allows`); a rule that fails while running (a missing claim, a
type mismatch) refuses, it never lets through.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cel

from .policy import PolicyError, _syntax_problem


class AllowRule:
    """A compiled `allow` rule reading `variables` (e.g. claims and session)."""

    def __init__(self, key: str, source: str, variables: tuple[str, ...]):
        self.key, self.source, self.variables = key, source, variables
        if not source.strip():
            raise PolicyError(key, "must not be empty: write a CEL expression", source)
        try:
            self.program = cel.compile(source)
        except Exception as exc:  # the parser raises ValueError
            problem, offset = _syntax_problem(str(exc), source)
            raise PolicyError(key, problem, source, offset) from None
        for name in self.program.variables():
            if name not in variables:
                offset = source.find(name)
                known = ", ".join(variables)
                raise PolicyError(
                    key, f"unknown variable {name!r} (known: {known})", source, max(offset, 0)
                )
        self._check_sample()

    def __repr__(self) -> str:
        return f"AllowRule({self.source!r})"

    def allows(self, values: Mapping[str, Any]) -> bool:
        """Whether the rule is true for `values` (variable -> value); False when it fails
        while running or gives something other than true."""
        try:
            return self.program.execute(cel.Context(variables=dict(values))) is True
        except Exception:  # a missing claim or label, a type mismatch: refused
            return False

    def explain(self, values: Mapping[str, Any]) -> str:
        """Why the rule refused or failed for `values`, for the log."""
        try:
            result = self.program.execute(cel.Context(variables=dict(values)))
        except KeyError as exc:
            return f"no key {exc.args[0]!r} (test it first with has(...))"
        except Exception as exc:
            return str(exc).splitlines()[0]
        return f"gave {result!r}"

    def _check_sample(self) -> None:
        """Refuse a rule that cannot give true or false (a type mismatch, a string result)
        on typical values; a missing key is not refused (identities differ)."""
        sample: dict[str, Any] = {
            "claims": {"sub": "sample", "email": "sample@example.com", "groups": ["sample"]},
            "headers": {"x-forwarded-user": "sample"},
            "session": {"id": "sample", "labels": {"owner": "sample"}},
        }
        values = {name: sample.get(name, {}) for name in self.variables}
        try:
            result = self.program.execute(cel.Context(variables=values))
        except KeyError:
            return
        except Exception as exc:
            message = str(exc).split(". ")[0].splitlines()[0]
            if message.startswith("No such overload"):
                message = "the types do not match (CEL does not convert between types)"
            raise PolicyError(self.key, message, self.source) from None
        if not isinstance(result, bool):
            raise PolicyError(
                self.key, f"must give true or false, not {type(result).__name__}", self.source
            )


def compile_allow(key: str, source: str, variables: tuple[str, ...]) -> AllowRule:
    """Compile the rule `source` of setting `key`; `PolicyError` says what is wrong."""
    return AllowRule(key, source, variables)


def session_values(session_id: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """The `session` variable of a rule: its id and labels."""
    return {"id": session_id, "labels": dict(labels)}
