"""The built wheel, installed the way a user would: `pipx install` into a fresh place.

Needs the wheel `make dist` builds: SIESTA_WHEEL names it (`make dist` sets it and runs
this test); without it the test is skipped, since building the wheel (mypyc) takes
minutes and the rest of the suite runs from the source tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

WHEEL = os.environ.get("SIESTA_WHEEL", "")


@pytest.mark.skipif(not WHEEL, reason="set by `make dist` (SIESTA_WHEEL): builds the wheel")
def test_pipx_installs_the_wheel_with_its_compiled_hot_path(tmp_path: Path) -> None:
    """`pipx install <wheel>` into an empty PIPX_HOME gives a `siesta` command that runs
    the compiled hot path (the wheel's build hook compiled it), and `config check` works."""
    env = {
        **os.environ,
        "PIPX_HOME": str(tmp_path / "pipx"),
        "PIPX_BIN_DIR": str(tmp_path / "bin"),
        "PIPX_DEFAULT_PYTHON": sys.executable,
    }
    env.pop("VIRTUAL_ENV", None)
    pipx = [sys.executable, "-m", "pipx"]
    installed = subprocess.run(
        [*pipx, "install", str(Path(WHEEL).resolve())],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    siesta = tmp_path / "bin" / "siesta"
    version = subprocess.run(
        [str(siesta), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("siesta ")
    assert "compiled hot path" in version.stdout
    config = tmp_path / "siesta.yaml"
    config.write_text('templates: {web: {command: ["python3", "-m", "http.server", "{port}"]}}\n')
    checked = subprocess.run(
        [str(siesta), "config", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stderr
