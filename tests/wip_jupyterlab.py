"""NOT YET COLLECTED (work in progress: rename to test_jupyterlab.py once it passes).

A real JupyterLab 4 in real headless Chromium, behind a real siesta with the Jupyter
preset: running cells keeps the session awake (this part passes); the same tab, left
untouched, should then let it sleep, although the Lab front end keeps polling the
server and answering its pings. It does not yet: after cells ran, /api/signals shows
one request of about 3.4 KB counted every ~10 s (and a 226-byte websocket data frame
now and then) that the Jupyter preset's list does not ignore; find which (Chromium's
resource timings list only GETs of the known polls) and add it to JUPYTER_IGNORE.

Chromium and chromedriver are Debian's (see tests/test_browser.py); JupyterLab comes
from PyPI (the dev extra)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from siesta.core.model import State

from . import test_browser
from .conftest import Launcher
from .test_browser import until

browser = test_browser.browser  # the headless Chromium fixture, shared

pytest.importorskip("jupyterlab")

TOKEN = "siesta-lab-token"
IDLE = 15.0  # seconds: the policy's idle threshold
RULE = f'idle_for > duration("{IDLE:g}s") && app.ok && app.busy_kernels == 0'


def lab_template(root: Path) -> dict[str, Any]:
    """JupyterLab on {port} under the session's base URL, ready by {base_url}api/status."""
    return {
        "command": [
            sys.executable,
            "-m",
            "jupyterlab",
            "--port={port}",
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.base_url={base_url}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.open_browser=False",
            "--allow-root",
        ],
        "env": {
            "JUPYTER_TOKEN": TOKEN,
            "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
            "JUPYTER_DATA_DIR": str(root / ".data"),
            "JUPYTER_CONFIG_DIR": str(root / ".config"),
            "IPYTHONDIR": str(root / ".ipython"),
        },
        "ready": {"http": "{base_url}api/status", "timeout": "1s"},
        "stop_grace": "5s",
        "policy": "notebooks",
        "activity": {"preset": "jupyter", "every": "1s", "timeout": "2s"},
    }


def _notebook(path: Path) -> None:
    cell = {
        "cell_type": "code",
        "execution_count": None,
        "id": "c1",
        "metadata": {},
        "outputs": [],
        "source": ["import time; time.time()"],
    }
    kernel = {"display_name": "Python 3", "language": "python", "name": "python3"}
    document = {
        "cells": [cell],
        "metadata": {"kernelspec": kernel},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(document))


CELL = ".jp-Notebook .jp-Cell .cm-content"


def _run_cell(chrome: webdriver.Chrome) -> None:
    """Click into the first cell, leave its editor (Escape) and press Ctrl+Enter: the
    Lab's "run the selected cell and stay on it", as a person does."""
    editor = chrome.find_element(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell .jp-InputArea-editor")
    keys = ActionChains(chrome).move_to_element(editor).click().send_keys(Keys.ESCAPE)
    keys.key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL).perform()


def _runs(chrome: webdriver.Chrome) -> int:
    """How many times the first cell ran (its prompt [n]:), 0 before the first."""
    found = re.search(r"\[(\d+)\]", _prompt(chrome))
    return int(found[1]) if found else 0


def _run_and_wait(chrome: webdriver.Chrome, timeout: float) -> int:
    """Run the cell until its count goes up (the first run waits for the kernel)."""
    before = _runs(chrome)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _run_cell(chrome)
        try:
            until(chrome, lambda b: _runs(b) > before, 5, "the cell to run")
        except TimeoutException:
            continue  # not run (the kernel was still starting): press again
        return _runs(chrome)
    raise AssertionError(f"the cell did not run within {timeout:g}s")


def _prompt(chrome: webdriver.Chrome) -> str:
    """The first cell's prompt, e.g. "[3]:" once it ran three times."""
    return str(chrome.find_element(By.CSS_SELECTOR, ".jp-InputPrompt").text)


@pytest.mark.timeout(360)  # a Lab and Chromium start slowly on a busy 2-core machine
def test_running_cells_keeps_a_lab_awake_and_an_untouched_tab_lets_it_sleep(
    siesta: Launcher,
    browser: webdriver.Chrome,
    tmp_path: Path,
) -> None:
    """Cells run every few seconds for 2.5 x the idle threshold: awake throughout. Then
    the tab is left open and untouched: the Lab polls /api/sessions, /api/kernels and
    /api/contents every 10s and answers the server's websocket pings, yet the session
    sleeps by its idle rule."""
    root = tmp_path / "lab"
    root.mkdir()
    _notebook(root / "nb.ipynb")
    run = siesta(
        templates={"lab": lab_template(root)},
        sessions={"nb": {"template": "lab"}},
        policies={"notebooks": {"sleep_when": RULE, "check_every": "1s"}},
        gateway={"strip_prefix": False, "wake_timeout": "90s", "waiting_page": "off"},
    )
    browser.get(run.url("nb", f"/lab/tree/nb.ipynb?token={TOKEN}"))
    until(browser, lambda b: b.find_elements(By.CSS_SELECTOR, CELL), 120, "the notebook")
    _run_and_wait(browser, 90)
    busy_until = time.monotonic() + 2.5 * IDLE
    while time.monotonic() < busy_until:
        assert run.state("nb") is State.AWAKE, "the session slept while cells were running"
        _run_and_wait(browser, 30)
        time.sleep(3.0)  # a person running a cell every few seconds
    assert run.state("nb") is State.AWAKE
    untouched = time.monotonic()
    until(browser, lambda b: run.state("nb") is State.ASLEEP, 120, "the untouched tab's sleep")
    assert time.monotonic() - untouched >= IDLE - 1.0
    stopping = next(e for e in reversed(run.events("nb")) if e.new is State.STOPPING)
    assert stopping.reason.startswith(f"sleep_when: {RULE}")
