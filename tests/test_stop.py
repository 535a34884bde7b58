"""A sleep stops all of a backend: every process it started, in any session or process
group, orphaned or not, SIGTERM-deaf or not. Real processes, on both trackers: a cgroup
per session (where this machine allows it: root with cgroup v1) and the process tree
(with siesta as the orphans' subreaper)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from siesta.core.model import State
from siesta.providers.local import LocalProvider
from siesta.providers.proctree import CgroupTracker

from .conftest import BACKEND, Launcher, backend_template, until, wait_for

SPAWNER = """
import os, subprocess, sys
pids, backend = sys.argv[1], sys.argv[2:]
own_session = subprocess.Popen(["sleep", "600"], start_new_session=True)
deaf = subprocess.Popen(
    [sys.executable, "-c",
     "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
    start_new_session=True,
)
middle = subprocess.Popen([
    sys.executable, "-c",
    "import subprocess; p = subprocess.Popen(['sleep', '600'], start_new_session=True, "
    "stdout=subprocess.DEVNULL); print(p.pid)",
], stdout=subprocess.PIPE)
orphan = int(middle.communicate()[0])  # its parent has exited: an orphan in its own session
burn = subprocess.Popen([sys.executable, "-c", "sum(range(30_000_000))"])
burn.wait()  # CPU used by a process that is gone when usage is asked
with open(pids, "w") as f:
    f.write("%d %d %d\\n" % (own_session.pid, deaf.pid, orphan))  # no braces: placeholders
os.execv(sys.executable, [sys.executable, *backend])
"""
"""A backend that first starts three processes that a process-group kill would miss:
`sleep` in its own session, a SIGTERM-deaf one in its own session, and an orphan whose
parent exited; it writes their pids, then becomes tests/backend.py."""


class Template:
    def __init__(self, pids: Path) -> None:
        self.command = [sys.executable, "-c", SPAWNER, str(pids), BACKEND, "{port}", "{session}"]
        self.env: dict[str, str] = {}
        self.cwd: Path | None = None
        self.env_inherit = ["PATH"]
        self.user: str | None = None
        self.group: str | None = None


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _written(path: Path) -> list[int] | None:
    text = path.read_text() if path.exists() else ""
    return [int(p) for p in text.split()] if text.endswith("\n") else None


async def _pids(path: Path) -> list[int]:
    for _ in range(600):
        pids = _written(path)
        if pids:
            return pids
        await asyncio.sleep(0.05)
    raise AssertionError("the backend did not start its processes")


@pytest.fixture(params=["cgroup", "tree"])
async def provider(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """The local provider on each tracker; the cgroup one is skipped where it cannot be."""
    cgroups = request.param == "cgroup"
    if cgroups:
        probe = CgroupTracker.create(f"probe{os.getpid()}")
        if probe is None:
            pytest.skip("no writable cgroup v1 cpuacct here (needs root and cgroup v1)")
        probe.close()
    templates = {"spawner": Template(tmp_path / "pids.txt")}
    local = LocalProvider(templates, tmp_path / "logs", cgroups=cgroups)  # type: ignore[arg-type]
    assert local.tracker.kind == request.param
    yield local
    await local.close()


def _threads_in_session_cgroups() -> list[str]:
    """This process's threads that are in a session's cgroup (none should be)."""
    found = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            if "/siesta-" in (task / "cgroup").read_text():
                found.append(task.name)
    return found


async def test_a_stop_leaves_no_process_of_the_backend(provider: Any, tmp_path: Path) -> None:
    """setsid children, an orphan and a SIGTERM-deaf process are all gone when stop
    returns (SIGKILL after the 1s grace); usage counted the CPU of a child that had
    already exited (cgroup) or at least the live tree's (tree)."""
    backend = await provider.start("alice", "spawner")
    pids = await _pids(tmp_path / "pids.txt")
    tracked = provider.tracker.pids("alice", backend.pid)
    assert set(pids) <= set(tracked), (pids, tracked)
    assert os.getpid() not in tracked  # the thread that spawned it went back home
    if provider.tracker.kind == "cgroup":  # and no thread of this process stayed behind
        assert _threads_in_session_cgroups() == []
    usage = await provider.usage("alice")
    assert usage is not None
    assert usage.memory_bytes > 1_000_000
    if provider.tracker.kind == "cgroup":
        assert usage.cpu_seconds > 0.3  # sum(range(30M)) alone takes that, and it exited
    began = time.monotonic()
    await provider.stop("alice", grace=1.0)
    assert time.monotonic() - began >= 1.0  # the deaf one held out until SIGKILL
    left = [pid for pid in [backend.pid, *pids] if not _gone(pid)]
    assert left == [], f"still running: {left}"
    assert provider.tracker.pids("alice", None) == []
    assert not provider.alive("alice")


async def test_a_backend_that_dies_takes_its_processes_along(provider: Any, tmp_path: Path) -> None:
    """The backend's main process is killed from outside: the exit handler hears of it
    once, and every process it had started is killed too."""
    exits: list[str] = []
    provider.set_exit_handler(lambda session, reason: exits.append(reason))
    backend = await provider.start("bob", "spawner")
    pids = await _pids(tmp_path / "pids.txt")
    os.kill(backend.pid, 9)
    for _ in range(400):
        if exits and all(_gone(pid) for pid in pids):
            break
        await asyncio.sleep(0.025)
    assert exits == ["backend killed by SIGKILL"]
    assert [pid for pid in pids if not _gone(pid)] == []


def test_siesta_leaves_nothing_of_a_session_it_put_to_sleep(
    siesta: Launcher, tmp_path: Path
) -> None:
    """Through a real `siesta up`: the idle policy puts the session to sleep, and none of
    the processes its backend started outlives the sleep."""
    pids_file = tmp_path / "pids.txt"
    template: dict[str, Any] = backend_template(
        command=[sys.executable, "-c", SPAWNER, str(pids_file), BACKEND, "{port}", "{session}"],
        idle_timeout="1s",
        stop_grace="1s",
    )
    run = siesta(templates={"web": template})
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    pids = [int(p) for p in pids_file.read_text().split()]
    leader = run.records()["alice"].pid
    wait_for(lambda: run.state("alice") is State.ASLEEP, timeout=30, what="alice to sleep")
    assert [pid for pid in [leader, *pids] if pid and not _gone(pid)] == []


def _cgroup_provider(tmp_path: Path, name: str, instance: str) -> LocalProvider:
    local = LocalProvider({}, tmp_path / name, instance=instance)
    if local.tracker.kind != "cgroup":
        pytest.skip("no writable cgroup v1 cpuacct here (needs root and cgroup v1)")
    return local


def _spawn_in(local: LocalProvider, session: str, argv: list[str]) -> subprocess.Popen[bytes]:
    """A process in `session`'s cgroup, in a group of its own, with no siesta marker."""
    env = {"PATH": os.environ["PATH"]}
    return local.tracker.spawn_inside(
        session, lambda: subprocess.Popen(argv, start_new_session=True, env=env)
    )


async def test_a_replica_starting_spares_a_backend_another_is_starting(tmp_path: Path) -> None:
    """Two replicas of one instance on this machine. One is starting carol's backend,
    caught between fork and exec: in carol's cgroup, without the marker the other's
    scan looks for. The other replica starts up then: it looks again for a while, finds
    the backend once it has exec'd, and adopts it instead of killing it (it killed it:
    the wake of the first replica failed)."""
    instance = f"race{os.getpid()}"
    first = _cgroup_provider(tmp_path, "a", instance)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    marked = f"SIESTA_INSTANCE={instance} SIESTA_SESSION=carol PORT=9"
    script = f"read x < {gate}; exec env {marked} sleep 600"
    starting = _spawn_in(first, "carol", ["sh", "-c", script])
    second = _cgroup_provider(tmp_path, "b", instance)
    second.settle = 60.0  # ends as soon as carol's backend is found
    try:
        adopting = asyncio.create_task(second.adopt([]))
        await until(lambda: "carol" in second.settling, what="the second look for carol")
        await asyncio.to_thread(gate.write_text, "go\n")  # the fifo's reader waits
        adopted = await adopting
        assert [(b.session, b.pid) for b in adopted] == [("carol", starting.pid)]
        assert starting.poll() is None, "the backend being started was killed"
        assert psutil.Process(starting.pid).name() == "sleep"
    finally:
        starting.kill()
        starting.wait()
        await second.stop("carol", grace=0)
        await second.close()
        await first.close()


async def test_a_replica_starting_kills_what_no_backend_owns(tmp_path: Path) -> None:
    """What is left in a session's cgroup with no backend (a previous siesta's backend
    whose leader died) is killed at start-up, after the second look finds nothing."""
    instance = f"left{os.getpid()}"
    first = _cgroup_provider(tmp_path, "a", instance)
    left = _spawn_in(first, "dave", ["sleep", "600"])
    second = _cgroup_provider(tmp_path, "b", instance)
    second.settle = 0.3
    try:
        assert await second.adopt([]) == []
        assert left.wait(timeout=30) == -9
        assert "dave" not in second.tracker.known()
    finally:
        if left.poll() is None:
            left.kill()
        await second.close()
        await first.close()
