"""Per-client limits of the gateway, as pure bookkeeping: wake rates and held requests.

The gateway's activator asks `WakeRates.take` before a request starts a wake, and
counts each client's held requests in `ClientCounts`. Time is passed in (monotonic
seconds), so both are tested without sleeping. Memory stays bounded: a bucket that
has refilled is the same as no bucket and is dropped on the next sweep, the least
recently used go first past `max_clients`, and a client's count is dropped at zero.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass

from .duration import parse_duration

_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hour": 3600.0,
}  # fmt: skip
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\S+)\s*$")
MAX_CLIENTS = 100_000
"""Clients whose wake budget is remembered at most (about 100 bytes each)."""


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` events per `period` seconds: a burst of `count`, refilled evenly."""

    count: int
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period


def parse_rate(text: str) -> Rate | None:
    """`"10/min"`, `"100/h"`, `"5/30s"` as a `Rate`; `"off"` as None. `ValueError` else."""
    if text.strip().lower() == "off":
        return None
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a rate: use count/unit, e.g. 10/min, 100/h, or off")
    count, unit = int(match[1]), match[2].lower()
    period = _UNITS.get(unit)
    if period is None:
        try:
            period = parse_duration(unit)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a rate: the unit must be s, min or h (or a duration such as 30s)"
            ) from None
    if count < 1 or period <= 0:
        raise ValueError(f"{text!r} is not a rate: count and period must be more than 0")
    return Rate(count, period)


def client_key(address: str) -> str:
    """The key a client's limits are kept under: its IPv4 address, or its IPv6 /64 (one
    host gets a whole /64, and could otherwise take a new address per request)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return address


class WakeRates:
    """A token bucket per client: `take` spends one wake, or says how long to wait."""

    def __init__(self, rate: Rate, *, max_clients: int = MAX_CLIENTS):
        self.rate = rate
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._next_sweep = 0.0

    def take(self, client: str, now: float) -> float:
        """Spend one token of `client`'s: 0.0 when there was one, else the seconds until
        the next token (nothing is spent then)."""
        if now >= self._next_sweep:
            self.sweep(now)
        rate = self.rate
        tokens, at = self._buckets.pop(client, (float(rate.count), now))
        tokens = min(float(rate.count), tokens + (now - at) * rate.per_second)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / rate.per_second
        self._buckets[client] = (tokens, now)  # re-inserted: the dict's order is by last use
        if len(self._buckets) > self.max_clients:
            del self._buckets[next(iter(self._buckets))]  # the least recently used
        return wait

    def sweep(self, now: float) -> None:
        """Forget the buckets that have refilled (as good as new); next sweep in a period."""
        rate = self.rate
        full = [
            client
            for client, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * rate.per_second >= rate.count
        ]
        for client in full:
            del self._buckets[client]
        self._next_sweep = now + rate.period

    def __len__(self) -> int:
        return len(self._buckets)


class ClientCounts:
    """How many requests each client has held; a client at zero is forgotten."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def get(self, client: str) -> int:
        return self._counts.get(client, 0)

    def add(self, client: str) -> None:
        self._counts[client] = self._counts.get(client, 0) + 1

    def remove(self, client: str) -> None:
        left = self._counts.get(client, 0) - 1
        if left > 0:
            self._counts[client] = left
        else:
            self._counts.pop(client, None)

    def __len__(self) -> int:
        return len(self._counts)


def retry_seconds(wait: float) -> int:
    """A `Retry-After` value for a wait of `wait` seconds: whole seconds, at least 1."""
    return max(1, math.ceil(wait))
