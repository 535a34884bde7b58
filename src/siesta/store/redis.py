"""The Redis store: sessions, events and activity shared by every replica.

Used, like the SQLite store, by the lifecycle's write-behind queue (writes) and the
admin API (reads), through redis-py's asyncio client: nothing blocks the event loop,
and every call has a socket timeout, so a Redis that stops answering is an error
(retried by the queue), never a hang.

Keys, all under `siesta:<instance>:` (several deployments may share one Redis):

- `sessions`: a set of session ids; `s:<id>`: a hash per session (template, labels,
  state, host, port, pid, pid_started, last_seen, created, updated, fence). A record
  is written only if it is newer: a higher `fence`, or the same and a later `updated`.
- `events`: a stream of transitions (session, old, new, reason, wake, at), trimmed by
  `prune` to the retention.
- `ledger`: a hash of each session's savings account (`siesta.ledger`), as JSON.
- `tokens`: a hash of each session's access token (`gateway.auth` mode token).
- `epoch`: a random marker. If it disappears, Redis lost siesta's data (restarted
  without persistence, or flushed): `check` says so and the replicas write again
  what they hold.

The replicas' coordination (leases, pub/sub) lives in `siesta.replicas`, on the
same client.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import ssl
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from siesta.core.model import Endpoint, State, Transition
from siesta.ledger import Account, from_record, to_record

from .base import PRUNE_BATCH, Batch, Checked, SessionRecord

if TYPE_CHECKING:
    from siesta.config import StoreConf

log = logging.getLogger("siesta.store")

SOCKET_TIMEOUT = 5.0
"""Seconds a Redis call (or a connect) may take before it fails: Redis answers in well
under a millisecond, so this only ends calls to a Redis that is gone or stuck, or
made by a replica whose event loop a storm of wakes keeps busy for seconds."""

MAX_CONNECTIONS = 2000
"""Connections to Redis per replica at most: a storm of wakes makes one call per session
at once (Redis serves 10,000 clients by default); beyond this a call fails at once."""

TLS_FILES = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile")
"""The URL's query arguments that name files (absolute paths: relative ones are taken
from siesta's working folder)."""

EVENTS_PAGE = 1000
"""Stream entries read per call while filtering events."""

_REGISTER = """
redis.call('HSET', KEYS[1], 'template', ARGV[1], 'labels', ARGV[2])
redis.call('HSETNX', KEYS[1], 'state', 'ASLEEP')
redis.call('HSETNX', KEYS[1], 'created', ARGV[3])
redis.call('HSETNX', KEYS[1], 'updated', ARGV[3])
redis.call('HSETNX', KEYS[1], 'fence', '0')
redis.call('SADD', KEYS[2], ARGV[4])
return 1
"""

_SAVE = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if tonumber(ARGV[1]) < stored then return 0 end
if tonumber(ARGV[1]) == stored and
   tonumber(ARGV[3]) < tonumber(redis.call('HGET', KEYS[1], 'updated') or '0') then
  return 0  -- a late write of an older state of the same wake (a replica moved it since)
end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'state', ARGV[2], 'updated', ARGV[3],
           'template', ARGV[4], 'labels', ARGV[5])
redis.call('HSETNX', KEYS[1], 'created', ARGV[6])
if ARGV[8] == '' then
  redis.call('HDEL', KEYS[1], 'host', 'port', 'pid', 'pid_started')
else
  redis.call('HSET', KEYS[1], 'host', ARGV[8], 'port', ARGV[9])
  if ARGV[10] == '' then redis.call('HDEL', KEYS[1], 'pid', 'pid_started')
  else redis.call('HSET', KEYS[1], 'pid', ARGV[10], 'pid_started', ARGV[11]) end
end
redis.call('SADD', KEYS[2], ARGV[7])
return 1
"""

_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local stored = tonumber(redis.call('HGET', KEYS[1], 'last_seen') or '0')
if tonumber(ARGV[1]) > stored then redis.call('HSET', KEYS[1], 'last_seen', ARGV[1]) end
return 1
"""


def read_password(conf: StoreConf) -> str | None:
    """The password named by `password_env` or `password_file` (None when neither is set).

    Raises `ValueError` naming the setting when it names nothing.
    """
    if conf.password_env:
        value = os.environ.get(conf.password_env)
        if value is None:
            raise ValueError(f"store.password_env: ${conf.password_env} is not set")
        return value
    if conf.password_file is not None:
        try:
            return conf.password_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"store.password_file {conf.password_file}: {exc.strerror}") from None
    return None


def _driver_info() -> dict[str, Any]:
    """redis-py's name and version for CLIENT SETINFO, given once: left to itself, redis-py
    looks its version up in the installed packages' metadata for every new connection, on
    the event loop (a sixteenth of a replica's loop time in a 300-session wake storm)."""
    try:
        from redis.driver_info import DriverInfo  # redis-py 7 and later
    except ImportError:
        return {"lib_version": redis.__version__}
    return {"driver_info": DriverInfo(lib_version=redis.__version__)}


def connect(conf: StoreConf) -> aioredis.Redis:
    """A client of the Redis `conf` names, with bounded timeouts (it connects lazily).

    Every call is bounded: a connect or a reply that takes over `SOCKET_TIMEOUT` fails,
    and redis-py does not retry it (siesta's callers decide: the write-behind queue
    retries, a wake answers 503), so a Redis that accepts connections and never answers
    cannot hold anything for long. TLS settings come from the URL's query, as redis-py
    reads them (`rediss://host:6380/0?ssl_ca_certs=/path/ca.pem&ssl_certfile=...`); they
    are checked here, with the password settings: `ValueError` names what is wrong.
    """
    url = conf.redis_url
    assert url is not None
    try:
        pool = aioredis.ConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            password=read_password(conf),
            username=conf.username,
            decode_responses=True,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            health_check_interval=10,
            retry=Retry(NoBackoff(), 0),
            **_driver_info(),
        )
        unused = pool.connection_class(**pool.connection_kwargs)  # checks every argument
    except (TypeError, ValueError) as exc:
        raise ValueError(f"store {conf.identity}: {exc}") from None
    tls = getattr(unused, "ssl_context", None)
    if tls is not None:
        for name in TLS_FILES:
            where = pool.connection_kwargs.get(name)
            if where and not os.path.exists(where):
                raise ValueError(f"store {conf.identity}: {name} {where}: no such file")
        try:
            tls.get()  # reads the CA and the client certificate now, not at the first wake
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"store {conf.identity}: TLS settings: {exc}") from None
    return aioredis.Redis(connection_pool=pool)


class RedisStore:
    """The async `Store` on Redis."""

    kind = "redis"

    def __init__(self, client: aioredis.Redis, instance: str):
        # typed loosely: redis-py's stubs type every answer as bytes | str (we decode)
        self.client: Any = client
        self.prefix = f"siesta:{instance}:"
        self._sessions = self.prefix + "sessions"
        self._events = self.prefix + "events"
        self._epoch_key = self.prefix + "epoch"
        self._ledger = self.prefix + "ledger"
        self._tokens = self.prefix + "tokens"
        self._epoch: str | None = None
        self._register = client.register_script(_REGISTER)
        self._save = client.register_script(_SAVE)
        self._touch = client.register_script(_TOUCH)

    @classmethod
    def from_conf(cls, conf: StoreConf, instance: str) -> RedisStore:
        return cls(connect(conf), instance)

    def key(self, session_id: str) -> str:
        """The hash of session `session_id`."""
        return f"{self.prefix}s:{session_id}"

    async def open(self) -> None:
        await self.client.ping()

    async def sessions(self) -> list[SessionRecord]:
        ids = sorted(await self.client.smembers(self._sessions))
        async with self.client.pipeline(transaction=False) as pipe:
            for sid in ids:
                pipe.hgetall(self.key(sid))
            hashes = await pipe.execute()
        return [_record(sid, h) for sid, h in zip(ids, hashes, strict=True) if h]

    async def record(self, session_id: str) -> SessionRecord | None:
        """One stored session, or None."""
        found = await self.client.hgetall(self.key(session_id))
        return _record(session_id, found) if found else None

    async def write(self, batch: Batch) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            for sid in batch.deleted:
                pipe.delete(self.key(sid))
                pipe.srem(self._sessions, sid)
                pipe.hdel(self._tokens, sid)
            for sid, reg in batch.registered.items():
                args = [reg.template, json.dumps(reg.labels), repr(reg.created), sid]
                await self._register(keys=[self.key(sid), self._sessions], args=args, client=pipe)
            for record in batch.records.values():
                keys = [self.key(record.id), self._sessions]
                await self._save(keys=keys, args=_save_args(record), client=pipe)
            for event in batch.events:
                pipe.xadd(self._events, _event_fields(event))
            for sid, at in batch.last_seen.items():
                await self._touch(keys=[self.key(sid)], args=[repr(at)], client=pipe)
            if batch.accounts:
                accounts = {a.session: json.dumps(to_record(a)) for a in batch.accounts.values()}
                pipe.hset(self._ledger, mapping=accounts)
            if batch.tokens:
                pipe.hset(self._tokens, mapping=dict(batch.tokens))
            await pipe.execute()

    async def tokens(self) -> dict[str, str]:
        return dict(await self.client.hgetall(self._tokens))

    async def accounts(self) -> list[Account]:
        found = []
        for session, data in sorted((await self.client.hgetall(self._ledger)).items()):
            try:
                found.append(from_record(json.loads(data)))
            except ValueError as exc:  # one damaged account must not hide the others
                log.warning("ledger account of %s is unreadable, skipped: %s", session, exc)
        return found

    async def events(
        self, session: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[Transition]:
        found: list[Transition] = []
        start = "-" if since is None else f"{int(since * 1000)}-0"
        while len(found) < limit:
            page = await self.client.xrange(self._events, min=start, count=EVENTS_PAGE)
            for entry_id, fields in page:
                event = _event(fields)
                if (session is None or event.session == session) and (
                    since is None or event.at > since
                ):
                    found.append(event)
                    if len(found) == limit:
                        break
                start = f"({entry_id}"
            if len(page) < EVENTS_PAGE:
                break
        return found

    async def prune(self, before: float) -> int:
        removed: int = await self.client.xtrim(
            self._events, minid=f"{int(before * 1000)}-0", approximate=True, limit=PRUNE_BATCH
        )
        return removed

    async def check(self) -> Checked:
        epoch = await self.client.get(self._epoch_key)
        if epoch is not None and epoch == self._epoch:
            return Checked()
        if epoch is None:
            await self.client.set(self._epoch_key, secrets.token_hex(8), nx=True)
            epoch = await self.client.get(self._epoch_key)
        lost = self._epoch is not None and epoch != self._epoch
        self._epoch = epoch
        if lost:
            return Checked(lost=True, detail="Redis lost siesta's data (restarted empty?)")
        return Checked()

    async def close(self) -> None:
        await self.client.aclose()


def _save_args(record: SessionRecord) -> list[str]:
    endpoint = record.endpoint
    return [
        str(record.fence),
        record.state.value,
        repr(record.updated),
        record.template,
        json.dumps(record.labels),
        repr(record.created),
        record.id,
        endpoint.host if endpoint else "",
        str(endpoint.port) if endpoint else "",
        str(record.pid) if record.pid is not None and endpoint else "",
        repr(record.pid_started) if record.pid_started is not None else "",
    ]


def _event_fields(event: Transition) -> dict[str, str]:
    return {
        "session": event.session,
        "at": repr(event.at),
        "old": event.old.value,
        "new": event.new.value,
        "reason": event.reason,
        "wake": "" if event.wake_seconds is None else repr(event.wake_seconds),
    }


def _event(fields: dict[str, str]) -> Transition:
    wake = fields.get("wake", "")
    return Transition(
        fields["session"],
        float(fields["at"]),
        State(fields["old"]),
        State(fields["new"]),
        fields["reason"],
        float(wake) if wake else None,
    )


def _record(sid: str, h: dict[str, Any]) -> SessionRecord:
    host, port, pid, started = h.get("host"), h.get("port"), h.get("pid"), h.get("pid_started")
    last_seen = h.get("last_seen")
    return SessionRecord(
        id=sid,
        template=h.get("template", ""),
        labels=json.loads(h.get("labels", "{}")),
        state=State(h.get("state", State.ASLEEP.value)),
        endpoint=Endpoint(host, int(port)) if host and port else None,
        pid=int(pid) if pid else None,
        pid_started=float(started) if started else None,
        last_seen=float(last_seen) if last_seen else None,
        created=float(h.get("created", 0.0)),
        updated=float(h.get("updated", 0.0)),
        fence=int(h.get("fence", 0)),
    )
