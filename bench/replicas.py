"""Benchmark the Redis store against the SQLite one, and three replicas in a storm.

Everything runs on 127.0.0.1 with a redis-server started here (Debian's, on a free port,
no persistence), as the tests do:

* Throughput through one replica, side by side: two siesta processes, one on a SQLite
  store and one on Redis, each in front of its own copy of the same backend (one nginx
  worker answering ``hello\\n``, bench/nginx-backend.sh). wrk (1 thread, 64 keep-alive
  connections) is pointed at each in turn, interleaved over BENCH_ROUNDS rounds (default
  5) of BENCH_DURATION seconds (default 10) after a 2 s warm-up; the medians are compared.
  Redis' own count of the commands it processed (INFO stats) is read before and after
  each run on the Redis replica and compared with an idle stretch of the same length:
  the hot path sends nothing to Redis, so the two rates are the same (heartbeats and
  the once-a-second activity exchange), whatever the number of requests.
* Wake overhead, side by side: BENCH_REPLICA_WAKES rounds (default 100). Each round, on
  each replica in turn (alternating which goes first), puts the session to sleep (admin
  API), waits 0.3 s, sends a cold ``GET /s/bench/`` and takes the time to the first
  byte of its 200 answer, then waits 0.3 s again (a wake right after the other
  replica's is ~10 ms slower on this machine: the quiet keeps the pair fair). The Redis
  store's overhead = the median of the rounds' (Redis - SQLite), paired so that the
  machine's drift cancels out (the backend's own start is in both); also reported with
  the order of the pair taken out.
* A storm over three replicas: BENCH_STORM sleeping sessions (default 300) of a tiny
  backend (tests/tiny_backend.py), each asked through two replicas at once. Reported:
  sessions woken, errors (anything but a 200), duplicates (a session answered by two
  backends, or more backends started than sessions), the wall time until every request
  was answered, per-request p50 / p95 / max; then the replicas are stopped and no
  backend may be left.

Targets (informational, a MISS never fails the run): Redis' throughput >= 0.95x
SQLite's, wake overhead <= +2 ms, the storm with 0 errors and 0 duplicates. Results go
to bench/out/replicas.json, the logs beside it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from run import (
    CONNECTIONS,
    HOST,
    OUT,
    ROOT,
    SESSION,
    WARMUP_SECONDS,
    Processes,
    Settings,
    accepts,
    backend_command,
    cold_ttfb,
    ms,
    p95,
    parse_wrk,
    run_wrk,
    verdict,
    wait_until,
)

sys.path.insert(0, str(ROOT))
from tests.redis_server import RedisServer

TOKEN = "bench-token-0123456789"
TINY = ROOT / "tests" / "tiny_backend.py"
THROUGHPUT_ROUNDS = 5  # unless BENCH_ROUNDS says: single rounds vary by +-25% here
TARGET_THROUGHPUT = 0.95  # Redis req/s >= this x SQLite's
TARGET_WAKE_MS = 2.0  # Redis' cold first byte at most this much later than SQLite's
STOP_TIMEOUT = 120.0
QUIET = 0.3  # seconds between a sleep and the next wake, and after a wake


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    return int(text) if text else default


# -- siesta processes -------------------------------------------------------------------


@dataclass
class Replica:
    """One running `siesta up`."""

    name: str
    port: int
    admin: int
    log: Path

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://{HOST}:{self.admin}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def nginx_template(settings: Settings, backends: Path, idle: str = "1h") -> dict[str, Any]:
    return {
        "command": backend_command(backends, "{port}"),
        "ready": {"tcp": True},
        "idle_timeout": idle,
        "stop_grace": "5s",
        "env": {"BENCH_NGINX": settings.nginx},
    }


def start_replica(
    procs: Processes, folder: Path, name: str, store: Any, config: dict[str, Any]
) -> Replica:
    """`siesta up` with `config` (templates, sessions) on `store`, listening on free ports;
    returned once its gateway accepts connections."""
    folder.mkdir(parents=True, exist_ok=True)
    port, admin = free_port(), free_port()
    whole = {
        "gateway": {
            "listen": f"{HOST}:{port}",
            "admin_listen": f"{HOST}:{admin}",
            "wake_timeout": "300s",
            "wake_rate": "off",  # one client waking the same sessions again and again
        },
        "store": store,
        **config,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(whole))
    log = folder / f"{name}.log"
    env = {
        **os.environ,
        "SIESTA_ADMIN_TOKEN": TOKEN,
        "COLUMNS": "200",
        "SIESTA_TEST_STARTS": str(folder / "starts.txt"),
    }
    argv = [sys.executable, "-m", "siesta", "up", "-c", str(path)]
    proc = procs.start("siesta", argv, log, env)

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}: see {log}")
        return accepts(port)

    wait_until(listening, 60, 0.02, f"{name} listening")
    return Replica(name, port, admin, log)


def redis_commands(server: RedisServer) -> int:
    """Commands Redis has processed since it started."""
    return int(server.client().info("stats")["total_commands_processed"])


# -- part 1: throughput -------------------------------------------------------------------


def measure_throughput(
    settings: Settings, replicas: dict[str, Replica], server: RedisServer
) -> dict[str, Any]:
    """wrk against each replica in turn, `rounds` times; the Redis commands seen meanwhile."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in replicas}
    for round_ in range(1, settings.rounds + 1):
        for name, replica in replicas.items():
            url = f"http://{HOST}:{replica.port}/s/{SESSION}/"
            run_wrk(settings.wrk, url, WARMUP_SECONDS)
            before, began = redis_commands(server), time.monotonic()
            result = parse_wrk(name, url, run_wrk(settings.wrk, url, settings.duration))
            commands, took = redis_commands(server) - before, time.monotonic() - began
            runs[name].append(
                {
                    "requests_per_second": result.requests_per_second,
                    "p50": result.p50,
                    "p99": result.p99,
                    "requests": result.requests,
                    "errors": result.non_2xx_3xx + sum(result.socket_errors.values()),
                    "redis_commands_per_second": commands / took,
                }
            )
            redis = f"  Redis {commands / took:5.1f} commands/s" if name == "redis" else ""
            print(
                f"  round {round_}/{settings.rounds} {name:<6} "
                f"{result.requests_per_second:>10,.0f} req/s  p50 {ms(result.p50)}  "
                f"p99 {ms(result.p99)}{redis}"
            )
    before, began = redis_commands(server), time.monotonic()
    time.sleep(settings.duration)
    idle = (redis_commands(server) - before) / (time.monotonic() - began)
    medians = {
        name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for name, rs in runs.items()
    }
    return {
        "runs": runs,
        "medians": medians,
        "redis_commands_per_second_idle": idle,
        "throughput_ratio": medians["redis"]["requests_per_second"]
        / medians["sqlite"]["requests_per_second"],
        "p99_ratio": medians["redis"]["p99"] / medians["sqlite"]["p99"],
    }


# -- part 2: wake overhead ----------------------------------------------------------------


def measure_wakes(replicas: dict[str, Replica], rounds: int) -> dict[str, Any]:
    """Cold first byte on each replica, paired round by round, alternating the order.
    Each wake comes right after its own session was put to sleep, so that both see the
    same moment (a wake that follows the other replica's wake is faster)."""
    seen: dict[str, list[float]] = {name: [] for name in replicas}
    apis = {name: r.api() for name, r in replicas.items()}
    try:
        for i in range(rounds):
            order = list(replicas) if i % 2 == 0 else list(reversed(replicas))
            for name in order:
                apis[name].post(f"/api/sessions/{SESSION}/sleep").raise_for_status()
                time.sleep(QUIET)  # the stop's aftermath (reaping, store writes) is over
                seen[name].append(cold_ttfb(replicas[name].port))
                time.sleep(QUIET)  # and the wake's, before the other replica's turn
            if (i + 1) % 10 == 0:
                print(
                    f"  round {i + 1}/{rounds}: sqlite {ms(seen['sqlite'][-1])}, "
                    f"redis {ms(seen['redis'][-1])}"
                )
    finally:
        for api in apis.values():
            api.close()
    added = [r - s for r, s in zip(seen["redis"], seen["sqlite"], strict=True)]
    result: dict[str, Any] = {
        name: figures(values) for name, values in {**seen, "redis_minus_sqlite": added}.items()
    }
    # the order of the two wakes in a round matters little once they are apart, but it is
    # taken out: the mean of the medians with SQLite first and with Redis first
    first = [added[i] for i in range(0, rounds, 2)]
    second = [added[i] for i in range(1, rounds, 2)]
    if first and second:
        balanced = (statistics.median(first) + statistics.median(second)) / 2
        result["redis_minus_sqlite"]["order_balanced_ms"] = balanced * 1000
    result["raw_seconds"] = seen
    return result


def figures(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(values) * 1000,
        "p95_ms": p95(values) * 1000,
        "min_ms": min(values) * 1000,
        "n": len(values),
    }


# -- part 3: the storm ------------------------------------------------------------------


def storm(replicas: list[Replica], folder: Path, sessions: list[str]) -> dict[str, Any]:
    """Every session asked through two replicas at once; errors, duplicates, times."""

    async def one(client: httpx.AsyncClient, url: str) -> tuple[float, int, str]:
        began = time.perf_counter()
        try:
            answer = await client.get(url)
        except httpx.HTTPError as exc:
            return time.perf_counter() - began, 0, type(exc).__name__
        return time.perf_counter() - began, answer.status_code, answer.text

    async def run() -> list[tuple[float, int, str]]:
        limits = httpx.Limits(max_connections=2 * len(sessions), max_keepalive_connections=0)
        timeout = httpx.Timeout(300, pool=None)
        urls = [
            f"http://{HOST}:{replicas[(n + k) % len(replicas)].port}/s/{sid}/"
            for n, sid in enumerate(sessions)
            for k in (0, 1)
        ]
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            return list(await asyncio.gather(*(one(client, url) for url in urls)))

    began = time.perf_counter()
    results = asyncio.run(run())
    wall = time.perf_counter() - began
    answered: dict[str, set[str]] = {}
    for _, status, text in results:
        if status == 200:
            answered.setdefault(text.split(" pid ")[0], set()).add(text)
    starts = folder / "starts.txt"
    started = [int(line.split()[0]) for line in starts.read_text().splitlines()]
    alive = [pid for pid in started if _running(pid)]
    times = [t for t, status, _ in results if status == 200]
    return {
        "sessions": len(sessions),
        "requests": len(results),
        "woken": len(answered),
        "errors": sum(1 for _, status, _ in results if status != 200),
        "duplicates": sum(len(pids) - 1 for pids in answered.values())
        + max(0, len(started) - len(sessions)),
        "backends_started": len(started),
        "backends_alive": len(alive),
        "wall_s": wall,
        **{k: v for k, v in figures(times).items() if k != "n"},
        "max_ms": max(times, default=0.0) * 1000,
    }


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- main -------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    t = report["throughput"]
    print(
        f"\nThroughput through one replica: wrk -t1 -c{CONNECTIONS}, "
        f"{report['settings']['duration']}s runs, {report['settings']['rounds']} rounds, medians"
    )
    for name, m in t["medians"].items():
        print(
            f"  {name:<6} {m['requests_per_second']:>10,.0f} req/s  p50 {ms(m['p50'])}  "
            f"p99 {ms(m['p99'])}"
        )
    ok = t["throughput_ratio"] >= TARGET_THROUGHPUT
    print(
        f"  redis/sqlite throughput {t['throughput_ratio']:.3f}x (target >= "
        f"{TARGET_THROUGHPUT}x): {verdict(ok)}; p99 {t['p99_ratio']:.2f}x"
    )
    loaded = t["medians"]["redis"]
    per_request = loaded["redis_commands_per_second"] / loaded["requests_per_second"]
    print(
        f"  Redis commands while the Redis replica served "
        f"{loaded['requests_per_second']:,.0f} req/s: {loaded['redis_commands_per_second']:.1f}/s "
        f"({per_request:.5f} a request); idle: {t['redis_commands_per_second_idle']:.1f}/s. "
        "The difference is the once-a-second activity exchange: none per request."
    )
    w = report["wakes"]
    print(f"\nWake, cold first byte over {w['sqlite']['n']} paired rounds (median / p95 / min)")
    for name in ("sqlite", "redis", "redis_minus_sqlite"):
        f = w[name]
        print(f"  {name:<18} {f['median_ms']:8.2f} / {f['p95_ms']:8.2f} / {f['min_ms']:8.2f} ms")
    added = w["redis_minus_sqlite"]["median_ms"]
    balanced = w["redis_minus_sqlite"].get("order_balanced_ms", added)
    print(
        f"  Redis adds {added:+.2f} ms at the median of paired rounds ({balanced:+.2f} ms "
        f"with the order of the pair taken out; target <= +{TARGET_WAKE_MS:g} ms): "
        f"{verdict(added <= TARGET_WAKE_MS)}"
    )
    s = report["storm"]
    ok = s["errors"] == 0 and s["duplicates"] == 0
    print(
        f"\nStorm over 3 replicas: {s['sessions']} sessions, {s['requests']} requests: "
        f"{s['woken']} woken, {s['errors']} errors, {s['duplicates']} duplicates "
        f"({verdict(ok)}); all answered in {s['wall_s']:.1f} s; per request p50 "
        f"{s['median_ms']:.0f} ms, p95 {s['p95_ms']:.0f} ms, max {s['max_ms']:.0f} ms; "
        f"{s['backends_left']} backends left after the replicas stopped"
    )


def main() -> int:
    settings = Settings.from_env()
    rounds_env = os.environ.get("BENCH_ROUNDS", "").strip()
    settings = replace(settings, rounds=int(rounds_env) if rounds_env else THROUGHPUT_ROUNDS)
    rounds = _env_int("BENCH_REPLICA_WAKES", 100)
    many = _env_int("BENCH_STORM", 300)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="siesta-bench-replicas-"))
    report: dict[str, Any] = {
        "settings": {"duration": settings.duration, "rounds": settings.rounds, "wakes": rounds},
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    server = RedisServer(tmp / "redis")
    server.start()
    procs = Processes()
    logs: list[Path] = []
    try:
        backends = tmp / "backends"
        config = {
            "templates": {"nginx": nginx_template(settings, backends)},
            "sessions": {SESSION: {"template": "nginx"}},
        }
        pair = {
            "sqlite": start_replica(
                procs, tmp / "sqlite", "sqlite", str(tmp / "sqlite" / "state.db"), config
            ),
            "redis": start_replica(
                procs, tmp / "redis-one", "redis", {"location": server.url}, config
            ),
        }
        logs += [r.log for r in pair.values()]
        for replica in pair.values():
            cold_ttfb(replica.port)  # awake for the throughput runs
        print("replicas bench: throughput through one replica, SQLite store vs Redis store")
        report["throughput"] = measure_throughput(settings, pair, server)
        print(f"replicas bench: wake overhead, {rounds} paired rounds")
        report["wakes"] = measure_wakes(pair, rounds)
        procs.stop_all()
        server.restart()  # the storm starts from an empty Redis

        sessions = [f"s{n:03d}" for n in range(many)]
        tiny = [sys.executable, "-S", str(TINY), "{port}", "{session}", "0"]
        folder = tmp / "storm"
        starts = {"SIESTA_TEST_STARTS": str(folder / "starts.txt")}  # each start, a line
        template = {"command": tiny, "idle_timeout": "1h", "stop_grace": "2s", "env": starts}
        storm_config = {
            "templates": {"tiny": template},
            "sessions": {sid: {"template": "tiny"} for sid in sessions},
        }
        three = [
            start_replica(procs, folder, f"r{n}", {"location": server.url}, storm_config)
            for n in range(3)
        ]
        logs += [r.log for r in three]
        print(f"replicas bench: a storm of {many} sessions over three replicas")
        report["storm"] = storm(three, folder, sessions)
        procs.stop_all()
        lines = (folder / "starts.txt").read_text().splitlines()
        started = [int(line.split()[0]) for line in lines]
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(_running(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        report["storm"]["backends_left"] = sum(1 for p in started if _running(p))
    finally:
        procs.stop_all()
        server.kill()
        for log in logs:
            if log.exists():
                shutil.copyfile(log, OUT / f"replicas-{log.name}")
        shutil.rmtree(tmp, ignore_errors=True)
    report["load_average_end"] = os.getloadavg()
    print_report(report)
    (OUT / "replicas.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {(OUT / 'replicas.json').relative_to(ROOT)}, logs in bench/out/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
