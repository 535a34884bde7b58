"""Assembles siesta from a config and runs it: store, provider, lifecycle,
controller and gateway, with start-up, serve and a clean shutdown.

Used by the CLI (`siesta up`, `siesta demo`) and by tests that run siesta in
their own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import ipaddress
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from siesta.api import AdminServer
from siesta.auth.forward import ForwardAuth
from siesta.auth.oidc import OidcClient
from siesta.auth.setup import cookie_key, oidc_settings
from siesta.auth.tokens import TokenBook
from siesta.config import Config
from siesta.controller import Controller
from siesta.core.model import Session
from siesta.gateway.auth import ForwardGate, OidcGate, TokenGate
from siesta.gateway.server import AuthGate, Gateway
from siesta.health import Health
from siesta.keda.scaler import ExternalScaler, ScalerServer
from siesta.lifecycle import STORE_READ_TIMEOUT, Lifecycle
from siesta.probes import Prober
from siesta.providers.base import Provider
from siesta.providers.dispatch import ByTemplate
from siesta.providers.keda import KedaProvider
from siesta.providers.local import LocalProvider
from siesta.reload import Reloader, configured_before, remember_configured, remove_unlisted
from siesta.replicas import ACTIVITY_EVERY, Replicas
from siesta.resources import Sampler, sampler_templates
from siesta.savings.keeper import LedgerKeeper
from siesta.store import open_store
from siesta.store.accounts import StoredLedger
from siesta.store.base import Batch, Store
from siesta.store.redis import RedisStore

if TYPE_CHECKING:
    from siesta.providers.docker import DockerProvider

log = logging.getLogger("siesta")

ACTIVITY_FLUSH_EVERY = 2.0  # seconds between writes of last-activity times to the store
GC_YOUNG_THRESHOLD = 50_000  # allocations between young-generation collections (default 700)
RESTART_FIRST = 0.1  # seconds before a background task that failed is started again
RESTART_MAX = 30.0  # seconds between restarts of a task that keeps failing, at most
STOP_TASKS_WITHIN = 5.0  # seconds for cancelled tasks (or the store) to end at shutdown

T = TypeVar("T")


class StartupError(Exception):
    """siesta cannot start; the message names the file, folder or address at fault."""


class AlreadyRunning(StartupError):
    """Another siesta process holds this state folder."""


class Siesta:
    """One siesta instance: everything a config describes, wired together."""

    def __init__(self, config: Config, *, admin: bool = True):
        self.config = config
        _private_state_dir(config)  # issue 9: backends run as another user cannot read it
        # one process per SQLite file; replicas share a Redis store and a state folder
        self._lock = _lock_state_dir(config.state_dir) if config.store_path else None
        self.health = Health()
        self.store = _open_store(config)
        self.docker: DockerProvider | None = None
        self.provider = self._provider()
        self.lifecycle = Lifecycle(
            config.templates,
            self.store,
            self.provider,
            start_timeout=config.gateway.wake_timeout,
            base_url=self._base_url,
            health=self.health,
            retention=config.store.retention,
            max_awake=config.gateway.max_awake,
            evict_idle=config.gateway.max_awake_policy == "evict_idle",
        )
        self._stored_ledger = StoredLedger(self.lifecycle.recorder)
        # made before start, so it sees re-adoptions; its accounts are loaded in start()
        self.ledger = LedgerKeeper(self._stored_ledger, self.lifecycle)
        self.lifecycle.recorder.snapshot = self._snapshot
        self.replicas = (
            Replicas(self.store, self.health, lease_ttl=config.store.lease_ttl)
            if isinstance(self.store, RedisStore)
            else None
        )
        if self.replicas is not None:
            self.lifecycle.share(self.replicas)
        # gateway.auth mode token: each session's access token, kept through the recorder
        self.tokens = TokenBook(
            self.lifecycle.recorder, self.replicas.announce if self.replicas else None
        )
        if self.replicas is not None:
            self.replicas.on_message = _both(self.replicas.on_message, self.tokens.on_message)
        ignore = {
            name: f
            for name, t in config.templates.items()
            if t.activity is not None and (f := t.activity.filter()) is not None
        }
        self.gateway = Gateway(config.gateway, self.lifecycle, ignore=ignore)
        self.gateway.failure_log = self._failure_log
        self.gateway.auth = self._auth_gate()
        if self.gateway.auth is not None:
            self.gateway.memo_heads = bool(getattr(self.gateway.auth, "memo_safe", False))
        self.scaler = (
            ScalerServer(
                ExternalScaler(
                    self.lifecycle,
                    config.keda.scaled_objects,
                    unknown_sessions=config.keda.unknown_sessions,
                )
            )
            if config.keda is not None
            else None
        )
        self.scaler_address: tuple[str, int] | None = None
        try:
            self.admin = self._admin_server(config, admin)
        except ValueError as exc:  # a secret or key of admin.auth cannot be read
            raise StartupError(str(exc)) from None
        self.admin_address: tuple[str, int] | None = None
        self.controller: Controller | None = None
        self.sampler: Sampler | None = None
        self.reloader: Reloader | None = None
        self.reload_asked = False  # a SIGHUP came before the reloader was ready
        self.prober: Prober | None = None
        self.address: tuple[str, int] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._flushed: dict[str, float] = {}  # last activity written, by awake session

    def _admin_server(self, config: Config, admin: bool) -> AdminServer | None:
        if not admin or config.gateway.admin_listen is None:
            return None
        return AdminServer(
            config,
            self.lifecycle,
            self.store,
            held=lambda: self.gateway.activator.held,
            controller=lambda: self.controller,
            logs=self.provider.logs,
            ledger=self.ledger,
            tokens=self.tokens,
        )

    def _provider(self) -> Provider:
        """The local provider alone, or each kind the templates name behind a router."""
        templates = self.config.templates
        local = LocalProvider(
            templates,
            self.config.log_dir,
            base_url=self._base_url,
            instance=self.config.instance_id,
            cgroups=os.environ.get("SIESTA_CGROUPS", "auto") != "off",
            secrets=[v for v in (self.config.store.password_env,) if v],
        )
        kinds = {name: t.provider for name, t in templates.items()}
        if set(kinds.values()) == {"local"}:
            return local
        keda = KedaProvider(templates, base_url=self._base_url)
        providers: dict[str, Provider] = {"local": local, "keda": keda}
        if "docker" in kinds.values():
            from siesta.providers.docker import DockerProvider  # aiohttp: only when used

            self.docker = DockerProvider(
                templates,
                instance=self.config.instance_id,
                base_url=self._base_url,
                known=lambda: self.lifecycle.sessions,
                health=self.health,
            )
            providers["docker"] = self.docker
        return ByTemplate(providers, kinds)

    async def _failure_log(self, session: Session) -> str | None:
        """The end of the backend's log for the failure page, where the template allows."""
        template = self.config.templates.get(session.template)
        if template is None or not template.failure_log_lines:
            return None
        if self.config.gateway.auth.mode != "none":
            return None  # behind auth: its log may hold what its users must not read
        return await self.provider.logs(session.id, template.failure_log_lines)

    def _auth_gate(self) -> AuthGate | None:
        """The gate of `gateway.auth` (None for mode none: the hot path stays as it is)."""
        auth = self.config.gateway.auth
        if auth.mode == "token":
            return TokenGate(self.gateway, self.tokens)
        if auth.mode == "forward_auth":
            conf = auth.forward_auth
            assert conf is not None
            copied = frozenset(h.lower().encode() for h in conf.copy_headers)
            self.gateway.dropped_headers = self.gateway.dropped_headers | copied
            forward = ForwardAuth(
                conf.url,
                copy_headers=conf.copy_headers,
                timeout=conf.timeout,
                cache_ttl=conf.cache_ttl,
                dropped=self.gateway.dropped_headers,
                health=self.health,
            )
            return ForwardGate(self.gateway, forward, auth.allow_rule)
        if auth.mode == "oidc":
            oidc = auth.oidc
            assert oidc is not None
            try:
                settings = oidc_settings(oidc, "gateway.auth.oidc")
                key = cookie_key(oidc, "gateway.auth.oidc", self.config.state_dir)
            except ValueError as exc:
                raise StartupError(str(exc)) from None
            return OidcGate(
                self.gateway,
                OidcClient(settings, self.health),
                key,
                auth.allow_rule,
                redirect_uri=oidc.redirect_uri,
                cookie_domain=oidc.cookie_domain,
                login_ttl=oidc.login_ttl,
            )
        return None

    def _base_url(self, session: str) -> str:
        gateway = self.config.gateway
        if gateway.routing == "path" and not gateway.strip_prefix:
            return f"/s/{session}/"
        return "/"

    async def start(self) -> tuple[str, int]:
        """Restore sessions (re-adopting running backends), start timers, listen."""
        await self._load_ledger()
        await self.lifecycle.start(self.config.sessions)
        await self._load_tokens()
        if self.docker is not None:  # before the gateway: orphans go, exits are followed
            await self.docker.begin()
        listed_before = configured_before(self.config.state_dir)
        await remove_unlisted(self.lifecycle, listed_before, self.config)
        remember_configured(self.config.state_dir, self.config)
        policies = self.config.template_policies()
        self.reloader = Reloader(self.config, self.lifecycle, self.config.templates, policies)
        self.sampler = Sampler(
            self.lifecycle,
            self.provider,
            sampler_templates(
                {name: t.cpu_window for name, t in self.config.templates.items()},
                {name: p.needs_provider for name, p in policies.items()},
            ),
        )
        # resources -> savings: each awake period's measured use goes into its account,
        # and awake sessions' use so far shows live in /api/savings
        self.sampler.on_sleep.append(self.ledger.on_usage)
        self.ledger.measure_with(self.sampler)
        self.controller = Controller(self.lifecycle, policies, resources=self.sampler)
        self.prober = Prober(
            self.lifecycle, self.config.templates, self.controller, base_url=self._base_url
        )
        controller = self.controller
        sampler = self.sampler
        self._tasks += [
            self._guarded(self._flush_activity, "activity flush"),
            self._guarded(sampler.run, "resource sampler"),
        ]
        if self.replicas is None:
            self._tasks.append(self._guarded(controller.run, "controller"))
        else:  # the controller runs on the replica that holds its lease
            replicas = self.replicas
            self._tasks += [
                self._guarded(replicas.listen, "replica messages"),
                self._guarded(replicas.beat, "heartbeat"),
                self._guarded(lambda: self._lead(replicas, controller), "controller"),
            ]
        keda, gateway = self.config.keda, self.config.gateway
        if self.scaler is not None and keda is not None:  # before the gateway, like admin
            tls = (keda.tls.cert, keda.tls.key) if keda.tls is not None else None
            scaler = self.scaler.start(*keda.address, tls=tls)
            self.scaler_address = await _bound("keda.listen", keda.listen, scaler)
        if self.admin is not None:  # before the gateway: listening means both are
            admin = self.admin.start()
            address = str(gateway.admin_listen)
            self.admin_address = await _bound("gateway.admin_listen", address, admin)
        listen = self.gateway.listen(gateway.host, gateway.port)
        self.address = await _bound("gateway.listen", gateway.listen, listen)
        if gateway.auth.mode == "none" and not _loopback(gateway.host):
            log.warning(
                "the gateway listens on %s with gateway.auth mode none: anyone who reaches"
                " it can use and wake every session (see gateway.auth)",
                gateway.listen,
            )
        _tune_gc()
        return self.address

    async def _load_tokens(self) -> None:
        """The sessions' access tokens, read before the gateway listens; a store that cannot
        be read is read again in the background (until then stored tokens are refused)."""
        try:
            await self.tokens.load(self.store)
        except Exception as exc:
            log.error("the session tokens could not be read from the store: %s", exc)
            self._tasks.append(
                self._guarded(lambda: self.tokens.keep_loading(self.store), "token loading")
            )

    async def _lead(self, replicas: Replicas, controller: Controller) -> None:
        """Run the controller while this replica holds the controller lease."""
        while True:
            await replicas.leadership.wait()
            running = asyncio.create_task(self._leading(replicas, controller), name="leading")
            demoted = asyncio.create_task(replicas.demoted.wait())
            try:
                await asyncio.wait({running, demoted}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                running.cancel()
                demoted.cancel()
                await asyncio.gather(running, demoted, return_exceptions=True)
            if running.done() and not running.cancelled() and running.exception() is not None:
                raise running.exception()  # type: ignore[misc]

    async def _leading(self, replicas: Replicas, controller: Controller) -> None:
        """The controller replica's work: the policy checks and, every lease ttl, the wakes
        and sleeps a dead replica left half-way (`Lifecycle.settle_interrupted`)."""
        checks = asyncio.create_task(controller.run(), name="controller checks")
        try:
            while not checks.done():
                await asyncio.wait({checks}, timeout=replicas.lease_ttl)
                if checks.done():
                    break
                try:
                    await self.lifecycle.settle_interrupted()
                except Exception as exc:  # Redis away: the next turn tries again
                    log.debug("interrupted wakes not looked for: %s", exc)
            checks.result()  # a failure of the checks is the task's failure
        finally:
            checks.cancel()
            await asyncio.gather(checks, return_exceptions=True)

    async def _load_ledger(self) -> None:
        """The savings accounts, read before any event; a store that cannot be read
        leaves them to start from now (and says so)."""
        try:
            accounts = await asyncio.wait_for(
                self._stored_ledger.load(self.store), STORE_READ_TIMEOUT
            )
        except Exception as exc:
            log.error("the savings ledger could not be read from the store: %s", exc)
            return
        self.ledger.accounts.update((a.session, a) for a in accounts)

    def _snapshot(self) -> Batch:
        """What a lost store is written again from: sessions, and the ledger's accounts."""
        batch = self.lifecycle.snapshot()
        batch.accounts.update(self.ledger.accounts)
        batch.tokens.update(self.tokens.snapshot())
        return batch

    async def stop(self) -> None:
        """Drain the gateway, stop every backend, close the store."""
        await self.gateway.drain()
        if self.admin is not None:
            await self.admin.stop()
        if self.scaler is not None:
            await self.scaler.stop()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=STOP_TASKS_WITHIN)
            for task in stuck:  # a library that swallowed the cancel: shut down all the same
                log.error(
                    "shutdown: task %r did not stop within %gs", task.get_name(), STOP_TASKS_WITHIN
                )
        if self.prober is not None:
            await self.prober.close()
        if self.controller is not None:
            await self.controller.close()
        self._write_activity()
        await self.lifecycle.shutdown()
        if self.sampler is not None:
            await self.sampler.close()  # the last samples of the sessions stopped above
        try:
            await asyncio.wait_for(self.store.close(), STOP_TASKS_WITHIN)
        except Exception as exc:  # a store that does not answer: its connections go with us
            log.warning("shutdown: the store did not close cleanly: %s", exc or type(exc).__name__)
        if self._lock is not None:
            self._lock.close()

    async def _flush_activity(self) -> None:
        replicas = self.replicas
        every = ACTIVITY_FLUSH_EVERY if replicas is None else ACTIVITY_EVERY
        while True:
            await asyncio.sleep(every)
            self._write_activity()
            if replicas is not None:
                await self._share_activity(replicas)

    async def _share_activity(self, replicas: Replicas) -> None:
        """Tell the other replicas our open connections and requests in flight, and take
        theirs and the latest traffic time of each awake session (the hot path never
        waits for this: it only reads and writes the counters in memory)."""
        sessions = self.lifecycle.sessions
        watched = sorted(self.lifecycle.awake)
        mine: dict[str, tuple[int, int]] = {}
        for sid in watched:
            activity = sessions[sid].activity
            if activity.connections or activity.inflight:
                mine[sid] = (activity.connections, activity.inflight)
        try:
            seen, counts = await replicas.exchange_activity(mine, watched)
        except Exception as exc:
            log.debug("activity not exchanged with the replicas: %s", exc)
            return
        offset = time.time() - time.monotonic()
        for sid in watched:
            session = sessions.get(sid)
            if session is None:
                continue
            activity = session.activity
            if sid in seen:
                activity.last_activity = max(activity.last_activity, seen[sid] - offset)
            connections, inflight = counts.get(sid, (0, 0))
            fell = (
                connections < activity.elsewhere_connections
                or inflight < activity.elsewhere_inflight
            )
            activity.elsewhere_connections, activity.elsewhere_inflight = connections, inflight
            if fell:
                activity.fell()

    def _write_activity(self) -> None:
        """Store when awake sessions last saw traffic (for `siesta status`): only the
        awake ones are visited, and only those with new traffic are written."""
        offset = time.time() - time.monotonic()
        sessions = self.lifecycle.sessions
        flushed, self._flushed = self._flushed, {}
        seen: dict[str, float] = {}
        for sid in self.lifecycle.awake:
            last = sessions[sid].activity.last_activity
            self._flushed[sid] = last
            if last and last != flushed.get(sid):
                seen[sid] = last + offset
        if seen:
            self.lifecycle.recorder.touch(seen)

    def _guarded(self, run: Callable[[], Awaitable[None]], name: str) -> asyncio.Task[None]:
        """A task meant to live as long as siesta: an error is logged, counted in
        `Health.task_errors` (and the metrics), and the task is started again with backoff."""

        async def forever() -> None:
            delay = RESTART_FIRST
            while True:
                try:
                    await run()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.health.task_failed(name)
                    log.exception("background task %r failed; restarting it in %gs", name, delay)
                await asyncio.sleep(delay)
                delay = min(RESTART_MAX, delay * 2)

        return asyncio.create_task(forever(), name=name)


def _both(
    first: Callable[[dict[str, Any]], None], second: Callable[[dict[str, Any]], None]
) -> Callable[[dict[str, Any]], None]:
    """A replicas' message handler calling `first`, then `second`."""

    def handle(message: dict[str, Any]) -> None:
        first(message)
        second(message)

    return handle


def _loopback(host: str) -> bool:
    """Whether `host` (an address or a name) is a loopback address only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tune_gc() -> None:
    """Keep the garbage collector off the hot path.

    Everything loaded at start-up (config, libraries) is moved out of the collector's
    sight, and the youngest generation is collected less often: the gateway's
    per-request objects are freed by reference counting, so frequent scans of
    them only cost time (measured: about a fifth of the throughput).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


async def _bound(key: str, address: str, listening: Awaitable[T]) -> T:
    """`listening`'s result; an OS error (a port taken, an address not here) becomes a
    `StartupError` naming the setting and its address."""
    try:
        return await listening
    except OSError as exc:
        raise StartupError(f"{key} {address}: {_os_problem(exc)}") from exc


def _os_problem(exc: OSError) -> str:
    """An OS error in a few words: asyncio's bind errors repeat the address, errno does not."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _open_store(config: Config) -> Store:
    """The store the config names. A SQLite file that is not a database is a
    `StartupError` naming it: unlike a store that is down for a while (siesta then runs
    degraded and writes again later), it would never answer."""
    path = config.store_path
    if path is not None and path.exists():
        try:
            with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
                db.execute("PRAGMA schema_version").fetchone()
        except sqlite3.DatabaseError as exc:
            damaged = "not a database" in str(exc) or "malformed" in str(exc)
            problem = "not a SQLite database (or a damaged one)" if damaged else str(exc)
            raise StartupError(f"store {path}: {problem}") from exc
    try:
        return open_store(config.store, config.instance_id)
    except ValueError as exc:  # Redis: a bad URL argument, TLS file or password setting
        raise StartupError(str(exc)) from None


def _private_state_dir(config: Config) -> None:
    """The state folder (store, admin token, backends' logs) made 0700 when siesta makes
    it. Backends that run as another user (`user`) must not read it: siesta refuses to
    start when it cannot switch to that user, or when the folder is open to others (an
    existing folder is never changed: it may be shared, such as /var/lib)."""
    problems = config.privilege_problems()
    if problems:
        raise StartupError("; ".join(problems))
    state_dir = config.state_dir
    try:
        state_dir.parent.mkdir(parents=True, exist_ok=True)
        state_dir.mkdir(mode=0o700, exist_ok=True)
        mode = state_dir.stat().st_mode & 0o777
    except OSError as exc:
        raise StartupError(f"state folder {state_dir}: {_os_problem(exc)}") from exc
    others = [
        name for name, t in config.templates.items() if t.provider == "local" and t.user is not None
    ]
    if others and mode & 0o077:
        raise StartupError(
            f"state folder {state_dir} is open to other users (mode {mode:04o}), so the "
            f"backends of templates.{others[0]} (user {config.templates[others[0]].user}) "
            f"could read siesta's store and admin token: chmod 700 {state_dir}"
        )


def _lock_state_dir(state_dir: Path) -> IO[str]:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        handle = open(state_dir / "siesta.lock", "w")  # noqa: SIM115 - held for the process's life
    except OSError as exc:
        raise StartupError(f"state folder {state_dir}: {_os_problem(exc)}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise AlreadyRunning(
            f"another siesta is running with the state folder {state_dir}"
        ) from None
    return handle


def install_uvloop() -> bool:
    """Use uvloop for new event loops when it is installed."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def serve(
    config: Config,
    *,
    ready: Callable[[Siesta], Awaitable[None] | None] | None = None,
    admin: bool = True,
) -> None:
    """Run siesta until SIGINT or SIGTERM, then shut down cleanly.

    `ready` is called once siesta listens (the demo uses it to print URLs and drive traffic);
    if it returns an awaitable, siesta stops when that finishes. `admin=False` runs
    without the admin API (the demo: no config file the CLI could find it by).
    """
    app = Siesta(config, admin=admin)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(app))  # a HUP while starting waits
    loop.add_signal_handler(signal.SIGUSR1, _log_tasks)
    try:
        await app.start()
        if app.reload_asked:
            _reload(app)
        follow_up: asyncio.Task[None] | None = None
        if ready is not None:
            result = ready(app)
            if result is not None:
                follow_up = asyncio.ensure_future(_then_set(result, stop))
        await stop.wait()
        if follow_up is not None:
            follow_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow_up
    finally:
        log.info("shutting down")
        await app.stop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(sig)


def _log_tasks() -> None:
    """SIGUSR1: log what every task of siesta's event loop is waiting on (for a siesta that
    seems stuck, e.g. in a shutdown that does not end)."""
    tasks = asyncio.all_tasks()
    lines = [f"SIGUSR1: {len(tasks)} tasks"]
    for task in sorted(tasks, key=lambda t: t.get_name()):
        stack = task.get_stack(limit=8)
        where = " <- ".join(
            f"{f.f_code.co_name} ({f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno})"
            for f in reversed(stack)
        )
        lines.append(f"  {task.get_name()}: {where or task!r}")
    log.warning("\n".join(lines))


def _reload(app: Siesta) -> None:
    """SIGHUP: read the config file again and apply it (or keep the running one)."""
    app.reload_asked = app.reloader is None
    if app.reloader is not None:
        task = asyncio.ensure_future(app.reloader.reload())
        task.add_done_callback(_reload_done)


def _reload_done(task: asyncio.Future[bool]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("reload failed: %s", task.exception())


async def _then_set(awaitable: Awaitable[None], event: asyncio.Event) -> None:
    try:
        await awaitable
    finally:
        event.set()
