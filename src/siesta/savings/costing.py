"""An account turned into money, energy and CO2e: what ran, and what always-on would have.

Pure (used by the report, the admin API and `advise`). The model, with every
coefficient from `settings`:

- **Size.** What one backend reserves: the template's declared `resources`
  (`counterfactual: requests`), else its measured peak (memory peak, and the busiest
  awake period's average cores).
- **Actual**, over the awake time: vCPU-hours = max(size x awake hours, CPU-hours used)
  and GiB-hours = max(size x awake hours, measured GiB-hours), as OpenCost allocates
  max(request, usage).
- **Always-on** = actual + the size reserved over the asleep hours, idle (0 % CPU):
  the same work would have been done, on a backend that also sat idle.
- **Money** = vCPU-hours x price + GiB-hours x price (OpenCost's defaults).
- **Energy** (Cloud Carbon Footprint): vCPU-hours x (min W + utilisation x (max W -
  min W)) / 1000 + GB-hours x 0.000392 kWh, all x PUE. Utilisation = CPU-hours used /
  vCPU-hours when measured, else the configured fallback (CCF's 50 %).
- **CO2e** = kWh x grid intensity, hour by hour of day (awake energy by when the
  session was awake, idle energy by when it slept), plus embodied emissions (SCI's M)
  per vCPU-hour reserved when configured.
- **SCI** per session-hour = (operational + embodied g CO2e) / awake hours.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from siesta.ledger import Account, Sketch

from .carbon import Profile
from .settings import GIB, EmbodiedConf, EnergyConf, PricesConf, ResourcesConf, SavingsConf

GB_PER_GIB = GIB / 1e9
"""1 GiB = 1.073741824 GB: CCF's memory coefficient is per GB-hour."""


@dataclass(frozen=True, slots=True)
class Size:
    """What one backend reserves; `basis` is requests, peak, or none (nothing known)."""

    vcpus: float
    gib: float
    basis: str


@dataclass(frozen=True, slots=True)
class Footprint:
    """Resources reserved, and their cost, energy and emissions (embodied included)."""

    vcpu_hours: float = 0.0
    gib_hours: float = 0.0
    usd: float = 0.0
    kwh: float = 0.0
    kg_co2e: float = 0.0
    embodied_kg: float = 0.0

    def __add__(self, other: Footprint) -> Footprint:
        return Footprint(
            self.vcpu_hours + other.vcpu_hours,
            self.gib_hours + other.gib_hours,
            self.usd + other.usd,
            self.kwh + other.kwh,
            self.kg_co2e + other.kg_co2e,
            self.embodied_kg + other.embodied_kg,
        )


@dataclass(frozen=True, slots=True)
class Costed:
    """A session (or a sum of sessions): its time, wakes and both footprints."""

    awake_seconds: float
    asleep_seconds: float
    wakes: int
    sleeps: int
    wake_times: Sketch
    cpu_seconds: float
    memory_gib_hours: float
    actual: Footprint
    always_on: Footprint
    sessions: int = 1
    basis: str = "none"

    @property
    def tracked_seconds(self) -> float:
        """All the time followed: what an always-on backend would have run."""
        return self.awake_seconds + self.asleep_seconds

    @property
    def awake_share(self) -> float:
        """The share of the time a backend ran (0 when nothing was tracked)."""
        total = self.tracked_seconds
        return self.awake_seconds / total if total > 0 else 0.0

    @property
    def saved_usd(self) -> float:
        """Dollars saved: always-on cost minus actual cost."""
        return self.always_on.usd - self.actual.usd

    @property
    def saved_kwh(self) -> float:
        """Energy saved (kWh)."""
        return self.always_on.kwh - self.actual.kwh

    @property
    def saved_kg_co2e(self) -> float:
        """Emissions saved (kg CO2e, embodied included when configured)."""
        return self.always_on.kg_co2e - self.actual.kg_co2e

    @property
    def sci_g_per_session_hour(self) -> float | None:
        """SCI with R = one awake session-hour: (E x I + M) / R; None before any wake."""
        hours = self.awake_seconds / 3600
        return self.actual.kg_co2e * 1000 / hours if hours > 0 else None

    def __add__(self, other: Costed) -> Costed:
        return Costed(
            self.awake_seconds + other.awake_seconds,
            self.asleep_seconds + other.asleep_seconds,
            self.wakes + other.wakes,
            self.sleeps + other.sleeps,
            self.wake_times.merge(other.wake_times),
            self.cpu_seconds + other.cpu_seconds,
            self.memory_gib_hours + other.memory_gib_hours,
            self.actual + other.actual,
            self.always_on + other.always_on,
            self.sessions + other.sessions,
            self.basis if self.basis == other.basis else "mixed",
        )


def total(items: Iterable[Costed]) -> Costed:
    """The sum of several sessions (none: all zero)."""
    result = EMPTY
    for item in items:
        result = item if result is EMPTY else result + item
    return result


EMPTY = Costed(0.0, 0.0, 0, 0, Sketch(), 0.0, 0.0, Footprint(), Footprint(), sessions=0)


@dataclass(frozen=True, slots=True)
class Model:
    """Everything costing needs: prices, energy, grid, embodied, and templates' sizes."""

    prices: PricesConf = field(default_factory=PricesConf)
    energy: EnergyConf = field(default_factory=EnergyConf)
    profile: Profile = field(default_factory=lambda: Profile.flat(0.0, "none"))
    embodied: EmbodiedConf | None = None
    counterfactual: str = "requests"
    resources: Mapping[str, ResourcesConf | None] = field(default_factory=dict)
    price_factor: float = 1.0

    @classmethod
    def of(cls, savings: SavingsConf, resources: Mapping[str, ResourcesConf | None]) -> Model:
        """The model a config describes, for the region it runs in."""
        return cls(
            savings.prices,
            savings.energy,
            savings.profile,
            savings.embodied,
            savings.counterfactual,
            dict(resources),
        )

    def size(self, account: Account) -> Size:
        """What one backend of `account`'s template reserves."""
        declared = self.resources.get(account.template)
        if declared is not None and self.counterfactual == "requests":
            return Size(declared.cpu, declared.memory_gib, "requests")
        if account.peak_cores > 0 or account.peak_memory_bytes > 0:
            return Size(account.peak_cores, account.peak_memory_bytes / GIB, "peak")
        if declared is not None:  # peak asked for, but nothing was measured yet
            return Size(declared.cpu, declared.memory_gib, "requests")
        return Size(0.0, 0.0, "none")

    def cost(self, account: Account) -> Costed:
        """What `account` (closed up to the time wanted) ran, and always-on would have."""
        size = self.size(account)
        actual = self._awake(account, size)
        idle = self._idle(account, size)
        return Costed(
            account.awake_seconds,
            account.asleep_seconds,
            account.wakes,
            account.sleeps,
            account.wake_times,
            account.cpu_seconds,
            account.memory_gib_hours,
            actual,
            actual + idle,
            basis=size.basis,
        )

    def _awake(self, account: Account, size: Size) -> Footprint:
        hours = account.awake_seconds / 3600
        used = account.cpu_seconds / 3600
        vcpu_hours = max(size.vcpus * hours, used)
        gib_hours = max(size.gib * hours, account.memory_gib_hours)
        measured = account.cpu_seconds > 0 or account.memory_gib_hours > 0
        utilisation = min(1.0, used / vcpu_hours) if measured and vcpu_hours > 0 else None
        if utilisation is None:
            utilisation = self.energy.utilisation
        return self.footprint(vcpu_hours, gib_hours, utilisation, account.awake_by_hour)

    def _idle(self, account: Account, size: Size) -> Footprint:
        hours = account.asleep_seconds / 3600
        asleep = tuple(
            t - a for t, a in zip(account.tracked_by_hour, account.awake_by_hour, strict=True)
        )
        return self.footprint(size.vcpus * hours, size.gib * hours, 0.0, asleep)

    def footprint(
        self,
        vcpu_hours: float,
        gib_hours: float,
        utilisation: float,
        by_hour: tuple[float, ...],
    ) -> Footprint:
        """The cost, energy and emissions of reserving this much, used this much, spread
        over the hours of day as `by_hour` (any unit: only proportions count)."""
        usd = self.price_factor * (
            vcpu_hours * self.prices.vcpu_hour + gib_hours * self.prices.gib_hour
        )
        kwh = kilowatt_hours(vcpu_hours, gib_hours, utilisation, self.energy)
        embodied = 0.0
        if self.embodied is not None:
            embodied = vcpu_hours * self.embodied.g_per_vcpu_hour / 1000
        grams = kwh * weighted(self.profile, by_hour)
        return Footprint(vcpu_hours, gib_hours, usd, kwh, grams / 1000 + embodied, embodied)


class Sized(Protocol):
    """A template as costing reads it."""

    @property
    def resources(self) -> ResourcesConf | None: ...


class Configured(Protocol):
    """A config as costing reads it (`siesta.config.Config`)."""

    @property
    def savings(self) -> SavingsConf: ...
    @property
    def templates(self) -> Mapping[str, Sized]: ...


def model_of(config: Configured) -> Model:
    """The costing model of a config."""
    return Model.of(config.savings, {n: t.resources for n, t in config.templates.items()})


def kilowatt_hours(
    vcpu_hours: float, gib_hours: float, utilisation: float, energy: EnergyConf
) -> float:
    """Energy by the Cloud Carbon Footprint method, PUE included."""
    watts = energy.min_watts + utilisation * (energy.max_watts - energy.min_watts)
    compute = watts * vcpu_hours / 1000
    memory = gib_hours * GB_PER_GIB * energy.memory_kwh_per_gb_hour
    return (compute + memory) * energy.pue


def weighted(profile: Profile, by_hour: tuple[float, ...]) -> float:
    """The intensity (g/kWh) averaged with weights `by_hour`; the day's mean if all 0."""
    weight = sum(by_hour)
    if weight <= 0:
        return profile.mean
    return sum(i * w for i, w in zip(profile.hourly, by_hour, strict=True)) / weight
