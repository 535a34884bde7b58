"""From the config to the auth parts: the OIDC client's settings (its secret read from
the environment or a file) and the cookie key. Used where siesta is assembled
(`siesta.app`) and by the admin API's server; problems raise `ValueError` naming the
setting (siesta then refuses to start with that line)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from siesta.config import OidcConf

from .oidc import Settings
from .signed import CookieKeyError, load_key


def oidc_settings(conf: OidcConf, key: str, environ: Mapping[str, str] = os.environ) -> Settings:
    """The client settings of `conf` (found at config key `key`), its secret read now."""
    secret: str | None = None
    if conf.client_secret_env:
        secret = environ.get(conf.client_secret_env, "").strip() or None
        if secret is None:
            raise ValueError(f"{key}.client_secret_env: ${conf.client_secret_env} is not set")
    elif conf.client_secret_file is not None:
        try:
            secret = conf.client_secret_file.read_text().strip()
        except OSError as exc:
            raise ValueError(
                f"{key}.client_secret_file {conf.client_secret_file}: {exc.strerror}"
            ) from None
    return Settings(
        issuer=conf.issuer,
        client_id=conf.client_id,
        client_secret=secret,
        scopes=tuple(conf.scopes),
        timeout=conf.timeout,
        userinfo=conf.userinfo,
    )


def cookie_key(
    conf: OidcConf, key: str, state_dir: Path, environ: Mapping[str, str] = os.environ
) -> bytes:
    """The key signing `conf`'s login cookies (never logged)."""
    try:
        return load_key(conf.cookie_key_env, conf.cookie_key_file, state_dir, environ)
    except (CookieKeyError, OSError) as exc:
        raise ValueError(f"{key}.{exc}") from None
