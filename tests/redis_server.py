"""A real redis-server for the tests, on a free port, that a test can kill, restart, pause.

Debian's `redis-server` (installed by `make test` through scripts/system-packages.sh),
without persistence: a restart comes back empty, as a Redis without a volume does.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .conftest import accepts, free_port, wait_for


class RedisServer:
    """One redis-server process; `kill` is SIGKILL, `start` again comes back empty.

    With `password`, clients must AUTH; with `tls`, it listens with TLS only and asks
    clients for a certificate (`tls-auth-clients yes`, Redis' default), all signed by a
    CA made for the test (`certificates`)."""

    def __init__(self, folder: Path, *, password: str | None = None, tls: bool = False):
        self.folder = folder
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL siesta is given (no password in it: siesta reads that elsewhere)."""
        if not self.tls:
            return f"redis://127.0.0.1:{self.port}/0"
        certs = self.folder / "tls"
        query = (
            f"ssl_ca_certs={certs / 'ca.pem'}&ssl_certfile={certs / 'client-cert.pem'}"
            f"&ssl_keyfile={certs / 'client-key.pem'}"
        )
        return f"rediss://127.0.0.1:{self.port}/0?{query}"

    def _arguments(self) -> list[str]:
        listen = ["--port", str(self.port)]
        if self.tls:
            certs = self.folder / "tls"
            if not certs.exists():
                certificates(certs)
            listen = [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(certs / "server-cert.pem"),
                "--tls-key-file", str(certs / "server-key.pem"),
                "--tls-ca-cert-file", str(certs / "ca.pem"),
                "--tls-auth-clients", "yes",
            ]  # fmt: skip
        if self.password is not None:
            listen += ["--requirepass", self.password]
        return listen

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is missing: `make test` installs it (redis-server package)")
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    *self._arguments(),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self.folder),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(lambda: accepts(self.port), what="redis-server to listen")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP for the block, then SIGCONT: a Redis that accepts connections (the
        kernel completes them) and never answers, as a hung or swapping server does."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.proc.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        """A plain client, for what a test does to Redis itself (CONFIG, FLUSHALL)."""
        return redis.Redis.from_url(
            self.url, password=self.password, decode_responses=True, socket_timeout=10
        )

    def restart(self) -> None:
        """Kill -9, then start again on the same port: empty."""
        self.kill()
        self.start()


def certificates(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, by openssl
    (installed by `make test`)."""
    folder.mkdir(parents=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")
    run("req", "-x509", *key, "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca-key.pem", "-out", "ca.pem")  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject in (("server", "/CN=127.0.0.1"), ("client", "/CN=siesta")):
        run("req", *key, "-nodes", "-subj", subject,
            "-keyout", f"{name}-key.pem", "-out", f"{name}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
            "-out", f"{name}-cert.pem")  # fmt: skip


@contextlib.contextmanager
def running_redis(
    folder: Path, *, password: str | None = None, tls: bool = False
) -> Iterator[RedisServer]:
    server = RedisServer(folder, password=password, tls=tls)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test."""
    with running_redis(tmp_path / "redis") as server:
        yield server
