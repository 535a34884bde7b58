"""The OpenID Connect client: discovery, authorization code with PKCE, the ID token.

Used by the gateway's `OidcGate` (`gateway.auth` mode oidc) and the admin
dashboard's login (`admin.auth` mode oidc). The provider is found through its
discovery document (read on the first login, kept; read again after a failure),
the login is the authorization code flow with PKCE (S256, authlib's helpers), and
the ID token is checked (signature against the provider's keys, issuer, audience,
expiry, nonce: joserfc) before its claims, with the userinfo endpoint's, become the
identity. The state of a login under way (state, nonce, PKCE verifier, where to go
back) travels in a signed cookie (`siesta.auth.signed`), so any replica can finish
it. Every call to the provider is bounded by `timeout`; a provider that does not
answer raises `Unavailable` (the caller answers 503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from siesta.health import Health
from siesta.httpclient import async_client

log = logging.getLogger("siesta.auth")

FLOW_TTL = 600.0
"""Seconds a login may take at the provider (the flow cookie's life)."""

DROPPED_CLAIMS = frozenset({"aud", "exp", "iat", "nbf", "nonce", "at_hash", "c_hash", "azp"})
"""ID token claims kept out of the login cookie: about the token, not the person."""

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
              "ES512", "EdDSA")  # fmt: skip
"""Signature algorithms accepted on ID tokens (asymmetric: the provider's keys)."""


HEALTH_NAME = "oidc_provider"
"""The dependency's name in /healthz and siesta_dependency_degraded (the gateway's)."""


class OidcError(Exception):
    """A login that cannot finish: `public` is what the user reads, the message what the
    log says."""

    def __init__(self, public: str, detail: str = ""):
        super().__init__(detail or public)
        self.public = public


class Unavailable(OidcError):
    """The provider did not answer in time (or at all)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What the client needs of an `OidcConf` (the secret already read)."""

    issuer: str
    client_id: str
    client_secret: str | None
    scopes: tuple[str, ...]
    timeout: float
    userinfo: bool


class OidcClient:
    """One provider, one client registration."""

    def __init__(self, settings: Settings, health: Health | None = None):
        self.settings = settings
        self.health = health  # "oidc_provider": degraded while it does not answer
        if health is not None:
            health.of(HEALTH_NAME)
        scopes = list(settings.scopes)
        if "openid" not in scopes:
            scopes.insert(0, "openid")
        self.scope = " ".join(scopes)
        self._http: httpx.AsyncClient | None = None
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        """Whether the discovery document is known (a login can start without I/O)."""
        return self._metadata is not None

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (read once, then kept)."""
        if self._metadata is not None:
            return self._metadata
        async with self._lock:
            if self._metadata is None:
                url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
                found = await self._get_json(url, "discovery")
                for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(found.get(key), str):
                        raise OidcError("the login provider is misconfigured", f"{url}: no {key}")
                if found.get("issuer") != self.settings.issuer:
                    raise OidcError(
                        "the login provider is misconfigured",
                        f"{url}: issuer {found.get('issuer')!r} is not {self.settings.issuer!r}",
                    )
                self._metadata = found
        return self._metadata

    def begin(self, redirect_uri: str, return_to: str) -> tuple[dict[str, Any], str]:
        """A new login: what the flow cookie keeps, and the provider URL to send the browser
        to. Needs the discovery document (`ready`)."""
        assert self._metadata is not None
        state, nonce, verifier = generate_token(32), generate_token(32), generate_token(64)
        params = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": redirect_uri,
            "scope": self.scope,
            "state": state,
            "nonce": nonce,
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
        endpoint = str(self._metadata["authorization_endpoint"])
        joiner = "&" if "?" in endpoint else "?"
        flow = {
            "state": state,
            "nonce": nonce,
            "verifier": verifier,
            "back": return_to,
            "redirect_uri": redirect_uri,
        }
        return flow, endpoint + joiner + urlencode(params)

    async def finish(self, code: str, flow: dict[str, Any]) -> dict[str, Any]:
        """Exchange `code` for tokens, check the ID token, and return the identity's claims
        (the ID token's, with userinfo's added)."""
        meta = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": str(flow["redirect_uri"]),
            "code_verifier": str(flow["verifier"]),
            "client_id": self.settings.client_id,
        }
        auth: tuple[str, str] | None = None
        secret = self.settings.client_secret
        if secret is not None:
            methods = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
            if "client_secret_basic" in methods:
                auth = (self.settings.client_id, secret)
            else:
                form["client_secret"] = secret
        tokens = await self._post_json(str(meta["token_endpoint"]), form, auth)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("the login provider gave no identity", "no id_token in the answer")
        claims = await self._check_id_token(id_token, str(flow["nonce"]))
        access = tokens.get("access_token")
        endpoint = meta.get("userinfo_endpoint")
        if self.settings.userinfo and isinstance(access, str) and isinstance(endpoint, str):
            info = await self._get_json(endpoint, "userinfo", bearer=access)
            if info.get("sub") == claims.get("sub"):
                claims = {**info, **claims}
            else:
                log.warning("userinfo answered for another subject: ignored")
        return {k: v for k, v in claims.items() if k not in DROPPED_CLAIMS}

    async def logout_url(self, back: str | None) -> str | None:
        """The provider's end-of-session URL, if it has one (None if it cannot be read)."""
        try:
            meta = await self.metadata()
        except OidcError:
            return None
        endpoint = meta.get("end_session_endpoint")
        if not isinstance(endpoint, str):
            return None
        params = {"client_id": self.settings.client_id}
        if back is not None:
            params["post_logout_redirect_uri"] = back
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

    async def _check_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        for refresh in (False, True):  # keys rotate: an unknown key id reads them again
            keys = await self._key_set(refresh)
            try:
                token = jwt.decode(id_token, keys, algorithms=list(ALGORITHMS))
            except JoseError as exc:
                if refresh:
                    raise OidcError("the login could not be checked", f"ID token: {exc}") from None
                continue
            break
        registry = jwt.JWTClaimsRegistry(
            leeway=60,
            iss={"essential": True, "value": self.settings.issuer},
            aud={"essential": True, "value": self.settings.client_id},
            sub={"essential": True},
            exp={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(token.claims)
        except JoseError as exc:
            raise OidcError("the login could not be checked", f"ID token: {exc}") from None
        return dict(token.claims)

    async def _key_set(self, refresh: bool) -> KeySet:
        if self._keys is None or refresh:
            meta = await self.metadata()
            found = await self._get_json(str(meta["jwks_uri"]), "keys")
            try:
                self._keys = KeySet.import_key_set(found)  # type: ignore[arg-type]
            except (JoseError, ValueError, TypeError, KeyError) as exc:
                raise OidcError("the login provider is misconfigured", f"keys: {exc}") from None
        return self._keys

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = async_client(self.settings.timeout, trust_env=True)
        return self._http

    async def _get_json(self, url: str, what: str, *, bearer: str | None = None) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        return await self._call("GET", url, what, headers=headers)

    async def _post_json(
        self, url: str, form: dict[str, str], auth: tuple[str, str] | None
    ) -> dict[str, Any]:
        return await self._call("POST", url, "token", data=form, auth=auth)

    async def _call(self, method: str, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.timeout):
                response = await self._client().request(method, url, **kwargs)
        except (TimeoutError, httpx.HTTPError, OSError) as exc:
            waited = time.monotonic() - started
            detail = f"{what} {url}: {type(exc).__name__} {exc} after {waited:.1f}s"
            raise self._down(detail) from None
        if response.status_code >= 500:
            raise self._down(f"{what} {url}: {response.status_code}")
        if self.health is not None and self.health.ok(HEALTH_NAME):
            log.warning("the OIDC provider answers again")
        try:
            found = response.json()
        except ValueError:
            found = None
        if response.status_code >= 400 or not isinstance(found, dict):
            detail = f"{what} {url}: {response.status_code} {response.text[:200]}"
            raise OidcError("the login was refused by the provider", detail)
        return found

    def _down(self, detail: str) -> Unavailable:
        if self.health is not None and self.health.degraded(HEALTH_NAME, detail):
            log.error("the OIDC provider does not answer (%s): logins get 503", detail)
        return Unavailable("the login provider does not answer", detail)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
