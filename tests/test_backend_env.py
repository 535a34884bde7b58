"""What a session's backend can reach (issue 9): its environment is built from an
allowlist and never holds siesta's secrets; it can run as another user, who cannot read
siesta's state folder; and the admin token is never printed, only its file's path."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from siesta.core.model import State
from siesta.providers.proctree import CgroupTracker
from siesta.providers.runas import RunAs, backend_env

from .conftest import Launcher, backend_template, wait_for

SECRET = "tok-do-not-leak-0123456789"


def environ_of(pid: int) -> dict[str, str]:
    """A process's environment as the kernel has it (/proc/<pid>/environ)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(): v.decode(errors="replace") for k, _, v in pairs}


def test_a_backend_gets_the_allowlist_and_never_a_siesta_secret(siesta: Launcher) -> None:
    """siesta runs with SIESTA_ADMIN_TOKEN and other variables set; its backend's
    environment (read from /proc) holds PATH, HOME, LANG, LC_*, TZ and what env_inherit
    adds, the template's env and siesta's own per-backend values, and nothing else: no
    SIESTA_ADMIN_TOKEN, no other SIESTA_*, no unlisted variable, the token's value nowhere."""
    template = backend_template(
        env_inherit=["PATH", "HOME", "LANG", "LC_*", "TZ", "MY_APP_*"],
        env={"GIVEN": "for {session}"},
    )
    run = siesta(
        templates={"web": template},
        env={
            "SIESTA_ADMIN_TOKEN": SECRET,
            "SIESTA_SOMETHING": "siesta's own",
            "LANG": "C.UTF-8",
            "LC_TIME": "C",
            "TZ": "UTC",
            "MY_APP_MODE": "fast",
            "CLOUD_SECRET_KEY": "not listed",
        },
    )
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    [pid] = run.backend_pids()
    env = environ_of(pid)
    assert "SIESTA_ADMIN_TOKEN" not in env
    assert "SIESTA_SOMETHING" not in env
    assert "CLOUD_SECRET_KEY" not in env
    assert SECRET not in "\0".join(f"{k}={v}" for k, v in env.items())
    assert env["PATH"] == os.environ["PATH"]
    assert env["LANG"] == "C.UTF-8"
    assert env["LC_TIME"] == "C"
    assert env["TZ"] == "UTC"
    assert env["MY_APP_MODE"] == "fast"
    assert env["GIVEN"] == "for alice"
    assert env["SIESTA_SESSION"] == "alice"
    assert env["PORT"].isdigit()
    assert "SIESTA_INSTANCE" in env
    assert "SIESTA_BASE_URL" in env
    own = {"SIESTA_SESSION", "SIESTA_BASE_URL", "SIESTA_INSTANCE", "PORT", "SIESTA_TEST_STARTS"}
    shell = {"PWD"}  # set by the /bin/sh that joins the session's cgroup, if it is used
    allowed = {"PATH", "HOME", "LANG", "TZ", "GIVEN", "MY_APP_MODE", *own, *shell}
    assert {k for k in env if not k.startswith("LC_")} <= allowed


def test_env_inherit_empty_passes_nothing_of_siesta() -> None:
    """`env_inherit: []` gives a backend only its template's env; `*` gives everything
    but siesta's own variables and the secrets siesta reads (the Redis password's)."""
    own = {"PATH": "/bin", "SIESTA_ADMIN_TOKEN": SECRET, "REDIS_PW": "pw", "X": "1"}
    assert backend_env(own, [], {"A": "b"}) == {"A": "b"}
    everything = backend_env(own, ["*"], {}, secrets={"REDIS_PW"})
    assert everything == {"PATH": "/bin", "X": "1"}


def test_a_backend_of_another_user_gets_that_users_home() -> None:
    """HOME, USER and LOGNAME describe the user the backend runs as, not siesta's."""
    nobody = RunAs.resolve("nobody", None)
    assert nobody is not None
    own = {"HOME": "/root", "USER": "root", "PATH": "/bin"}
    env = backend_env(own, ["HOME", "USER", "PATH"], {}, run_as=nobody)
    assert env == {"HOME": nobody.home, "USER": "nobody", "PATH": "/bin"}


def test_the_config_refuses_siesta_variables_and_unknown_users(tmp_path: Path) -> None:
    """A pattern naming SIESTA_* is refused (it would never be passed), as is a user or
    group that does not resolve, each with its key and line."""
    config = tmp_path / "siesta.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "templates": {
                    "a": {"command": ["x"], "env_inherit": ["PATH", "SIESTA_ADMIN_TOKEN"]},
                    "b": {"command": ["x"], "user": "no-such-user-here"},
                    "c": {"command": ["x"], "group": "nogroup"},
                    "d": {"image": "x", "port": 80, "provider": "docker", "env_inherit": []},
                }
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "siesta", "config", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    out = " ".join(result.stderr.split())
    assert "templates.a.env_inherit[1]: 'SIESTA_ADMIN_TOKEN': siesta's own SIESTA_*" in out
    assert "templates.b.user: unknown user 'no-such-user-here'" in out
    assert "templates.c.group: group needs user" in out
    assert "templates.d.env_inherit: not used by provider docker" in out


def test_the_docker_provider_passes_none_of_siestas_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A container's Env is the template's env and siesta's per-backend values only,
    whatever siesta's own environment holds."""
    from siesta.config import TemplateConf
    from siesta.providers.docker import DockerProvider

    monkeypatch.setenv("SIESTA_ADMIN_TOKEN", SECRET)
    monkeypatch.setenv("PATH", "/siesta/only")
    template = TemplateConf(provider="docker", image="lab", port=8888, env={"A": "1"})
    body = DockerProvider({"lab": template}, instance="test").create_body("alice", "lab")
    names = sorted(item.partition("=")[0] for item in body["Env"])
    assert names == ["A", "PORT", "SIESTA_BASE_URL", "SIESTA_SESSION"]
    assert SECRET not in str(body)


def test_the_admin_token_is_never_printed_only_its_path(siesta: Launcher) -> None:
    """At first start siesta makes the token file (0600, in a 0700 state folder) and its
    log names the file, never the token."""
    run = siesta()
    token_file = run.state_dir / "admin-token"
    wait_for(token_file.exists, what="the token file")
    token = wait_for(lambda: token_file.read_text().strip(), what="the token")
    assert httpx.get(run.url("alice"), timeout=30).status_code == 200
    run.stop()
    output = run.output()
    assert token not in output
    assert str(token_file) in output
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(run.state_dir.stat().st_mode) == 0o700


# -- backends as another user (tests run as root) ------------------------------------

SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's interpreter is under /root: not nobody's

WHOAMI = """
import http.server, json, os, sys
token = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            open(token).read()
            read = "read it"
        except OSError as exc:
            read = type(exc).__name__
        body = json.dumps({"uid": os.getuid(), "gid": os.getgid(),
                           "groups": os.getgroups(), "home": os.environ.get("HOME"),
                           "token": read}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _needs_root_and_system_python() -> None:
    if os.geteuid() != 0:
        pytest.skip("switching a backend's user needs root")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"no {SYSTEM_PYTHON} that another user can run")


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder other users may enter (pytest's tmp_path is root's alone), so that only
    the state folder's own mode keeps them out of it."""
    folder = Path(tempfile.mkdtemp(prefix="siesta-runas-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_backend_runs_as_nobody_and_cannot_read_siestas_files(
    siesta: Launcher, open_folder: Path
) -> None:
    """`user: nobody`: the backend's uid, gid and groups are nobody's (none of root's
    groups is kept), HOME is nobody's, it still runs in its session's cgroup, and the
    admin token file in siesta's 0700 state folder cannot be read by it."""
    _needs_root_and_system_python()
    token_file = open_folder / "state" / "admin-token"
    template = backend_template(
        command=[SYSTEM_PYTHON, "-c", WHOAMI, "{port}", str(token_file)], user="nobody"
    )
    run = siesta(templates={"web": template}, config_dir=open_folder)
    answer = httpx.get(run.url("alice"), timeout=30)
    assert answer.status_code == 200, answer.text
    seen: dict[str, Any] = answer.json()
    nobody = RunAs.resolve("nobody", None)
    assert nobody is not None
    assert (seen["uid"], seen["gid"]) == (nobody.uid, nobody.gid)
    assert 0 not in seen["groups"]
    assert seen["home"] == nobody.home
    assert token_file.read_text().strip()  # it is there: root reads it
    assert seen["token"] == "PermissionError"
    assert stat.S_IMODE((open_folder / "state").stat().st_mode) == 0o700
    [pid] = run.backend_pids()
    status = Path(f"/proc/{pid}/status").read_text()
    assert f"Uid:\t{nobody.uid}\t" in status
    probe = CgroupTracker.create(f"probe{os.getpid()}")
    if probe is not None:  # the wrapper, already nobody, joined the session's cgroup
        probe.close()
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        [cpuacct] = [line for line in lines if "cpuacct" in line.split(":")[1].split(",")]
        assert cpuacct.endswith("/alice")


def test_a_state_folder_open_to_others_is_refused_with_another_user(
    siesta: Launcher, open_folder: Path
) -> None:
    """With `user`, an existing state folder that others may read stops the start with
    one line saying what to do; siesta never changes the mode of a folder it did not make."""
    _needs_root_and_system_python()
    state = open_folder / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    template = backend_template(command=[SYSTEM_PYTHON, "-c", WHOAMI, "{port}", "x"], user="nobody")
    with pytest.raises(AssertionError, match="siesta exited with 1"):
        siesta(templates={"web": template}, config_dir=open_folder)
    log = " ".join((open_folder / "siesta-0.log").read_text().split())
    assert f"state folder {state} is open to other users (mode 0755)" in log
    assert f"chmod 700 {state}" in log
    assert stat.S_IMODE(state.stat().st_mode) == 0o755


def test_another_user_needs_siesta_to_run_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """siesta not running as root, with a template that runs as another user, stops at
    start naming the key (instead of failing at each wake), before it makes anything.
    The effective uid is faked (named as such): the venv's interpreter lives under
    /root, so no other user can run siesta here; everything else is real."""
    from siesta.app import Siesta, StartupError
    from siesta.config import load_config
    from siesta.providers import runas

    config = tmp_path / "siesta.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": "state/state.db",
                "templates": {"web": {"command": ["x"], "user": "daemon"}},
            }
        )
    )
    monkeypatch.setattr(runas.os, "geteuid", lambda: 1000)  # the fake: siesta is not root
    with pytest.raises(StartupError) as refused:
        Siesta(load_config(config))
    assert str(refused.value) == (
        "templates.web.user: running backends as another user needs siesta to run as root"
        " (it runs as uid 1000); remove user/group, or start siesta as root"
    )
    assert not (tmp_path / "state").exists()


def test_a_state_folder_siesta_makes_is_private(siesta: Launcher) -> None:
    """The state folder siesta creates is 0700 whoever its backends run as."""
    run = siesta()
    assert stat.S_IMODE(run.state_dir.stat().st_mode) == 0o700
    assert run.state("alice") is State.ASLEEP
