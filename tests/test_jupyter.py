"""The Jupyter preset against a real Jupyter Server (from PyPI) behind a real siesta: a
kernel busy in a long `time.sleep` keeps its silent session awake; once the kernel is
idle, the policy puts the session to sleep."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from siesta.core.model import State

from .conftest import Launcher, SiestaProcess, wait_for

pytest.importorskip("jupyter_server")
pytest.importorskip("ipykernel")

TOKEN = "siesta-test-token"
BUSY_SECONDS = 6.0  # three times the policy's idle threshold: silent, yet busy
RULE = 'app.ok && app.busy_kernels == 0 && idle_for > duration("2s")'


def jupyter_template(root: Path) -> dict[str, Any]:
    """Jupyter Server on {port}, its token in JUPYTER_TOKEN (read by Jupyter and by siesta)."""
    runtime = root / ".runtime"
    return {
        "command": [
            sys.executable,
            "-m",
            "jupyter_server",
            "--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.open_browser=False",
            "--allow-root",  # CI runs as root
        ],
        "env": {
            "JUPYTER_TOKEN": TOKEN,
            "JUPYTER_RUNTIME_DIR": str(runtime),
            "JUPYTER_DATA_DIR": str(root / ".data"),
            "JUPYTER_CONFIG_DIR": str(root / ".config"),
            "IPYTHONDIR": str(root / ".ipython"),
        },
        "ready": {"tcp": True},
        "stop_grace": "5s",
        "policy": "notebooks",
        "activity": {"preset": "jupyter", "every": "500ms", "timeout": "2s"},
    }


def execute_request(code: str) -> dict[str, Any]:
    """A Jupyter messaging protocol execute_request for the shell channel."""
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "username": "test",
            "session": uuid.uuid4().hex,
            "version": "5.3",
            "date": "",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        "channel": "shell",
        "buffers": [],
    }


def next_reply(ws: ClientConnection, msg_id: str, wanted: str, timeout: float) -> dict[str, Any]:
    """The next message answering `msg_id` whose type (or status) is `wanted`."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {wanted} for {msg_id} within {timeout}s"
        message = json.loads(ws.recv(timeout=left))
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = message["header"]["msg_type"]
        if kind == wanted or (kind == "status" and message["content"]["execution_state"] == wanted):
            return message


def assert_awake_until_reply(run: SiestaProcess, ws: ClientConnection, msg_id: str) -> int:
    """Poll the session's state until the kernel's execute_reply; it must stay AWAKE."""
    checks = 0
    deadline = time.monotonic() + BUSY_SECONDS + 20
    while True:
        assert run.state("nb") is State.AWAKE, "the session slept while its kernel was busy"
        checks += 1
        try:
            message = json.loads(ws.recv(timeout=0.25))
        except TimeoutError:
            assert time.monotonic() < deadline, "the kernel never answered"
            continue
        parent = message.get("parent_header", {}).get("msg_id")
        if parent == msg_id and message["header"]["msg_type"] == "execute_reply":
            assert message["content"]["status"] == "ok"
            return checks


def test_a_busy_kernel_keeps_its_session_awake_and_an_idle_one_sleeps(
    siesta: Launcher, tmp_path: Path
) -> None:
    """A kernel in time.sleep(6) sends nothing for 6s, three times the idle threshold:
    busy_kernels == 1 keeps the session awake; once idle, it sleeps by the policy."""
    root = tmp_path / "notebooks"
    root.mkdir()
    run = siesta(
        templates={"notebook": jupyter_template(root)},
        sessions={"nb": {"template": "notebook"}},
        policies={"notebooks": {"sleep_when": RULE, "check_every": "500ms"}},
    )
    auth = {"Authorization": f"token {TOKEN}"}
    with httpx.Client(headers=auth, timeout=30) as http:
        created = http.post(run.url("nb", "/api/kernels"), json={"name": "python3"})
        assert created.status_code == 201, created.text
        kernel = created.json()["id"]
        channels = run.url("nb", f"/api/kernels/{kernel}/channels").replace("http", "ws", 1)
        with connect(f"{channels}?token={TOKEN}", open_timeout=20) as ws:
            warm_up = execute_request("1 + 1")  # the kernel has started once this is answered
            ws.send(json.dumps(warm_up))
            next_reply(ws, warm_up["header"]["msg_id"], "execute_reply", timeout=30)
            busy = execute_request(f"import time; time.sleep({BUSY_SECONDS})")
            ws.send(json.dumps(busy))
            msg_id = busy["header"]["msg_id"]
            next_reply(ws, msg_id, "busy", timeout=10)
            started = time.monotonic()
            checks = assert_awake_until_reply(run, ws, msg_id)
            assert time.monotonic() - started >= BUSY_SECONDS - 0.5
            assert checks > 10
            idle_at = time.monotonic()
        wait_for(lambda: run.state("nb") is State.ASLEEP, timeout=20, what="nb to sleep")
    slept = run.events("nb")[-1]
    assert time.monotonic() - idle_at >= 2.0
    assert slept.old is State.STOPPING
    stopping = next(e for e in reversed(run.events("nb")) if e.new is State.STOPPING)
    assert stopping.reason.startswith(f"sleep_when: {RULE}")
    assert "busy_kernels: 0" in stopping.reason
    assert "ok: true" in stopping.reason.lower()
