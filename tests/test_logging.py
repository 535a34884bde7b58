"""siesta's log: text or JSON, ISO times, fields, tracebacks only when asked, and
start-up errors that name what they are about (a real `siesta up` for most)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from siesta import logconfig

from .conftest import Launcher, backend_template, free_port, wait_for


def _log_to(stream: io.StringIO, log_format: logconfig.LogFormat, verbose: bool) -> None:
    listener = logconfig.start(log_format, stream, verbose)
    log = logging.getLogger("siesta.test")
    log.info(
        "alice: WAKING -> AWAKE in 0.52s (request GET /) " + "x" * 120,
        extra=logconfig.fields(session="alice", state="AWAKE", duration=0.52, reason="request"),
    )
    try:
        raise ValueError("the disk is full")
    except ValueError:
        log.exception("the activity flush failed")
    listener.stop()
    logging.getLogger().handlers.clear()


def test_json_lines_carry_the_fields_and_a_traceback_only_when_verbose() -> None:
    """One JSON object a line, ISO time with offset, the structured fields as keys; an
    exception is one `error` line, with `traceback` only at debug level."""
    for verbose in (False, True):
        out = io.StringIO()
        _log_to(out, "json", verbose)
        lines = out.getvalue().splitlines()
        assert len(lines) == 2
        woke, failed = (json.loads(line) for line in lines)
        assert datetime.fromisoformat(woke["time"]).utcoffset() is not None
        assert (woke["level"], woke["logger"]) == ("info", "siesta.test")
        assert (woke["session"], woke["state"], woke["duration"]) == ("alice", "AWAKE", 0.52)
        assert failed["error"] == "ValueError: the disk is full"
        assert ("traceback" in failed) is verbose
        if verbose:
            assert "Traceback (most recent call last)" in failed["traceback"]


def test_plain_text_outside_a_terminal_is_one_unwrapped_line_per_record() -> None:
    """Not a terminal: each record is one line (however long), starting with its ISO
    time and level, without padding; the exception is summed up on the same line."""
    out = io.StringIO()
    _log_to(out, "text", verbose=False)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    stamp, level, rest = lines[0].split(" ", 2)
    assert datetime.fromisoformat(stamp).utcoffset() is not None
    assert level == "INFO"
    assert rest.startswith("siesta.test: alice: WAKING -> AWAKE in 0.52s (request GET /) xxx")
    assert len(lines[0]) > 160
    assert "  " not in lines[0]
    assert lines[1].endswith(
        "ERROR siesta.test: the activity flush failed: ValueError: the disk is full"
    )
    verbose = io.StringIO()
    _log_to(verbose, "text", verbose=True)
    assert "Traceback (most recent call last)" in verbose.getvalue()


def test_fields_refuses_an_unknown_name() -> None:
    """A typo in a field name is caught where the log call is written."""
    with pytest.raises(TypeError, match="sesion"):
        logconfig.fields(sesion="alice")


@pytest.mark.parametrize("how", ["option", "environment"])
def test_siesta_up_logs_json(siesta: Launcher, how: str) -> None:
    """`--log-format json` or SIESTA_LOG_FORMAT=json: every line siesta writes is a JSON
    object, a wake among them with its session, state and duration."""
    if how == "option":
        run = siesta(args=("--log-format", "json"))
    else:
        run = siesta(env={"SIESTA_LOG_FORMAT": "json"})
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200

    def awake() -> dict[str, Any] | None:
        records = [json.loads(line) for line in run.output().splitlines()]
        return next((r for r in records if r.get("state") == "AWAKE"), None)

    record = wait_for(awake, what="the AWAKE record")
    assert record["session"] == "alice"
    assert record["old_state"] == "WAKING"
    assert record["duration"] > 0
    assert record["reason"] == "request GET /"
    run.stop()
    for line in run.output().splitlines():
        assert isinstance(json.loads(line), dict), line


def _up(tmp_path: Path, config: dict[str, Any], *prefix: str) -> subprocess.CompletedProcess[str]:
    """`siesta up` on `config` written to tmp_path, expected to fail at start."""
    path = tmp_path / "siesta.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "siesta", "up", "-c", str(path)]
    env = {**os.environ, "SIESTA_LOG_FORMAT": "text"}
    return subprocess.run(
        [*prefix, *command], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def _config(tmp_path: Path, **gateway: Any) -> dict[str, Any]:
    return {
        "gateway": {
            "listen": f"127.0.0.1:{free_port()}",
            "admin_listen": f"127.0.0.1:{free_port()}",
            **gateway,
        },
        "store": str(tmp_path / "state" / "state.db"),
        "templates": {"web": backend_template()},
        "sessions": {"alice": {"template": "web"}},
    }


def test_a_corrupt_database_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """A store that is not a SQLite file: exit 1 and one line with the file's path."""
    store = tmp_path / "state" / "state.db"
    store.parent.mkdir()
    store.write_bytes(b"this is not a database, just some bytes " * 100)
    result = _up(tmp_path, _config(tmp_path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"store {store}: not a SQLite database" in lines[0]


def test_a_taken_port_names_gateway_listen(tmp_path: Path) -> None:
    """The gateway's port taken: the error names gateway.listen and its address."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = _up(tmp_path, _config(tmp_path, listen=f"127.0.0.1:{port}"))
    assert result.returncode == 1
    assert f"gateway.listen 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_a_read_only_state_folder_is_named_as_such(tmp_path: Path) -> None:
    """The state folder on a read-only file system (a read-only tmpfs mounted in a
    mount namespace of the test's own; as root, permissions alone would not stop
    siesta): the error names the state folder, never gateway.listen."""
    state = tmp_path / "state"
    state.mkdir()
    if os.geteuid() == 0:
        mount = f'mount -t tmpfs -o ro tmpfs {state} && exec "$@"'
        prefix: tuple[str, ...] = ("unshare", "-m", "sh", "-c", mount, "sh")
    else:
        state.chmod(0o555)
        prefix = ()
    result = _up(tmp_path, _config(tmp_path), *prefix)
    assert result.returncode == 1
    assert f"state folder {state}: " in result.stderr
    assert "gateway.listen" not in result.stderr


def test_admin_listen_off_turns_the_admin_api_off(siesta: Launcher) -> None:
    """`admin_listen: off` (which YAML reads as false): siesta serves without an admin
    listener, and the CLI says the admin API is off instead of trying to reach it."""
    run = siesta(gateway={"admin_listen": False})
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    result = subprocess.run(
        [sys.executable, "-m", "siesta", "sessions", "list", "-c", str(run.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "the admin API is off (gateway.admin_listen: off)" in result.stderr
    assert "admin token" not in run.output()
