"""The `savings:` config section and a template's `resources`, with every default cited.

`siesta.config` embeds these models (`Config.savings`, `TemplateConf.resources`);
`costing`, `advise` and the report read them. They import nothing from `siesta.config`
(which imports them). Every number has its unit and the source of its default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from . import carbon

OPENCOST_DEFAULTS = (
    "OpenCost's default prices (configs/default.json of opencost/opencost: "
    '"Default prices based on GCP us-central1")'
)
CCF_METHOD = (
    "Cloud Carbon Footprint methodology (cloudcarbonfootprint.org/docs/methodology), "
    "Appendix I, AWS coefficients"
)

GIB = 1024**3


class _Model(BaseModel):
    """Frozen, and unknown keys are refused (as in siesta.config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _from_config_dir(path: Path, info: ValidationInfo) -> Path:
    """`path` made absolute from the config file's folder (the loader's `base_dir`)."""
    base = Path((info.context or {}).get("base_dir") or Path.cwd())
    return (base / path.expanduser()).resolve()


class PricesConf(_Model):
    """What a reserved vCPU and GiB of memory cost per hour."""

    vcpu_hour: float = Field(
        default=0.031611,
        ge=0,
        description="US dollars per vCPU-hour. 0.031611: " + OPENCOST_DEFAULTS + ".",
    )
    gib_hour: float = Field(
        default=0.004237,
        ge=0,
        description="US dollars per GiB-hour of memory. 0.004237: " + OPENCOST_DEFAULTS + ".",
    )


class EnergyConf(_Model):
    """Energy by the Cloud Carbon Footprint method: watts per vCPU between `min_watts`
    (idle) and `max_watts` (busy) by utilisation, memory by GB-hour, times the PUE."""

    min_watts: float = Field(
        default=0.74,
        ge=0,
        description="Watts per vCPU at 0 % CPU. 0.74: the AWS average of the " + CCF_METHOD + ".",
    )
    max_watts: float = Field(
        default=3.5,
        ge=0,
        description="Watts per vCPU at 100 % CPU. 3.5: the AWS average of the " + CCF_METHOD + ".",
    )
    memory_kwh_per_gb_hour: float = Field(
        default=0.000392,
        ge=0,
        description="kWh per GB-hour of memory. 0.000392: the " + CCF_METHOD + " (the mean "
        "of Crucial's ~0.375 W/GB and Micron's ~0.408 W/GB for DDR4).",
    )
    pue: float = Field(
        default=1.135,
        ge=1,
        description="Power usage effectiveness of the data centre (facility energy / IT "
        "energy). 1.135: the AWS figure of the " + CCF_METHOD + ".",
    )
    utilisation: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="CPU utilisation assumed (0 to 1) when a backend's CPU is not measured "
        "(a Kubernetes template with declared resources). 0.5: the fallback of the "
        "Cloud Carbon Footprint methodology (the 2016 US Data Center Energy Usage "
        "Report's projected hyperscale average for 2020).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max_watts < self.min_watts:
            raise ValueError("max_watts must be at least min_watts")
        return self


class EmbodiedConf(_Model):
    """Embodied emissions (the M term of the Green Software Foundation's SCI,
    M = TE x TR/EL x RR/ToR): the hardware's manufacturing emissions, shared by the
    vCPU-hours reserved."""

    server_kg_co2e: float = Field(
        gt=0,
        description="TE: kg CO2e of manufacturing one server (from its vendor's life "
        "cycle assessment). Required.",
    )
    server_vcpus: int = Field(ge=1, description="ToR: vCPUs one server offers. Required.")
    lifespan_years: float = Field(
        default=4.0,
        gt=0,
        description="EL: years a server is in service. 4: the figure the Cloud Carbon "
        "Footprint methodology and Teads use (Dell PowerEdge R740 life cycle assessment).",
    )

    @property
    def g_per_vcpu_hour(self) -> float:
        """Grams of CO2e per reserved vCPU-hour."""
        return self.server_kg_co2e * 1000 / (self.lifespan_years * 8766 * self.server_vcpus)


class RegionConf(_Model):
    """A candidate region for `siesta advise`: its grid and its price relative to
    `savings.prices`. Set exactly one of `intensity` or `hourly`."""

    intensity: str | None = Field(
        default=None,
        description="A code of the shipped yearly table (ISO 3166-1 alpha-2, EU, WORLD).",
    )
    hourly: Path | None = Field(
        default=None,
        description="A CSV of hourly intensities (when,g_co2e_per_kwh); relative to the "
        "config file's folder.",
    )
    price_factor: float = Field(
        default=1.0,
        gt=0,
        description="Its prices as a multiple of savings.prices. 1.0 by default: the same.",
    )
    _profile: carbon.Profile | None = PrivateAttr(None)

    @field_validator("intensity")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        return None if value is None else _known_code(value)

    @field_validator("hourly")
    @classmethod
    def _resolve(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _from_config_dir(value, info)

    @model_validator(mode="after")
    def _load(self) -> Self:
        if (self.intensity is None) == (self.hourly is None):
            raise ValueError("set exactly one of intensity (a table code) or hourly (a CSV)")
        self._profile = _profile(self.intensity, self.hourly)
        return self

    @property
    def profile(self) -> carbon.Profile:
        """Its intensity by hour of day."""
        assert self._profile is not None
        return self._profile


def _known_code(code: str) -> str:
    """`code` of the shipped table, upper case; `ValueError` listing the codes if unknown."""
    try:
        carbon.yearly(code)
    except KeyError as exc:
        raise ValueError(str(exc.args[0])) from None
    return code.upper()


def _profile(code: str | None, hourly: Path | None) -> carbon.Profile:
    try:
        return carbon.read_hourly(hourly) if hourly is not None else carbon.yearly(code or "")
    except KeyError as exc:
        raise ValueError(str(exc.args[0])) from None


class SavingsConf(_Model):
    """How siesta prices and weighs what sleeping saved (`siesta report`, /api/savings)."""

    prices: PricesConf = Field(default=PricesConf(), description="Prices per hour.")
    counterfactual: Literal["requests", "peak"] = Field(
        default="requests",
        description="What an always-on backend would have reserved: `requests`, the "
        "template's declared `resources` (a template without them falls back to its "
        "peak), or `peak`, the highest measured use (memory peak; busiest awake "
        "period's average cores). requests by default: what Kubernetes bills.",
    )
    energy: EnergyConf = Field(default=EnergyConf(), description="Energy coefficients.")
    region: str = Field(
        default="WORLD",
        description="Where the backends run, as a code of the shipped table of yearly "
        "grid intensities (ISO 3166-1 alpha-2, EU, WORLD). WORLD by default: the "
        "world average, until you say where.",
    )
    hourly: Path | None = Field(
        default=None,
        description="A CSV of hourly grid intensities for `region` (when,g_co2e_per_kwh; "
        "when is an hour 0-23 or an ISO 8601 time), averaged by UTC hour of day. Unset "
        "by default: the table's yearly average.",
    )
    embodied: EmbodiedConf | None = Field(
        default=None,
        description="Embodied emissions of the hardware: {server_kg_co2e, server_vcpus, "
        "lifespan_years}. Unset by default: operational emissions only.",
    )
    regions: dict[str, RegionConf] = Field(
        default_factory=dict,
        description="Candidate regions for `siesta advise`, by name: {intensity: FR} or "
        "{hourly: file.csv}, with a price_factor; `region` is always a candidate too. "
        "Empty by default: `region` only.",
    )
    _profile: carbon.Profile | None = PrivateAttr(None)

    @field_validator("region")
    @classmethod
    def _known(cls, value: str) -> str:
        return _known_code(value)

    @field_validator("hourly")
    @classmethod
    def _resolve(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _from_config_dir(value, info)

    @model_validator(mode="after")
    def _load(self) -> Self:
        self._profile = _profile(self.region, self.hourly)
        return self

    @property
    def profile(self) -> carbon.Profile:
        """The grid intensity of `region` by UTC hour of day."""
        assert self._profile is not None
        return self._profile

    def candidates(self) -> dict[str, carbon.Profile]:
        """Where sessions could live, by name: `region` (where they run now), then
        `regions`."""
        return {self.region: self.profile} | {n: c.profile for n, c in self.regions.items()}

    def price_factor(self, region: str) -> float:
        """The price multiple of a candidate region (1.0 for `region`)."""
        conf = self.regions.get(region)
        return 1.0 if conf is None else conf.price_factor


_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|K|M|G|T)?$")
_MEMORY_UNITS = {
    None: 1,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
}


def parse_cpu(value: Any) -> float:
    """vCPUs from a number or a Kubernetes quantity ("500m" is 0.5)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        match = _CPU.match(str(value).strip())
        if match is None:
            raise ValueError(f'{value!r} is not a CPU quantity: write e.g. 0.5 or "500m"')
        number = float(match[1]) / (1000 if match[2] else 1)
    if number <= 0:
        raise ValueError("must be more than 0")
    return number


def parse_memory(value: Any) -> int:
    """Bytes from a number or a Kubernetes quantity ("512Mi", "1Gi", "2G")."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        match = _MEMORY.match(str(value).strip())
        if match is None:
            raise ValueError(f'{value!r} is not a memory quantity: write e.g. "512Mi" or "2Gi"')
        number = round(float(match[1]) * _MEMORY_UNITS[match[2]])
    if number <= 0:
        raise ValueError("must be more than 0")
    return number


class ResourcesConf(_Model):
    """What a backend of this template reserves, as Kubernetes requests say it."""

    cpu: float = Field(
        description='vCPUs reserved: a number or a Kubernetes quantity ("500m"). Required.'
    )
    memory: int = Field(
        description='Bytes reserved: a number or a Kubernetes quantity ("512Mi", "2Gi"). Required.'
    )

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, value: Any) -> float:
        return parse_cpu(value)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        return parse_memory(value)

    @property
    def memory_gib(self) -> float:
        """`memory` in GiB."""
        return self.memory / GIB
