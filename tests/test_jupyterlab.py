"""A real JupyterLab 4 in real headless Chromium, behind a real siesta with the Jupyter
preset: running cells keeps the session awake; the same tab, left untouched, lets it
sleep, although the Lab keeps polling the server every 10s (listings, its own
workspace saves) and the server answers each poll with event frames on its
/api/events/subscribe websocket (all in the preset's ignore list, siesta.core.ignore).

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
POLL = 10.0  # seconds between the Lab's own polls
IDLE = 12.0  # seconds: the idle threshold, over the Lab's 10s polls so that they would count
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


@pytest.mark.timeout(240)  # a Lab and Chromium start slowly on a busy 2-core machine
def test_running_cells_keeps_a_lab_awake_and_an_untouched_tab_lets_it_sleep(
    siesta: Launcher,
    browser: webdriver.Chrome,
    tmp_path: Path,
) -> None:
    """Cells run every few seconds for longer than the idle threshold: awake throughout.
    Then the tab is left open and untouched: the Lab polls every 10s (less than the
    threshold), saves its workspace and receives the server's event frames, yet the
    session sleeps by its idle rule, no sooner than the threshold after the last run."""
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
    busy_until = time.monotonic() + 1.1 * IDLE
    while time.monotonic() < busy_until:
        assert run.state("nb") is State.AWAKE, "the session slept while cells were running"
        time.sleep(3.0)  # a person running a cell every few seconds
        _run_and_wait(browser, 30)
    untouched = time.time()
    assert run.state("nb") is State.AWAKE
    until(browser, lambda b: _transitions(run, untouched), 60, "the untouched tab's sleep")
    first = _transitions(run, untouched)[0]
    assert first.new is State.STOPPING, first
    assert first.at - untouched >= IDLE - 1.0
    assert first.reason.startswith(f"sleep_when: {RULE}")
    _stays_asleep(run, POLL + 1.0, deadline=60.0)  # over the tab's next polls
    wakes = [e for e in _transitions(run, untouched) if e.new is State.WAKING]
    # the Lab reconnects its kernel's websocket when the sleep closes it: that request
    # counts (it is the kernel's) and wakes the session once; the new server knows no
    # such kernel, so the Lab stops there and its polls never wake it again
    assert len(wakes) <= 1, wakes
    assert all("/channels" in e.reason for e in wakes), wakes


def _transitions(run: Any, since: float) -> list[Any]:
    """The session's transitions recorded after `since` (wall clock)."""
    return [e for e in run.events("nb") if e.at > since]


def _stays_asleep(run: Any, hold: float, deadline: float) -> None:
    """Wait until the session has been ASLEEP for `hold` seconds in a row."""
    ends = time.monotonic() + deadline
    since = time.monotonic()
    while time.monotonic() < ends:
        if run.state("nb") is not State.ASLEEP:
            since = time.monotonic()
        elif time.monotonic() - since >= hold:
            return
        time.sleep(0.1)
    raise AssertionError(f"not asleep for {hold:g}s in a row within {deadline:g}s")
