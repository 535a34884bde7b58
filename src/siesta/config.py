"""The YAML config file: its schema, its loader and its error messages.

The CLI loads it with `load_config`; the gateway, the controller and the providers
read the frozen `Config` it returns. Every field says its unit and why its default
was chosen, so `config_json_schema()` doubles as the reference docs. Every problem
becomes one line of a `ConfigError`: `siesta.yaml:14 templates.web.command: ...`.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import re
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from siesta.core import activity
from siesta.core.allow import AllowRule, compile_allow
from siesta.core.container import parse_memory, parse_volume, reserved_labels
from siesta.core.duration import DurationLiteralError, cel_durations, parse_duration
from siesta.core.ignore import JUPYTER_IGNORE, ActivityFilter
from siesta.core.limits import Rate, parse_rate
from siesta.core.policy import (
    PROVIDER_SIGNALS,
    Policy,
    PolicyError,
    Rule,
    Warn,
    check_app,
    compile_rule,
)
from siesta.core.routing import RoutingMode
from siesta.providers.keda import name_problem
from siesta.providers.runas import (
    DEFAULT_INHERIT,
    IdentityError,
    RunAs,
    inherit_problem,
    privilege_problem,
)
from siesta.readiness import ReadySpec, placeholder_problem
from siesta.savings.settings import ResourcesConf, SavingsConf

Loc = tuple[str | int, ...]
"""Where a value sits in the config: mapping keys and list indices, outermost first."""

NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})$"
"""Session ids and template names: they appear in URLs and host names."""

_DOMAIN_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$"
_HEADER_PATTERN = r"^[A-Za-z0-9-]+$"
LOCAL_READY_EVERY = 0.025  # seconds: readiness probes of a local or docker backend, at most
REMOTE_READY_EVERY = 0.25  # seconds: of a keda backend (a pod takes seconds anyway)

_HTTP_PATH_PATTERN = r"^/"
_PROBE_PATH_PATTERN = r"^(/|\{base_url\})"
_URL_PATTERN = r"^https?://[^\s/]+"
_DURATION_PATTERN = r"^\d+(\.\d+)?$|^(\d+(\.\d+)?(ms|[dhms]))+$"
_APP_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_NO_SPACE_PATTERN = r"^\S+$"
_DOCKER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_USER_PATTERN = r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?$"
_CAPABILITY_PATTERN = r"^[A-Za-z_]+$"
_GROUP_PATTERN = r"^[A-Za-z0-9_.-]+$"
_ENV_PATTERN = r"^[A-Za-z0-9_*?\[\]!-]+$"

_PATTERN_HINTS = {
    NAME_PATTERN: "must be 1 to 63 letters, digits, '_' or '-', starting with a letter or digit",
    _DOMAIN_PATTERN: "must be a host name, e.g. localhost or example.com",
    _HEADER_PATTERN: "must be a header name (letters, digits and '-'), e.g. X-Siesta-Session",
    _HTTP_PATH_PATTERN: "must be a path starting with '/', e.g. /healthz",
    _PROBE_PATH_PATTERN: "must be a path starting with '/' or {base_url}, e.g. /healthz",
    _URL_PATTERN: "must be an http:// or https:// URL, e.g. http://127.0.0.1:9000/hook",
    _APP_KEY_PATTERN: "must be a CEL name (letters, digits and '_'), e.g. busy_workers",
    _NO_SPACE_PATTERN: "must be one word, without spaces",
    _DOCKER_NAME_PATTERN: "must be a Docker name: letters, digits, '_', '.' or '-'",
    _USER_PATTERN: "must be a user, or user:group, as a name or number, e.g. 1000:1000",
    _CAPABILITY_PATTERN: "must be a capability name, e.g. NET_RAW or ALL",
    _GROUP_PATTERN: "must be a group name or number, e.g. nogroup or 1000",
    _ENV_PATTERN: "must be a variable name or a glob pattern of names, e.g. LANG or LC_*",
}

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


def _more_than_zero(value: float) -> float:
    if value <= 0:
        raise ValueError("must be more than 0s")
    return value


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "description": "a number of seconds"},
                {
                    "type": "string",
                    "pattern": _DURATION_PATTERN,
                    "description": 'a number with a unit (ms, s, m, h, d), e.g. "15m", "1h30m"',
                },
            ]
        }
    ),
]
# A Duration that `off` (or 0) turns off (issue 9's body timeouts).
OffDuration = Annotated[
    Duration,
    BeforeValidator(lambda value: 0 if value is False or value == "off" else value),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "description": "a number of seconds; 0: off"},
                {"type": "string", "pattern": _DURATION_PATTERN, "description": "e.g. 60s"},
                {"const": "off"},
            ]
        }
    ),
]
# A Duration that must be more than zero (a period to wait between checks).
PositiveDuration = Annotated[Duration, AfterValidator(_more_than_zero)]
"""Seconds, written as a number of seconds or a string like "500ms", "15m", "1h30m"."""


def _duration(default: str, description: str) -> Any:
    """A `Duration` field whose schema shows its default as written ("15m", not 900.0)."""
    return Field(
        default=parse_duration(default),
        description=description,
        json_schema_extra={"default": default},
    )


def _off(value: object) -> object:
    """`off` (which YAML also reads as false) means no listener."""
    return None if value is False or value == "off" else value


def _check_rate(value: str) -> str:
    parse_rate(value)
    return value


def parse_listen(address: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:8080") into host and port; `ValueError` if bad."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host or "[" in host:
        host = ""
    if not host or not (port.isascii() and port.isdigit()):
        raise ValueError(
            f"{address!r} is not host:port: use e.g. 127.0.0.1:8080, or [::1]:8080 for IPv6"
        )
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port {int(port)} is out of range: use 1 to 65535")
    return host, int(port)


def _resolved(path: Path, info: ValidationInfo) -> Path:
    """`path` made absolute from the config file's folder (`base_dir` in the context)."""
    context = info.context or {}
    base = Path(context.get("base_dir") or Path.cwd())
    return (base / path.expanduser()).resolve()


def _check_volume(value: str) -> str:
    parse_volume(value)
    return value


class _Model(BaseModel):
    """Frozen, and unknown keys are refused: a typo must not silently keep a default."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# -- gateway.auth and admin.auth: who may reach a session (README "Who may reach a session")


class ForwardAuthConf(_Model):
    """Ask an auth server about every request, as Traefik's forwardAuth and nginx's
    auth_request do: a 2xx lets it through, anything else is the client's answer."""

    url: str = Field(
        pattern=_URL_PATTERN,
        description="The auth server's URL, asked with GET, the request's headers and "
        "X-Forwarded-Method, -Proto, -Host, -Uri and -For, e.g. "
        "http://127.0.0.1:4181/auth. Required.",
    )
    copy_headers: list[Annotated[str, StringConstraints(pattern=_HEADER_PATTERN)]] = Field(
        default_factory=list,
        description="Headers of a 2xx answer passed on to the backend, e.g. "
        "[X-Forwarded-User, X-Auth-Request-Email]; the same headers sent by the client are "
        "always dropped. Empty by default.",
    )
    timeout: PositiveDuration = _duration(
        "3s",
        "Seconds the auth server has to answer; later, or unreachable, the request gets "
        "503 with Retry-After (never let through). 3s: an auth check answers in "
        "milliseconds; a stuck one must not hold requests for long.",
    )
    cache_ttl: Duration = _duration(
        "5s",
        "Seconds a 2xx answer is reused for the same credentials (Cookie and Authorization "
        "headers) and host; 0 asks on every request. Refusals are never cached. 5s: a page "
        "load's burst of requests costs one check, and a revoked login stops within 5s.",
    )


class OidcConf(_Model):
    """Log in with an OpenID Connect provider: authorization code with PKCE, then a
    signed cookie holding the claims."""

    issuer: str = Field(
        pattern=_URL_PATTERN,
        description="The provider's issuer URL; its /.well-known/openid-configuration is "
        "read on the first login, e.g. https://accounts.example.com. Required.",
    )
    client_id: str = Field(min_length=1, description="The client id siesta is registered with.")
    client_secret_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The environment variable holding the client secret. Unset by "
        "default: a public client (PKCE alone), or client_secret_file.",
    )
    client_secret_file: Path | None = Field(
        default=None,
        description="A file holding the client secret; relative to the config's folder.",
    )
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "email", "profile"],
        description="Scopes asked for; openid is added if missing. [openid, email, profile] "
        "by default: enough for rules on claims.email.",
    )
    redirect_uri: str | None = Field(
        default=None,
        pattern=_URL_PATTERN,
        description="The callback URL registered with the provider, ending in "
        "/.siesta/oidc/callback (or /ui/oidc/callback for admin.auth). Unset by default: "
        "made from each request's host (so every host must be registered); set it, with "
        "cookie_domain, for host routing.",
    )
    cookie_domain: str | None = Field(
        default=None,
        pattern=_DOMAIN_PATTERN,
        description="Domain of the login cookie, e.g. example.com so one login serves "
        "every <session>.example.com. Unset by default: the host that was asked.",
    )
    cookie_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The environment variable holding the key that signs the login cookie "
        "(replicas must share it). Unset by default: cookie_key_file, else a key made at "
        "first start in the state folder (oidc-cookie-key, mode 0600).",
    )
    cookie_key_file: Path | None = Field(
        default=None,
        description="A file holding the cookie key; relative to the config's folder.",
    )
    login_ttl: PositiveDuration = _duration(
        "8h",
        "Seconds a login lasts before the provider is asked again. 8h: a working day.",
    )
    userinfo: bool = Field(
        default=True,
        description="Add the provider's userinfo claims to the ID token's (many providers "
        "put only sub in the ID token). On by default.",
    )
    timeout: PositiveDuration = _duration(
        "10s",
        "Seconds each call to the provider may take (discovery, keys, token, userinfo); "
        "later, the login answers 503 with Retry-After. 10s: generous for a remote provider.",
    )

    @field_validator("client_secret_file", "cookie_key_file")
    @classmethod
    def _resolve_files(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolved(value, info)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        for kind in ("client_secret", "cookie_key"):
            if getattr(self, f"{kind}_env") and getattr(self, f"{kind}_file"):
                raise ValueError(f"set either {kind}_env or {kind}_file, not both")
        return self


AUTH_VARIABLES = {"forward_auth": ("headers", "session"), "oidc": ("claims", "session")}
"""What the gateway's `allow` rule may read, by mode."""


class AuthConf(_Model):
    """Who may reach a session: none, a per-session token, an auth server, or an OIDC
    login (with an `allow` rule over the identity and the session)."""

    mode: Literal["none", "token", "forward_auth", "oidc"] = Field(
        default="none",
        description="none: anyone who reaches the gateway reaches every session (siesta "
        "warns at start when it listens beyond loopback); token: each session's own secret "
        "(siesta sessions token ID), as a bearer token, a cookie, or once ?siesta_token=; "
        "forward_auth: an auth server decides (forward_auth section); oidc: a login with an "
        "OpenID Connect provider (oidc section). none by default, explicitly.",
    )
    forward_auth: ForwardAuthConf | None = Field(
        default=None, description="With mode forward_auth: {url, copy_headers, timeout, cache_ttl}."
    )
    oidc: OidcConf | None = Field(
        default=None,
        description="With mode oidc: {issuer, client_id, client_secret_env, redirect_uri, ...}.",
    )
    allow: str | None = Field(
        default=None,
        description="With forward_auth or oidc: a CEL rule deciding which sessions an "
        "identity may reach, over claims (oidc) or headers (forward_auth: the auth answer's "
        "headers, lower-case names) and session (session.id, session.labels), e.g. "
        "claims.email == session.labels.owner. Unset by default: every identity reaches "
        "every session.",
    )
    _allow: AllowRule | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        if self.mode in ("forward_auth", "oidc") and getattr(self, self.mode) is None:
            problems.append(((self.mode,), f"is required by mode {self.mode}"))
        for key in ("forward_auth", "oidc"):
            if getattr(self, key) is not None and self.mode != key:
                problems.append(((key,), f"only for mode {key}"))
        if self.allow is not None:
            variables = AUTH_VARIABLES.get(self.mode)
            if variables is None:
                problems.append((("allow",), "only for mode forward_auth or oidc"))
            else:
                try:
                    self._allow = compile_allow("allow", self.allow, variables)
                except PolicyError as exc:
                    problems.append((("allow",), str(exc)))
        if problems:
            raise _NestedProblems(problems)
        return self

    @property
    def allow_rule(self) -> AllowRule | None:
        """The compiled `allow` rule, if any."""
        return self._allow


class AdminAuthConf(_Model):
    """How people log in to the admin API's dashboard, besides the admin token."""

    mode: Literal["token", "oidc"] = Field(
        default="token",
        description="token: the admin token only (the CLI's way, and the dashboard's login "
        "form); oidc: also a login with an OpenID Connect provider, for people whose claims "
        "`allow` admits. token by default.",
    )
    oidc: OidcConf | None = Field(
        default=None,
        description="The provider, as gateway.auth.oidc (its redirect_uri ends in "
        "/ui/oidc/callback). Unset by default: gateway.auth.oidc's.",
    )
    allow: str | None = Field(
        default=None,
        description="With oidc, required: a CEL rule over claims saying who is an "
        'administrator, e.g. "admins" in claims.groups.',
    )
    _allow: AllowRule | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        if self.mode == "token":
            problems += [((key,), "only for mode oidc") for key in ("oidc", "allow")
                         if getattr(self, key) is not None]  # fmt: skip
        elif self.allow is None:
            problems.append((("allow",), "is required by mode oidc: who is an administrator?"))
        else:
            try:
                self._allow = compile_allow("allow", self.allow, ("claims",))
            except PolicyError as exc:
                problems.append((("allow",), str(exc)))
        if problems:
            raise _NestedProblems(problems)
        return self

    @property
    def allow_rule(self) -> AllowRule | None:
        """The compiled `allow` rule (mode oidc)."""
        return self._allow


class AdminConf(_Model):
    """The admin API (it listens on gateway.admin_listen)."""

    auth: AdminAuthConf = Field(
        default=AdminAuthConf(),
        description="{mode: token} or {mode: oidc, oidc: {...}, allow: ...}. The admin token "
        "always works (the CLI uses it).",
    )


class GatewayConf(_Model):
    """How the gateway listens, finds a request's session and holds requests while it wakes."""

    listen: str = Field(
        default="127.0.0.1:8080",
        description="Address the gateway listens on, as host:port (IPv6 as [::1]:8080). "
        "Loopback by default: with auth mode none anyone who reaches it reaches every "
        "session, so exposing it to the network should be a deliberate choice (siesta "
        "warns when it listens beyond loopback without auth).",
    )
    routing: RoutingMode = Field(
        default="path",
        description="How a request names its session: path (/s/<session>/...), host "
        "(<session>.<domain>) or header (the `header` field). path by default: it needs "
        "no DNS set-up and no client changes.",
    )
    domain: str = Field(
        default="localhost",
        pattern=_DOMAIN_PATTERN,
        description="For host routing, sessions are reached at <session>.<domain>. "
        "localhost by default: browsers resolve *.localhost to loopback without any DNS.",
    )
    header: str = Field(
        default="X-Siesta-Session",
        pattern=_HEADER_PATTERN,
        description="For header routing, the request header that names the session.",
    )
    strip_prefix: bool = Field(
        default=True,
        description="For path routing, remove /s/<session> before forwarding. On by "
        "default: most apps expect to be served from / and need not know the prefix.",
    )
    wake_timeout: Duration = _duration(
        "60s",
        "Seconds a request is held while its session wakes, before it is answered 503. "
        "60s: room for a slow app to start, yet under common client and proxy timeouts.",
    )
    waiting_page: Literal["auto", "off"] = Field(
        default="auto",
        description="auto: a browser held longer than waiting_page_after gets a small page "
        "that reloads once the session is awake; off: requests are only held. auto by "
        "default, so people see progress instead of a blank tab.",
    )
    waiting_page_after: Duration = _duration(
        "1s",
        "Seconds a browser request is held before it gets the waiting page. 1s: a fast "
        "wake finishes first and the page never flashes.",
    )
    max_held_per_session: int = Field(
        default=1000,
        ge=1,
        description="Requests held at most for one waking session; more get 503. 1000: "
        "a page load's burst of requests fits many times over; a runaway client does not.",
    )
    max_held_total: int = Field(
        default=10000,
        ge=1,
        description="Requests held at most across all sessions; more get 503. 10000: "
        "each held request is an open connection, so this bounds memory and file "
        "descriptors while many sessions wake at once.",
    )
    header_timeout: Duration = _duration(
        "30s",
        "Seconds a client has to send a complete request head before the connection is "
        "closed. 30s: generous for slow links, short enough to shed stalled connections.",
    )
    keepalive_timeout: Duration = _duration(
        "75s",
        "Seconds an idle client connection is kept open. 75s: longer than the 60s idle "
        "timeout of common load balancers, so they close first and never reuse a "
        "connection the gateway is closing.",
    )
    max_head_size: int = Field(
        default=65536,
        ge=1,
        description="Bytes: a request head (request line and headers) larger than this "
        "gets 431. 64 KiB: above the 8 to 16 KiB most servers allow, so large cookies "
        "pass, while memory per connection stays bounded.",
    )
    admin_listen: Annotated[
        str | None,
        BeforeValidator(_off),
        WithJsonSchema({"anyOf": [{"type": "string"}, {"const": "off"}, {"const": False}]}),
    ] = Field(
        default="127.0.0.1:8081",
        description="Address of the admin API and /metrics, as host:port, or off for none "
        "(then the CLI's status, sessions, wake, sleep, events and policy explain cannot "
        "reach this siesta). Loopback by default: the API can wake, sleep and delete "
        "sessions, so it is kept off the network unless asked for (it also requires a "
        "token).",
    )
    drain_timeout: Duration = _duration(
        "10s",
        "On shutdown, seconds requests in flight get to finish before their connections "
        "are closed. 10s: well within the 30s termination grace period of Kubernetes.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses (CIDRs, e.g. 10.0.0.0/8 or 127.0.0.1/32) of proxies in front "
        "of siesta whose X-Forwarded-For, -Proto and -Host are kept (X-Forwarded-For is "
        "appended to, and its last untrusted address is the client for per-client limits). "
        "From anyone else these headers are replaced. Empty by default: a client could "
        "otherwise claim any address or claim https.",
    )

    # -- abuse limits (issue 9): wakes, held requests and request bodies ------------
    max_awake: Annotated[
        int | None,
        BeforeValidator(_off),
        WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1}, {"const": "off"}]}),
    ] = Field(
        default=None,
        ge=1,
        json_schema_extra={"default": "off"},
        description="Sessions that may run at once (waking, awake or stopping: each has a "
        "backend), or off. A wake beyond it is refused (503 with Retry-After) or makes room "
        "first, as max_awake_policy says. With replicas on Redis each replica counts the "
        "sessions it sees running and admits wakes on its own: the cap is not atomic "
        "across replicas. off by default: how many backends fit depends on the machine.",
    )
    max_awake_policy: Literal["reject", "evict_idle"] = Field(
        default="reject",
        description="At max_awake: reject answers the wake 503 with Retry-After; "
        "evict_idle puts the longest-idle awake session without a request in flight to "
        "sleep first (an event says so), then wakes. reject by default: nobody's session "
        "is stopped for somebody else's unless asked for.",
    )
    wake_rate: Annotated[str, AfterValidator(_check_rate)] = Field(
        default="30/min",
        description="Wakes one client may start, as count/period (10/min, 100/h, 5/30s) "
        "or off: a burst of count, then one every period/count; beyond it 429 with "
        "Retry-After. Only requests that start a wake count, not those that wait for one "
        "under way or reach an awake session. A client is its address (an IPv6 /64), or "
        "behind a trusted proxy the last X-Forwarded-For address that is not one. "
        "30/min: a person, or a classroom behind one address, opening sessions is never "
        "slowed; a script waking every session gets one wake every 2s.",
    )
    max_held_per_client: int = Field(
        default=1000,
        ge=1,
        description="Requests one client may have held at once, across sessions; more get "
        "503 at once. 1000, a tenth of max_held_total: one client cannot fill the hold "
        "queue and leave the others an immediate 503.",
    )
    body_timeout: OffDuration = _duration(
        "60s",
        "Seconds a request body may go without a byte arriving (time the gateway itself "
        "stops reading, to hold back a fast client, does not count); then 408 and the "
        "connection is closed, and the request no longer counts as in flight, so the "
        "session can sleep. 0 or off: none. 60s: nginx's client_body_timeout.",
    )
    request_timeout: OffDuration = _duration(
        "0s",
        "Seconds a request body may take in all, from the end of its head, whatever its "
        "pace; then 408 and the connection is closed. 0 or off: none. off by default: a "
        "large upload on a slow link takes as long as it takes; body_timeout already "
        "sheds a client that stops sending. Set it above wake_timeout.",
    )
    auth: AuthConf = Field(
        default=AuthConf(),
        description="Who may reach a session: {mode: none | token | forward_auth | oidc, "
        "...}. mode none by default: put siesta behind something that checks, or pick a mode.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(
                    f"{cidr!r} is not an address or network: use e.g. 10.0.0.0/8 or ::1"
                ) from None
        return value

    @field_validator("listen", "admin_listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @property
    def host(self) -> str:
        """The host part of `listen`, without IPv6 brackets."""
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The port part of `listen`."""
        return parse_listen(self.listen)[1]

    @property
    def admin_address(self) -> tuple[str, int] | None:
        """`admin_listen` as (host, port); None when it is off."""
        return None if self.admin_listen is None else parse_listen(self.admin_listen)

    @property
    def wake_rate_limit(self) -> Rate | None:
        """`wake_rate` parsed; None when it is off."""
        return parse_rate(self.wake_rate)


class ReadyConf(_Model):
    """How siesta knows a started backend is ready: set exactly one of `http` or `tcp`."""

    http: str | None = Field(
        default=None,
        pattern=_PROBE_PATH_PATTERN,
        description="Ready once an HTTP GET of this path is answered below 500. It starts "
        "with / or {base_url} and may use {base_url} (the session's base URL, / unless "
        "the prefix is kept), {session} and {port}, e.g. {base_url}api/status.",
    )
    tcp: bool = Field(
        default=False,
        description="Ready once the backend's port accepts a TCP connection; needs nothing "
        "from the app, which is why templates use it by default.",
    )
    timeout: PositiveDuration = _duration(
        "1s",
        "Seconds one readiness probe gets to connect and read its answer's status line; "
        "a probe that takes longer counts as not ready. 1s: a ready backend answers in "
        "milliseconds, and one that accepts and never answers cannot hold a wake.",
    )
    every: PositiveDuration | None = Field(
        default=None,
        description="Longest wait between readiness probes, growing from 1ms. Unset by "
        "default: 25ms for local and docker backends (a wake costs little more than the "
        "start), 250ms for keda ones (a pod takes seconds; fewer probes, fewer DNS "
        "lookups).",
        json_schema_extra={"default": "25ms local, 250ms keda"},
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.http is not None) == self.tcp:
            raise ValueError("set exactly one of http (a path, e.g. /healthz) or tcp: true")
        problem = None if self.http is None else placeholder_problem(self.http)
        if problem is not None:
            raise _NestedProblems([(("http",), problem)])
        return self


class IgnoreConf(_Model):
    """Traffic that is served but is not activity: it neither resets idle_for nor counts
    in requests_1m or bytes_1m (an ignored request still counts in inflight)."""

    requests: list[str] = Field(
        default_factory=list,
        description='"[METHOD ]PATH" patterns, PATH relative to the session\'s base URL, '
        "with * (any run of characters) and ? (one); the query string is not matched. "
        'E.g. "GET /api/kernels" (that method only) or "/healthz" (any method).',
    )
    methods: list[str] = Field(
        default_factory=list, description="Methods ignored on any path, e.g. [OPTIONS]."
    )
    user_agents: list[str] = Field(
        default_factory=list,
        description="User-Agent patterns (* and ?) of clients whose requests are ignored, "
        'e.g. ["kube-probe/*"].',
    )
    websocket_control: bool = Field(
        default=True,
        description="Websocket ping and pong frames are not activity (data frames are). "
        "On by default: a browser answers a server's pings by itself, so they say nothing "
        "about a person.",
    )

    @field_validator("requests")
    @classmethod
    def _check_requests(cls, value: list[str]) -> list[str]:
        for spec in value:
            path = spec.strip().rpartition(" ")[2]
            if not path.startswith(("/", "*")):
                raise ValueError(f"{spec!r}: the path must start with / (or *), e.g. /api/x")
        return value

    def build(self) -> ActivityFilter:
        """The compiled filter."""
        return ActivityFilter(
            self.requests,
            methods=self.methods,
            user_agents=self.user_agents,
            websocket_control=self.websocket_control,
        )


class ActivityConf(_Model):
    """What is activity: a probe asking an awake session's app whether it is busy, and
    traffic that does not count (`ignore`).

    Set at most one of `preset` or `http` (none: no probe, only `ignore`). The probe's
    answer is the `app` map policies read.
    Every map has app.ok (bool: the last probe was answered) and app.error (string:
    why not, else ""). The jupyter preset adds app.last_activity (timestamp),
    app.idle_for (duration since last_activity, as of the last probe), app.kernels,
    app.busy_kernels and app.connections (ints). A probe that fails keeps the last
    values, with app.ok false: write e.g. `app.ok && app.busy_kernels == 0 && ...`.
    """

    preset: Literal["jupyter"] | None = Field(
        default=None,
        description="jupyter: Jupyter Server's GET /api/status (last_activity, kernels, "
        "connections) and GET /api/kernels (busy kernels), under the session's base URL.",
    )
    http: str | None = Field(
        default=None,
        pattern=_PROBE_PATH_PATTERN,
        description="A path answering a JSON document, read with `map`; it starts with / "
        "or {base_url} and may use {base_url}, {session} and {port}, as ready.http.",
    )
    map: dict[Annotated[str, StringConstraints(pattern=_APP_KEY_PATTERN)], str] | None = Field(
        default=None,
        description="With http: app key -> dotted JSON path, e.g. {busy: workers.busy, "
        "first: items.0.state}; values keep their JSON types (a whole number is an int, "
        "else a double); a path that leads nowhere leaves its key out (test with "
        "has(app.key)). Unset by default: the top-level fields of the JSON object.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="With http: extra request headers, e.g. {Authorization: Bearer ...}.",
    )
    token: str | None = Field(
        default=None,
        description="With preset jupyter: the server's token, sent as Authorization: "
        "token <token>. Unset by default: the template's env JUPYTER_TOKEN, if any.",
    )
    ignore: IgnoreConf | None = Field(
        default=None,
        description="Traffic served but not counted as activity: {requests: [...], methods: "
        "[...], user_agents: [...], websocket_control: true}. Unset by default: everything "
        "counts, except with preset jupyter, whose default is what an open JupyterLab tab "
        "polls by itself (GET /api/contents*, /api/sessions, /api/kernels, /api/kernelspecs, "
        "/api/terminals, /api/me, /api/status; /lab/api/workspaces* by any method) and "
        "websocket pings; a list given here replaces it.",
    )
    every: PositiveDuration = _duration(
        "30s",
        "Seconds between probes of an awake session. 30s: the app's news reaches the "
        "policy at most that late, and 10,000 awake sessions cost a few hundred small "
        "requests a second.",
    )
    timeout: PositiveDuration = _duration(
        "5s",
        "Seconds a probe waits for its answer before it counts as failed. 5s: a status "
        "page answers in milliseconds; a server that takes longer is in trouble.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if self.preset is not None and self.http is not None:
            raise ValueError("set one of preset (jupyter) or http (a path, e.g. /status)")
        if self.preset is None and self.http is None and self.ignore is None:
            raise ValueError(
                "set preset (jupyter), http (a path, e.g. /status) or ignore (what is not activity)"
            )
        problem = None if self.http is None else placeholder_problem(self.http)
        if problem is not None:
            raise _NestedProblems([(("http",), problem)])
        if self.preset is not None and (self.map is not None or self.headers):
            raise ValueError("map and headers go with http, not with a preset")
        if self.http is not None and self.token is not None:
            raise ValueError("token goes with preset jupyter; with http, use headers")
        reserved = sorted(set(self.map or ()) & set(activity.BASE_KEYS))
        if reserved:
            raise ValueError(f"map: {', '.join(reserved)} is set by siesta itself: rename it")
        return self

    @property
    def probes(self) -> bool:
        """Whether the app is asked (a preset or an http path), not only `ignore` given."""
        return self.preset is not None or self.http is not None

    def filter(self) -> ActivityFilter | None:
        """What traffic is not activity: `ignore`, else the preset's default list."""
        if self.ignore is not None:
            return self.ignore.build()
        if self.preset == "jupyter":
            return ActivityFilter(JUPYTER_IGNORE)
        return None

    def keys(self) -> frozenset[str] | None:
        """The keys of the `app` map this probe gives; None when they are not known ahead."""
        if not self.probes:
            return frozenset()
        if self.preset == "jupyter":
            return frozenset(activity.JUPYTER_KEYS)
        if self.map is None:
            return None
        return frozenset((*activity.BASE_KEYS, *self.map))

    def sample(self) -> dict[str, Any] | None:
        """Typical values of the `app` map, when their types are known ahead."""
        return dict(activity.JUPYTER_SAMPLE) if self.preset == "jupyter" else None


class TemplateConf(_Model):
    """A recipe for a session's backend: the command to run and how to manage it."""

    command: list[str] = Field(
        default_factory=list,
        description="The backend's command line, run without a shell; {port} in an "
        "argument becomes the port siesta chose for the backend. Required for the local "
        "provider.",
    )
    ready: ReadyConf = Field(
        default=ReadyConf(tcp=True),
        description="How siesta knows the backend is ready: {http: /path} or {tcp: true}. "
        "tcp by default: it works with any server.",
    )
    idle_timeout: Duration = _duration(
        "15m",
        "Seconds without traffic (no byte in either direction) and with no request in "
        "flight after which the backend is put to sleep; an open but silent connection, "
        "such as an idle websocket, does not keep it awake. 15m: long enough to read a "
        "page or step away briefly, short enough that idle sessions soon give their "
        "memory back.",
    )
    stop_grace: Duration = _duration(
        "10s",
        "Seconds between SIGTERM and SIGKILL when a backend is put to sleep. 10s: "
        "Docker's default, plenty for a clean exit.",
    )
    cpu_window: PositiveDuration = _duration(
        "30s",
        "Seconds the cpu_percent signal averages over: the backend's CPU use (its whole "
        "process tree or container; 100 = one core) over the last cpu_window, sampled "
        "every cpu_window/6 on a timer of its own. 30s: a job that computes in bursts "
        "(a training loop writing checkpoints, a kernel between cells) still shows up, "
        "and a finished one lets the session sleep half a minute later.",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables for the backend, on top of what env_inherit "
        "passes from siesta's own environment. Values must be strings: quote numbers.",
    )
    env_inherit: list[Annotated[str, StringConstraints(pattern=_ENV_PATTERN)]] = Field(
        default_factory=lambda: list(DEFAULT_INHERIT),
        description="provider local: the variables of siesta's own environment a backend "
        "gets, by name or glob pattern (LC_*, MY_APP_*); [] for none. siesta's own SIESTA_* "
        "variables (SIESTA_ADMIN_TOKEN) and the Redis password's variable are never "
        "passed, whatever is listed. [PATH, HOME, LANG, LC_*, TZ] by default: what programs "
        "need to run, and nothing that could be a secret of siesta's.",
    )
    cwd: Path | None = Field(
        default=None,
        description="Working directory of the backend; a relative path is taken from the "
        "config file's folder. Unset by default: the backend inherits siesta's.",
    )
    failure_log_lines: int = Field(
        default=20,
        ge=0,
        le=1000,
        description="Lines of the backend's log a browser sees on the failure page when the "
        "session cannot start (with the reason and a countdown to the next try); 0 shows "
        "none. 20: enough for a traceback's end. Sessions behind auth never show their log "
        "there: it may hold what their users must not read.",
    )
    max_start_failures: int = Field(
        default=3,
        ge=1,
        description="Consecutive failed starts after which the session is FAILED. 3: rides "
        "out a transient failure without retrying a broken command forever.",
    )
    failure_backoff: Duration = _duration(
        "30s",
        "Seconds a FAILED session refuses wakes; doubles with each further failure, "
        "capped at 10m. 30s: quick recovery from a transient fault, no tight restart loop.",
    )
    policy: str | None = Field(
        default=None,
        description="Name of the policy (under `policies`) that decides when sessions of "
        "this template sleep. Unset by default: idle_timeout alone decides.",
    )
    activity: ActivityConf | None = Field(
        default=None,
        description="An activity probe filling the `app` signal of policies: {preset: "
        'jupyter, every: 30s} or {http: "/status", every: 30s, map: {...}}. Unset by '
        "default: the app is not asked, only traffic is seen.",
    )
    provider: Literal["local", "keda", "docker"] = Field(
        default="local",
        description="Where the backend runs: `local` (a process siesta starts from "
        "`command`), `keda` (a Kubernetes workload KEDA scales, reached at `address`) or "
        "`docker` (a container per session, from `image`: see docs/docker.md). local by "
        "default: it needs nothing but this machine.",
    )
    scaled_object: str | None = Field(
        default=None,
        description="For provider keda: the name of the session's ScaledObject, {session} "
        "filled in, e.g. nb-{session}. Only checked: keda-hpa-<name> (the HPA KEDA makes) "
        "must fit in 63 characters, so too long a session id is refused. Unset by default: "
        "the first label of address's host, as deploy/kubernetes/session-example names it.",
    )
    address: str | None = Field(
        default=None,
        description="Where a `keda` backend answers, {session} filled in, e.g. "
        '"http://nb-{session}.sessions.svc:8888" (the session\'s Service). Required for '
        "the keda provider.",
    )
    resources: ResourcesConf | None = Field(
        default=None,
        description='What a backend reserves: {cpu: 0.5, memory: "512Mi"} (Kubernetes '
        "quantities). The savings report prices an always-on backend at this size, and "
        "a backend whose use is not measured (keda) at this size while awake. Unset by "
        "default: the measured peak is used.",
    )

    # -- provider docker: the container of each session (docs/docker.md) --------------
    image: str | None = Field(
        default=None,
        pattern=_NO_SPACE_PATTERN,
        description="provider docker: the image of every session's container, e.g. "
        "my-lab:1.0. It must be on the Docker host already: siesta never pulls, so a wake "
        "never waits on a registry. Required for provider docker.",
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="provider docker: the port the app listens on inside the container; "
        "{port} in `command` and `env` becomes it. siesta publishes it on 127.0.0.1 at a "
        "port Docker picks (or, with `network`, reaches it on the container's address). "
        "Required for provider docker.",
    )
    volumes: list[Annotated[str, AfterValidator(_check_volume)]] = Field(
        default_factory=list,
        description="provider docker: mounts as source:target[:ro]. A source that is a "
        "name is a named volume, created on first use and never removed by siesta; use "
        "{session} in it (notes-{session}:/home/me/work) so each session keeps its data "
        "across sleeps. A source starting with / is a host folder. Empty by default.",
    )
    network: str | None = Field(
        default=None,
        pattern=_DOCKER_NAME_PATTERN,
        description="provider docker: a Docker network (which must exist) to attach the "
        "container to; siesta then forwards to the container's address on it, so siesta "
        "must be on that network too (e.g. both in one Compose project), and nothing is "
        "published. Unset by default: the default bridge, with the port published on "
        "127.0.0.1.",
    )
    cpus: float | None = Field(
        default=None,
        gt=0,
        description="provider docker: CPU limit in cores (1.5 = one and a half), as "
        "docker run --cpus. Unset by default: no limit, like a local backend.",
    )
    memory: Annotated[int, BeforeValidator(parse_memory)] | None = Field(
        default=None,
        description="provider docker: memory limit in bytes, or with a 1024-based unit as "
        "Docker writes it (512m, 2g); at least 6m. A container over it is killed (and its "
        "session goes to sleep, the reason saying so). Unset by default: no limit.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="provider docker: Docker labels put on the container, besides siesta's "
        "own siesta.session, siesta.instance, siesta.template and siesta.spec (keys "
        "starting with siesta. are reserved). These are not the session labels policies "
        "read. Empty by default.",
    )
    user: str | None = Field(
        default=None,
        pattern=_USER_PATTERN,
        description="provider local and docker: the user (and group) the backend runs as, "
        "as a name or number, e.g. nobody or 1000:1000. For local backends siesta must run "
        "as root, and the supplementary groups are the user's own. Unset by default: "
        "siesta's user (local), the image's USER (docker).",
    )
    group: str | None = Field(
        default=None,
        pattern=_GROUP_PATTERN,
        description="provider local: the group the backend runs as, as a name or number "
        "(needs user). Unset by default: the user's own group.",
    )
    read_only: bool = Field(
        default=False,
        description="provider docker: mount the container's root filesystem read-only "
        "(volumes stay writable). false by default: most images write somewhere.",
    )
    cap_drop: list[Annotated[str, StringConstraints(pattern=_CAPABILITY_PATTERN)]] = Field(
        default_factory=list,
        description="provider docker: Linux capabilities to drop, e.g. [ALL] or "
        "[NET_RAW, MKNOD]. Empty by default: Docker's default set.",
    )
    security_opt: list[Annotated[str, StringConstraints(pattern=_NO_SPACE_PATTERN)]] = Field(
        default_factory=list,
        description="provider docker: options as docker run --security-opt, e.g. "
        "[no-new-privileges]. Empty by default: Docker's defaults (its seccomp profile).",
    )
    on_sleep: Literal["stop", "remove"] = Field(
        default="stop",
        description="provider docker: what a sleep does to the container. stop keeps it, "
        "with its filesystem, and starts it again on the next wake (the fastest wake); "
        "remove deletes it, so each wake starts from the image (volumes are kept either "
        "way). stop by default: Docker's own stop, cheap to wake.",
    )

    @model_validator(mode="before")
    @classmethod
    def _docker_ready(cls, data: Any) -> Any:
        """A docker template is ready by HTTP GET / unless it says otherwise: a TCP connect
        to a published port is answered by Docker's proxy before the app listens."""
        if isinstance(data, dict) and data.get("provider") == "docker" and "ready" not in data:
            return {**data, "ready": {"http": "/"}}
        return data

    @field_validator("labels")
    @classmethod
    def _own_labels(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = reserved_labels(list(value))
        if reserved:
            raise ValueError(f"{', '.join(reserved)}: keys starting with siesta. are siesta's")
        return value

    @property
    def remote(self) -> bool:
        """Whether the backend runs elsewhere (keda): siesta neither starts nor stops it."""
        return self.provider == "keda"

    @property
    def ready_spec(self) -> ReadySpec:
        """How readiness is checked: the path, the probe's timeout, the longest interval."""
        every = self.ready.every
        if every is None:
            every = REMOTE_READY_EVERY if self.remote else LOCAL_READY_EVERY
        return ReadySpec(self.ready.http, self.ready.timeout, every)

    @field_validator("cwd")
    @classmethod
    def _resolve_cwd(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolved(value, info)

    @model_validator(mode="after")
    def _check_placeholders(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        for loc, text, known in self._templated():
            problems += [(loc, message) for message in placeholder_problems(text, known)]
        if problems:
            raise _NestedProblems(problems)
        return self

    def _templated(self) -> list[tuple[Loc, str, tuple[str, ...]]]:
        """Every text with placeholders: where it is, and the placeholders it may use."""
        found: list[tuple[Loc, str, tuple[str, ...]]] = [
            (("command", i), arg, PLACEHOLDERS) for i, arg in enumerate(self.command)
        ]
        found += [(("env", key), value, PLACEHOLDERS) for key, value in self.env.items()]
        found += [(("volumes", i), v, PLACEHOLDERS) for i, v in enumerate(self.volumes)]
        if self.address is not None:
            found.append((("address",), self.address, ("session",)))
        return found


PLACEHOLDERS = ("port", "host", "session", "base_url")
"""What a template's command, env and volumes may name in braces, filled at each start."""

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholder_problems(text: str, known: tuple[str, ...]) -> list[str]:
    """One message per `{name}` in `text` that is not one of `known`, with a guess."""
    problems = []
    for name in dict.fromkeys(_PLACEHOLDER.findall(text)):
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        guess = f": did you mean {{{close[0]}}}?" if close else ""
        listed = ", ".join(f"{{{k}}}" for k in known)
        problems.append(f"unknown placeholder {{{name}}}{guess} (known: {listed})")
    return problems


class SessionConf(_Model):
    """A session known at start-up: which template it runs, and its labels."""

    template: str = Field(description="Name of the template (under `templates`) it runs.")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Free-form key: value tags, kept with the session and shown by the CLI.",
    )


class _NestedProblems(ValueError):
    """Problems found by a model's validator but located below it, e.g. at one session."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(f"{_dotted(loc)}: {message}" for loc, message in problems))
        self.problems = problems


class WarnConf(_Model):
    """How a coming sleep is announced: set exactly one of `webhook` or `command`."""

    webhook: str | None = Field(
        default=None,
        pattern=_URL_PATTERN,
        description='URL that gets a JSON POST {"session", "policy", "sleep_at", "reason"} '
        "(5s timeout; a failure is logged, the sleep still happens).",
    )
    command: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Command run without a shell, with SIESTA_SESSION, SIESTA_POLICY, "
        "SIESTA_SLEEP_AT (ISO 8601) and SIESTA_REASON in its environment.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.webhook is None) == (self.command is None):
            raise ValueError("set exactly one of webhook (a URL) or command (a list)")
        return self


class PolicyConf(_Model):
    """When sessions sleep: CEL rules over the signals, with bounds and a warning.

    Signals: idle_for, awake_for, age (durations), connections, inflight, requests_1m,
    bytes_1m, memory_bytes (int), cpu_percent (double), app, labels (maps), now
    (timestamp); and the function in_window("Mon-Fri 08:00-18:00", "Europe/Paris").
    """

    sleep_when: str = Field(
        description="CEL rule: the session sleeps when it is true, e.g. idle_for > "
        'duration("15m") && connections == 0 && inflight == 0. Required.'
    )
    keep_awake_when: str | None = Field(
        default=None,
        description="CEL rule: while true, the session stays awake whatever sleep_when "
        "says. Unset by default.",
    )
    min_awake: Duration = _duration(
        "0s",
        "Seconds a session stays awake after a wake, whatever the rules say. 0s by "
        "default: the rules alone decide; raise it to stop a flapping session thrashing.",
    )
    max_lifetime: Duration | None = Field(
        default=None,
        description="Seconds after which an awake session sleeps, whatever the rules say "
        "(even keep_awake_when). Unset by default: no limit.",
    )
    warn_before: Duration | None = Field(
        default=None,
        description="Seconds ahead of a foreseen sleep at which `warn` is sent, once per "
        "awake period. Unset by default: no warning.",
    )
    warn: WarnConf | None = Field(
        default=None,
        description="How the warning is sent: {webhook: URL} or {command: [...]}.",
    )
    check_every: PositiveDuration = _duration(
        "30s",
        "Seconds between checks of a session whose rules read signals that change "
        "without traffic (cpu_percent, requests_1m, app, now ...). 30s: a sleep comes "
        "at most that late, and 10,000 awake sessions cost a few hundred checks a second.",
    )
    _rules: tuple[Rule, Rule | None] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _compile(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        rules: dict[str, Rule] = {}
        for key in ("sleep_when", "keep_awake_when"):
            source = getattr(self, key)
            if source is None:
                continue
            try:
                rules[key] = compile_rule(key, cel_durations(source))
            except DurationLiteralError as exc:  # one grammar for the config and CEL
                problems.append(((key,), str(PolicyError(key, str(exc), source, exc.offset))))
            except PolicyError as exc:
                problems.append(((key,), str(exc)))
        if (self.warn is None) != (self.warn_before is None):
            missing = "warn" if self.warn is None else "warn_before"
            problems.append(((missing,), "is required when the other of warn, warn_before is set"))
        if problems:
            raise _NestedProblems(problems)
        self._rules = (rules["sleep_when"], rules.get("keep_awake_when"))
        return self

    def build(self, name: str) -> Policy:
        """The compiled policy, called `name`."""
        assert self._rules is not None
        sleep_when, keep_awake_when = self._rules
        warn = None
        if self.warn is not None and self.warn_before is not None:
            warn = Warn(self.warn_before, self.warn.webhook, tuple(self.warn.command or ()))
        return Policy(
            name,
            sleep_when,
            keep_awake_when=keep_awake_when,
            min_awake=self.min_awake,
            max_lifetime=self.max_lifetime,
            warn=warn,
            check_every=self.check_every,
        )


class TlsConf(_Model):
    """A server certificate and its key, as PEM files."""

    cert: Path = Field(description="PEM certificate chain; relative to the config's folder.")
    key: Path = Field(description="PEM private key; relative to the config's folder.")

    @field_validator("cert", "key")
    @classmethod
    def _resolve(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolved(value, info)


class KedaConf(_Model):
    """The KEDA External Scaler service siesta serves (`externalscaler.ExternalScaler`)."""

    listen: str = Field(
        default="127.0.0.1:9090",
        description="host:port of the gRPC server KEDA's `scalerAddress` points at. "
        "127.0.0.1:9090 by default: 9090 is the port KEDA's examples use; bind 0.0.0.0 "
        "in a cluster.",
    )
    tls: TlsConf | None = Field(
        default=None, description="Serve TLS with {cert, key}. Unset by default: plaintext."
    )
    unknown_sessions: Literal["inactive", "error"] = Field(
        default="inactive",
        description="What KEDA hears about a session siesta does not know (deleted, or "
        "never created): inactive answers IsActive false and metric 0, with a log line, "
        "so KEDA scales its workload to zero; error answers NOT_FOUND, on which KEDA "
        "neither scales up nor down. inactive by default: a lost session must never keep "
        "a pod running, or freeze it, forever.",
    )
    scaled_objects: dict[str, Name] = Field(
        default_factory=dict,
        description="Sessions of ScaledObjects whose trigger has no `session` metadata, by "
        '"namespace/name", e.g. {"sessions/nb-alice": alice}. Empty by default: the '
        "trigger names its session.",
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @property
    def address(self) -> tuple[str, int]:
        """`listen` as (host, port)."""
        return parse_listen(self.listen)


class StoreConf(_Model):
    """Where siesta keeps session state and history, and for how long."""

    location: str = Field(
        default=".siesta/state.db",
        min_length=1,
        description="A SQLite file (relative to the config file's folder), or a Redis URL: "
        "redis://host:port/db, rediss://host:port/db for TLS. Replicas with the same Redis "
        "share their sessions. .siesta/state.db by default: one process, nothing to set "
        "up, the state next to its config. Backend logs go to logs/ beside the SQLite "
        "file (.siesta/logs/ beside the config with Redis).",
    )
    retention: PositiveDuration = _duration(
        "30d",
        "How long events (the history of transitions) are kept; older ones are deleted. "
        "30d by default: a month of history for reports, in bounded space.",
    )
    password_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Redis: the environment variable holding the password. Unset by "
        "default: no password, or one in password_file.",
    )
    password_file: Path | None = Field(
        default=None,
        description="Redis: a file holding the password (a mounted Kubernetes Secret); "
        "relative to the config's folder. Unset by default.",
    )
    username: str | None = Field(
        default=None, description="Redis: the ACL user name. Unset by default: `default`."
    )
    lease_ttl: PositiveDuration = _duration(
        "10s",
        "Redis: how long a lease lasts unless renewed: the controller's (one replica "
        "decides sleeps) and a wake's (one replica starts a backend). A replica that dies "
        "is taken over after this. 10s by default: renewals every few seconds cost "
        "nothing, and a takeover is quicker than most backends start.",
    )
    local_dir: Path | None = Field(
        default=None,
        description="Redis: the folder of this replica's own files (backend logs, the admin "
        "token, the sessions configured at the last start); relative to the config's "
        "folder. Unset by default: .siesta beside the config. Set it where the config's "
        "folder is read-only (a Kubernetes ConfigMap). With SQLite they go beside the file.",
    )
    _path: Path | None = PrivateAttr(None)
    _state_dir: Path = PrivateAttr(Path(".siesta"))

    @field_validator("password_file")
    @classmethod
    def _resolve_password(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolved(value, info)

    @model_validator(mode="after")
    def _place(self, info: ValidationInfo) -> Self:
        if self.location.startswith(("redis://", "rediss://")):
            self._state_dir = _resolved(self.local_dir or Path(".siesta"), info)
        elif "://" in self.location:
            scheme = self.location.split("://", 1)[0]
            raise ValueError(
                f"unknown store scheme {scheme!r}: use a SQLite file path, redis:// or rediss://"
            )
        else:
            if self.local_dir is not None:
                raise ValueError("local_dir is for a Redis store: SQLite's is the file's folder")
            self._path = _resolved(Path(self.location), info)
            self._state_dir = self._path.parent
        if self.password_env and self.password_file:
            raise ValueError("set either password_env or password_file, not both")
        return self

    @property
    def path(self) -> Path | None:
        """The SQLite file; None with Redis."""
        return self._path

    @property
    def redis_url(self) -> str | None:
        """The Redis URL; None with SQLite."""
        return None if self._path is not None else self.location

    @property
    def state_dir(self) -> Path:
        """The folder of local state: backend logs, the admin token."""
        return self._state_dir

    @property
    def identity(self) -> str:
        """What names this store: the SQLite file, or the Redis URL without credentials."""
        if self._path is not None:
            return str(self._path)
        scheme, rest = self.location.split("://", 1)
        return f"{scheme}://{rest.rpartition('@')[2]}"


def _store_shorthand(value: Any) -> Any:
    """`store: <location>` is short for `store: {location: <location>}`."""
    if isinstance(value, str | Path):
        return {"location": str(value)}
    return value


class Config(_Model):
    """The siesta config file."""

    gateway: GatewayConf = Field(
        default=GatewayConf(), description="The HTTP gateway in front of the sessions."
    )
    store: Annotated[StoreConf, BeforeValidator(_store_shorthand)] = Field(
        default_factory=StoreConf,
        validate_default=True,
        description="Where state and history are kept: a SQLite file path or a Redis URL "
        "(shorthand for {location: ...}), or {location, retention, password_env, "
        "password_file, username, lease_ttl, local_dir}.",
    )
    templates: dict[Name, TemplateConf] = Field(
        description="Backend recipes by name. Required: every session runs one of them."
    )
    sessions: dict[Name, SessionConf] = Field(
        default_factory=dict,
        description="Sessions known at start-up, by id; more can be created later. Ids "
        "appear in URLs and host names.",
    )
    policies: dict[Name, PolicyConf] = Field(
        default_factory=dict,
        description="Inactivity policies by name; a template names one with `policy`.",
    )
    keda: KedaConf | None = Field(
        default=None,
        description="KEDA's External Scaler gRPC service: {listen: 127.0.0.1:9090, tls: "
        "{cert, key}}. Unset by default: not served.",
    )
    savings: SavingsConf = Field(
        default=SavingsConf(),
        description="Prices, energy coefficients and grid intensity for what sleeping "
        "saved (siesta report, siesta advise, /api/savings). Every default is cited.",
    )
    admin: AdminConf = Field(
        default=AdminConf(),
        description="The admin API: {auth: {mode: token | oidc, oidc, allow}}. The token "
        "alone by default.",
    )
    instance: Name | None = Field(
        default=None,
        description="Name of this siesta deployment. It marks what siesta starts (container "
        "labels, the backend's environment), so that after a restart siesta recognises its "
        "own backends and leaves those of another siesta alone; replicas that share a store "
        "share it. Unset by default: derived from the store's location, which is what "
        "identifies a deployment.",
    )
    _path: Path | None = PrivateAttr(None)
    _policies: dict[str, Policy] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _link(self, info: ValidationInfo) -> Self:
        unknown: list[tuple[Loc, str]] = [
            (("sessions", session, "template"), _unknown_template(conf.template, self.templates))
            for session, conf in self.sessions.items()
            if conf.template not in self.templates
        ]
        unknown += self._link_policies()
        unknown += _provider_problems(self.templates)
        unknown += [
            (("sessions", sid), problem)
            for sid, conf in self.sessions.items()
            if conf.template in self.templates
            and (problem := self.session_problem(sid, conf.template)) is not None
        ]
        if self.keda is None:
            unknown += [
                (("templates", name, "provider"), _NO_KEDA)
                for name, template in self.templates.items()
                if template.provider == "keda"
            ]
        if self.admin.auth.mode == "oidc" and self.admin_oidc is None:
            unknown.append((("admin", "auth", "oidc"), _NO_ADMIN_OIDC))
        if unknown:
            raise _NestedProblems(unknown)
        self._path = (info.context or {}).get("path")
        return self

    @property
    def admin_oidc(self) -> OidcConf | None:
        """The provider of the admin dashboard's OIDC login: admin.auth.oidc, else
        gateway.auth.oidc."""
        return self.admin.auth.oidc or self.gateway.auth.oidc

    def _link_policies(self) -> list[tuple[Loc, str]]:
        """Give every template its compiled policy; the problems of templates' `policy`."""
        problems: list[tuple[Loc, str]] = []
        named = {name: conf.build(name) for name, conf in self.policies.items()}
        for name, template in self.templates.items():
            if template.policy is None:
                self._policies[name] = Policy.idle(template.idle_timeout)
            elif template.policy not in named:
                known = ", ".join(named) or "none are defined"
                message = f"unknown policy {template.policy!r} (known: {known})"
                problems.append((("templates", name, "policy"), message))
            elif "idle_timeout" in template.model_fields_set:
                message = "set either policy or idle_timeout: the policy decides when it sleeps"
                problems.append((("templates", name, "idle_timeout"), message))
            else:
                self._policies[name] = named[template.policy]
                problems += _app_problems(name, template, named[template.policy])
                problems += _resource_problems(name, template, named[template.policy])
        return problems

    def session_problem(self, session_id: str, template: str) -> str | None:
        """Why `session_id` cannot run `template` (a keda template makes Kubernetes names
        of it, which have rules), or None; the API asks it of new sessions too."""
        conf = self.templates.get(template)
        if conf is None or conf.provider != "keda" or conf.address is None:
            return None
        return name_problem(conf.address, conf.scaled_object, session_id)

    def policy_for(self, template: str) -> Policy:
        """The policy that puts sessions of `template` to sleep (idle_timeout if none named)."""
        return self._policies[template]

    def template_policies(self) -> dict[str, Policy]:
        """Every template's policy, by template name."""
        return dict(self._policies)

    @property
    def path(self) -> Path | None:
        """The file this config was loaded from; None if it was not loaded from a file."""
        return self._path

    @property
    def store_path(self) -> Path | None:
        """The SQLite store file; None when the store is Redis."""
        return self.store.path

    @property
    def state_dir(self) -> Path:
        """Where siesta keeps local state: the SQLite file's folder (.siesta/ with Redis)."""
        return self.store.state_dir

    @property
    def log_dir(self) -> Path:
        """Where backends' logs go."""
        return self.state_dir / "logs"

    def privilege_problems(self) -> list[str]:
        """Templates whose backends siesta, as it runs now, cannot start as the user they
        name (switching users needs root): one line each, naming the key."""
        problems = []
        for name, template in self.templates.items():
            if template.provider != "local" or template.user is None:
                continue
            try:
                problem = privilege_problem(RunAs.resolve(template.user, template.group))
            except IdentityError as exc:
                problem = str(exc)
            if problem is not None:
                problems.append(f"templates.{name}.user: {problem}")
        return problems

    @property
    def instance_id(self) -> str:
        """`instance`, or a stable name derived from the store's location."""
        if self.instance is not None:
            return self.instance
        digest = hashlib.sha256(self.store.identity.encode()).hexdigest()[:12]
        return f"siesta-{digest}"


_NO_ADMIN_OIDC = "is required by mode oidc (or set gateway.auth.oidc, which it then uses)"

_NO_KEDA = (
    "provider keda needs a keda: section (the External Scaler KEDA asks, e.g. "
    "keda: {listen: '0.0.0.0:9090'})"
)


def _provider_problems(templates: dict[str, TemplateConf]) -> list[tuple[Loc, str]]:
    """A local template needs a command, a keda one an address (and no command)."""
    problems: list[tuple[Loc, str]] = []
    for name, template in templates.items():
        if template.provider == "local" and not template.command:
            problems.append((("templates", name, "command"), "is required"))
        elif template.provider == "keda" and template.address is None:
            problems.append((("templates", name, "address"), "is required by provider keda"))
        elif template.provider == "keda" and template.command:
            message = "not used by provider keda: Kubernetes runs the backend"
            problems.append((("templates", name, "command"), message))
        problems += [(("templates", name, *loc), why) for loc, why in _docker_problems(template)]
        problems += [(("templates", name, *loc), why) for loc, why in _local_problems(template)]
    return problems


_NOT_FOR_KEDA = ("user", "group", "env_inherit")


def _local_problems(template: TemplateConf) -> list[tuple[Loc, str]]:
    """What a local backend runs as and inherits (issue 9): names that resolve, and no
    pattern that asks for siesta's own variables. Whether siesta may switch to that user
    is checked at start (`Config.privilege_problems`): a config is checked anywhere."""
    given = template.model_fields_set
    if template.provider == "keda":
        why = "not used by provider keda: Kubernetes runs the backend"
        return [((key,), why) for key in _NOT_FOR_KEDA if key in given]
    problems: list[tuple[Loc, str]] = [
        (("env_inherit", i), problem)
        for i, pattern in enumerate(template.env_inherit)
        if (problem := inherit_problem(pattern)) is not None
    ]
    if template.provider == "local":
        try:
            RunAs.resolve(template.user, template.group)
        except IdentityError as exc:
            named = template.group is not None and "group" in str(exc)
            key = "group" if template.user is None or named else "user"
            problems.append(((key,), str(exc)))
    return problems


_DOCKER_KEYS = (
    "image", "port", "volumes", "network", "cpus", "memory", "labels", "read_only",
    "cap_drop", "security_opt", "on_sleep",
)  # fmt: skip
_NOT_FOR_DOCKER = {
    "cwd": "not used by provider docker: the image's WORKDIR applies",
    "address": "not used by provider docker: siesta finds the container's address itself",
    "group": "not used by provider docker: write user as user:group",
    "env_inherit": "not used by provider docker: a container gets env and nothing of "
    "siesta's environment",
}
_TCP_THROUGH_PROXY = (
    "tcp cannot tell when a container is ready: Docker's port proxy accepts connections "
    "before the app listens. Use http (a path, e.g. /), or set network"
)


def _docker_problems(template: TemplateConf) -> list[tuple[Loc, str]]:
    """Keys a docker template needs or must not have; docker keys on other templates."""
    given = template.model_fields_set
    if template.provider != "docker":
        return [((key,), "only for provider docker") for key in _DOCKER_KEYS if key in given]
    problems: list[tuple[Loc, str]] = [
        ((key,), "is required by provider docker")
        for key in ("image", "port")
        if getattr(template, key) is None
    ]
    problems += [((key,), why) for key, why in _NOT_FOR_DOCKER.items() if key in given]
    if template.ready.tcp and template.network is None:
        problems.append((("ready", "tcp"), _TCP_THROUGH_PROXY))
    return problems


MEASURING_PROVIDERS = frozenset({"local", "docker"})
"""The providers whose `measures()` is true: they give cpu_percent and memory_bytes."""


def _resource_problems(name: str, template: TemplateConf, policy: Policy) -> list[tuple[Loc, str]]:
    """Rules reading cpu_percent or memory_bytes on a provider that cannot measure them."""
    if template.provider in MEASURING_PROVIDERS:
        return []
    problems: list[tuple[Loc, str]] = []
    for rule in policy.rules:
        reads = [v for v in rule.variables if v in PROVIDER_SIGNALS]
        if reads:
            message = (
                f"reads {', '.join(reads)}, which provider {template.provider} of template "
                f"{name!r} cannot measure (siesta does not read the cluster's metrics): "
                "rely on traffic or an activity probe (app.*)"
            )
            problems.append((("policies", policy.name, rule.key), message))
    return problems


def _app_problems(name: str, template: TemplateConf, policy: Policy) -> list[tuple[Loc, str]]:
    """The `app.*` reads of `policy` that the activity probe of template `name` cannot answer."""
    probe = template.activity
    problems: list[tuple[Loc, str]] = []
    for rule in policy.rules:
        problem = _app_problem(name, probe, rule)
        if problem is not None:
            problems.append((("policies", policy.name, rule.key), problem))
    return problems


def _app_problem(name: str, probe: ActivityConf | None, rule: Rule) -> str | None:
    if probe is not None and not probe.probes:
        probe = None  # only `ignore`: no app map
    keys = frozenset() if probe is None else probe.keys()
    missing = [] if keys is None else sorted(_app_keys(rule.source) - keys)
    reads = ", ".join(f"app.{key}" for key in missing)
    if missing and probe is None:
        return (
            f"reads {reads}, but template {name!r} has no activity probe to give it: "
            'add activity: {preset: jupyter} or {http: "/status", map: {...}}'
        )
    if missing:
        given = ", ".join(sorted(keys or ()))
        return (
            f"reads {reads}, which the activity probe of template {name!r} does not give "
            f"(it gives: {given})"
        )
    sample = None if probe is None else probe.sample()
    if sample is not None:
        try:
            check_app(rule, sample)
        except PolicyError as exc:
            return f"with the activity probe of template {name!r}: {exc}"
    return None


_HAS_APP_KEY = re.compile(r"\bhas\(\s*app\.(\w+)\s*\)")
_APP_KEY = re.compile(r"(?<![\w.])app\.(\w+)")
_CEL_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'')


def _app_keys(source: str) -> set[str]:
    """The `app.key` names a rule reads, leaving out those it tests with has(app.key) first."""
    source = _CEL_STRING.sub('""', source)
    tested = set(_HAS_APP_KEY.findall(source))
    return set(_APP_KEY.findall(_HAS_APP_KEY.sub("", source))) - tested


def _unknown_template(name: str, templates: Collection[str]) -> str:
    """The message for a session naming a template that does not exist."""
    known = ", ".join(templates) or "none are defined"
    return f"unknown template {name!r} (known: {known})"


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, with every field's description."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Config.model_json_schema()}


# Loading ------------------------------------------------------------------------------


class ConfigError(Exception):
    """The config cannot be used. `problems` holds one line per problem, file:line first."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_config(path: str | Path) -> Config:
    """Read and validate the config file at `path`; relative paths in it start at its folder."""
    source, file = str(path), Path(path).absolute()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{source}: no such file"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not UTF-8 text (byte {exc.start})"]) from None
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror}"]) from None
    return _build(text, source, file.parent, file)


def parse_config(text: str, *, source: str = "<string>", base_dir: Path) -> Config:
    """Validate config YAML `text`; `source` names it in errors, paths start at `base_dir`."""
    return _build(text, source, base_dir, None)


def _build(text: str, source: str, base_dir: Path, path: Path | None) -> Config:
    """Parse, validate and turn every problem into a line of a `ConfigError`."""
    data, lines = _read_yaml(text, source)
    context = {"base_dir": base_dir.absolute(), "path": path}
    try:
        return Config.model_validate(data, context=context)
    except ValidationError as exc:
        problems = _problems(exc, source, lines)
        linked = [  # checked after the structure: found here too, so one pass shows all
            _problem_line(source, lines.line_of(loc), loc, message)
            for loc, message in _unknown_templates(data)
        ]
        raise ConfigError(list(dict.fromkeys(problems + linked))) from exc


def _unknown_templates(data: Any) -> list[tuple[Loc, str]]:
    """Sessions naming a template the file does not define, read from the raw data."""
    if not isinstance(data, dict):
        return []
    templates, sessions = data.get("templates"), data.get("sessions")
    if not isinstance(templates, dict) or not isinstance(sessions, dict):
        return []
    names = [str(t) for t in templates]
    return [
        (("sessions", sid, "template"), _unknown_template(spec["template"], names))
        for sid, spec in sessions.items()
        if isinstance(spec, dict)
        and isinstance(spec.get("template"), str)
        and spec["template"] not in templates
    ]


def _read_yaml(text: str, source: str) -> tuple[Any, _LineMap]:
    """The data in `text` and the line of every key, or a `ConfigError`."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines = _LineMap(node)  # before construction, which rewrites merge keys (<<)
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, source)]) from exc
    finally:
        loader.dispose()
    if lines.duplicates:
        raise ConfigError(
            [f"{source}:{line} {_dotted(loc)}: {why}" for loc, line, why in lines.duplicates]
        )
    return ({} if data is None else data), lines


def _yaml_problem(exc: yaml.YAMLError, source: str) -> str:
    """One line for a YAML syntax error, with its line when PyYAML knows it."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"{source}:{exc.problem_mark.line + 1}: YAML syntax error: {exc.problem}"
    return f"{source}: YAML syntax error: {exc}"


class _LineMap:
    """The 1-based line of every key (and list item) in a YAML node tree."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._lines: dict[tuple[str, ...], int] = {}
        self._active: set[int] = set()
        self.duplicates: list[tuple[Loc, int, str]] = []
        if root is not None:
            self._lines[()] = root.start_mark.line + 1
            self._walk(root, ())

    def line_of(self, loc: Loc) -> int:
        """The line of the deepest part of `loc` that appears in the file."""
        for end in range(len(loc), -1, -1):
            line = self._lines.get(tuple(str(part) for part in loc[:end]))
            if line is not None:
                return line
        return 1

    def _walk(self, node: yaml.Node, loc: Loc) -> None:
        if id(node) in self._active:  # a recursive alias
            return
        self._active.add(id(node))
        for child, start, value in self._children(node, loc):
            if self._record(child, start):  # a duplicate is one problem, not one per key in it
                self._walk(value, child)
        self._active.discard(id(node))

    @staticmethod
    def _children(node: yaml.Node, loc: Loc) -> list[tuple[Loc, yaml.Node, yaml.Node]]:
        """(path, node whose line counts, value node) for each key or item of `node`."""
        if isinstance(node, yaml.MappingNode):
            return [((*loc, _key_text(key)), key, value) for key, value in node.value]
        if isinstance(node, yaml.SequenceNode):
            return [((*loc, index), item, item) for index, item in enumerate(node.value)]
        return []

    def _record(self, loc: Loc, node: yaml.Node) -> bool:
        """Note where `loc` is; False (and a problem) when it was already there."""
        key, line = tuple(str(part) for part in loc), node.start_mark.line + 1
        first = self._lines.get(key)
        if first is None or loc[-1] == "<<":
            self._lines[key] = line
            return True
        self.duplicates.append((loc, line, f"duplicate key (first at line {first})"))
        return False


def _key_text(node: yaml.Node) -> str:
    """A mapping key as text; a complex key (a list or mapping) has none."""
    return str(node.value) if isinstance(node, yaml.ScalarNode) else "?"


# Error messages -----------------------------------------------------------------------


def _problems(error: ValidationError, source: str, lines: _LineMap) -> list[str]:
    """One line per validation error: file:line dotted.key: plain words."""
    found = [
        _problem_line(source, lines.line_of(loc), loc, message)
        for details in error.errors()
        for loc, message in _located(details)
    ]
    return list(dict.fromkeys(found))


def _problem_line(source: str, line: int, loc: Loc, message: str) -> str:
    path = _dotted(loc)
    return f"{source}:{line} {path}: {message}" if path else f"{source}:{line}: {message}"


def _dotted(loc: Loc) -> str:
    """`("templates", "web", "command", 0)` as `templates.web.command[0]`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.removeprefix(".")


def _located(details: ErrorDetails) -> list[tuple[Loc, str]]:
    """Where an error is and what it says; a `_NestedProblems` becomes several."""
    loc = tuple(part for part in details["loc"] if part != "[key]")
    cause = details.get("ctx", {}).get("error")
    if isinstance(cause, _NestedProblems):
        return [((*loc, *inner), message) for inner, message in cause.problems]
    return [(loc, _message(details, loc))]


_PLAIN_WORDS = {
    "missing": "is required",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "path_type": "must be a path",
    "literal_error": "must be {expected}",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "string_too_short": "must not be empty",
}


def _message(details: ErrorDetails, loc: Loc) -> str:
    """Pydantic's message for `details`, rewritten in plain words where we know better."""
    kind, ctx = details["type"], details.get("ctx", {})
    if kind == "value_error":
        return str(ctx.get("error", details["msg"]))
    if kind in _PLAIN_WORDS:
        return _PLAIN_WORDS[kind].format(**ctx)
    if kind in _SHAPED:
        return _SHAPED[kind](details, loc)
    return details["msg"]


def _extra_forbidden(details: ErrorDetails, loc: Loc) -> str:
    return f"unknown key (known: {_known_keys(_annotation_at(loc[:-1]))})"


def _model_type(details: ErrorDetails, loc: Loc) -> str:
    return f"must be a mapping with the keys: {_known_keys(_annotation_at(loc))}"


def _dict_type(details: ErrorDetails, loc: Loc) -> str:
    if details["input"] is None:
        return "is empty: write {} for none"
    return "must be a mapping (key: value)"


def _list_type(details: ErrorDetails, loc: Loc) -> str:
    items = get_args(_annotation_at(loc))
    return "must be a list of strings" if items and _bare(items[0]) is str else "must be a list"


def _string_type(details: ErrorDetails, loc: Loc) -> str:
    value = details["input"]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'must be a string: quote it, e.g. "{value}"'
    return "must be a string"


def _too_short(details: ErrorDetails, loc: Loc) -> str:
    return "must not be empty"


def _pattern_mismatch(details: ErrorDetails, loc: Loc) -> str:
    pattern = str(details.get("ctx", {}).get("pattern"))
    return _PATTERN_HINTS.get(pattern, f"must match the pattern {pattern}")


_SHAPED = {
    "extra_forbidden": _extra_forbidden,
    "model_type": _model_type,
    "model_attributes_type": _model_type,
    "dict_type": _dict_type,
    "list_type": _list_type,
    "string_type": _string_type,
    "too_short": _too_short,
    "string_pattern_mismatch": _pattern_mismatch,
}


def _annotation_at(loc: Loc) -> Any:
    """The declared type at `loc` in `Config`, or None where `loc` leaves the schema."""
    annotation: Any = Config
    for part in loc:
        annotation = _child_annotation(_bare(annotation), part)
    return annotation


def _child_annotation(annotation: Any, part: str | int) -> Any:
    """The type of the value at key or index `part` inside a value of type `annotation`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is dict:
        return args[1]
    if origin is list:
        return args[0]
    if origin is None and isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return None if field is None else field.annotation
    return None


def _bare(annotation: Any) -> Any:
    """`annotation` without `Annotated[...]` metadata."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _known_keys(annotation: Any) -> str:
    """The field names of the model `annotation`, comma separated."""
    model = _bare(annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return ", ".join(model.model_fields)
    return "?"
