"""Every process of a local backend, however it forked: found, measured, stopped.

The local provider asks a `Tracker` for a session's processes. Two kinds:

- `CgroupTracker`, where the machine allows it (cgroup v1 controllers writable by
  siesta, e.g. root): each session gets a cgroup under siesta's own, per controller
  (`cpuacct`, and `memory`, `freezer`, `pids` when mounted), named
  `siesta-<instance>/<session>`. The backend is born in it: the thread that spawns
  it moves itself into the session's cgroups (v1 `tasks`: that thread alone), forks
  and execs the command, and moves back (`spawn_inside`). No wrapper process, no
  window in which the backend could fork outside; every descendant is in it,
  whatever it does (setsid, double fork, a new process group). CPU comes from
  `cpuacct.usage` (exited processes included), memory from `memory.stat`; a kill
  freezes the cgroup, SIGKILLs every member and thaws it, so nothing forks away
  meanwhile.
- `TreeTracker` otherwise: the backend's descendants as /proc shows them, plus the
  orphans that siesta adopts as their subreaper (`PR_SET_CHILD_SUBREAPER`) and that
  carry the session's `SIESTA_SESSION` in their environment. CPU is the live
  processes' and their reaped children's (psutil's `cpu_times`).

Either way, `stop` is: SIGTERM to every process, wait until all are gone (at most
`grace`), SIGKILL whatever is left, wait again, and forget the session. Processes
are asked for by reading /proc and the cgroup files: no I/O beyond the local
filesystem, fast enough to run on the event loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, TypeVar

import psutil

from .base import StartError, Usage

log = logging.getLogger("siesta.providers.local")

T = TypeVar("T")

CGROUP_ROOT = Path("/sys/fs/cgroup")
JOIN_TRIES = 5  # attempts to join a session's cgroup that a concurrent cleanup removes
CONTROLLERS = ("cpuacct", "memory", "freezer", "pids")
"""cgroup v1 controllers a session's cgroup is made in; cpuacct is required."""
PR_SET_CHILD_SUBREAPER = 36
MARKER = "SIESTA_SESSION"
"""The environment variable that names a backend's session (set by the local provider)."""
FREEZE_WAIT = 1.0  # seconds a freezer gets to report FROZEN before the kill goes on anyway


class Tracker(Protocol):
    """Finds, measures and signals every process of a session's backend."""

    kind: str

    def spawn_inside(self, session: str, spawn: Callable[[], T]) -> T:
        """Call `spawn` (which starts the backend) so that what it starts is tracked."""
        ...

    def pids(self, session: str, leader: int | None) -> list[int]:
        """The session's live processes (the leader's pid helps the tree walk)."""
        ...

    def usage(self, session: str, leader: int | None) -> Usage | None:
        """Cumulative CPU seconds and resident memory of the whole backend."""
        ...

    def kill(self, session: str, leader: int | None, sig: signal.Signals) -> int:
        """Send `sig` to every process of the session; how many got it."""
        ...

    def forget(self, session: str) -> None:
        """The session's processes are all gone: release what tracked them."""
        ...

    def known(self) -> list[str]:
        """Sessions whose tracking outlived a previous siesta (for clean-up at start)."""
        ...

    def close(self) -> None:
        """Release what is no longer used (backends keep running)."""
        ...


def make_tracker(instance: str, *, cgroups: bool = True) -> Tracker:
    """A `CgroupTracker` when asked for and the machine allows it, else a `TreeTracker`."""
    if cgroups:
        tracker = CgroupTracker.create(instance)
        if tracker is not None:
            return tracker
    return TreeTracker()


# cgroups --------------------------------------------------------------------------------


def _mounts() -> dict[str, Path]:
    """Where each cgroup v1 controller is mounted (a co-mount serves all its controllers)."""
    found: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) < 4 or parts[2] != "cgroup":
            continue
        for option in parts[3].split(","):
            if option in CONTROLLERS:
                found[option] = Path(parts[1])
    return found


def _own_paths() -> dict[str, str]:
    """siesta's own cgroup path in each v1 controller (from /proc/self/cgroup)."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            for name in names.split(","):
                paths[name] = path
    return paths


class CgroupTracker:
    """A cgroup (v1) per session; see the module's docstring."""

    kind = "cgroup"

    def __init__(self, bases: dict[str, Path], homes: dict[str, Path]):
        self._bases = bases  # controller -> siesta-<instance> folder
        self._homes = homes  # controller -> siesta's own cgroup's `tasks` (to move back)

    @classmethod
    def create(cls, instance: str) -> CgroupTracker | None:
        """The tracker, if cpuacct is mounted and a cgroup can be made under siesta's own."""
        mounts, own = _mounts(), _own_paths()
        bases: dict[str, Path] = {}
        homes: dict[str, Path] = {}
        tid = str(threading.get_native_id())
        for controller, mount in mounts.items():
            home = mount / own.get(controller, "/").lstrip("/")
            base = home / f"siesta-{instance}"
            try:
                base.mkdir(parents=True, exist_ok=True)
                probe = base / ".siesta-probe"
                probe.mkdir(exist_ok=True)
                probe.rmdir()
                (home / "tasks").write_text(tid)  # where it is already: can it move back?
            except OSError as exc:
                log.debug("cgroup controller %s not usable at %s: %s", controller, base, exc)
                continue
            bases[controller] = base
            homes[controller] = home / "tasks"
        if "cpuacct" not in bases:
            log.info("no writable cgroup (cpuacct): following backends by their process tree")
            return None
        log.info("each backend runs in its own cgroup (%s)", ", ".join(sorted(bases)))
        return cls(bases, homes)

    def _dir(self, controller: str, session: str) -> Path:
        return self._bases[controller] / session

    def spawn_inside(self, session: str, spawn: Callable[[], T]) -> T:
        """Move this thread (only) into the session's cgroups, call `spawn`, move back.

        A child is born in its parent thread's cgroups, so the backend and all it ever
        forks are the session's from the first instruction. Costs a few small writes
        where a `/bin/sh` wrapper cost a whole extra exec (about 13 ms a wake here).
        """
        tid = str(threading.get_native_id())
        moved: list[str] = []
        try:
            for controller in self._bases:
                self._join(controller, session, tid)
                moved.append(controller)
            return spawn()
        finally:
            for controller in moved:
                try:
                    self._homes[controller].write_text(tid)
                except OSError:  # this thread's later work would count for the session
                    log.exception("cannot leave %s's %s cgroup", session, controller)

    def pids(self, session: str, leader: int | None) -> list[int]:
        return _read_pids(self._dir("cpuacct", session) / "cgroup.procs")

    def usage(self, session: str, leader: int | None) -> Usage | None:
        try:
            nanoseconds = int((self._dir("cpuacct", session) / "cpuacct.usage").read_text())
        except (OSError, ValueError):
            return None
        memory = self._memory(session, leader)
        return Usage(cpu_seconds=nanoseconds / 1e9, memory_bytes=memory)

    def _memory(self, session: str, leader: int | None) -> int:
        if "memory" in self._bases:
            stat = _read_stat(self._dir("memory", session) / "memory.stat")
            if stat:
                return stat.get("total_rss", 0) + stat.get("total_mapped_file", 0)
        return _rss(self.pids(session, leader))

    def kill(self, session: str, leader: int | None, sig: signal.Signals) -> int:
        frozen = sig is signal.SIGKILL and self._freeze(session, "FROZEN")
        try:
            return _signal_all(self.pids(session, leader), sig)
        finally:
            if frozen:
                self._freeze(session, "THAWED")

    def _freeze(self, session: str, state: str) -> bool:
        """Freeze (or thaw) the session's cgroup; whether the freezer took it."""
        if "freezer" not in self._bases:
            return False
        control = self._dir("freezer", session) / "freezer.state"
        try:
            control.write_text(state)
        except OSError:
            return False
        deadline = time.monotonic() + FREEZE_WAIT
        while state == "FROZEN" and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if control.read_text().strip() == "FROZEN":
                    break
            time.sleep(0.001)
        return True

    def _join(self, controller: str, session: str, tid: str) -> None:
        """Move thread `tid` into the session's cgroup of `controller`, made if need be. The
        previous backend's cleanup (`forget`) may remove the empty folder between the
        mkdir and the write: then it is made again (once in, it cannot be removed)."""
        folder = self._dir(controller, session)
        for attempt in range(JOIN_TRIES):
            try:
                folder.mkdir(exist_ok=True)
                (folder / "tasks").write_text(tid)
                return
            except FileNotFoundError:
                if attempt + 1 < JOIN_TRIES:
                    continue
                raise StartError(
                    f"cannot make its {controller} cgroup: {folder} keeps going"
                ) from None
            except OSError as exc:
                raise StartError(f"cannot make its {controller} cgroup: {exc}") from exc

    def forget(self, session: str) -> None:
        for controller in self._bases:
            with contextlib.suppress(OSError):
                self._dir(controller, session).rmdir()

    def known(self) -> list[str]:
        base = self._bases["cpuacct"]
        try:
            return sorted(p.name for p in base.iterdir() if p.is_dir())
        except OSError:
            return []

    def close(self) -> None:
        for base in self._bases.values():
            with contextlib.suppress(OSError):
                base.rmdir()  # only when no session's cgroup is left in it


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in path.read_text().split()]
    except (OSError, ValueError):
        return []


def _read_stat(path: Path) -> dict[str, int]:
    stat: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.isdigit():
                stat[key] = int(value)
    return stat


# the process tree -----------------------------------------------------------------------


class TreeTracker:
    """The leader's descendants, and the orphans siesta reaps as their subreaper."""

    kind = "tree"

    def __init__(self) -> None:
        self.subreaper = _become_subreaper()

    def spawn_inside(self, session: str, spawn: Callable[[], T]) -> T:
        return spawn()  # descendants are found by the tree walk and the marker

    def pids(self, session: str, leader: int | None) -> list[int]:
        return [p.pid for p in self._processes(session, leader)]

    def _processes(self, session: str, leader: int | None) -> list[psutil.Process]:
        found: dict[int, psutil.Process] = {}
        roots: list[psutil.Process] = []
        if leader is not None:
            with contextlib.suppress(psutil.Error):
                roots.append(psutil.Process(leader))
        roots += self._orphans(session, leader)
        for root in roots:
            with contextlib.suppress(psutil.Error):
                found[root.pid] = root
                for child in root.children(recursive=True):
                    found[child.pid] = child
        return [p for p in found.values() if _alive(p)]

    def _orphans(self, session: str, leader: int | None) -> list[psutil.Process]:
        """siesta's own children that are not the leader but carry the session's marker."""
        if not self.subreaper:
            return []
        orphans = []
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process().children():
                if child.pid == leader:
                    continue
                with contextlib.suppress(psutil.Error):
                    if child.environ().get(MARKER) == session:
                        if child.status() == psutil.STATUS_ZOMBIE:
                            _reap(child.pid)
                        else:
                            orphans.append(child)
        return orphans

    def usage(self, session: str, leader: int | None) -> Usage | None:
        processes = self._processes(session, leader)
        if not processes:
            return None
        cpu, memory = 0.0, 0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                cpu += times.user + times.system + times.children_user + times.children_system
                memory += process.memory_info().rss
        return Usage(cpu_seconds=cpu, memory_bytes=memory)

    def kill(self, session: str, leader: int | None, sig: signal.Signals) -> int:
        processes = self._processes(session, leader)
        sent = _signal_all((p.pid for p in processes), sig)
        if leader is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(leader, sig)  # its group too: a child forked this very moment
        return sent

    def forget(self, session: str) -> None:
        self._orphans(session, None)  # reaps the orphans that died

    def known(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


def _become_subreaper() -> bool:
    """Make siesta the reaper of its backends' orphans (Linux >= 3.4); whether it worked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _rss(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total


def _signal_all(pids: Iterable[int], sig: signal.Signals) -> int:
    sent = 0
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            sent += 1
    return sent
