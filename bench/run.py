"""Benchmark siesta's proxy overhead and its wake cost against plain nginx, on this machine.

Everything runs on 127.0.0.1 and uses ONE backend process, so only the path in front of
it differs:

* The backend is one nginx worker answering ``hello\\n`` (``bench/nginx-backend.sh``
  writes its config for the port siesta picks and execs nginx). siesta starts it as the
  template command of the session ``bench`` (ready check ``{tcp: true}``); after one
  request has woken the session, its port and pid are read from siesta's SQLite store.

* Throughput and latency: wrk (1 thread, 64 keep-alive connections, ``--latency``) is
  pointed in turn at the backend directly, at a second nginx (1 worker) reverse-proxying
  to it with an upstream keep-alive pool (``keepalive 64``, HTTP/1.1), at HAProxy (one
  thread, ``mode http``, ``http-reuse always``), and at siesta (``/s/bench/``). Each run
  is preceded by a 2 s warm-up; the four targets are run interleaved for BENCH_ROUNDS
  rounds (default 3) of BENCH_DURATION seconds (default 10) and the median of each figure
  per target is reported, since the machine is noisy.
  siesta runs with idle_timeout 1h here, so the session stays awake throughout.

* Wake cost: siesta is restarted with idle_timeout 300ms. BENCH_WAKES times (default
  50): (a) the wrapper is started by this script on a free port and TCP connects are
  tried every ~0.2 ms until one is accepted: the backend's own start-to-ready time;
  (b) once the store says the session is ASLEEP, ``GET /s/bench/`` is sent to siesta over
  a raw socket and the time to the first byte of the answer is taken (the answer must
  be ``HTTP/1.1 200`` with ``X-Siesta-Wake: cold``). wake cost = (b) - (a): what siesta
  adds to a cold request beyond the backend's own start. Both (a) and (b) include the
  start of bash for the wrapper script, so it cancels out. The wakes are measured twice:
  as siesta runs by default (each backend born in a cgroup of its own, where the machine
  allows it) and with SIESTA_CGROUPS=off (the process tree), which shows what the move
  into a cgroup costs (on cgroup v1, the first move after a pause waits for an RCU grace
  period).

The targets printed next to the figures (throughput >= 0.8x nginx, p99 <= 1.5x nginx,
median wake cost < 10 ms) are informational: a MISS never fails the run. Results are
also written to bench/out/results.json, with siesta's logs beside it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from siesta.core.model import State
from siesta.store.base import SessionRecord
from siesta.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
WRAPPER = BENCH / "nginx-backend.sh"
SESSION = "bench"
HOST = "127.0.0.1"
CONNECTIONS = 64
WARMUP_SECONDS = 2
WAKE_IDLE_TIMEOUT = "300ms"
SIESTA_START_TIMEOUT = 30.0
SIESTA_STOP_TIMEOUT = 40.0  # the gateway drains for up to 10s, then backends get stop_grace
PROCESS_STOP_TIMEOUT = 10.0
BACKEND_START_TIMEOUT = 10.0
CONNECT_POLL = 0.0002  # seconds between connect attempts when timing the backend's start
ASLEEP_TIMEOUT = 30.0
REQUEST_TIMEOUT = 30.0

TARGET_THROUGHPUT = 0.8  # siesta req/s >= this x nginx's
TARGET_P99 = 1.5  # siesta p99 <= this x nginx's
TARGET_WAKE_MS = 10.0  # median wake cost below this


# -- settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What the environment asks for."""

    duration: int
    rounds: int
    wakes: int
    nginx: str
    haproxy: str
    wrk: str

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            duration=_env_int("BENCH_DURATION", 10),
            rounds=_env_int("BENCH_ROUNDS", 3),
            wakes=_env_int("BENCH_WAKES", 50),
            nginx=_tool("nginx"),
            haproxy=_tool("haproxy"),
            wrk=_tool("wrk"),
        )


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        sys.exit(f"bench: {name}={text!r} is not a whole number")
    if value < 1:
        sys.exit(f"bench: {name} must be at least 1")
    return value


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        sys.exit(f"bench: {name} is not installed: run `bash bench/setup.sh` (make bench does)")
    return found


# -- processes --------------------------------------------------------------------------


class Processes:
    """Every process this script starts, so that all of them are ended, even on error."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Run `argv` in its own process group, its output appended to `log`."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
                env=env,
            )
        self._procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float, *, group: bool = True) -> None:
        """SIGTERM (its process group, or only it), wait up to `timeout`, then SIGKILL."""
        if proc.poll() is None:
            _signal(proc.pid, signal.SIGTERM, group=group)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"bench: pid {proc.pid} ignored SIGTERM for {timeout:g}s: SIGKILL")
                _signal(proc.pid, signal.SIGKILL, group=True)
                proc.wait(PROCESS_STOP_TIMEOUT)
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def stop_all(self) -> None:
        """Stop what is still running, last started first; siesta gets to stop its backend."""
        for name, proc in reversed(self._procs):
            self.stop(
                proc,
                SIESTA_STOP_TIMEOUT if name == "siesta" else PROCESS_STOP_TIMEOUT,
                group=name != "siesta",
            )


def _signal(pid: int, sig: signal.Signals, *, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def reap_strays(marker: str) -> list[int]:
    """Kill (by pid) leftover nginx masters whose command line names our temp dir
    `marker`, with their process group: only nginx started by this run can match.
    Returns their pids."""
    killed: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and "nginx" in cmdline:
            pid = int(entry.name)
            with contextlib.suppress(OSError):
                # an nginx master leads its group: its workers (titled without the
                # marker) go with it
                _signal(pid, signal.SIGKILL, group=os.getpgid(pid) == pid)
                killed.append(pid)
    return killed


# -- sockets ----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((HOST, port)) == 0


def wait_until(check: Callable[[], bool], timeout: float, interval: float, what: str) -> None:
    """Poll `check` every `interval` seconds until it is true; `TimeoutError` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(interval)


def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET http://127.0.0.1:`port``path`: status, headers (lower-case names), body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, body
    finally:
        conn.close()


# -- nginx ------------------------------------------------------------------------------


def nginx_version(nginx: str) -> str:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


def backend_env(settings: Settings) -> dict[str, str]:
    """The environment of the backend wrapper: which nginx to run."""
    return {**os.environ, "BENCH_NGINX": settings.nginx}


def backend_command(backends: Path, port: str) -> list[str]:
    """The wrapper's command line; siesta gets it with `{port}` for `port`."""
    return ["bash", str(WRAPPER), port, str(backends)]


def write_proxy_conf(folder: Path, listen: int, backend: int) -> Path:
    """An nginx reverse proxy (1 worker) on `listen` to the backend, keep-alive both sides."""
    folder.mkdir(parents=True, exist_ok=True)
    temp = " ".join(
        f"{kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = folder / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    {temp}
    keepalive_requests 1000000;
    upstream backend {{
        server {HOST}:{backend};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {HOST}:{listen};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    )
    return conf


def start_proxy(procs: Processes, settings: Settings, folder: Path, backend: int) -> int:
    """Start the nginx reverse proxy to `backend`; return its port once it accepts."""
    port = free_port()
    conf = write_proxy_conf(folder, port, backend)
    errors = folder / "error.log"
    argv = [settings.nginx, "-p", str(folder), "-c", str(conf), "-e", str(errors)]
    argv += ["-g", f"daemon off; pid {folder / 'nginx.pid'}; error_log {errors} warn;"]
    proc = procs.start("nginx proxy", argv, folder / "stdout.log")
    wait_until(
        lambda: proc.poll() is None and accepts(port), 10.0, 0.01, "the nginx proxy listening"
    )
    return port


def write_haproxy_conf(folder: Path, listen: int, backend: int) -> Path:
    """HAProxy (one thread) on `listen` to the backend, keep-alive both sides."""
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "haproxy.cfg"
    conf.write_text(
        f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend bench
    bind {HOST}:{listen}
    default_backend backend
backend backend
    server one {HOST}:{backend}
"""
    )
    return conf


def start_haproxy(procs: Processes, settings: Settings, folder: Path, backend: int) -> int:
    """Start HAProxy in front of `backend`; return its port once it accepts."""
    port = free_port()
    conf = write_haproxy_conf(folder, port, backend)
    argv = [settings.haproxy, "-db", "-f", str(conf)]  # -db: foreground, no daemon
    proc = procs.start("haproxy", argv, folder / "stdout.log")
    wait_until(lambda: proc.poll() is None and accepts(port), 10.0, 0.01, "HAProxy listening")
    return port


def haproxy_version(haproxy: str) -> str:
    out = subprocess.run([haproxy, "-v"], capture_output=True, text=True, timeout=10, check=False)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].removeprefix("HAProxy version ").split(" ")[0] if first else ""


# -- siesta -----------------------------------------------------------------------------


@dataclass
class Siesta:
    """A running `siesta up`: its process, gateway port, store and log."""

    proc: subprocess.Popen[bytes]
    port: int
    store_path: Path
    log: Path

    def record(self) -> SessionRecord:
        """The session `bench` as the store has it (opened anew: siesta writes it)."""
        store = SqliteStore(self.store_path)
        try:
            for record in store.sessions():
                if record.id == SESSION:
                    return record
        finally:
            store.close()
        raise RuntimeError(f"session {SESSION!r} is not in {self.store_path}")

    def wake_seconds(self, last: int) -> list[float]:
        """siesta's own timing of the `last` wakes (WAKING -> AWAKE), from its event log."""
        store = SqliteStore(self.store_path)
        try:
            events = store.events(session=SESSION, limit=1_000_000)
        finally:
            store.close()
        timed = [e.wake_seconds for e in events if e.new is State.AWAKE and e.wake_seconds]
        return timed[-last:]


def write_siesta_config(
    path: Path, settings: Settings, port: int, store: Path, backends: Path, idle_timeout: str
) -> Path:
    """A siesta config (JSON is YAML) with the session `bench` running the nginx wrapper."""
    config = {
        "gateway": {"listen": f"{HOST}:{port}", "wake_rate": "off"},  # one client, many wakes
        "store": str(store),
        "templates": {
            "nginx": {
                "command": backend_command(backends, "{port}"),
                "ready": {"tcp": True},
                "idle_timeout": idle_timeout,
                "stop_grace": "5s",
                "env": {"BENCH_NGINX": settings.nginx},
            }
        },
        "sessions": {SESSION: {"template": "nginx"}},
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def start_siesta(
    procs: Processes,
    config: Path,
    port: int,
    store: Path,
    log: Path,
    extra_env: dict[str, str] | None = None,
) -> Siesta:
    """`python -m siesta up -c config`, returned once its gateway accepts connections."""
    env = {**os.environ, "COLUMNS": "200", **(extra_env or {})}  # wide lines: rich wraps at 80
    argv = [sys.executable, "-m", "siesta", "up", "-c", str(config)]
    proc = procs.start("siesta", argv, log, env)

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"siesta exited with code {proc.returncode}:\n{tail(log)}")
        return accepts(port)

    wait_until(listening, SIESTA_START_TIMEOUT, 0.02, "siesta listening")
    return Siesta(proc, port, store, log)


def stop_siesta(procs: Processes, siesta: Siesta) -> float:
    """SIGTERM siesta (it stops its backend itself) and wait for it; seconds it took."""
    began = time.monotonic()
    procs.stop(siesta.proc, SIESTA_STOP_TIMEOUT, group=False)
    if siesta.proc.returncode not in (0, -signal.SIGTERM):
        print(f"bench: siesta exited with code {siesta.proc.returncode}")
    return time.monotonic() - began


def wake_for_throughput(siesta: Siesta) -> SessionRecord:
    """Wake the session with one request; return its record (the backend's port and pid)."""
    status, headers, body = http_get(siesta.port, f"/s/{SESSION}/")
    if status != 200 or body != b"hello\n":
        raise RuntimeError(f"waking through siesta: {status} {body[:200]!r}")
    record = siesta.record()
    if record.state is not State.AWAKE or record.endpoint is None or record.pid is None:
        raise RuntimeError(f"the store does not show the session awake: {record}")
    print(
        f"woke {SESSION!r} through siesta (X-Siesta-Wake: {headers.get('x-siesta-wake')}): "
        f"backend pid {record.pid} on {record.endpoint}"
    )
    return record


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- wrk --------------------------------------------------------------------------------


@dataclass
class WrkResult:
    """What one wrk run reported."""

    target: str
    url: str
    requests_per_second: float
    p50: float  # seconds
    p99: float  # seconds
    requests: int
    non_2xx_3xx: int
    socket_errors: dict[str, int]


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def run_wrk(wrk: str, url: str, seconds: int) -> str:
    """Run wrk against `url` for `seconds` and return what it printed."""
    argv = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout


def parse_wrk(target: str, url: str, text: str) -> WrkResult:
    """Requests/s, p50 and p99 (in seconds) and the error counts from wrk --latency output."""
    latency = {pct: float(value) * _UNITS[unit] for pct, value, unit in _LATENCY.findall(text)}
    rps, total = _RPS.search(text), _TOTAL.search(text)
    if rps is None or total is None or set(latency) != {"50", "99"}:
        raise RuntimeError(f"cannot read wrk's output:\n{text}")
    non_2xx = _NON_2XX.search(text)
    sockets = _SOCKET.search(text)
    errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if sockets is not None:
        errors = dict(zip(errors, map(int, sockets.groups()), strict=True))
    return WrkResult(
        target=target,
        url=url,
        requests_per_second=float(rps.group(1)),
        p50=latency["50"],
        p99=latency["99"],
        requests=int(total.group(1)),
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors,
    )


def check_wrk(result: WrkResult) -> list[str]:
    """Problems worth printing: any non-2xx/3xx answer, any socket error."""
    problems = []
    if result.non_2xx_3xx:
        problems.append(f"{result.non_2xx_3xx} non-2xx/3xx responses")
    errors = sum(result.socket_errors.values())
    if errors:
        share = errors / max(1, result.requests)
        problems.append(f"socket errors {result.socket_errors} ({share:.3%} of requests)")
    return problems


def measure_throughput(settings: Settings, targets: dict[str, str]) -> list[WrkResult]:
    """Every target, interleaved, for `rounds` rounds: a warm-up then a measured run each."""
    results = []
    for round_ in range(1, settings.rounds + 1):
        for target, url in targets.items():
            run_wrk(settings.wrk, url, WARMUP_SECONDS)
            result = parse_wrk(target, url, run_wrk(settings.wrk, url, settings.duration))
            results.append(result)
            print(
                f"  round {round_}/{settings.rounds} {target:<7} "
                f"{result.requests_per_second:>10,.0f} req/s  p50 {ms(result.p50)}  "
                f"p99 {ms(result.p99)}"
            )
            for problem in check_wrk(result):
                print(f"    ! {target}: {problem}")
    return results


@dataclass
class Summary:
    """The median figures of one target over the rounds."""

    target: str
    requests_per_second: float
    p50: float
    p99: float


def summarize(results: list[WrkResult], targets: list[str]) -> dict[str, Summary]:
    summaries = {}
    for target in targets:
        runs = [r for r in results if r.target == target]
        summaries[target] = Summary(
            target,
            statistics.median(r.requests_per_second for r in runs),
            statistics.median(r.p50 for r in runs),
            statistics.median(r.p99 for r in runs),
        )
    return summaries


# -- wake cost --------------------------------------------------------------------------


@dataclass
class Wake:
    """One wake: the backend's own start-to-ready, and the first byte through siesta."""

    start_to_ready: float  # seconds
    ttfb: float  # seconds

    @property
    def cost(self) -> float:
        return self.ttfb - self.start_to_ready


def time_backend_start(procs: Processes, settings: Settings, backends: Path, log: Path) -> float:
    """Start the wrapper on a free port; seconds until it accepts a TCP connection."""
    port = free_port()
    began = time.perf_counter()
    proc = procs.start("backend", backend_command(backends, str(port)), log, backend_env(settings))
    try:
        deadline = began + BACKEND_START_TIMEOUT
        while not accepts(port):
            now = time.perf_counter()
            if proc.poll() is not None:
                raise RuntimeError(f"the backend exited with code {proc.returncode}:\n{tail(log)}")
            if now > deadline:
                raise TimeoutError(f"the backend did not accept within {BACKEND_START_TIMEOUT}s")
            time.sleep(CONNECT_POLL)
        return time.perf_counter() - began
    finally:
        procs.stop(proc, PROCESS_STOP_TIMEOUT)


def wait_asleep(siesta: Siesta) -> None:
    """Wait until the store says the session is ASLEEP (its idle timeout is short)."""

    def asleep() -> bool:
        if siesta.proc.poll() is not None:
            raise RuntimeError(f"siesta exited with code {siesta.proc.returncode}")
        return siesta.record().state is State.ASLEEP

    wait_until(asleep, ASLEEP_TIMEOUT, 0.005, f"session {SESSION!r} ASLEEP")


def first_byte(port: int, path: str, timeout: float = REQUEST_TIMEOUT) -> tuple[float, str]:
    """Seconds from connecting to 127.0.0.1:`port` to the first byte of the answer to
    `GET path`, and the answer's head."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: siesta-bench\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    began = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = sock.recv(65536)
        ttfb = time.perf_counter() - began
        while answer and b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    return ttfb, answer.split(b"\r\n\r\n", 1)[0].decode(errors="replace")


def cold_ttfb(port: int) -> float:
    """Seconds from connecting to siesta to the first byte of a cold `GET /s/bench/`;
    checks the answer is a 200 that says it woke the session."""
    ttfb, head = first_byte(port, f"/s/{SESSION}/")
    lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if not lines[0].startswith("HTTP/1.1 200") or headers.get("x-siesta-wake") != "cold":
        raise RuntimeError(f"a cold request through siesta got:\n{head}")
    return ttfb


def measure_wakes(
    procs: Processes, settings: Settings, siesta: Siesta, backends: Path, log: Path
) -> list[Wake]:
    """`wakes` times: the backend's own start, then a cold request through siesta."""
    wakes = []
    for i in range(1, settings.wakes + 1):
        start_to_ready = time_backend_start(procs, settings, backends, log)
        wait_asleep(siesta)
        wake = Wake(start_to_ready, cold_ttfb(siesta.port))
        wakes.append(wake)
        if i % 10 == 0 or i == settings.wakes:
            print(
                f"  wake {i}/{settings.wakes}: start-to-ready {ms(wake.start_to_ready)}, "
                f"ttfb {ms(wake.ttfb)}, cost {ms(wake.cost)}"
            )
    return wakes


def p95(values: list[float]) -> float:
    """The 95th percentile, nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


# -- report -----------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.3f} ms"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


@dataclass
class Report:
    """Everything measured, as written to results.json."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    backend: dict[str, Any]
    runs: list[WrkResult] = field(default_factory=list)
    medians: dict[str, Summary] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    wakes: list[Wake] = field(default_factory=list)
    wake_summary: dict[str, float] = field(default_factory=dict)
    wakes_tree: list[Wake] = field(default_factory=list)  # SIESTA_CGROUPS=off
    wake_summary_tree: dict[str, float] = field(default_factory=dict)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    log_problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("wakes", "wakes_tree"):
            data[key] = [
                {"start_to_ready": w.start_to_ready, "ttfb": w.ttfb, "cost": w.cost}
                for w in getattr(self, key)
            ]
        return data


def compute_ratios(medians: dict[str, Summary]) -> dict[str, float]:
    direct, nginx, siesta = medians["direct"], medians["nginx"], medians["siesta"]
    haproxy = medians["haproxy"]
    return {
        "siesta/nginx throughput": siesta.requests_per_second / nginx.requests_per_second,
        "siesta/nginx p99": siesta.p99 / nginx.p99,
        "siesta/haproxy throughput": siesta.requests_per_second / haproxy.requests_per_second,
        "siesta/haproxy p99": siesta.p99 / haproxy.p99,
        "nginx/direct throughput": nginx.requests_per_second / direct.requests_per_second,
        "haproxy/direct throughput": haproxy.requests_per_second / direct.requests_per_second,
        "siesta/direct throughput": siesta.requests_per_second / direct.requests_per_second,
    }


def summarize_wakes(wakes: list[Wake], siesta_wake_seconds: list[float]) -> dict[str, float]:
    costs = [w.cost for w in wakes]
    summary = {
        "cost_median": statistics.median(costs),
        "cost_p95": p95(costs),
        "ttfb_median": statistics.median(w.ttfb for w in wakes),
        "start_to_ready_median": statistics.median(w.start_to_ready for w in wakes),
        "count": len(wakes),
    }
    if siesta_wake_seconds:
        summary["siesta_wake_seconds_median"] = statistics.median(siesta_wake_seconds)
    return summary


def judge(report: Report) -> dict[str, dict[str, Any]]:
    ratios, wake = report.ratios, report.wake_summary
    return {
        "throughput >= 0.8x nginx": {
            "value": ratios["siesta/nginx throughput"],
            "pass": ratios["siesta/nginx throughput"] >= TARGET_THROUGHPUT,
        },
        "p99 <= 1.5x nginx": {
            "value": ratios["siesta/nginx p99"],
            "pass": ratios["siesta/nginx p99"] <= TARGET_P99,
        },
        "wake cost median < 10 ms": {
            "value": wake["cost_median"] * 1000,
            "pass": wake["cost_median"] * 1000 < TARGET_WAKE_MS,
        },
    }


def print_report(report: Report) -> None:
    s = report.settings
    print()
    print(
        f"Throughput and latency: wrk -t1 -c{CONNECTIONS}, {s['duration']}s runs after a "
        f"{WARMUP_SECONDS}s warm-up, {s['rounds']} round(s) interleaved, median per target"
    )
    print(f"{'target':<8} {'req/s':>12} {'p50':>12} {'p99':>12}")
    for summary in report.medians.values():
        print(
            f"{summary.target:<8} {summary.requests_per_second:>12,.0f} "
            f"{ms(summary.p50):>12} {ms(summary.p99):>12}"
        )
    targets = report.targets
    marks = {
        "siesta/nginx throughput": f"target >= {TARGET_THROUGHPUT}x  "
        + verdict(targets["throughput >= 0.8x nginx"]["pass"]),
        "siesta/nginx p99": f"target <= {TARGET_P99}x  "
        + verdict(targets["p99 <= 1.5x nginx"]["pass"]),
    }
    print()
    for name, value in report.ratios.items():
        print(f"{name:<26} {value:6.2f}x   {marks.get(name, '')}".rstrip())
    wake = report.wake_summary
    print()
    print(
        f"Wake cost over {int(wake['count'])} wakes (ttfb through siesta - backend start-to-ready)"
    )
    print(
        f"  wake cost   median {ms(wake['cost_median'])}  p95 {ms(wake['cost_p95'])}   "
        f"target median < {TARGET_WAKE_MS:g} ms  "
        + verdict(targets["wake cost median < 10 ms"]["pass"])
    )
    print(f"  cold ttfb through siesta     median {ms(wake['ttfb_median'])}")
    print(f"  backend start-to-ready alone median {ms(wake['start_to_ready_median'])}")
    print("  (both include starting bash for bench/nginx-backend.sh, so it cancels out)")
    if "siesta_wake_seconds_median" in wake:
        print(
            f"  siesta's own wake time       median {ms(wake['siesta_wake_seconds_median'])}"
            "  (WAKING -> AWAKE in its store: spawn + readiness polling)"
        )
    tree = report.wake_summary_tree
    if tree:
        print(
            f"  with SIESTA_CGROUPS=off      median {ms(tree['cost_median'])}  p95"
            f" {ms(tree['cost_p95'])}  (the process tree: no move into a cgroup v1, whose"
            " first move after a pause waits for an RCU grace period)"
        )


_PROBLEM = re.compile(
    r"\b(ERROR|WARNING|CRITICAL)\b|Traceback|Exception|exception"  # siesta's log
    r"|\[(emerg|alert|crit|error|warn)\]"  # nginx's, as the backends print it
)


@dataclass(frozen=True)
class Logs:
    """siesta's logs (one per run), and the backends' output under siesta and under us."""

    siesta_throughput: Path
    siesta_wake: Path
    siesta_wake_tree: Path
    backend_under_siesta: Path
    backend_alone: Path

    @classmethod
    def under(cls, tmp: Path) -> Logs:
        return cls(
            tmp / "siesta-throughput.log",
            tmp / "siesta-wake.log",
            tmp / "siesta-wake-tree.log",
            tmp / "state" / "logs" / f"{SESSION}.log",  # where siesta puts its output
            tmp / "backend-alone.log",
        )

    def all(self) -> list[Path]:
        return [
            self.siesta_throughput,
            self.siesta_wake,
            self.siesta_wake_tree,
            self.backend_under_siesta,
            self.backend_alone,
        ]


def log_problems(logs: list[Path]) -> list[str]:
    """Lines of the logs that report errors, warnings or tracebacks."""
    found = []
    for log in logs:
        with contextlib.suppress(OSError):
            for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
                if _PROBLEM.search(line):
                    found.append(f"{log.name}:{number}: {line.rstrip()}")
    return found


def save_logs(logs: list[Path]) -> None:
    """Keep siesta's and the backends' logs in bench/out/ for a look afterwards."""
    for log in logs:
        if log.exists():
            shutil.copyfile(log, OUT / log.name)
        else:
            (OUT / log.name).unlink(missing_ok=True)  # not a stale one from an earlier run


# -- main -------------------------------------------------------------------------------


def machine_info(settings: Settings) -> dict[str, Any]:
    wrk_version = subprocess.run(
        [settings.wrk, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.splitlines()
    return {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nginx": nginx_version(settings.nginx),
        "haproxy": haproxy_version(settings.haproxy),
        "wrk": wrk_version[0].strip() if wrk_version else "",
    }


@contextlib.contextmanager
def workspace() -> Iterator[tuple[Path, Processes]]:
    """A temp dir and a process registry, both cleaned up whatever happens."""
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="siesta-bench-"))
    try:
        yield tmp, procs
    finally:
        procs.stop_all()
        strays = reap_strays(str(tmp))
        if strays:
            print(f"bench: killed leftover backend processes {strays}")
        shutil.rmtree(tmp, ignore_errors=True)


def run_throughput(
    procs: Processes, settings: Settings, tmp: Path, report: Report, logs: Logs
) -> None:
    """Part 1: the same backend directly, behind nginx and behind siesta."""
    store, backends = tmp / "state" / "state.db", tmp / "backends"
    port = free_port()
    config = write_siesta_config(tmp / "siesta.yaml", settings, port, store, backends, "1h")
    siesta = start_siesta(procs, config, port, store, logs.siesta_throughput)
    record = wake_for_throughput(siesta)
    assert record.endpoint is not None
    backend = record.endpoint.port
    report.backend = {"port": backend, "pid": record.pid}
    proxy = start_proxy(procs, settings, tmp / "proxy", backend)
    haproxy = start_haproxy(procs, settings, tmp / "haproxy", backend)
    targets = {
        "direct": f"http://{HOST}:{backend}/",
        "nginx": f"http://{HOST}:{proxy}/",
        "haproxy": f"http://{HOST}:{haproxy}/",
        "siesta": f"http://{HOST}:{port}/s/{SESSION}/",
    }
    print(f"measuring {', '.join(f'{k} {v}' for k, v in targets.items())}")
    report.runs = measure_throughput(settings, targets)
    after = siesta.record()
    if after.pid != record.pid or after.state is not State.AWAKE:
        print(f"bench: ! the backend changed during the runs: {record} -> {after}")
    report.medians = summarize(report.runs, list(targets))
    report.ratios = compute_ratios(report.medians)
    print(f"stopping siesta: took {stop_siesta(procs, siesta):.2f}s")


def run_wake_cost(
    procs: Processes, settings: Settings, tmp: Path, report: Report, logs: Logs, *, cgroups: bool
) -> None:
    """Part 2: siesta restarted with a short idle timeout; cold requests against it. Run
    twice: as siesta runs by default (a cgroup per backend where it can), and with
    SIESTA_CGROUPS=off (the process tree), so what the cgroup costs a wake is seen."""
    store, backends = tmp / "state" / "state.db", tmp / "backends"
    port = free_port()
    config = write_siesta_config(
        tmp / "siesta-wake.yaml", settings, port, store, backends, WAKE_IDLE_TIMEOUT
    )
    log, env = logs.siesta_wake, {}
    if not cgroups:
        log, env = logs.siesta_wake_tree, {"SIESTA_CGROUPS": "off"}
    siesta = start_siesta(procs, config, port, store, log, env)
    print(
        f"measuring {settings.wakes} wakes (idle_timeout {WAKE_IDLE_TIMEOUT})"
        + ("" if cgroups else " with SIESTA_CGROUPS=off")
    )
    wakes = measure_wakes(procs, settings, siesta, backends, logs.backend_alone)
    summary = summarize_wakes(wakes, siesta.wake_seconds(len(wakes)))
    if cgroups:
        report.wakes, report.wake_summary = wakes, summary
    else:
        report.wakes_tree, report.wake_summary_tree = wakes, summary
    print(f"stopping siesta: took {stop_siesta(procs, siesta):.2f}s")


def exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that clean up


def main() -> int:
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    settings = Settings.from_env()
    OUT.mkdir(parents=True, exist_ok=True)
    report = Report(
        settings={
            "duration": settings.duration,
            "rounds": settings.rounds,
            "wakes": settings.wakes,
            "connections": CONNECTIONS,
            "warmup": WARMUP_SECONDS,
        },
        machine=machine_info(settings),
        backend={},
    )
    print(
        f"siesta bench on {report.machine['cpus']} CPUs, {report.machine['nginx']}, "
        f"HAProxy {report.machine['haproxy']}, "
        f"load average {report.machine['load_average'][0]:.2f}"
    )
    with workspace() as (tmp, procs):
        logs = Logs.under(tmp)
        try:
            run_throughput(procs, settings, tmp, report, logs)
            run_wake_cost(procs, settings, tmp, report, logs, cgroups=True)
            run_wake_cost(procs, settings, tmp, report, logs, cgroups=False)
        finally:
            procs.stop_all()
            report.log_problems = log_problems(logs.all())
            save_logs(logs.all())
    report.targets = judge(report)
    print_report(report)
    if report.log_problems:
        print("\nproblems in the logs of siesta and the backends:")
        for line in report.log_problems:
            print(f"  {line}")
    (OUT / "results.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    print(f"\nresults: {(OUT / 'results.json').relative_to(ROOT)}, logs in bench/out/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
