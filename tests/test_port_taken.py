"""A backend whose port is taken before it binds it (another process won the race for
the port siesta drew) is started again on another port, within the same wake: the
request is served, not answered 503. Real processes and real sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

import httpx

from .conftest import BACKEND, Launcher, backend_template

SQUATTER = """
import os, socket, subprocess, sys
port, holder, backend = sys.argv[1], sys.argv[2], sys.argv[3:]
if not os.path.exists(holder):
    # the first start: another process takes the port first, so the backend's bind fails
    squat = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, sys, time\\n"
         "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\\n"
         "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(1)\\n"
         "print('bound', flush=True); time.sleep(600)", port],
        stdout=subprocess.PIPE, start_new_session=True,
    )
    squat.stdout.readline()
    with open(holder, "w") as f:
        f.write(str(squat.pid))
os.execv(sys.executable, [sys.executable, *backend])
"""
"""Runs tests/backend.py on {port}; on its first run, a detached process binds that port
first (its pid written to `holder`), so the backend fails with EADDRINUSE."""


def test_a_port_taken_before_the_backend_binds_it_is_retried_on_another(
    siesta: Launcher, tmp_path: Path
) -> None:
    holder = tmp_path / "squatter.pid"
    command = [
        sys.executable,
        "-c",
        SQUATTER,
        "{port}",
        str(holder),
        BACKEND,
        "{port}",
        "{session}",
    ]
    run = siesta(templates={"web": backend_template(command=command)})
    try:
        answer = httpx.get(run.url("alice"), timeout=60)
        assert answer.status_code == 200, f"{answer.text}\n{run.output()}"
        assert answer.headers["x-siesta-wake"] == "cold"
        assert holder.exists()  # the first start did meet a taken port
        assert "was taken before it could bind it" in run.output()
        assert "start failed" not in run.output()
    finally:
        if holder.exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(holder.read_text()), signal.SIGKILL)
