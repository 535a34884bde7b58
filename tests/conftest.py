"""Shared fixtures: run a real siesta process on a real config, with real backends.

`siesta` starts `python -m siesta up -c <config>` as a subprocess on a free port
and waits (a poll with a deadline) until it accepts connections. Backends are
`tests/backend.py` (Starlette on uvicorn) unless a test gives another command.
"""

from __future__ import annotations

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

import psutil
import pytest
import yaml

from siesta.core.model import State
from siesta.store.sqlite import SqliteStore

from .dockerd import docker_engine  # noqa: F401 - the session's Docker daemon, as a fixture

BACKEND = str(Path(__file__).with_name("backend.py"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(0.1, delay * 1.5)


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

    def state(self, session: str) -> State:
        store = SqliteStore(self.state_dir / "state.db")
        try:
            return next(r.state for r in store.sessions() if r.id == session)
        finally:
            store.close()

    def records(self) -> dict[str, Any]:
        store = SqliteStore(self.state_dir / "state.db")
        try:
            return {r.id: r for r in store.sessions()}
        finally:
            store.close()

    def events(self, session: str | None = None) -> list[Any]:
        store = SqliteStore(self.state_dir / "state.db")
        try:
            return store.events(session)
        finally:
            store.close()

    def start_count(self) -> int:
        return len(self.starts.read_text().splitlines()) if self.starts.exists() else 0

    def backend_pids(self) -> list[int]:
        return [r.pid for r in self.records().values() if r.pid]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


Launcher = Callable[..., SiestaProcess]


@pytest.fixture
def siesta(tmp_path: Path) -> Iterator[Launcher]:
    """Start siesta with a config built from keyword sections; stopped at teardown."""
    running: list[SiestaProcess] = []

    def launch(
        *,
        templates: dict[str, Any] | None = None,
        sessions: dict[str, Any] | None = None,
        gateway: dict[str, Any] | None = None,
        policies: dict[str, Any] | None = None,
        port: int | None = None,
        config_dir: Path | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> SiestaProcess:
        """`args` go after `siesta up -c <config>`; `env` is added to the environment."""
        folder = config_dir or tmp_path
        port = port or free_port()
        config = {
            "gateway": {
                "listen": f"127.0.0.1:{port}",
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
        path = folder / "siesta.yaml"
        path.write_text(yaml.safe_dump(config))
        log = folder / f"siesta-{len(running)}.log"
        starts = folder / "starts.txt"
        environ = {**os.environ, "SIESTA_TEST_STARTS": str(starts), **(env or {})}
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "siesta", "up", "-c", str(path), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environ,
                cwd=folder,
            )
        handle = SiestaProcess(proc, port, path, folder / "state", log, starts)
        running.append(handle)
        try:
            wait_for(lambda: proc.poll() is not None or accepts(port), what="siesta to listen")
        except AssertionError:
            raise AssertionError(f"siesta did not start:\n{handle.output()}") from None
        if proc.poll() is not None:
            raise AssertionError(f"siesta exited with {proc.returncode}:\n{handle.output()}")
        return handle

    yield launch
    for handle in running:
        pids = [p for p in handle.backend_pids() if psutil.pid_exists(p)]
        if handle.proc.poll() is None:
            handle.proc.send_signal(signal.SIGTERM)
            try:
                handle.proc.wait(30)
            except subprocess.TimeoutExpired:
                handle.proc.kill()
        for pid in pids:  # never leave a backend behind, even when a test failed
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


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
