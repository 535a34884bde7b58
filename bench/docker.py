"""Benchmark the docker provider: what siesta adds to a container's start, and 100 at once.

Everything runs against the local dockerd (started here, as the tests do, when none
answers) with the busybox test image of tests/dockerd.py (imported from a busybox-static
root filesystem; nothing is pulled). Its /bin/serve starts busybox httpd at once.

* Wake time, side by side on the SAME container (the one siesta made for session
  ``bench``), interleaved for BENCH_DOCKER_WAKES rounds (default 20):
  (a) ``docker start`` alone through the Engine API: POST /containers/{id}/start, inspect
      for the published port, then GET / every 0.5 ms until it answers; (b) the same with
      the ``docker`` command line instead of the POST (it adds the CLI's own start-up);
      (c) a cold ``GET /s/bench/`` through siesta, to the first byte of its 200 answer.
      After (a) and (b) the container is stopped through the API; before (c) the
      session is asleep (admin API). siesta's cost = the median of the rounds' (c) - (a),
      paired so that the machine's drift cancels out.
* 100 sessions woken at once: 100 concurrent cold requests, each to its own session, first
  when their containers do not exist yet (create + start), then again after they all
  slept (start only). Reported: errors (anything but a 200), the wall time until all
  were served, and per-request p50 / p95 / max.

The target (siesta adds at most 10 ms at the median; 0 errors) is informational: a MISS
never fails the run. Results go to bench/out/docker.json, siesta's log beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml

from run import (
    OUT,
    ROOT,
    Processes,
    accepts,
    cold_ttfb,
    exit_on_sigterm,
    first_byte,
    ms,
    p95,
    verdict,
    wait_until,
)
from siesta.store.sqlite import SqliteStore

sys.path.insert(0, str(ROOT))
from tests.dockerd import (
    TEST_IMAGE,
    Engine,
    build_test_image,
    ensure_dockerd,
    stop_dockerd,
)

HOST = "127.0.0.1"
TOKEN = "bench-token-0123456789"
TARGET_ADDED_MS = 10.0
MANY = 100
POLL = 0.0005


def settings() -> tuple[int, int]:
    return int(os.environ.get("BENCH_DOCKER_WAKES", "20")), int(
        os.environ.get("BENCH_DOCKER_MANY", str(MANY))
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def write_config(folder: Path, port: int, admin: int, sessions: list[str]) -> Path:
    config = {
        "gateway": {
            "listen": f"{HOST}:{port}",
            "admin_listen": f"{HOST}:{admin}",
            "wake_timeout": "300s",
            "max_held_per_session": 10,
            "wake_rate": "off",  # one client wakes every session
        },
        "store": "state/state.db",
        "instance": f"bench-{os.getpid()}",
        "templates": {
            "box": {
                "provider": "docker",
                "image": TEST_IMAGE,
                "port": 8080,
                "idle_timeout": "1h",
                "stop_grace": "5s",
            }
        },
        "sessions": {sid: {"template": "box"} for sid in sessions},
    }
    path = folder / "siesta.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_siesta(procs: Processes, config: Path, port: int, log: Path) -> None:
    env = {**os.environ, "SIESTA_ADMIN_TOKEN": TOKEN, "COLUMNS": "200"}
    argv = [sys.executable, "-m", "siesta", "up", "-c", str(config)]
    proc = procs.start("siesta", argv, log, env)

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"siesta exited with code {proc.returncode}")
        return accepts(port)

    wait_until(listening, 60, 0.02, "siesta listening")


def answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/1.")
    except OSError:
        return False


def published_port(engine: Engine, container: str) -> int:
    info = engine.inspect(container)
    return int(info["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])


def start_alone(engine: Engine, container: str, start: Callable[[], None]) -> float:
    """Seconds from asking for the start to the first answer of GET /, then stopped."""
    began = time.perf_counter()
    start()
    port = published_port(engine, container)
    while not answers(port):
        time.sleep(POLL)
    took = time.perf_counter() - began
    engine.post(f"/containers/{container}/stop", t=5)
    return took


def admin(port: int) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://{HOST}:{port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=300,
    )


def measure_wakes(engine: Engine, port: int, api: httpx.Client, rounds: int) -> dict[str, Any]:
    cold_ttfb(port)  # makes the container
    container = engine.containers(f"bench-{os.getpid()}")[0]["Id"]
    docker = shutil.which("docker")
    cli = [docker or "docker", "-H", engine.host, "start", container]

    def api_start() -> None:
        engine.post(f"/containers/{container}/start")

    def cli_start() -> None:
        subprocess.run(cli, check=True, capture_output=True)

    seen: dict[str, list[float]] = {"api": [], "cli": [], "siesta": []}
    for i in range(rounds):
        api.post("/api/sessions/bench/sleep").raise_for_status()
        seen["api"].append(start_alone(engine, container, api_start))
        if docker is not None:
            seen["cli"].append(start_alone(engine, container, cli_start))
        seen["siesta"].append(cold_ttfb(port))
        if (i + 1) % 5 == 0:
            print(
                f"  round {i + 1}/{rounds}: docker start (API) {ms(seen['api'][-1])}, "
                f"siesta {ms(seen['siesta'][-1])}"
            )
    result: dict[str, Any] = {name: figures(v) for name, v in seen.items() if v}
    added = [c - a for c, a in zip(seen["siesta"], seen["api"], strict=True)]
    result["added"] = figures(added)  # paired: each round's siesta minus its docker start
    return result


def lifecycle_wakes(store: Path, rounds: int) -> dict[str, float]:
    """The lifecycle's own wake times of session `bench` (WAKING to AWAKE: start, inspect,
    readiness), as the store recorded them: the cold request's figure less this is the
    gateway's part."""
    db = SqliteStore(store)
    try:
        seconds = [e.wake_seconds for e in db.events("bench", limit=100_000) if e.wake_seconds]
    finally:
        db.close()
    return figures(seconds[-rounds:])


def figures(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(values) * 1000,
        "p95_ms": p95(values) * 1000,
        "min_ms": min(values) * 1000,
        "n": len(values),
    }


def wake_many(port: int, sessions: list[str]) -> dict[str, Any]:
    """Cold GETs to every session at once: errors, wall time, per-request latency."""

    def one(sid: str) -> tuple[float, bool]:
        try:
            took, head = first_byte(port, f"/s/{sid}/", timeout=300)
        except OSError:
            return 0.0, False
        return took, head.startswith("HTTP/1.1 200")

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(sessions)) as pool:
        results = list(pool.map(one, sessions))
    wall = time.perf_counter() - began
    times = [t for t, ok in results if ok]
    return {
        "sessions": len(sessions),
        "errors": sum(1 for _, ok in results if not ok),
        "wall_s": wall,
        **({k: v for k, v in figures(times).items() if k != "n"} if times else {}),
        "max_ms": max(times, default=0.0) * 1000,
    }


def main() -> int:
    signal.signal(signal.SIGTERM, exit_on_sigterm)  # the finally below cleans up
    rounds, many = settings()
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="siesta-bench-docker-"))
    engine, started = ensure_dockerd(tmp / "dockerd.log")
    build_test_image(engine)
    instance = f"bench-{os.getpid()}"
    procs = Processes()
    report: dict[str, Any] = {"rounds": rounds, "many": many, "load_average": os.getloadavg()}
    try:
        port, admin_port = free_port(), free_port()
        sessions = ["bench"] + [f"b{i:03d}" for i in range(many)]
        config = write_config(tmp, port, admin_port, sessions)
        start_siesta(procs, config, port, tmp / "siesta.log")
        with admin(admin_port) as api:
            print(f"docker bench: wake time of one container session, {rounds} rounds")
            report["wake"] = measure_wakes(engine, port, api, rounds)
            report["wake"]["lifecycle"] = lifecycle_wakes(tmp / "state" / "state.db", rounds)
            print(f"docker bench: {many} container sessions woken at once (create + start)")
            report["many_created"] = wake_many(port, sessions[1:])
            for sid in sessions[1:]:
                api.post(f"/api/sessions/{sid}/sleep").raise_for_status()
            print(f"docker bench: {many} container sessions woken at once (start)")
            report["many_started"] = wake_many(port, sessions[1:])
    finally:
        procs.stop_all()
        engine.cleanup(instance)
        stop_dockerd(started)
        shutil.copy(tmp / "siesta.log", OUT / "docker-siesta.log")
        shutil.rmtree(tmp, ignore_errors=True)
    print_report(report)
    (OUT / "docker.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {(OUT / 'docker.json').relative_to(ROOT)}")
    return 0


def print_report(report: dict[str, Any]) -> None:
    wake = report["wake"]
    print("\nwake time, first byte (median / p95 / min):")
    labels = {
        "api": "docker start (Engine API)",
        "cli": "docker start (CLI)",
        "siesta": "siesta, cold request",
        "lifecycle": "siesta's lifecycle alone",
    }
    for name, label in labels.items():
        if name in wake:
            w = wake[name]
            figures = f"{w['median_ms']:8.1f} / {w['p95_ms']:8.1f} / {w['min_ms']:8.1f} ms"
            print(f"  {label:28} {figures}")
    added = wake["added"]["median_ms"]
    ok = added <= TARGET_ADDED_MS
    print(
        f"  siesta adds {added:.1f} ms at the median of paired rounds "
        f"(target <= 10 ms): {verdict(ok)}"
    )
    for key in ("many_created", "many_started"):
        m = report[key]
        print(
            f"{m['sessions']} at once ({key.split('_')[1]}): {m['errors']} errors "
            f"({verdict(m['errors'] == 0)}), all served in {m['wall_s']:.1f} s, "
            f"p50 {m.get('median_ms', 0):.0f} ms, p95 {m.get('p95_ms', 0):.0f} ms, "
            f"max {m['max_ms']:.0f} ms"
        )


if __name__ == "__main__":
    sys.exit(main())
