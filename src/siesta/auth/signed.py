"""Signed values for cookies: the OIDC login (its claims) and a login under way.

`Signer.sign` turns a JSON-able mapping into `<payload>.<signature>` (URL-safe
base64 of the JSON, and of its HMAC-SHA256 under the key, with a purpose mixed in
so a value signed for one use is refused for another); `Signer.verify` gives the
mapping back only when the signature is right and `exp` (seconds since the epoch)
is in the future. The key is read from an environment variable or a file, or made
at first start in the state folder (mode 0600); it is never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

KEY_FILE = "oidc-cookie-key"
"""The file in the state folder holding the cookie key made at first start."""


class CookieKeyError(Exception):
    """The cookie key cannot be read: the message names the setting."""


def load_key(
    env: str | None, file: Path | None, state_dir: Path, environ: Mapping[str, str]
) -> bytes:
    """The cookie key: from the variable `env`, the file `file`, or the state folder's
    `oidc-cookie-key` (made now, 0600, when missing)."""
    if env:
        value = environ.get(env, "").strip()
        if not value:
            raise CookieKeyError(f"cookie_key_env: ${env} is not set")
        return value.encode()
    if file is not None:
        try:
            value = file.read_text().strip()
        except OSError as exc:
            raise CookieKeyError(f"cookie_key_file {file}: {exc.strerror}") from None
        if not value:
            raise CookieKeyError(f"cookie_key_file {file}: the file is empty")
        return value.encode()
    path = state_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        if value:
            return value.encode()
        path.unlink()  # an empty file (a crash while writing): make it again
        return load_key(env, file, state_dir, environ)
    value = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    return value.encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs and verifies values for one purpose ("login", "flow", ...)."""

    def __init__(self, key: bytes, purpose: str):
        self._key = hashlib.sha256(key + b"\0siesta " + purpose.encode()).digest()

    def sign(self, value: Mapping[str, Any], ttl: float, now: float | None = None) -> str:
        """`value` with an `exp` `ttl` seconds from now, signed."""
        payload = dict(value)
        payload["exp"] = int((time.time() if now is None else now) + ttl)
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{self._mac(body)}"

    def verify(self, signed: str, now: float | None = None) -> dict[str, Any] | None:
        """The value, when `signed` is ours and not expired; else None."""
        body, dot, mac = signed.partition(".")
        if not dot or not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            return None
        try:
            value = json.loads(_unb64(body))
        except (ValueError, binascii.Error):
            return None
        if not isinstance(value, dict):
            return None
        exp = value.get("exp")
        if not isinstance(exp, int) or exp <= (time.time() if now is None else now):
            return None
        return value

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
