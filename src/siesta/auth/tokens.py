"""Each session's access token (`gateway.auth` mode token).

A token is made when a session is created through the admin API, and lazily for a
session that has none (one created before, or listed in the config) when it is first
asked for (`GET /api/sessions/{id}/token`). Tokens live in memory here, where the
gateway reads them per request without I/O, and are made durable through the
lifecycle's write-behind `Recorder` (never a store call on the event loop). With
replicas, a new or rotated token is announced to the others, which take it from the
message (the store's copy may not be written yet).

What a client's cookie holds is not the token but an HMAC of it (`cookie_value`): a
cookie seen in a log is not the token, and both change when the token is rotated.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("siesta.auth")

TOKEN_BYTES = 32
"""Random bytes in a token: 256 bits, written as 43 URL-safe characters."""

LOAD_TIMEOUT = 10.0
"""Seconds the stored tokens may take to read at start-up before siesta starts without
them (they are read again in the background)."""

RELOAD_EVERY = 5.0
"""Seconds between tries to read the stored tokens after the store failed to answer."""


class TokenSaver(Protocol):
    """Where tokens go to be made durable (the lifecycle's `Recorder`)."""

    def save_token(self, session_id: str, token: str) -> None: ...


class TokenSource(Protocol):
    """Where stored tokens are read (a `Store`)."""

    async def tokens(self) -> dict[str, str]: ...


def new_token() -> str:
    """A fresh random token."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def cookie_value(session_id: str, token: str) -> bytes:
    """What the session's cookie holds for `token`: an HMAC of it, as URL-safe text."""
    digest = hmac.new(token.encode(), b"siesta cookie " + session_id.encode(), hashlib.sha256)
    return digest.hexdigest().encode()


class Entry:
    """A session's token, as text and bytes, and the cookie value that stands for it."""

    __slots__ = ("cookie", "raw", "token")

    def __init__(self, session_id: str, token: str):
        self.token = token
        self.raw = token.encode()
        self.cookie = cookie_value(session_id, token)


class TokenBook:
    """The tokens of every session, in memory; writes go through `saver`."""

    def __init__(self, saver: TokenSaver, announce: Callable[[dict[str, Any]], None] | None = None):
        self._saver = saver
        self._announce = announce
        self._entries: dict[str, Entry] = {}
        self.loaded = False

    def get(self, session_id: str) -> Entry | None:
        """The session's token, if it has one (never made here: the hot path reads only)."""
        return self._entries.get(session_id)

    def token(self, session_id: str) -> str:
        """The session's token, made now if it has none."""
        entry = self._entries.get(session_id)
        return entry.token if entry is not None else self.issue(session_id)

    def issue(self, session_id: str) -> str:
        """A new token for the session (created, or rotated): the old one stops working now."""
        token = new_token()
        self._set(session_id, token)
        self._saver.save_token(session_id, token)
        if self._announce is not None:
            self._announce({"kind": "token", "session": session_id, "token": token})
        return token

    def forget(self, session_id: str) -> None:
        """The session was deleted: its token goes (the store deletes its copy with it)."""
        self._entries.pop(session_id, None)

    def snapshot(self) -> dict[str, str]:
        """Every token, to write again into a store that lost its data."""
        return {sid: entry.token for sid, entry in self._entries.items()}

    def on_message(self, message: dict[str, Any]) -> None:
        """Another replica made a token, or deleted a session."""
        kind, sid = message.get("kind"), message.get("session")
        if not isinstance(sid, str):
            return
        token = message.get("token")
        if kind == "token" and isinstance(token, str) and token:
            self._set(sid, token)
        elif kind == "removed":
            self.forget(sid)

    async def load(self, source: TokenSource) -> None:
        """Read the stored tokens (those made here meanwhile win); raises what the store
        raises."""
        stored = await asyncio.wait_for(source.tokens(), LOAD_TIMEOUT)
        for sid, token in stored.items():
            if sid not in self._entries and token:
                self._set(sid, token)
        self.loaded = True

    async def keep_loading(self, source: TokenSource) -> None:
        """`load`, retried until the store answers (a task started when the first try at
        start-up failed: until then, sessions' stored tokens are refused)."""
        while not self.loaded:
            await asyncio.sleep(RELOAD_EVERY)
            try:
                await self.load(source)
            except Exception as exc:
                log.debug("the stored session tokens still cannot be read: %s", exc)
            else:
                log.warning("the stored session tokens were read: they work again")

    def _set(self, session_id: str, token: str) -> None:
        self._entries[session_id] = Entry(session_id, token)
