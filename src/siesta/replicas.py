"""Several siesta replicas on one Redis: who wakes, who sleeps, who decides.

Used by the lifecycle (`siesta.lifecycle`) and the app when the store is Redis. The
records themselves go through the store's write-behind queue; what is here must be
decided by Redis at once, each in one Lua script:

- **A wake is a lease.** `claim` takes `lease:<session>` (SET NX PX) and bumps the
  session's fencing counter, or says who holds it. The holder renews it while it
  starts the backend; `move` records each outcome only if the fence is still the
  holder's, so a replica that stalled past its lease and was taken over cannot
  act. A sleep takes the same lease: a session is never woken and slept at once.
- **Transitions are told through pub/sub.** Every `move` (and claim) publishes the
  new state on `moves`; each replica applies the others' moves to its own copy of
  the session (`Lifecycle.apply_remote`), which fires its listeners: the gateway
  forwards, KEDA's streams on that replica push a wake. A replica that was cut off
  reads every session again when it reconnects (`Lifecycle.resync`).
- **One controller.** The replica that holds `controller` (renewed every ttl/3)
  runs the policy checks; if it dies, another takes the lease within its ttl. It also
  ends the wakes and sleeps a dead replica left half-way that no request took over
  (`unsettled`: the sessions WAKING or STOPPING, kept by `claim` and `move`).
- **Heartbeats.** Each replica's last beat is a score in `replicas` (Redis' own
  clock): a clean shutdown stops the backends only when no other replica is alive.
- **Activity.** Each replica writes its open connections and requests in flight per
  session to `activity:<replica>` (expiring), and last-traffic times to the session
  hashes (max); every replica reads them back each second (`ACTIVITY_EVERY`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from siesta.core.model import Endpoint, Session, State
from siesta.health import Health
from siesta.store.redis import RedisStore

log = logging.getLogger("siesta.replicas")

ACTIVITY_EVERY = 1.0
"""Seconds between activity exchanges: idle_for is the time since the last byte on any
replica, at most this late."""

REPLICAS = "replicas"  # the Health dependency name of the coordination

_CLAIM = """
local lease = redis.call('GET', KEYS[2])
if lease then return {'busy', tostring(redis.call('PTTL', KEYS[2])), lease} end
local h = redis.call('HMGET', KEYS[1], 'state', 'fence', 'host', 'port', 'pid', 'pid_started')
local state = h[1] or 'ASLEEP'
local fence = tonumber(h[2] or '0')
if state == 'AWAKE' and tostring(fence) ~= ARGV[3] then
  return {'awake', tostring(fence), h[3] or '', h[4] or '', h[5] or '', h[6] or ''}
end
fence = math.max(fence, tonumber(ARGV[7])) + 1
redis.call('HSET', KEYS[1], 'fence', fence, 'state', 'WAKING', 'updated', ARGV[4])
redis.call('SADD', KEYS[4], ARGV[5])
redis.call('SADD', KEYS[5], ARGV[5])
redis.call('SET', KEYS[2], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
redis.call('PUBLISH', KEYS[3], cjson.encode({session=ARGV[5], old=state, new='WAKING',
  fence=tostring(fence), replica=ARGV[1], reason=ARGV[6]}))
return {'granted', tostring(fence), state, h[3] or '', h[4] or '', h[5] or '', h[6] or ''}
"""

_MOVE = """
local h = redis.call('HMGET', KEYS[1], 'state', 'fence')
local state = h[1] or 'ASLEEP'
local fence = h[2] or '0'
if fence ~= ARGV[2] or (ARGV[1] ~= '' and state ~= ARGV[1]) then return {0, state, fence} end
if ARGV[11] ~= '' then
  if not redis.call('SET', KEYS[2], ARGV[10], 'NX', 'PX', ARGV[11]) then
    return {0, state, fence}
  end
end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'updated', ARGV[4])
if ARGV[3] == 'WAKING' or ARGV[3] == 'STOPPING' then redis.call('SADD', KEYS[4], ARGV[12])
else redis.call('SREM', KEYS[4], ARGV[12]) end
if ARGV[5] == '' then
  redis.call('HDEL', KEYS[1], 'host', 'port', 'pid', 'pid_started')
else
  redis.call('HSET', KEYS[1], 'host', ARGV[5], 'port', ARGV[6])
  if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'pid', ARGV[7], 'pid_started', ARGV[8]) end
end
if ARGV[9] == '1' and redis.call('GET', KEYS[2]) == ARGV[10] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', KEYS[3], cjson.encode({session=ARGV[12], old=state, new=ARGV[3],
  fence=fence, replica=ARGV[13], reason=ARGV[14], host=ARGV[5], port=ARGV[6], pid=ARGV[7],
  pid_started=ARGV[8]}))
return {1, ARGV[3], fence}
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""

_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[2]), '+inf')
"""

_ALIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"""

_UNSETTLED = """
local out = {}
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local state = redis.call('HGET', ARGV[1] .. 's:' .. sid, 'state')
  if state ~= 'WAKING' and state ~= 'STOPPING' then
    redis.call('SREM', KEYS[1], sid)
  elseif redis.call('EXISTS', ARGV[1] .. 'lease:' .. sid) == 0 then
    table.insert(out, sid)
  end
end
return out
"""

_LAST_SEEN = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGET', key, 'last_seen') or '' end
return out
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """What `claim` got: `granted` (the lease is ours, with `fence`), `busy` (another
    replica holds it for `wait` more seconds) or `awake` (it runs already).

    `prior` is the state before a granted claim; `backend` what the store knew of the
    backend (of the prior wake, or of the awake one)."""

    outcome: str
    fence: int = 0
    wait: float = 0.0
    prior: State = State.ASLEEP
    endpoint: Endpoint | None = None
    pid: int | None = None
    pid_started: float | None = None


@dataclass(frozen=True, slots=True)
class Moved:
    """A transition another replica made, as published."""

    session: str
    old: State
    new: State
    fence: int
    replica: str
    reason: str
    endpoint: Endpoint | None = None
    pid: int | None = None
    pid_started: float | None = None


Apply = Callable[[Moved], None]
Announce = Callable[[dict[str, Any]], None]


def replica_name() -> str:
    """A name for this replica, unique among replicas: host, pid and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Replicas:
    """This replica's side of the coordination, over the Redis store's client."""

    def __init__(self, store: RedisStore, health: Health, *, lease_ttl: float):
        self.store = store
        self.health = health
        self.name = replica_name()
        self.lease_ttl = lease_ttl
        self.leader = False
        self.leaving = False
        self.on_move: Apply = lambda moved: None
        self.on_message: Announce = lambda message: None
        self.on_reconnect: Callable[[], None] = lambda: None
        self.leadership = asyncio.Event()  # set while this replica holds the controller lease
        self.demoted = asyncio.Event()  # set while it does not
        self.demoted.set()
        self._faults: dict[str, str] = {}  # why each part of the coordination fails now
        client = store.client
        self._client = client
        self._channel = store.prefix + "moves"
        self._replicas = store.prefix + "replicas"
        self._controller = store.prefix + "controller"
        self._unsettled_key = store.prefix + "unsettled"  # sessions WAKING or STOPPING
        self._claim = client.register_script(_CLAIM)
        self._move = client.register_script(_MOVE)
        self._renew = client.register_script(_RENEW)
        self._lead = client.register_script(_LEAD)
        self._beat = client.register_script(_BEAT)
        self._alive = client.register_script(_ALIVE)
        self._last_seen = client.register_script(_LAST_SEEN)
        self._unsettled = client.register_script(_UNSETTLED)
        health.of(REPLICAS)

    @property
    def beat_every(self) -> float:
        """Seconds between heartbeats and lease renewals: a third of the lease's ttl."""
        return self.lease_ttl / 3

    def _lease(self, session_id: str) -> str:
        return f"{self.store.prefix}lease:{session_id}"

    def _ms(self, seconds: float) -> str:
        return str(max(1, round(seconds * 1000)))

    # -- wakes and sleeps -----------------------------------------------------

    async def claim(
        self, session_id: str, reason: str, unreachable: int | None, known: int
    ) -> Claim:
        """Take the wake lease of `session_id`, or say why not (see `Claim`).

        `unreachable` is the fence of an awake backend this replica cannot reach or
        adopt: that one is taken over (the session is woken again here). `known` is the
        highest fence this replica has seen: the new one is above it, even if Redis
        lost its data.
        """
        keys = [
            self.store.key(session_id),
            self._lease(session_id),
            self._channel,
            self.store.prefix + "sessions",
            self._unsettled_key,
        ]
        args = [
            self.name,
            self._ms(self.lease_ttl),
            "" if unreachable is None else str(unreachable),
            repr(time.time()),
            session_id,
            reason,
            str(known),
        ]
        answer = await self._claim(keys=keys, args=args)
        outcome = answer[0]
        if outcome == "busy":
            return Claim("busy", wait=max(0.0, int(answer[1]) / 1000))
        if outcome == "awake":
            return Claim("awake", int(answer[1]), prior=State.AWAKE, **_backend(answer[2:]))
        return Claim("granted", int(answer[1]), prior=State(answer[2]), **_backend(answer[3:]))

    async def renew(self, session_id: str, fence: int) -> bool:
        """Extend our lease of `session_id`; False when it is no longer ours."""
        keys = [self._lease(session_id)]
        args = [f"{self.name}:{fence}", self._ms(self.lease_ttl)]
        return bool(await self._renew(keys=keys, args=args))

    async def move(
        self,
        session: Session,
        expect: State | None,
        new: State,
        reason: str,
        *,
        release: bool = False,
        take_lease: bool = False,
    ) -> tuple[bool, State, int]:
        """Record `session`'s move to `new` in Redis and publish it, if its state there
        is still `expect` and its fence `session.fence`; take or release our lease with
        it. Returns (done, the state there, the fence there)."""
        endpoint = session.endpoint if new in (State.WAKING, State.AWAKE) else None
        pid = session.pid if endpoint is not None else None
        keys = [
            self.store.key(session.id),
            self._lease(session.id),
            self._channel,
            self._unsettled_key,
        ]
        args = [
            "" if expect is None else expect.value,
            str(session.fence),
            new.value,
            repr(time.time()),
            endpoint.host if endpoint else "",
            str(endpoint.port) if endpoint else "",
            str(pid) if pid is not None else "",
            repr(session.pid_started) if pid is not None else "",
            "1" if release else "0",
            f"{self.name}:{session.fence}",
            self._ms(self.lease_ttl) if take_lease else "",
            session.id,
            self.name,
            reason,
        ]
        done, state, fence = await self._move(keys=keys, args=args)
        return bool(done), State(state), int(fence)

    async def unsettled(self) -> list[str]:
        """Sessions left WAKING or STOPPING with no lease: a wake or a sleep whose replica
        died mid-way, and that no request has taken over since (see
        `Lifecycle.settle_interrupted`). Sessions that moved on leave the list."""
        found = await self._unsettled(keys=[self._unsettled_key], args=[self.store.prefix])
        return [str(sid) for sid in found]

    # -- what the others say -------------------------------------------------

    async def listen(self) -> None:
        """Apply the other replicas' moves as they are published; on a reconnect, ask
        for a full resync (messages may have been missed). Runs until cancelled."""
        delay = 0.1
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                self._working("listen")
                self.on_reconnect()
                delay = 0.1
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                    if message is not None:
                        self._received(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failing("listen", exc)
            finally:
                await _quietly(pubsub.aclose())
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)

    def _received(self, data: Any) -> None:
        try:
            message = json.loads(data)
        except (TypeError, ValueError):
            log.warning("ignored a malformed message on %s", self._channel)
            return
        if message.get("replica") == self.name:
            return
        try:
            if "kind" in message:
                self.on_message(message)
            else:
                self.on_move(_moved(message))
        except Exception:
            log.exception("applying a message of replica %s failed", message.get("replica"))

    def announce(self, message: dict[str, Any]) -> None:
        """Publish a message for the other replicas (sessions added or removed), in a task."""
        payload = json.dumps({**message, "replica": self.name})
        task = asyncio.ensure_future(self._client.publish(self._channel, payload))
        task.add_done_callback(_logged)

    # -- liveness, and the controller lease -----------------------------------

    async def beat(self) -> None:
        """Heartbeats, and the controller lease: taken when free, renewed while held,
        let go when Redis does not answer. Runs until cancelled."""
        while not self.leaving:
            try:
                await self._beat(keys=[self._replicas], args=[self.name, "1"])
                lead = await self._lead(
                    keys=[self._controller], args=[self.name, self._ms(self.lease_ttl)]
                )
                self._set_leader(bool(lead))
                if self._working("beat"):
                    self.on_reconnect()  # the others' moves may have been missed meanwhile
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._set_leader(False)
                self._failing("beat", exc)
            await asyncio.sleep(self.beat_every)

    def _failing(self, part: str, exc: Exception) -> None:
        """`part` ("listen": the messages, "beat": heartbeats and the controller lease)
        cannot reach Redis: the coordination is degraded until every part works again."""
        detail = f"{type(exc).__name__}: {exc}"
        self._faults[part] = detail
        if self.health.degraded(REPLICAS, detail):
            log.error("lost Redis (%s): awake sessions keep serving; wakes wait for it", detail)

    def _working(self, part: str) -> bool:
        """`part` reached Redis; True when that ends a degraded time (every part works)."""
        self._faults.pop(part, None)
        if self._faults or not self.health.ok(REPLICAS):
            return False
        log.warning("Redis answers again: replicas are coordinated")
        return True

    def _set_leader(self, lead: bool) -> None:
        if lead and not self.leader:
            log.info("this replica (%s) now runs the controller", self.name)
            self.demoted.clear()
            self.leadership.set()
        elif not lead and self.leader:
            log.warning("this replica (%s) no longer runs the controller", self.name)
            self.leadership.clear()
            self.demoted.set()
        self.leader = lead

    async def others_alive(self) -> list[str]:
        """The other replicas that beat within the last two beats."""
        alive = await self._alive(keys=[self._replicas], args=[self._ms(2 * self.beat_every)])
        return [name for name in alive if name != self.name]

    async def leave(self) -> None:
        """Stop counting as alive, and give the controller lease back if held."""
        self.leaving = True
        await self._client.zrem(self._replicas, self.name)
        if self.leader:
            await self._client.delete(self._controller)
            self._set_leader(False)

    # -- activity ---------------------------------------------------------------

    async def exchange_activity(
        self, mine: dict[str, tuple[int, int]], watched: list[str]
    ) -> tuple[dict[str, float], dict[str, tuple[int, int]]]:
        """Write this replica's (connections, in flight) per session; read, for the
        `watched` sessions, the last-traffic times (wall clock) and the sums of the
        other live replicas' counts."""
        key = f"{self.store.prefix}activity:{self.name}"
        others = await self.others_alive() if watched else []
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.delete(key)
            if mine:
                pipe.hset(key, mapping={s: f"{c} {i}" for s, (c, i) in mine.items()})
            pipe.pexpire(key, self._ms(3 * ACTIVITY_EVERY + self.beat_every))
            for name in others:
                pipe.hmget(f"{self.store.prefix}activity:{name}", watched)
            answers = await pipe.execute()
        if not watched:
            return {}, {}
        times = await self._last_seen(keys=[self.store.key(s) for s in watched], args=[])
        seen = {s: float(t) for s, t in zip(watched, times, strict=True) if t}
        counts: dict[str, tuple[int, int]] = {}
        for values in answers[3 if mine else 2 :]:
            for sid, value in zip(watched, values, strict=True):
                if value:
                    conn, inflight = (int(x) for x in value.split())
                    was = counts.get(sid, (0, 0))
                    counts[sid] = (was[0] + conn, was[1] + inflight)
        return seen, counts


def _backend(fields: list[str]) -> dict[str, Any]:
    host, port, pid, started = fields[:4]
    endpoint = Endpoint(host, int(port)) if host and port else None
    return {
        "endpoint": endpoint,
        "pid": int(pid) if pid else None,
        "pid_started": float(started) if started else None,
    }


def _moved(message: dict[str, Any]) -> Moved:
    backend = _backend([str(message.get(k) or "") for k in ("host", "port", "pid", "pid_started")])
    return Moved(
        session=str(message["session"]),
        old=State(message["old"]),
        new=State(message["new"]),
        fence=int(message["fence"]),
        replica=str(message["replica"]),
        reason=str(message.get("reason", "")),
        **backend,
    )


async def _quietly(closing: Any) -> None:
    try:
        await closing
    except Exception as exc:
        log.debug("closing a Redis connection failed: %s", exc)


def _logged(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a message to the other replicas was lost: %s", task.exception())
