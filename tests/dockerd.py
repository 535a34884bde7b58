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
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

DEFAULT_SOCKET = "/var/run/docker.sock"
REAPER = str(Path(__file__).with_name("reaper.py"))
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


def busybox() -> Path:
    """busybox-static's binary (a static one: the image has no libc)."""
    found = shutil.which("busybox")
    if found is None:
        raise AssertionError("busybox is missing: make test installs busybox-static")
    path = Path(found)
    if b"ld-linux" in path.read_bytes()[:8192]:  # an ELF interpreter: dynamically linked
        raise AssertionError(f"{path} is not static: install busybox-static instead of busybox")
    return path


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

    def import_image(self, tag: str, rootfs: bytes, cmd: list[str]) -> None:
        """`docker import` of a root filesystem tar as `tag`, with `cmd` as its CMD."""
        repo, _, version = tag.partition(":")
        params = {"fromSrc": "-", "repo": repo, "tag": version, "changes": f"CMD {json.dumps(cmd)}"}
        answer = self.http.post(
            "/images/create",
            params=params,
            content=rootfs,
            headers={"Content-Type": "application/x-tar"},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        assert '"errorDetail"' not in answer.text, answer.text
        if not self.has_image(tag):  # Podman's import tags it `latest`, whatever it is asked
            self.post(f"/images/{repo}/tag", repo=repo, tag=version)

    def has_image(self, tag: str) -> bool:
        return self.http.get(f"/images/{tag}/json").status_code == 200


def build_test_image(engine: Engine, tag: str = TEST_IMAGE) -> str:
    """Make the busybox test image in `engine`'s daemon (once per daemon), by importing a
    root filesystem made here: /bin/busybox, a link to it for each applet, /bin/serve."""
    if not engine.has_image(tag):
        engine.import_image(tag, _rootfs(), ["/bin/serve"])
    return tag


def _rootfs() -> bytes:
    binary = busybox()
    applets = subprocess.run(
        [str(binary), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for folder in ("bin", "tmp"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        for name, content in (("bin/busybox", binary.read_bytes()), ("bin/serve", SERVE.encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o755
            tar.addfile(info, io.BytesIO(content))
        for applet in applets:
            if applet not in ("busybox", "serve"):
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
    return data.getvalue()


def wait_until(check: Any, timeout: float, what: str) -> Any:
    """conftest's `wait_for` (imported here, not at the top: conftest imports this module)."""
    from .conftest import wait_for

    return wait_for(check, timeout, what)


def _default_host() -> str:
    return os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"


def ensure_dockerd(log: Path) -> tuple[Engine, subprocess.Popen[bytes] | None]:
    """The Docker daemon at DOCKER_HOST or the default socket, and the `dockerd` process
    started here (its output in `log`) when none answered; None when one was running."""
    engine = Engine(_default_host())
    if engine.ping():
        return engine, None
    if not shutil.which("dockerd"):
        raise AssertionError("dockerd is missing: make test installs docker.io")
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
    return engine, started


def stop_dockerd(started: subprocess.Popen[bytes] | None) -> None:
    """Stop a dockerd `ensure_dockerd` started (nothing when it found one running)."""
    if started is None:
        return
    started.terminate()
    try:
        started.wait(60)
    except subprocess.TimeoutExpired:
        started.kill()


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The Docker daemon the tests use; started here when none answers."""
    engine, started = ensure_dockerd(tmp_path_factory.mktemp("dockerd") / "dockerd.log")
    build_test_image(engine)
    yield engine
    stop_dockerd(started)


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
        self.proc: subprocess.Popen[bytes] | None = None  # the reaper dockerd runs under
        self.reapers: list[subprocess.Popen[bytes]] = []
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
                [sys.executable, REAPER, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.reapers.append(self.proc)
        proc = self.proc
        wait_until(lambda: proc.poll() is not None or self.engine.ping(), 60, "private dockerd")
        if proc.poll() is not None:
            raise AssertionError(f"private dockerd exited:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the daemon: SIGTERM lets it stop its containers and containerd; SIGKILL
        kills dockerd alone, as a crash would (containers keep running until the next
        dockerd starts). Returns once dockerd and its containerd are gone."""
        if self.proc is None:
            return
        if sig == signal.SIGKILL:
            containerd = _pid_in(self.root / "exec" / "containerd" / "containerd.pid")
            dockerd = _pid_in(self.root / "docker.pid")
            if dockerd is not None:
                os.kill(dockerd, signal.SIGKILL)
            gone = [p for p in (dockerd, containerd) if p is not None]
            wait_until(lambda: not any(psutil.pid_exists(p) for p in gone), 30, "dockerd gone")
        else:
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
        for reaper in self.reapers:  # still waiting for a shim: its container is gone now
            if reaper.poll() is None:
                reaper.kill()
                reaper.wait(10)
        for mount in reversed(_mounts_under(self.root)):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    return [p for p in points if p == str(root) or p.startswith(f"{root}/")]


def _make_certs(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
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
    shutil.copy(folder / "client-cert.pem", folder / "cert.pem")
    shutil.copy(folder / "client-key.pem", folder / "key.pem")
