"""Real Docker for the tests (a pytest plugin, loaded by conftest.py).

- `docker_engine` (session-scoped): the Docker daemon at DOCKER_HOST or the default socket;
  when none answers, the tests start `dockerd` themselves (as CI does on a clean machine)
  and stop it at the end.
- `PrivateDockerd`: a second daemon of the tests' own (own sockets, folders and bridge), for
  tests that restart or kill dockerd: the shared one is never touched.
- `Engine`: a small synchronous Engine API client (httpx over the socket) with which tests
  check what siesta did, independently of the provider's own client.
- `build_test_image`: an image built here, FROM scratch with busybox-static (no registry is
  reachable, nothing is pulled): `/bin/serve` appends the session to /data/runs, writes
  /data/index.html ("<session> <hostname>") and serves /data with busybox httpd on $PORT;
  SIGTERM ends it at once.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

DEFAULT_SOCKET = "/var/run/docker.sock"
TEST_IMAGE = "siesta-test-busybox:1"

SERVE = """#!/bin/sh
trap 'exit 0' TERM
mkdir -p /data
echo "$SIESTA_SESSION" >> /data/runs
echo "$SIESTA_SESSION $HOSTNAME" > /data/index.html
echo "serving $SIESTA_SESSION on port ${PORT:-8080}"
httpd -f -p "${PORT:-8080}" -h /data &
wait
"""

DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY serve /bin/serve
CMD ["/bin/serve"]
"""


def busybox() -> Path:
    """busybox-static's binary (a static one: the image has no libc)."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.exists():
            return path
    raise AssertionError("busybox is missing: make test installs busybox-static")


class Engine:
    """The Docker Engine API over a unix socket or tcp (with TLS from DOCKER_CERT_PATH)."""

    def __init__(self, host: str, cert_path: Path | None = None):
        self.host = host
        if host.startswith("unix://"):
            transport = httpx.HTTPTransport(uds=host.removeprefix("unix://"))
            self.http = httpx.Client(transport=transport, base_url="http://docker", timeout=60)
        else:
            assert cert_path is not None, "tcp needs TLS here"
            cert = (str(cert_path / "cert.pem"), str(cert_path / "key.pem"))
            base = host.replace("tcp://", "https://")
            verify = str(cert_path / "ca.pem")
            self.http = httpx.Client(base_url=base, cert=cert, verify=verify, timeout=60)

    def ping(self) -> bool:
        try:
            return self.http.get("/_ping", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def containers(self, instance: str | None = None) -> list[dict[str, Any]]:
        """Every container (running or not), or those of one siesta instance."""
        label = f"siesta.instance={instance}" if instance else "siesta.instance"
        params = {"all": "true", "filters": f'{{"label": ["{label}"]}}'}
        answer = self.http.get("/containers/json", params=params)
        answer.raise_for_status()
        return list(answer.json())

    def inspect(self, container: str) -> dict[str, Any]:
        answer = self.http.get(f"/containers/{container}/json")
        answer.raise_for_status()
        return dict(answer.json())

    def post(self, path: str, **params: Any) -> httpx.Response:
        answer = self.http.post(path, params=params)
        assert answer.status_code < 400, answer.text
        return answer

    def create(self, name: str, body: dict[str, Any]) -> str:
        answer = self.http.post("/containers/create", params={"name": name}, json=body)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["Id"])

    def remove(self, container: str) -> None:
        self.http.delete(f"/containers/{container}", params={"force": "true"})

    def remove_volume(self, name: str) -> None:
        self.http.delete(f"/volumes/{name}", params={"force": "true"})

    def cleanup(self, instance: str) -> None:
        """Remove the containers of `instance`, and the volumes they labelled."""
        for item in self.containers(instance):
            self.remove(item["Id"])
        params = {"filters": f'{{"label": ["siesta.instance={instance}"]}}'}
        for volume in self.http.get("/volumes", params=params).json().get("Volumes") or []:
            self.remove_volume(volume["Name"])

    def build(self, tag: str, files: dict[str, bytes]) -> None:
        """`docker build` of a context made of `files` (name -> content, mode 0755)."""
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            for name, content in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(content), 0o755
                tar.addfile(info, io.BytesIO(content))
        answer = self.http.post(
            "/build",
            params={"t": tag, "rm": "true", "forcerm": "true"},
            content=data.getvalue(),
            headers={"Content-Type": "application/x-tar"},
            timeout=300,
        )
        assert answer.status_code == 200, answer.text
        assert '"errorDetail"' not in answer.text, answer.text

    def has_image(self, tag: str) -> bool:
        return self.http.get(f"/images/{tag}/json").status_code == 200


def build_test_image(engine: Engine, tag: str = TEST_IMAGE) -> str:
    """Build the busybox test image into `engine`'s daemon (once per daemon)."""
    if not engine.has_image(tag):
        files = {
            "Dockerfile": DOCKERFILE.encode(),
            "busybox": busybox().read_bytes(),
            "serve": SERVE.encode(),
        }
        engine.build(tag, files)
    return tag


def wait_until(check: Any, timeout: float, what: str) -> Any:
    """Poll `check` until truthy, or fail after `timeout` seconds."""
    deadline, delay = time.monotonic() + timeout, 0.01
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(0.2, delay * 1.5)


def _default_host() -> str:
    return os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The Docker daemon the tests use; started here when none answers."""
    engine = Engine(_default_host())
    started: subprocess.Popen[bytes] | None = None
    if not engine.ping():
        if not shutil.which("dockerd"):
            raise AssertionError("dockerd is missing: make test installs docker.io")
        log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
        with open(log, "wb") as out:
            started = subprocess.Popen(
                ["dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_until(lambda: started.poll() is not None or engine.ping(), 60, "dockerd")
        except AssertionError:
            started.kill()
            raise
        if started.poll() is not None:
            raise AssertionError(f"dockerd exited:\n{log.read_text()[-3000:]}")
    build_test_image(engine)
    yield engine
    if started is not None:
        started.terminate()
        try:
            started.wait(60)
        except subprocess.TimeoutExpired:
            started.kill()


class PrivateDockerd:
    """A dockerd of the tests' own, on a unix socket and on tcp with TLS (both answer).

    Its containers use a bridge made here (`--iptables=false`: ports are published by
    Docker's proxy on 127.0.0.1 alone), so it never touches the shared daemon's network.
    """

    def __init__(self, tls_port: int):
        self.root = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))  # short: socket paths
        self.socket = self.root / "docker.sock"
        self.tls_port = tls_port
        self.bridge = f"sdt{random.randrange(10**6)}"
        self.certs = self.root / "certs"
        self.proc: subprocess.Popen[bytes] | None = None
        self.engine = Engine(f"unix://{self.socket}")
        _make_certs(self.certs)
        subnet = f"10.213.{random.randrange(1, 254)}"
        for command in (
            ["ip", "link", "add", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", f"{subnet}.1/24", "dev", self.bridge],
            ["ip", "link", "set", self.bridge, "up"],
        ):
            subprocess.run(command, check=True, capture_output=True)

    @property
    def env(self) -> dict[str, str]:
        """What a client needs to reach it over tcp with TLS."""
        return {
            "DOCKER_HOST": f"tcp://127.0.0.1:{self.tls_port}",
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_CERT_PATH": str(self.certs),
        }

    def start(self) -> None:
        c = self.certs
        args = [
            "dockerd",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'docker.pid'}",
            f"--host=unix://{self.socket}",
            f"--host=tcp://127.0.0.1:{self.tls_port}",
            "--tlsverify",
            f"--tlscacert={c / 'ca.pem'}",
            f"--tlscert={c / 'server-cert.pem'}",
            f"--tlskey={c / 'server-key.pem'}",
            f"--bridge={self.bridge}",
            "--iptables=false",
            "--ip-masq=false",
            f"--cgroup-parent=/{self.bridge}",
        ]
        with open(self.root / "dockerd.log", "ab") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        proc = self.proc
        wait_until(lambda: proc.poll() is not None or self.engine.ping(), 60, "private dockerd")
        if proc.poll() is not None:
            raise AssertionError(f"private dockerd exited:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the daemon with `sig` (SIGKILL leaves its containers' processes running)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)
        self.proc = None

    def log(self) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")[-4000:]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            for item in self.engine.containers():
                self.engine.remove(item["Id"])
        self.stop()
        for mount in reversed(_mounts_under(self.root)):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    return [p for p in points if p == str(root) or p.startswith(f"{root}/")]


def _make_certs(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
    folder.mkdir(parents=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca-key.pem", "-out", "ca.pem")  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject in (("server", "/CN=127.0.0.1"), ("client", "/CN=siesta")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
            "-keyout", f"{name}-key.pem", "-out", f"{name}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
            "-out", f"{name}-cert.pem")  # fmt: skip
    shutil.copy(folder / "client-cert.pem", folder / "cert.pem")
    shutil.copy(folder / "client-key.pem", folder / "key.pem")
