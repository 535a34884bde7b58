"""Backends as local processes: the embedded default provider.

Each backend runs in its own process group (so a stop reaches its children too),
with its output appended to `<log_dir>/<session>.log`. Exits are noticed at once
through a pidfd in the event loop, for children and re-adopted processes alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from siesta.core.model import Endpoint

from .base import BackendStatus, ExitHandler, RunningBackend, StartError, Usage

# psutil's start times come from /proc in clock ticks: equal within this for one process.
SAME_START = 0.05


class ProcessTemplate(Protocol):
    """What the local provider reads from a template."""

    @property
    def command(self) -> Sequence[str]: ...
    @property
    def env(self) -> Mapping[str, str]: ...
    @property
    def cwd(self) -> Path | None: ...


@dataclass(slots=True)
class _Process:
    pid: int
    started: float
    popen: subprocess.Popen[bytes] | None  # None when re-adopted: not our child
    pidfd: int
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False
    # psutil handles kept between status() calls: cpu_percent measures since the last call.
    meters: dict[int, psutil.Process] = field(default_factory=dict)


class LocalProvider:
    """`Provider` running each backend as a process group on this machine."""

    def __init__(
        self,
        templates: Mapping[str, ProcessTemplate],
        log_dir: Path,
        *,
        base_url: Callable[[str], str] = lambda session: f"/s/{session}/",
        host: str = "127.0.0.1",
        instance: str | None = None,
    ):
        self._templates = templates
        self._instance = instance
        self._scanned = False
        self._log_dir = log_dir
        self._base_url = base_url
        self._host = host
        self._procs: dict[str, _Process] = {}
        self._on_exit: ExitHandler = lambda session, reason: None

    def set_exit_handler(self, handler: ExitHandler) -> None:
        self._on_exit = handler

    async def start(self, session: str, template: str) -> RunningBackend:
        tpl = self._templates[template]
        port = free_port(self._host)
        values = {
            "port": str(port),
            "host": self._host,
            "session": session,
            "base_url": self._base_url(session),
        }
        argv = [fill(arg, values) for arg in tpl.command]
        env = {**os.environ, **{k: fill(v, values) for k, v in tpl.env.items()}}
        env.update(PORT=str(port), SIESTA_SESSION=session, SIESTA_BASE_URL=values["base_url"])
        if self._instance is not None:  # not secret: how find_backends knows its own
            env[INSTANCE_ENV] = self._instance
        popen = self._spawn(session, argv, env, tpl.cwd)
        proc = self._watch(session, popen.pid, popen)
        return RunningBackend(session, Endpoint(self._host, port), proc.pid, proc.started)

    def _spawn(
        self, session: str, argv: list[str], env: dict[str, str], cwd: Path | None
    ) -> subprocess.Popen[bytes]:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        with open(self._log_dir / f"{session}.log", "ab", buffering=0) as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with contextlib.suppress(OSError):  # a full disk loses the line, not the start
                log.write(f"--- siesta: starting {session} at {stamp}: {argv}\n".encode())
                log.flush()
            try:
                return subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=cwd,
                    env=env,
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
        if self._procs.get(session) is proc:
            del self._procs[session]
        reason = _exit_reason(proc)
        proc.exited.set()
        _kill_group(proc.pid, signal.SIGKILL)  # leave no stragglers of the group behind
        if not proc.stopping:
            self._on_exit(session, reason)

    async def stop(self, session: str, grace: float) -> None:
        proc = self._procs.get(session)
        if proc is None:
            return
        proc.stopping = True
        _kill_group(proc.pid, signal.SIGTERM)
        if await _wait(proc.exited, grace):
            return
        _kill_group(proc.pid, signal.SIGKILL)
        await _wait(proc.exited, 10.0)

    def alive(self, session: str) -> bool:
        proc = self._procs.get(session)
        return proc is not None and not proc.exited.is_set()

    async def status(self, session: str) -> BackendStatus:
        proc = self._procs.get(session)
        if proc is None:
            return BackendStatus(running=False)
        try:
            group = _group(proc)
            cpu = sum(p.cpu_percent(None) for p in group)
            memory = sum(p.memory_info().rss for p in group)
        except psutil.Error:
            return BackendStatus(running=self.alive(session))
        return BackendStatus(running=True, cpu_percent=cpu, memory_bytes=memory)

    async def adopt(self, candidates: list[RunningBackend]) -> list[RunningBackend]:
        """Candidates whose pid runs with the same start time; with an `instance`, those
        whose record was stale or never written are looked for among this deployment's
        processes (`find_backends`). The first call (at start-up) also returns the
        backends of sessions that are not among the candidates (the caller decides)."""
        adopted = [c for c in candidates if self._adopt_one(c)]
        missing = {c.session for c in candidates} - {b.session for b in adopted}
        first, self._scanned = not self._scanned, True
        if self._instance is None or not (missing or first):
            return adopted
        found = await asyncio.to_thread(find_backends, self._instance, self._host)
        for backend in found:
            wanted = backend.session in missing or (first and backend.session not in self._procs)
            if wanted and self._adopt_one(backend):
                adopted.append(backend)
        return adopted

    def measures(self, template: str) -> bool:
        return True

    async def usage(self, session: str) -> Usage | None:
        proc = self._procs.get(session)
        if proc is None:
            return None
        try:
            group = _group(proc)
            cpu = 0.0
            for p in group:
                times = p.cpu_times()
                cpu += times.user + times.system + times.children_user + times.children_system
            memory = sum(p.memory_info().rss for p in group)
        except psutil.Error:
            return None
        return Usage(cpu_seconds=cpu, memory_bytes=memory)

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
        self._procs.clear()


INSTANCE_ENV = "SIESTA_INSTANCE"
"""Set in every backend's environment to `Config.instance_id` (with SIESTA_SESSION and
PORT): not a secret, a mark by which `find_backends` recognises this deployment's own."""


def find_backends(instance: str, host: str) -> list[RunningBackend]:
    """The running backends of deployment `instance`, found by scanning processes.

    A backend is a process-group leader whose environment has SIESTA_INSTANCE=`instance`
    (its children inherit the environment but lead no group); its session and port come
    from SIESTA_SESSION and PORT. It needs no store: a backend started just before a
    crash, or by a replica that died mid-wake, is found all the same. Processes whose
    environment cannot be read (other users') are skipped. Blocking: run it in a thread.
    """
    found: list[RunningBackend] = []
    marker = f"{INSTANCE_ENV}={instance}".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
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


def _group(proc: _Process) -> list[psutil.Process]:
    """The backend's process and its descendants, as psutil handles reused across calls
    (a fresh handle's first cpu_percent is always 0)."""
    meters = proc.meters
    leader = meters.get(proc.pid) or meters.setdefault(proc.pid, psutil.Process(proc.pid))
    current = {proc.pid: leader}
    for child in leader.children(recursive=True):
        current[child.pid] = meters.get(child.pid, child)
    meters.clear()
    meters.update(current)
    return list(current.values())


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


def free_port(host: str) -> int:
    """A TCP port on `host` that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True
