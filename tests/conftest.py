"""Shared fixtures: run a real siesta process on a real config, with real backends.

`siesta` starts `python -m siesta up -c <config>` as a subprocess on a free port
and waits (a poll with a deadline) until it accepts connections. Backends are
`tests/backend.py` (Starlette on uvicorn) unless a test gives another command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from siesta.core.model import State
from siesta.providers.local import SAME_START
from siesta.store.sqlite import SqliteStore

from .dockerd import docker_engine  # noqa: F401 - the session's Docker daemon, as a fixture

# `make test` runs the suite on two pytest-xdist workers (`--dist loadgroup`). Tests that
# share something costly run on one worker: every Docker test (one dockerd, started by the
# first of them and stopped at the end), and each file with a module-scoped fixture.
SHARED = {
    "test_docker.py": "docker",
    "test_docker_daemon.py": "docker",
    "test_docker_provider.py": "docker",
    "test_docker_examples.py": "docker",
    "test_demo_app.py": "demo_app",
    "test_replay.py": "replay",
    "test_replicas.py": "replicas",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = SHARED.get(item.path.name)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


BACKEND = str(Path(__file__).with_name("backend.py"))
START_DEADLINE = 60.0
"""Seconds siesta gets to listen: a deadline, not a speed claim (a loaded machine is slow)."""


PORT_TRIES = 3
"""Starts of a test's siesta when a port drawn for it was taken meanwhile."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _polls(timeout: float) -> Iterator[float]:
    """The pauses between looks (5 ms growing to 0.1 s), until `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() <= deadline:
        yield delay
        delay = min(0.1, delay * 1.5)


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    for delay in _polls(timeout):
        result = check()
        if result:
            return result
        time.sleep(delay)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def until(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """`wait_for` for a test on the event loop: the loop runs between the looks."""
    for delay in _polls(timeout):
        result = check()
        if result:
            return result
        await asyncio.sleep(delay)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def backend_template(**extra: Any) -> dict[str, Any]:
    """A template running tests/backend.py, ready by HTTP."""
    template: dict[str, Any] = {
        "command": [sys.executable, BACKEND, "{port}", "{session}"],
        "ready": {"http": "/"},
        "idle_timeout": "1h",
        "stop_grace": "3s",
    }
    template.update(extra)
    return template


@dataclass
class SiestaProcess:
    """A running `siesta up`, and handy ways to reach it."""

    proc: subprocess.Popen[bytes]
    port: int
    config: Path
    state_dir: Path
    log: Path
    starts: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, session: str, path: str = "/") -> str:
        return f"{self.base}/s/{session}{path}"

    @property
    def admin_port(self) -> int:
        gateway = yaml.safe_load(self.config.read_text())["gateway"]
        return int(gateway["admin_listen"].rpartition(":")[2])

    def settle(self) -> None:
        """Wait until siesta's write-behind queue has made every record durable (a
        poll of /healthz with a deadline), so that the store shows what siesta did."""
        if self.proc.poll() is not None:
            return
        wait_for(lambda: _pending_writes(self.admin_port) == 0, what="pending writes")

    def state(self, session: str) -> State:
        self.settle()
        store = SqliteStore(self.state_dir / "state.db")
        try:
            return next(r.state for r in store.sessions() if r.id == session)
        finally:
            store.close()

    def records(self, *, settle: bool = True) -> dict[str, Any]:
        if settle:
            self.settle()
        store = SqliteStore(self.state_dir / "state.db")
        try:
            return {r.id: r for r in store.sessions()}
        finally:
            store.close()

    def events(self, session: str | None = None) -> list[Any]:
        self.settle()
        store = SqliteStore(self.state_dir / "state.db")
        try:
            return store.events(session)
        finally:
            store.close()

    def start_count(self) -> int:
        return len(self.starts.read_text().splitlines()) if self.starts.exists() else 0

    def backend_pids(self, *, settle: bool = True) -> list[int]:
        return [r.pid for r in self.records(settle=settle).values() if r.pid]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def _pending_writes(admin_port: int) -> int | None:
    """Writes siesta has not made durable yet, from /healthz (None if it does not answer)."""
    try:
        answer = httpx.get(f"http://127.0.0.1:{admin_port}/healthz", timeout=5)
        return int(answer.json()["pending_writes"])
    except (httpx.HTTPError, ValueError, KeyError):
        return None


Launcher = Callable[..., SiestaProcess]


LOG_TAIL = 80  # lines of each siesta's log shown under a failed test


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test that started siesta shows the end of each siesta's log: CI keeps
    nothing else of a run, and a failure under load is often not seen again."""
    report = yield
    if report.failed:
        for n, handle in enumerate(getattr(item, "siesta_runs", [])):
            lines = handle.output().splitlines()[-LOG_TAIL:]
            report.sections.append((f"siesta {n} log (last lines)", "\n".join(lines)))
    return report


@pytest.fixture
def siesta(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Launcher]:
    """Start siesta with a config built from keyword sections; stopped at teardown."""
    running: list[SiestaProcess] = []
    request.node.siesta_runs = running  # for pytest_runtest_makereport

    def launch(
        *,
        templates: dict[str, Any] | None = None,
        sessions: dict[str, Any] | None = None,
        gateway: dict[str, Any] | None = None,
        policies: dict[str, Any] | None = None,
        port: int | None = None,
        config_dir: Path | None = None,
        extra: dict[str, Any] | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> SiestaProcess:
        """`args` go after `siesta up -c <config>`; `env` is added to the environment."""
        folder = config_dir or tmp_path
        for _ in range(PORT_TRIES):  # a port drawn here may be taken before siesta binds it
            chosen = port or free_port()
            config = {
                "gateway": {
                    "listen": f"127.0.0.1:{chosen}",
                    "admin_listen": f"127.0.0.1:{free_port()}",  # tests may run side by side
                    "wake_timeout": "20s",
                    **(gateway or {}),
                },
                "store": "state/state.db",
                "templates": templates or {"web": backend_template()},
                "sessions": sessions if sessions is not None else {"alice": {"template": "web"}},
            }
            if policies is not None:
                config["policies"] = policies
            config.update(extra or {})  # other top-level sections, e.g. savings
            starts = folder / "starts.txt"
            _count_starts(config["templates"], starts)
            path = folder / "siesta.yaml"
            path.write_text(yaml.safe_dump(config))
            log = folder / f"siesta-{len(running)}.log"
            environ = {**os.environ, "SIESTA_TEST_STARTS": str(starts), **(env or {})}
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "siesta", "up", "-c", str(path), *args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=environ,
                    cwd=folder,
                )
            handle = SiestaProcess(proc, chosen, path, folder / "state", log, starts)
            running.append(handle)
            try:
                wait_for(
                    lambda p=proc, c=chosen: p.poll() is not None or accepts(c),
                    timeout=START_DEADLINE,
                    what="siesta to listen",
                )
            except AssertionError:
                raise AssertionError(f"siesta did not start:\n{handle.output()}") from None
            if proc.poll() is None or "Address already in use" not in handle.output():
                break
            running.remove(handle)  # drawn again
        if proc.poll() is not None:
            raise AssertionError(f"siesta exited with {proc.returncode}:\n{handle.output()}")
        return handle

    yield launch
    for handle in running:
        backends = _backends_of(handle)
        if handle.proc.poll() is None:
            handle.proc.send_signal(signal.SIGTERM)
            try:
                handle.proc.wait(30)
            except subprocess.TimeoutExpired:
                handle.proc.kill()
        kill_groups(backends)  # never leave a backend behind, even when a test failed


def _count_starts(templates: dict[str, Any], starts: Path) -> None:
    """Backends no longer inherit siesta's SIESTA_* variables (issue 9): each local
    template is given SIESTA_TEST_STARTS in its `env`, so tests/backend.py counts starts."""
    for name, template in templates.items():
        if template.get("provider", "local") == "local":
            env = {"SIESTA_TEST_STARTS": str(starts), **template.get("env", {})}
            templates[name] = {**template, "env": env}


def _backends_of(handle: SiestaProcess) -> list[psutil.Process]:
    """Backends to clean up after a test: siesta's children, and the processes it stored
    (the store is read as it is: a test may have left it broken). A stored pid counts only
    while it is the process that was stored (same start time): pids wrap at 32768 here,
    and a reused one may be another test's backend."""
    found: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        found.extend(psutil.Process(handle.proc.pid).children())
    with contextlib.suppress(Exception):
        for record in handle.records(settle=False).values():
            if record.pid and record.pid_started is not None:
                started = record.pid_started  # psutil's create_time, as siesta adopts
                found.extend(_same_process(record.pid, started - SAME_START, started + SAME_START))
    return found


def _same_process(pid: int, earliest: float, latest: float) -> list[psutil.Process]:
    """[the process `pid`] if it was created between `earliest` and `latest`, else []:
    its pid was reused since, or it is gone."""
    try:
        proc = psutil.Process(pid)
        created = proc.create_time()
    except psutil.Error:
        return []
    return [proc] if earliest <= created <= latest else []


def running_backends(starts: Path) -> dict[int, psutil.Process]:
    """The backends recorded in `starts` ($SIESTA_TEST_STARTS, a "pid time" line per
    start, written by tests/backend.py and tests/tiny_backend.py) that still run, by pid.
    A pid reused by a later process is not one of them: the process must have been
    created before its record (imports on a loaded machine take up to RECORD_SLACK)."""
    lines = starts.read_text().splitlines() if starts.exists() else []
    found: dict[int, psutil.Process] = {}
    for pid, at in (line.split()[:2] for line in lines):
        recorded = float(at)
        for proc in _same_process(int(pid), recorded - RECORD_SLACK, recorded + BOOT_SLACK):
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found[proc.pid] = proc
    return found


RECORD_SLACK = 30.0
"""Seconds a backend may take from its process start to recording it (imports on a
loaded machine); a process created later than its record is another one."""
BOOT_SLACK = 1.0  # psutil's create_time is reckoned from the boot time, in whole seconds


def kill_groups(backends: list[psutil.Process]) -> None:
    """SIGKILL the process group of each backend still running as itself (psutil checks
    the start time: a pid reused by another process is left alone)."""
    for proc in backends:
        with contextlib.suppress(psutil.Error, OSError):
            if proc.is_running():
                os.killpg(proc.pid, signal.SIGKILL)


def raw(port: int, data: bytes, *, until_close: bool = True, timeout: float = 10.0) -> bytes:
    """Send raw bytes to the gateway; return what comes back until it closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks: list[bytes] = []
        while True:
            try:
                part = sock.recv(65536)
            except TimeoutError:
                if until_close:
                    raise
                break
            if not part:
                break
            chunks.append(part)
        return b"".join(chunks)


def slow_start_template(delay: float, **extra: Any) -> dict[str, Any]:
    """A backend that waits `delay` seconds before it starts listening."""
    wrapper = (
        "import os, sys, time; time.sleep(float(sys.argv[1])); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
    )
    return backend_template(
        command=[sys.executable, "-c", wrapper, str(delay), BACKEND, "{port}", "{session}"],
        **extra,
    )
