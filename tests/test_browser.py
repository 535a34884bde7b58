"""End to end in a real headless Chromium: the waiting page, the wake, the sleep.

Chromium and its driver come from Debian (`chromium`, `chromium-driver`); `make test`
installs them with scripts/system-packages.sh. Selenium is pointed at both binaries,
so Selenium Manager never looks for (or downloads) anything.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from siesta.core.model import State

from .conftest import Launcher, wait_for

DEMO = [sys.executable, "-m", "siesta.demo", "--port", "{port}", "--session", "{session}"]
"""The bundled demo app, as `siesta demo` runs it."""

SLOW_START = (
    "import os, sys, time; time.sleep(float(sys.argv[1])); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)
"""A wrapper that waits argv[1] seconds, then becomes the command that follows."""

CLOCK = re.compile(r"^\d\d:\d\d:\d\d$")

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1000,800",
)


def demo_template(*, slow_start: float = 0.0, **extra: Any) -> dict[str, Any]:
    """The demo app as a template, ready by /healthz; optionally slow to start."""
    command = [sys.executable, "-c", SLOW_START, str(slow_start), *DEMO[1:]] if slow_start else DEMO
    return {
        "command": command,
        "ready": {"http": "/healthz"},
        "idle_timeout": "1h",
        "stop_grace": "3s",
        **extra,
    }


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium with its own profile; quit at teardown."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail(
            "chromium and chromedriver are needed for the browser tests: run `make test`, "
            "which installs them (bash scripts/system-packages.sh "
            "chromium:chromium chromedriver:chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def until(
    chrome: webdriver.Chrome, check: Callable[[webdriver.Chrome], Any], timeout: float, what: str
) -> Any:
    """Poll `check` in the browser until it is truthy; elements may come and go meanwhile."""
    wait = WebDriverWait(
        chrome,
        timeout,
        poll_frequency=0.05,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )
    return wait.until(check, message=f"timed out after {timeout}s waiting for {what}")


def text(chrome: webdriver.Chrome, element_id: str) -> str:
    """The visible text of the element with this id."""
    return str(chrome.find_element(By.ID, element_id).text)


def status(chrome: webdriver.Chrome) -> int:
    """The HTTP status of the document the browser shows."""
    return int(
        chrome.execute_script("return performance.getEntriesByType('navigation')[0].responseStatus")
    )


def test_waiting_page_reloads_itself_into_the_app(
    siesta: Launcher, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """A browser opening a sleeping session first sees the 503 waiting page; with no
    action from the test it reloads itself into the demo app, whose clock ticks."""
    run = siesta(
        templates={"web": demo_template(slow_start=1.5)},
        gateway={"waiting_page_after": "100ms"},
    )
    browser.get(run.url("alice"))
    assert browser.title.startswith("Waking alice")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Waking alice"
    assert status(browser) == 503

    until(browser, lambda b: text(b, "session") == "alice", 20, "the demo app to load")
    assert browser.title == "siesta demo: alice"
    assert status(browser) == 200
    assert text(browser, "hits") == "1"
    assert text(browser, "pid") == str(run.records()["alice"].pid)
    until(browser, lambda b: text(b, "tick").startswith("tick "), 10, "a clock tick")
    assert CLOCK.match(text(browser, "clock"))

    shot = tmp_path / "alice.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 1000


def test_idle_page_shows_sleep_and_reload_wakes_a_new_backend(
    siesta: Launcher, browser: webdriver.Chrome
) -> None:
    """With the clock silent, the open websocket is idle: siesta stops the backend, the
    page says the session went to sleep, the store says ASLEEP; a reload serves the app
    again from a new backend process."""
    run = siesta(templates={"web": demo_template(idle_timeout="2s")})
    browser.get(run.url("alice"))
    assert text(browser, "session") == "alice"
    first_pid = text(browser, "pid")
    until(browser, lambda b: text(b, "tick") == "tick 5", 15, "the clock's five ticks")

    asleep = browser.find_element(By.ID, "asleep")
    until(browser, lambda b: asleep.is_displayed(), 15, "the page to say it went to sleep")
    assert "went to sleep" in asleep.text
    assert text(browser, "tick") == "disconnected"
    wait_for(lambda: run.state("alice") is State.ASLEEP, what="alice to be asleep in the store")
    stopped = [e for e in run.events("alice") if e.new is State.STOPPING]
    assert len(stopped) == 1
    assert "idle" in stopped[0].reason

    browser.refresh()
    until(browser, lambda b: text(b, "pid") not in ("", first_pid), 20, "a new backend's page")
    assert text(browser, "session") == "alice"
    assert text(browser, "hits") == "1"
    assert run.state("alice") is State.AWAKE


def test_api_docs_render_offline(
    siesta: Launcher, browser: webdriver.Chrome, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/docs is Swagger UI over the generated OpenAPI document: it renders every route
    group, and every file it loads comes from siesta itself (no CDN)."""
    from .admin import launch_admin

    _, base = launch_admin(siesta, monkeypatch)
    browser.get(f"{base}/docs")
    until(browser, lambda b: b.find_elements(By.CSS_SELECTOR, ".opblock"), 20, "the operations")
    title = browser.find_element(By.CSS_SELECTOR, ".information-container .title").text
    assert title.startswith("siesta admin API")
    tags = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-tag span")}
    assert {"sessions", "events", "policy", "savings", "system"} <= tags
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded
    assert all(url.startswith(base + "/") for url in loaded), loaded
