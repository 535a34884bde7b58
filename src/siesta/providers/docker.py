"""Backends as Docker containers, one per session: the `docker` provider.

A wake creates the session's container if it does not exist (or no longer matches its
template), starts it and finds where it listens; readiness is the lifecycle's. A sleep
stops it (the image's stop signal, SIGTERM by default, then SIGKILL after
`stop_grace`) and, with `on_sleep: remove`, deletes it. Named volumes outlive both.

Labels are the record: every container carries `siesta.session` and `siesta.instance`
(and is named `<instance>.<session>`, so Docker itself refuses a second one). Docker's
event stream is the pulse: a container that dies is confirmed by one inspect and
reported to the lifecycle at once. The stream reconnects when dockerd restarts, and
after every (re)connect, and every `SWEEP_EVERY` seconds, the provider reconciles with
what Docker lists: a container it thought running that is not is reported; one running
that should be asleep is stopped; one whose session siesta no longer knows is removed.

Used by the app (`siesta.app`), behind `providers.dispatch.ByTemplate`, for templates
with `provider: docker`. Talks to the daemon named by DOCKER_HOST (unix socket by
default; tcp, with TLS when DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH) through aiodocker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import aiodocker
import aiohttp

from siesta.core import container as spec
from siesta.health import Health

from .base import BackendStatus, ExitHandler, RunningBackend, StartError, Usage
from .local import fill

log = logging.getLogger("siesta.docker")

T = TypeVar("T")

API_TIMEOUT = 60.0
"""Seconds any one Engine API call may take (a stop: this beyond its grace). dockerd answers
in milliseconds; a burst of 100 starts on two cores takes it some seconds each; a minute
means it is stuck, and the wake fails instead of waiting forever."""

SWEEP_EVERY = 60.0
"""Seconds between reconciliations with Docker's list of containers while the event stream
is up. Exits come through the stream at once; this only catches what no event tells:
containers of sessions deleted since, or edits made while the stream reconnected."""

RECONNECT_FIRST, RECONNECT_CAP = 0.1, 2.0
"""Seconds before reconnecting a broken event stream, doubling up to the cap: a restarted
dockerd is followed within two seconds, a dead one costs a connect attempt every two."""

BEGIN_WAIT = 10.0
"""Seconds siesta's start-up waits for dockerd's first answer (a refused connection is an
answer). Ten: a daemon that is up answers in milliseconds; one that hangs must not keep
the gateway, and the sessions of other providers, from starting."""

STATS_AT_ONCE = 4
"""Stats requests in flight at once. aiohttp keeps at most 100 connections to dockerd: with
100 containers awake, a sampling round of streamed stats (1 to 3 s each then) held them
all, and the stops and starts queued behind it timed out (bench/docker.py). Stats are
one-shot now (milliseconds each) and a few at a time, so the lifecycle's calls always
find a connection."""

LOG_KEEP = 200
"""Lines of a removed container's log kept in memory (on_sleep: remove), so `siesta logs`
and the failure page still show why it stopped."""


class ContainerTemplate(Protocol):
    """What the docker provider reads from a template."""

    @property
    def command(self) -> Sequence[str]: ...
    @property
    def env(self) -> Mapping[str, str]: ...
    @property
    def image(self) -> str | None: ...
    @property
    def port(self) -> int | None: ...
    @property
    def volumes(self) -> Sequence[str]: ...
    @property
    def network(self) -> str | None: ...
    @property
    def cpus(self) -> float | None: ...
    @property
    def memory(self) -> int | None: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def user(self) -> str | None: ...
    @property
    def read_only(self) -> bool: ...
    @property
    def cap_drop(self) -> Sequence[str]: ...
    @property
    def security_opt(self) -> Sequence[str]: ...
    @property
    def on_sleep(self) -> Literal["stop", "remove"]: ...


@dataclass(slots=True)
class _Box:
    """What the provider knows of one session's container."""

    id: str | None = None  # None: no container known (look it up by name)
    template: str | None = None  # the template it was made from (its siesta.template label)
    spec: str | None = None  # the siesta.spec label of that container
    live: bool = False  # started by us (or adopted) and not stopped since: exits are reported
    since: float = 0.0  # monotonic time `live` last became true
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one start/stop/sweep at a time
    tail: str = ""  # the log of a container removed on sleep
    cpu: tuple[float, float] | None = None  # (cpu seconds, monotonic) of the last status()


class DockerProvider:
    """`Provider` running each session as a container of its template's image."""

    def __init__(
        self,
        templates: Mapping[str, ContainerTemplate],
        *,
        instance: str,
        base_url: Callable[[str], str] = lambda session: f"/s/{session}/",
        known: Callable[[], Mapping[str, object]] | None = None,
        url: str | None = None,
        health: Health | None = None,
    ):
        """`instance` labels and names the containers; `known` answers the sessions that
        exist, by id, with their `state` (containers of others are removed; one running
        while its session is ASLEEP or FAILED is stopped; None: keep every container);
        `url` overrides DOCKER_HOST (tests); `health` gets the mode of dependency
        "docker": degraded while dockerd cannot be followed."""
        self._templates = templates
        self._instance = instance
        self._base_url = base_url
        self._known = known
        self._url = url
        self._health = health or Health()
        self._client: aiodocker.Docker | None = None
        self._boxes: dict[str, _Box] = {}
        self._on_exit: ExitHandler = lambda session, reason: None
        self._tasks: list[asyncio.Task[None]] = []
        self._tried = asyncio.Event()  # the first connection to dockerd succeeded or failed
        self._stats_slots = asyncio.Semaphore(STATS_AT_ONCE)
        self.connected = False
        """Whether the event stream is up (so exits are seen at once)."""

    # -- the Provider protocol -------------------------------------------------------

    def set_exit_handler(self, handler: ExitHandler) -> None:
        self._on_exit = handler

    async def start(self, session: str, template: str) -> RunningBackend:
        tpl = self._templates[template]
        body = self.create_body(session, template)
        assert tpl.port is not None  # the config requires it
        box = self._boxes.setdefault(session, _Box())
        async with box.lock:
            box.live, box.since = True, time.monotonic()  # a die from now on is this run's
            box.template = template
            try:
                info = await self._call(self._run(session, box, body), self._host_words)
            except StartError:
                box.live = False
                raise
            if not spec.running(info):
                box.live = False
                raise StartError(f"the {spec.exit_reason(info)} as soon as it started")
            endpoint = spec.endpoint_of(info, tpl.port, tpl.network)
            if endpoint is None:
                box.live = False
                where = f"on network {tpl.network}" if tpl.network else "published on 127.0.0.1"
                raise StartError(f"Docker shows no address {where} for port {tpl.port}")
        return RunningBackend(session, endpoint)

    async def stop(self, session: str, grace: float) -> None:
        box = self._boxes.setdefault(session, _Box())
        async with box.lock:
            box.live = False  # asked to stop: its die is not an exit to report
            box.cpu = None
            template = self._template_of(session)
            remove = template is not None and template.on_sleep == "remove"
            try:
                await self._stop(session, box, grace, remove=remove)
            except StartError as exc:  # dockerd unreachable: the next sweep finishes the job
                log.warning("%s: could not stop its container: %s", session, exc)

    def alive(self, session: str) -> bool:
        box = self._boxes.get(session)
        return box is not None and box.live

    async def status(self, session: str) -> BackendStatus:
        """Running, memory, and CPU percent since the previous call (as the local provider)."""
        box = self._boxes.get(session)
        usage = await self.usage(session)
        if box is None or usage is None:
            return BackendStatus(running=self.alive(session))
        now, last = time.monotonic(), box.cpu
        box.cpu = (usage.cpu_seconds, now)
        percent = 0.0
        if last is not None and now > last[1]:
            percent = max(0.0, (usage.cpu_seconds - last[0]) / (now - last[1]) * 100)
        return BackendStatus(running=True, cpu_percent=percent, memory_bytes=usage.memory_bytes)

    async def adopt(self, candidates: list[RunningBackend]) -> list[RunningBackend]:
        """Every running container of this instance, found by its labels (running means
        awake: the lifecycle keeps those it records AWAKE and stops the others); every
        stopped one is noted too, so the next wake starts it rather than making another."""
        try:
            listed = await self._call(self._list(), self._host_words)
        except StartError as exc:
            log.warning("cannot list containers, adopting none: %s", exc)
            return []
        adopted: list[RunningBackend] = []
        for item in listed:
            session, box = self._note(item)
            if session is None or box is None:
                continue
            backend = await self._adopt_one(session, box, item)
            if backend is not None:
                adopted.append(backend)
        return adopted

    def measures(self, template: str) -> bool:
        """Yes: Docker's stats give the whole container's CPU time and memory."""
        return True

    async def usage(self, session: str) -> Usage | None:
        box = self._boxes.get(session)
        if box is None or not box.live or box.id is None:
            return None
        try:
            stats = await self._call(self._stats(box.id), self._host_words)
        except StartError:
            return None
        measured = spec.usage_of(stats)
        return None if measured is None else Usage(*measured)

    async def logs(self, session: str, lines: int = 100) -> str:
        box = self._boxes.get(session)
        target = box.id if box is not None and box.id else self._name(session)
        try:
            return await self._call(self._log(target, lines), self._host_words)
        except StartError as exc:
            if box is not None and box.tail:
                return "\n".join(box.tail.splitlines()[-lines:])
            if "No such container" in str(exc):
                return ""
            return f"(no log from Docker: {exc})"

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None
        self.connected = False

    # -- beyond the protocol: the app calls these -------------------------------------

    async def begin(self) -> bool:
        """Follow Docker's events, and wait for the first reconciliation with Docker (or
        the first failure to reach it). False (and a warning) when dockerd did not answer:
        the stream keeps trying, and docker sessions fail to wake (503) until it does."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._follow(), name="docker events"),
                asyncio.create_task(self._sweep_every(), name="docker sweep"),
            ]
        with contextlib.suppress(TimeoutError):  # a hung dockerd must not hold up siesta
            await asyncio.wait_for(self._tried.wait(), BEGIN_WAIT)
        if not self.connected:
            log.warning("cannot reach dockerd (%s) yet; docker sessions wait for it", self._host())
        return self.connected

    def create_body(self, session: str, template: str) -> Any:
        """The Engine API's create request for `session`'s container (placeholders filled)."""
        tpl = self._templates[template]
        assert tpl.image is not None  # the config requires it
        assert tpl.port is not None
        values = {
            "port": str(tpl.port),
            "host": "0.0.0.0",  # inside the container: reachable through its interface
            "session": session,
            "base_url": self._base_url(session),
        }
        env = {k: fill(v, values) for k, v in tpl.env.items()}
        env.update(PORT=values["port"], SIESTA_SESSION=session, SIESTA_BASE_URL=values["base_url"])
        container = spec.ContainerSpec(
            image=tpl.image,
            port=tpl.port,
            command=tuple(fill(arg, values) for arg in tpl.command),
            env=env,
            volumes=tuple(spec.parse_volume(fill(v, values)) for v in tpl.volumes),
            network=tpl.network,
            cpus=tpl.cpus,
            memory=tpl.memory,
            labels=tpl.labels,
            user=tpl.user,
            read_only=tpl.read_only,
            cap_drop=tuple(tpl.cap_drop),
            security_opt=tuple(tpl.security_opt),
        )
        return spec.create_body(
            container, session=session, instance=self._instance, template=template
        )

    # -- start and stop ----------------------------------------------------------------

    async def _run(self, session: str, box: _Box, body: Any) -> Any:
        """Make sure the container exists with `body`'s spec, start it, inspect it."""
        digest = body["Labels"][spec.LABEL_SPEC]
        if box.id is None or box.spec != digest:
            await self._ensure(session, box, body, digest)
        assert box.id is not None
        docker = self._docker()
        try:
            await docker.containers.container(box.id).start()
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise
            await self._create(session, box, body, digest)  # removed behind our back
            await docker.containers.container(box.id).start()
        return await docker.containers.container(box.id).show()

    async def _ensure(self, session: str, box: _Box, body: Any, digest: str) -> None:
        """Find the session's container by name; replace it if its spec is not `digest`."""
        try:
            info = await self._docker().containers.container(self._name(session)).show()
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise
            await self._create(session, box, body, digest)
            return
        box.id = str(info["Id"])
        box.spec = (info.get("Config") or {}).get("Labels", {}).get(spec.LABEL_SPEC)
        if box.spec != digest:
            log.info("%s: its template changed; replacing its container", session)
            await self._docker().containers.container(box.id).delete(force=True)
            await self._create(session, box, body, digest)

    async def _create(self, session: str, box: _Box, body: Any, digest: str) -> None:
        try:
            created = await self._docker().containers.create(body, name=self._name(session))
        except aiodocker.DockerError as exc:
            raise StartError(self._create_words(exc, body)) from None
        box.id, box.spec = created.id, digest

    async def _stop(self, session: str, box: _Box, grace: float, *, remove: bool) -> None:
        target = box.id or self._name(session)
        seconds = max(0, math.ceil(grace))  # Docker counts whole seconds

        async def stop() -> None:
            handle = self._docker().containers.container(target)
            try:
                await handle.stop(t=seconds)
                if remove:
                    box.tail = await self._log(target, LOG_KEEP)
                    await handle.delete(force=True)
                    box.id = box.spec = None
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise
                box.id = box.spec = None  # already gone: nothing to stop

        await self._call(stop(), self._host_words, timeout=API_TIMEOUT + seconds)

    # -- reading Docker -------------------------------------------------------------------

    async def _list(self) -> list[Any]:
        filters = json.dumps({"label": [f"{spec.LABEL_INSTANCE}={self._instance}"]})
        found = await self._docker().containers.list(all=True, filters=filters)
        return [item._container for item in found]

    async def _stats(self, container: str) -> Any:
        """One sample of the container's stats. `one-shot` (Engine API 1.41): Docker does
        not wait a second for a previous sample, which siesta does not read (it keeps
        its own). aiodocker's `stats()` cannot ask for it, hence its `_query_json`."""
        async with self._stats_slots:
            path = f"containers/{container}/stats"
            params = {"stream": "0", "one-shot": "1"}
            return await self._docker()._query_json(path, params=params)

    async def _log(self, container: str, lines: int) -> str:
        handle = self._docker().containers.container(container)
        chunks = await handle.log(stdout=True, stderr=True, tail=lines)
        return "".join(chunks).rstrip("\n")

    def _note(self, item: Mapping[str, Any]) -> tuple[str | None, _Box | None]:
        """Remember a listed container as its session's; (session, box) or (None, None)."""
        session = (item.get("Labels") or {}).get(spec.LABEL_SESSION)
        if not session:
            return None, None
        box = self._boxes.setdefault(session, _Box())
        if not box.lock.locked():
            box.id = str(item["Id"])
            box.spec = item["Labels"].get(spec.LABEL_SPEC)
            box.template = item["Labels"].get(spec.LABEL_TEMPLATE)
        return session, box

    async def _adopt_one(
        self, session: str, box: _Box, item: Mapping[str, Any]
    ) -> RunningBackend | None:
        template = self._template_of(session)
        if item.get("State") != "running" or template is None or template.port is None:
            return None
        try:
            info = await self._call(self._docker().containers.container(item["Id"]).show(), str)
        except StartError:
            return None
        endpoint = spec.endpoint_of(info, template.port, template.network)
        if endpoint is None or not spec.running(info):
            return None
        box.live, box.since = True, time.monotonic()
        return RunningBackend(session, endpoint)

    # -- the pulse: events and sweeps ------------------------------------------------------

    async def _follow(self) -> None:
        """Read Docker's events for this instance's containers, reconnecting for ever."""
        delay = RECONNECT_FIRST
        while True:
            try:
                await self._stream_events()
                delay = RECONNECT_FIRST
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the stream: log, wait, reconnect
                if self.connected:
                    log.warning("Docker's event stream broke (%s); reconnecting", exc)
                log.debug("docker events: %r", exc)
                self._health.degraded("docker", f"{self._host()}: {exc}")
            self.connected = False
            self._tried.set()
            await asyncio.sleep(delay)
            delay = min(RECONNECT_CAP, delay * 2)

    async def _stream_events(self) -> None:
        filters = {
            "type": ["container"],
            "event": ["die", "destroy"],
            "label": [f"{spec.LABEL_INSTANCE}={self._instance}"],
        }
        forever = aiohttp.ClientTimeout(total=None, sock_read=None, connect=API_TIMEOUT)
        docker = self._docker()
        # aiodocker's own DockerEvents does not say when the stream is established, and a
        # reconciliation before that could miss an exit: the request is made here.
        async with docker._query(
            "events", params={"filters": json.dumps(filters)}, timeout=forever
        ) as response:
            if not self.connected:
                log.info("following Docker's events at %s", self._host())
            self.connected = True
            self._health.ok("docker")
            try:
                await self.sweep()
            finally:
                self._tried.set()
            async for line in response.content:
                if line.strip():
                    self._event(json.loads(line))

    def _event(self, event: Mapping[str, Any]) -> None:
        actor = event.get("Actor") or {}
        session = (actor.get("Attributes") or {}).get(spec.LABEL_SESSION)
        box = self._boxes.get(session) if session else None
        container = actor.get("ID") or event.get("id")
        if session is None or box is None or box.id not in (None, container):
            return
        action = event.get("Action") or event.get("status")
        if action == "destroy" and not box.lock.locked() and box.id == container:
            box.id = box.spec = None
        if box.live and container:
            code = (actor.get("Attributes") or {}).get("exitCode", "?")
            task = asyncio.create_task(self._confirm_exit(session, box, container, code))
            task.add_done_callback(_log_failure)

    async def _confirm_exit(
        self, session: str, box: _Box, container: str | None, code: str = "?"
    ) -> None:
        """Docker says the container died (or is gone: `container` None): report it, unless
        it runs again by now (the news was of an earlier run) or siesta stopped it."""
        async with box.lock:
            if not box.live or box.id not in (None, container):
                return
            reason = "its container was removed"
            if container is not None:
                try:
                    show = self._docker().containers.container(container).show()
                    info = await self._call(show, str)
                except StartError:
                    info = {"State": {"ExitCode": code}}  # the event is truth enough
                if spec.running(info):
                    return
                reason = spec.exit_reason(info)
            box.live = False
            box.cpu = None
        log.info("%s: %s", session, reason)
        self._on_exit(session, reason)

    async def _sweep_every(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            if self.connected:
                try:
                    await self.sweep()
                except Exception as exc:  # a failed sweep is retried at the next one
                    log.warning("reconciling with Docker failed: %s", exc)

    async def sweep(self) -> None:
        """Make Docker match siesta: report exits no event told, stop containers that run
        while their session sleeps, remove those of sessions that no longer exist."""
        began = time.monotonic()
        listed = await self._call(self._list(), self._host_words)
        known = None if self._known is None else dict(self._known())
        seen: set[str] = set()
        for item in listed:
            session, box = self._note(item)
            if session is None or box is None or box.lock.locked():
                continue
            seen.add(session)
            await self._settle(session, box, item, known)
        for session, box in list(self._boxes.items()):
            gone = session not in seen and box.since < began  # live before the list was made
            if gone and box.live and not box.lock.locked():
                box.id = box.spec = None
                await self._confirm_exit(session, box, None)

    async def _settle(
        self, session: str, box: _Box, item: Mapping[str, Any], known: dict[str, object] | None
    ) -> None:
        is_running = item.get("State") == "running"
        if known is not None and session not in known:
            log.info("%s: removing its container: the session no longer exists", session)
            async with box.lock:
                delete = self._docker().containers.container(str(item["Id"])).delete(force=True)
                await self._call(delete, self._host_words)
            self._boxes.pop(session, None)
        elif box.live and not is_running:
            await self._confirm_exit(session, box, str(item["Id"]))
        elif is_running and not box.live and _asleep(known, session):
            log.info("%s: stopping its container: it runs while the session sleeps", session)
            template = self._template_of(session)
            async with box.lock:
                if not box.live:
                    remove = template is not None and template.on_sleep == "remove"
                    await self._stop(session, box, 10.0, remove=remove)

    # -- plumbing --------------------------------------------------------------------------

    def _docker(self) -> aiodocker.Docker:
        if self._client is None:
            try:
                self._client = aiodocker.Docker(url=self._url)
            except ValueError as exc:  # aiodocker: a DOCKER_HOST it cannot use
                raise StartError(f"DOCKER_HOST: {exc}") from exc
        return self._client

    def _name(self, session: str) -> str:
        return spec.container_name(self._instance, session)

    def _template_of(self, session: str) -> ContainerTemplate | None:
        """The docker template a session's container was made from, if still configured."""
        box = self._boxes.get(session)
        template = None if box is None or box.template is None else box.template
        found = None if template is None else self._templates.get(template)
        return found if found is not None and found.image is not None else None

    def _host(self) -> str:
        return self._url or os.environ.get("DOCKER_HOST") or "the default socket"

    def _host_words(self, exc: Exception) -> str:
        if isinstance(exc, TimeoutError):
            return f"the Docker daemon at {self._host()} did not answer within {API_TIMEOUT:g}s"
        if isinstance(exc, aiodocker.DockerError) and exc.status == 900:
            return f"cannot reach the Docker daemon: {exc.message}"
        if isinstance(exc, aiodocker.DockerError):
            return f"Docker refused: {exc.message}"
        return f"talking to the Docker daemon failed: {exc}"

    def _create_words(self, exc: aiodocker.DockerError, body: Any) -> str:
        image, network = body["Image"], body["HostConfig"].get("NetworkMode")
        if exc.status == 404 and "image" in exc.message.lower():
            return (
                f"image {image!r} is not on the Docker host: build or pull it first "
                f"(siesta never pulls): {exc.message}"
            )
        if exc.status == 404 and network and "network" in exc.message.lower():
            return f"network {network!r} does not exist: create it first: {exc.message}"
        return self._host_words(exc)

    async def _call(
        self, work: Awaitable[T], words: Callable[[Exception], str], timeout: float = API_TIMEOUT
    ) -> T:
        """Run one exchange with dockerd within `timeout`; its failure becomes a StartError."""
        try:
            async with asyncio.timeout(timeout):
                return await work
        except StartError:
            raise
        except (aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StartError(words(exc)) from exc


def _asleep(known: dict[str, object] | None, session: str) -> bool:
    """Whether siesta holds `session` asleep: a running container of it is a stray. (With
    replicas, another replica may have woken it: its container is not ours to stop.)"""
    state = getattr((known or {}).get(session), "state", "ASLEEP")
    return str(state) in ("ASLEEP", "FAILED")


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("handling a Docker event failed", exc_info=task.exception())
