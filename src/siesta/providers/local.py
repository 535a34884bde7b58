"""Backends as local processes: the embedded default provider.

Each backend runs in its own session and process group, with its output appended
to `<log_dir>/<session>.log`. Exits are noticed at once through a pidfd in the
event loop, for children and re-adopted processes alike. Every process the backend
starts, even one that leaves its session or process group, is followed by a
`proctree.Tracker` (a cgroup per session where the machine allows, else the process
tree): a stop sends SIGTERM to all of them, then SIGKILL after the grace, and
returns once none is left; usage covers all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from siesta.core.model import Endpoint

from .base import BackendStatus, ExitHandler, RunningBackend, StartError, Usage
from .proctree import Tracker, make_tracker
from .runas import IdentityError, RunAs, backend_env, privilege_problem

log = logging.getLogger("siesta.providers.local")

# psutil's start times come from /proc in clock ticks: equal within this for one process.
SAME_START = 0.05
KILL_WAIT = 10.0  # seconds SIGKILLed processes get to be gone (they cannot refuse)
SETTLE = 1.0  # seconds to look again for the backends of sessions left in cgroups at start
SETTLE_POLL = 0.1  # seconds between those looks
GONE_POLL = (0.005, 0.1)  # seconds between looks for the last processes: first, largest


class ProcessTemplate(Protocol):
    """What the local provider reads from a template."""

    @property
    def command(self) -> Sequence[str]: ...
    @property
    def env(self) -> Mapping[str, str]: ...
    @property
    def cwd(self) -> Path | None: ...
    @property
    def env_inherit(self) -> Sequence[str]: ...
    @property
    def user(self) -> str | None: ...
    @property
    def group(self) -> str | None: ...


@dataclass(slots=True)
class _Process:
    pid: int
    started: float
    popen: subprocess.Popen[bytes] | None  # None when re-adopted: not our child
    pidfd: int
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False
    port: PortClaim | None = None  # held until the process is gone (None when re-adopted)


class LocalProvider:
    """`Provider` running each backend as processes on this machine.

    `instance` names the cgroups (`siesta-<instance>/<session>`: `Config.instance_id`,
    by default this process's pid, so two siestas never share one); `cgroups=False`
    follows the process tree even where cgroups could be used. `secrets` names variables
    of siesta's environment no backend inherits, whatever its `env_inherit` says (the
    Redis password's); siesta's own `SIESTA_*` never pass either.
    """

    def __init__(
        self,
        templates: Mapping[str, ProcessTemplate],
        log_dir: Path,
        *,
        base_url: Callable[[str], str] = lambda session: f"/s/{session}/",
        host: str = "127.0.0.1",
        instance: str | None = None,
        cgroups: bool = True,
        secrets: Collection[str] = (),
    ):
        self._templates = templates
        self._secrets = frozenset(secrets)
        self._instance = instance
        self._scanned = False
        self._log_dir = log_dir
        self._base_url = base_url
        self._host = host
        self._procs: dict[str, _Process] = {}
        self._on_exit: ExitHandler = lambda session, reason: None
        self.tracker: Tracker = make_tracker(instance or f"pid{os.getpid()}", cgroups=cgroups)
        self._cleanups: set[asyncio.Task[None]] = set()
        self.settle = SETTLE
        self.settling: set[str] = set()

    def set_exit_handler(self, handler: ExitHandler) -> None:
        self._on_exit = handler

    async def start(self, session: str, template: str) -> RunningBackend:
        tpl = self._templates[template]
        claim = claim_port(self._host)
        port = claim.port
        values = {
            "port": str(port),
            "host": self._host,
            "session": session,
            "base_url": self._base_url(session),
        }
        argv = [fill(arg, values) for arg in tpl.command]
        run_as = _run_as(tpl)
        env = backend_env(
            os.environ,
            tpl.env_inherit,
            {k: fill(v, values) for k, v in tpl.env.items()},
            secrets=self._secrets,
            run_as=run_as,
        )
        env.update(PORT=str(port), SIESTA_SESSION=session, SIESTA_BASE_URL=values["base_url"])
        if self._instance is not None:  # not secret: how find_backends knows its own
            env[INSTANCE_ENV] = self._instance
        # fork+exec of a large process takes tens of ms on a busy machine: off the loop
        spawn = functools.partial(self._spawn, session, argv, env, tpl.cwd, run_as)
        try:
            popen = await asyncio.to_thread(self.tracker.spawn_inside, session, spawn)
        except BaseException:
            claim.release()
            raise
        proc = self._watch(session, popen.pid, popen)
        proc.port = claim
        return RunningBackend(session, Endpoint(self._host, port), proc.pid, proc.started)

    def _spawn(
        self,
        session: str,
        argv: list[str],
        env: dict[str, str],
        cwd: Path | None,
        run_as: RunAs | None,
    ) -> subprocess.Popen[bytes]:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        _check_runnable(argv[0], env, cwd)
        owner = None if run_as is None else run_as.uid
        with open(self._log_dir / f"{session}.log", "ab", buffering=0) as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with contextlib.suppress(OSError):  # a full disk loses the line, not the start
                out.write(f"--- siesta: starting {session} at {stamp}: {argv}\n".encode())
                out.flush()
            try:
                return subprocess.Popen(
                    argv,  # born in the session's cgroup: see Tracker.spawn_inside
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=cwd,
                    env=env,
                    user=owner,
                    group=None if run_as is None else run_as.gid,
                    extra_groups=None if run_as is None else list(run_as.groups),
                )
            except OSError as exc:
                raise StartError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from exc

    def _watch(self, session: str, pid: int, popen: subprocess.Popen[bytes] | None) -> _Process:
        started = psutil.Process(pid).create_time()
        pidfd = os.pidfd_open(pid)
        proc = _Process(pid, started, popen, pidfd)
        self._procs[session] = proc
        asyncio.get_running_loop().add_reader(pidfd, self._exited, session, proc)
        return proc

    def _exited(self, session: str, proc: _Process) -> None:
        asyncio.get_running_loop().remove_reader(proc.pidfd)
        os.close(proc.pidfd)
        if proc.port is not None:
            proc.port.release()
        if self._procs.get(session) is proc:
            del self._procs[session]
        reason = _exit_reason(proc)
        if not proc.stopping:  # in its log too: the failure page and `siesta logs` show it
            with contextlib.suppress(OSError), open(self._log_dir / f"{session}.log", "a") as out:
                out.write(f"--- siesta: {reason}\n")
        proc.exited.set()
        if not proc.stopping:  # a stop deals with the rest itself, with its grace
            self._clean_up(session)
            self._on_exit(session, reason)

    def _clean_up(self, session: str) -> None:
        """The backend died: kill whatever of it is left, in a task."""
        task = asyncio.ensure_future(self._kill_rest(session))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _kill_rest(self, session: str) -> None:
        if self.tracker.kill(session, None, signal.SIGKILL):
            await self._gone(session, None, KILL_WAIT)
        if session not in self._procs:  # not started again meanwhile
            self.tracker.forget(session)

    async def stop(self, session: str, grace: float) -> None:
        """SIGTERM to every process of the backend, SIGKILL to those left after `grace`;
        returns once none is left (or SIGKILL had KILL_WAIT to work)."""
        proc = self._procs.get(session)
        if proc is None:
            await self._kill_rest(session)  # stragglers of a backend that died: none left
            return
        proc.stopping = True
        self.tracker.kill(session, proc.pid, signal.SIGTERM)
        if not await self._gone(session, proc, grace):
            self.tracker.kill(session, proc.pid, signal.SIGKILL)
            await self._gone(session, proc, KILL_WAIT)
        self.tracker.forget(session)

    async def _gone(self, session: str, proc: _Process | None, timeout: float) -> bool:
        """Whether the leader (`proc`) and every other process of the session end within
        `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if proc is not None and not await _wait(proc.exited, timeout):
            return False
        delay, largest = GONE_POLL
        while self.tracker.pids(session, None):
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(delay, left))
            delay = min(largest, delay * 2)
        return True

    def alive(self, session: str) -> bool:
        proc = self._procs.get(session)
        return proc is not None and not proc.exited.is_set()

    async def status(self, session: str) -> BackendStatus:
        """Running, and memory now; cpu_percent is the resource sampler's (over a window)."""
        usage = await self.usage(session)
        if usage is None:
            return BackendStatus(running=self.alive(session))
        return BackendStatus(running=True, memory_bytes=usage.memory_bytes)

    async def adopt(self, candidates: list[RunningBackend]) -> list[RunningBackend]:
        """Candidates whose pid runs with the same start time; with an `instance`, those
        whose record was stale or never written are looked for among this deployment's
        processes (`find_backends`). The first call (at start-up) also returns the
        backends of sessions that are not among the candidates (the caller decides), and
        kills what is left of any other backend a previous siesta started (a cgroup that
        outlived its leader)."""
        adopted = [c for c in candidates if self._adopt_one(c)]
        missing = {c.session for c in candidates} - {b.session for b in adopted}
        first, self._scanned = not self._scanned, True
        if self._instance is not None and (missing or first):
            for backend in await self._find(None if first else missing):
                wanted = backend.session in missing or (
                    first and backend.session not in self._procs
                )
                if wanted and self._adopt_one(backend):
                    adopted.append(backend)
        if first:
            adopted += await self._clear_leftovers({b.session for b in adopted})
        return adopted

    async def _find(self, sessions: Collection[str] | None) -> list[RunningBackend]:
        """`find_backends` in a thread, among the processes of the cgroups of `sessions`,
        or of every process (None, or without cgroups). A look at every process reads
        each one's environment: with 300 sessions waking at once over three replicas,
        those looks held the GIL long enough to starve the event loop, and wake leases
        expired (bench/replicas.py)."""
        assert self._instance is not None
        among = None
        if sessions is not None and self.tracker.kind == "cgroup":
            among = functools.partial(self._processes_of, tuple(sessions))
        return await asyncio.to_thread(find_backends, self._instance, self._host, among)

    def _processes_of(self, sessions: tuple[str, ...]) -> list[int]:
        return [pid for session in sessions for pid in self.tracker.pids(session, None)]

    async def _clear_leftovers(self, kept: set[str]) -> list[RunningBackend]:
        """Kill what runs in the cgroup of a session with no backend found, after looking
        again for `settle` seconds: the backends found meanwhile are adopted instead. A
        replica on this machine may be starting a backend: between fork and exec (tens of
        ms on a busy machine) the child is in the session's cgroup without the marker
        `find_backends` looks for, and killing it would fail that replica's wake.
        `settling` holds the sessions still looked for."""
        suspects = [
            s
            for s in self.tracker.known()
            if s not in kept and s not in self._procs and self.tracker.pids(s, None)
        ]
        found: list[RunningBackend] = []
        if suspects and self._instance is not None:
            self.settling = set(suspects)
            log.info("processes left in the cgroups of %s: looking again", ", ".join(suspects))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settle
            while self.settling and loop.time() < deadline:
                await asyncio.sleep(min(SETTLE_POLL, max(0.0, deadline - loop.time())))
                for backend in await self._find(self.settling):
                    if backend.session in self.settling and self._adopt_one(backend):
                        found.append(backend)  # now in self._procs: not killed below
                        self.settling.discard(backend.session)
            self.settling = set()
        for session in self.tracker.known():
            if session in kept or session in self._procs:
                continue
            if session in suspects:
                await self._kill_rest(session)
            else:  # empty at the first look: the cgroup goes unless a process is in it now
                self.tracker.forget(session)
        return found

    def measures(self, template: str) -> bool:
        return True

    async def usage(self, session: str) -> Usage | None:
        proc = self._procs.get(session)
        if proc is None:
            return None
        return self.tracker.usage(session, proc.pid)

    async def logs(self, session: str, lines: int = 100) -> str:
        return tail(self._log_dir / f"{session}.log", lines)

    def _adopt_one(self, candidate: RunningBackend) -> bool:
        pid, started = candidate.pid, candidate.pid_started
        if pid is None or started is None:
            return False
        watched = self._procs.get(candidate.session)
        if watched is not None and watched.pid == pid and not watched.exited.is_set():
            return True  # already ours (started here, or adopted before)
        try:
            if abs(psutil.Process(pid).create_time() - started) > SAME_START:
                return False  # the pid was reused by another process
            if os.getpgid(pid) != pid:
                return False
            self._watch(candidate.session, pid, None)
        except (psutil.Error, OSError):
            return False
        return True

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for proc in self._procs.values():
            loop.remove_reader(proc.pidfd)
            os.close(proc.pidfd)
            if proc.port is not None:
                proc.port.release()
        self._procs.clear()
        await asyncio.gather(*self._cleanups, return_exceptions=True)
        self.tracker.close()


def _run_as(template: ProcessTemplate) -> RunAs | None:
    """Who the template's backends run as: None for siesta's own user (nothing changes);
    `StartError` when the names no longer resolve, or siesta may not switch to them."""
    try:
        run_as = RunAs.resolve(template.user, template.group)
    except IdentityError as exc:
        raise StartError(str(exc)) from None
    problem = privilege_problem(run_as)
    if problem is not None:
        raise StartError(problem)
    return None if run_as is None or run_as.is_current() else run_as


def _check_runnable(program: str, env: Mapping[str, str], cwd: Path | None) -> None:
    """`StartError` unless `program` can be run (the tracker may start it through a shell,
    which would only fail later)."""
    if "/" in program:
        path = Path(program) if cwd is None else cwd / program
        found = str(path) if os.access(path, os.X_OK) and path.is_file() else None
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None:
        raise StartError(f"cannot run {program!r}: No such file or directory")


INSTANCE_ENV = "SIESTA_INSTANCE"
"""Set in every backend's environment to `Config.instance_id` (with SIESTA_SESSION and
PORT): not a secret, a mark by which `find_backends` recognises this deployment's own."""


def find_backends(
    instance: str, host: str, among: Callable[[], Iterable[int]] | None = None
) -> list[RunningBackend]:
    """The running backends of deployment `instance`, found by scanning processes: those
    `among()` answers (the processes of some sessions' cgroups), or every process.

    A backend is a process-group leader whose environment has SIESTA_INSTANCE=`instance`
    (its children inherit the environment but lead no group); its session and port come
    from SIESTA_SESSION and PORT. It needs no store: a backend started just before a
    crash, or by a replica that died mid-wake, is found all the same. Processes whose
    environment cannot be read (other users') are skipped. Blocking: run it in a thread.
    """
    found: list[RunningBackend] = []
    marker = f"{INSTANCE_ENV}={instance}".encode()
    if among is None:
        pids: Iterable[int] = (int(e.name) for e in os.scandir("/proc") if e.name.isdigit())
    else:
        pids = among()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                raw = handle.read()
            if marker not in raw:
                continue
            env = dict(item.partition(b"=")[::2] for item in raw.split(b"\0") if item)
            session, port = env.get(b"SIESTA_SESSION"), env.get(b"PORT")
            if env.get(INSTANCE_ENV.encode()) != instance.encode() or not session or not port:
                continue
            if os.getpgid(pid) != pid:
                continue
            started = psutil.Process(pid).create_time()
            endpoint = Endpoint(host, int(port))
        except (OSError, ValueError, psutil.Error):
            continue
        found.append(RunningBackend(session.decode(), endpoint, pid, started))
    return found


def tail(path: Path, lines: int) -> str:
    """The last `lines` lines of the file at `path` ("" when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * lines))
            data = handle.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def fill(text: str, values: Mapping[str, str]) -> str:
    """Replace `{name}` placeholders; other braces are left alone."""
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


BACKEND_PORTS = (10000, 32767)
"""Where backends' ports are drawn from: below Linux's default ephemeral range (32768 and
up), so that no outgoing connection (siesta's own, a client's on the same machine) takes a
port between the draw and the backend's bind. The kernel's port 0 comes from that range."""

_handed: dict[int, float] = {}  # port -> when it was handed out (monotonic)
HANDED_FOR = 60.0  # seconds a port handed to a backend is not handed out again


def free_port(host: str) -> int:
    """A TCP port on `host` that nothing listens on right now, drawn at random outside
    the ephemeral range, and not handed out in the last `HANDED_FOR` seconds (a backend
    may take that long to bind it). Replicas on one machine draw independently: a random
    draw over 22,768 ports makes a clash between two starts unlikely, and the bind test
    catches a port already taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    now = time.monotonic()
    for port, when in list(_handed.items()):
        if now - when > HANDED_FOR:
            del _handed[port]
    low, high = _backend_ports()
    for _ in range(64):
        port = random.randint(low, high)
        if port in _handed:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed[port] = now
        return port
    with socket.socket(family, socket.SOCK_STREAM) as sock:  # a crowded range: the kernel's
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def _backend_ports() -> tuple[int, int]:
    """`BACKEND_PORTS`, kept below the machine's ephemeral range when it was lowered."""
    low, high = BACKEND_PORTS
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return low, high
    return (low, min(high, ephemeral - 1)) if ephemeral - 1 > low + 1000 else (low, high)


PORT_TRIES = 50
"""Free ports looked at for one that no other start has claimed (a handful at most)."""


@dataclass(slots=True)
class PortClaim:
    """A port handed to a backend, and the lock that keeps it from being handed out again
    (None where the machine has no abstract Unix sockets: the port is then unclaimed)."""

    port: int
    lock: socket.socket | None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def claim_port(host: str) -> PortClaim:
    """A free port on `host` that no other start on this machine holds.

    `free_port` alone is a race: the port is free again from the moment it is found until
    the backend binds it, seconds later on a busy machine, and the kernel hands a random
    free port to every asker. Two starts (in this siesta, or in another replica on this
    machine) given the same port leave one backend unable to bind, and a readiness probe
    of that session may reach the other session's backend. So each port handed out is
    claimed (`lock_port`) until the backend is gone.
    """
    for _ in range(PORT_TRIES):
        port = free_port(host)
        try:
            lock = lock_port(host, port)
        except OSError:  # no abstract namespace (not Linux)
            return PortClaim(port, None)
        if lock is not None:
            return PortClaim(port, lock)
    return PortClaim(free_port(host), None)


def lock_port(host: str, port: int) -> socket.socket | None:
    """Claim `port` on `host` for a backend: a Unix socket bound in the abstract namespace
    under a name made of both, which every process of this network namespace shares (as
    it shares ports) and the kernel releases when the socket is closed or its process
    dies. None when another start holds it; raises `OSError` where there is no such
    namespace."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0siesta-port/{host}/{port}")
    except OSError as exc:
        lock.close()
        if exc.errno == errno.EADDRINUSE:
            return None
        raise
    return lock


def _exit_reason(proc: _Process) -> str:
    code: int | None = None
    if proc.popen is not None:
        code = proc.popen.poll()
    else:
        with contextlib.suppress(ChildProcessError):
            _, status = os.waitpid(proc.pid, os.WNOHANG)
            code = os.waitstatus_to_exitcode(status)
    if code is None:
        return "backend exited"
    if code < 0:
        return f"backend killed by {signal.Signals(-code).name}"
    return f"backend exited with code {code}"


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True
