"""The dashboard at /ui/: its login, and its pages in a real headless Chromium.

The browser is Debian's chromium driven by selenium (see tests/test_browser.py, whose
fixture this reuses). Screenshots of the main views are saved under the test's tmp
folder (and under $SIESTA_SCREENSHOTS when set, which is how docs/images/ was made).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from siesta.api.ui import COOKIE, cookie_value

from .admin import TOKEN, client, launch_admin
from .conftest import Launcher
from .test_browser import browser, demo_template, until

__all__ = ["browser"]  # the fixture, used by name below

SESSIONS = {"alice": {"template": "web"}, "bob": {"template": "web"}}


def shot(chrome: webdriver.Chrome, folder: Path, name: str) -> Path:
    """Save a screenshot (a real PNG) under `folder`, and under $SIESTA_SCREENSHOTS."""
    path = folder / f"{name}.png"
    assert chrome.save_screenshot(str(path))
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    extra = os.environ.get("SIESTA_SCREENSHOTS")
    if extra:
        shutil.copy(path, Path(extra) / path.name)
    return path


def state_of(chrome: webdriver.Chrome, session: str) -> str:
    row = chrome.find_element(By.CSS_SELECTOR, f'tr[data-id="{session}"] .state')
    return str(row.text)


def test_login_cookie_and_its_limits(siesta: Launcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """/ui/ without a login redirects to the login form; a wrong token is refused
    (401, said in the page); the right one sets an HttpOnly SameSite=Strict cookie that
    is not the token. With the cookie, GETs of the API work, but a change needs
    X-Siesta-UI: 1 (403 without it: a cross-site form cannot send it); a login posted
    from another origin is refused; log out clears the cookie."""
    run, base = launch_admin(siesta, monkeypatch, sessions=SESSIONS)
    with httpx.Client(base_url=base, timeout=30) as web:
        first = web.get("/ui/")
        assert (first.status_code, first.headers["location"]) == (303, "/ui/login")
        assert 'name="token"' in web.get("/ui/login").text
        wrong = web.post("/ui/login", data={"token": "nope"})
        assert wrong.status_code == 401
        assert "wrong admin token" in wrong.text
        foreign = web.post(
            "/ui/login", data={"token": TOKEN}, headers={"Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403
        good = web.post("/ui/login", data={"token": TOKEN})
        assert (good.status_code, good.headers["location"]) == (303, "/ui/")
        set_cookie = good.headers["set-cookie"]
        assert "HttpOnly" in set_cookie
        assert "SameSite=strict" in set_cookie
        assert TOKEN not in set_cookie
        assert web.cookies[COOKIE] == cookie_value(TOKEN)

        assert web.get("/ui/").status_code == 200
        assert web.get("/api/sessions").status_code == 200
        refused = web.post("/api/sessions/alice/wake")
        assert refused.status_code == 403
        assert "X-Siesta-UI" in refused.json()["error"]
        assert run.state("alice").value == "ASLEEP"
        woken = web.post("/api/sessions/alice/wake", headers={"X-Siesta-UI": "1"})
        assert woken.json()["state"] == "AWAKE"

        out = web.post("/ui/logout")
        assert out.status_code == 303
        assert web.get("/api/sessions").status_code == 401
        assert web.get("/ui/").status_code == 303
    with httpx.Client(base_url=base, timeout=30, cookies={COOKIE: "forged"}) as forged:
        assert forged.get("/api/sessions").status_code == 401
    with client(base) as api:  # the bearer token alone still works, without any cookie
        assert api.get("/ui/").status_code == 200
        assert api.get("/ui/static/app.js").status_code == 200
        assert api.get("/ui/static/../app.py").status_code == 404


def test_dashboard_in_chromium_wakes_a_session_live(
    siesta: Launcher,
    monkeypatch: pytest.MonkeyPatch,
    browser: webdriver.Chrome,
    tmp_path: Path,
) -> None:
    """Logged in through the form (keyboard only), the table lists alice and bob asleep.
    Pressing Enter on "Wake alice" turns her row AWAKE without a reload; putting her to
    sleep through the API (not the page) turns it ASLEEP over the event stream. Her
    details show her events and her policy's rules. The charts load. At 1280x800 and
    on a phone-sized screen, the main views are screenshot."""
    run, base = launch_admin(
        siesta,
        monkeypatch,
        sessions=SESSIONS,
        templates={"web": demo_template(resources={"cpu": 1, "memory": "1Gi"})},
        extra={"savings": {"region": "FR"}},
    )
    browser.set_window_size(1280, 800)
    browser.get(f"{base}/ui/")
    assert browser.current_url.endswith("/ui/login")
    field = browser.find_element(By.ID, "token")
    assert browser.switch_to.active_element == field  # autofocus: type at once
    field.send_keys(TOKEN, Keys.ENTER)
    until(browser, lambda b: b.current_url.endswith("/ui/"), 15, "the dashboard")
    until(browser, lambda b: state_of(b, "alice") == "ASLEEP", 15, "alice's row")
    assert state_of(browser, "bob") == "ASLEEP"
    until(browser, lambda b: b.find_element(By.ID, "live").text == "live", 15, "the stream")
    loaded = browser.execute_script("return window.siestaLoadedAt")

    wake = browser.find_element(By.CSS_SELECTOR, '[aria-label="Wake alice"]')
    wake.send_keys(Keys.ENTER)
    until(browser, lambda b: state_of(b, "alice") == "AWAKE", 30, "alice AWAKE")
    assert browser.execute_script("return window.siestaLoadedAt") == loaded  # no reload
    assert run.state("alice").value == "AWAKE"
    assert browser.find_element(By.CSS_SELECTOR, '[aria-label="Wake alice"]').get_attribute(
        "disabled"
    )
    until(
        browser,
        lambda b: b.find_element(By.ID, "kpi-usd").text.startswith("$"),
        10,
        "the savings figures",
    )
    assert "France 2024" in browser.find_element(By.ID, "grid-note").text
    charts = browser.find_elements(By.CSS_SELECTOR, "img[data-chart]")
    until(
        browser,
        lambda b: all(b.execute_script("return arguments[0].naturalWidth", c) > 0 for c in charts),
        60,
        "the three charts",
    )
    shot(browser, tmp_path, "dashboard")

    with client(base) as api:
        api.post("/api/sessions/alice/sleep").raise_for_status()
    until(browser, lambda b: state_of(b, "alice") == "ASLEEP", 30, "alice ASLEEP by the stream")
    assert browser.execute_script("return window.siestaLoadedAt") == loaded

    browser.find_element(By.CSS_SELECTOR, '[aria-label="Details of alice"]').click()
    detail = browser.find_element(By.ID, "detail")
    until(browser, lambda b: detail.is_displayed(), 10, "the detail panel")
    assert browser.switch_to.active_element == browser.find_element(By.ID, "detail-h")
    until(browser, lambda b: "WAKING → AWAKE" in b.find_element(By.ID, "events").text, 15, "events")
    until(browser, lambda b: "idle_for" in b.find_element(By.ID, "explain").text, 15, "the rules")
    detail.location_once_scrolled_into_view  # noqa: B018 - scrolls it into the screenshot
    shot(browser, tmp_path, "dashboard-detail")
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    until(browser, lambda b: not detail.is_displayed(), 10, "Escape to close the details")

    browser.set_window_size(390, 844)
    browser.execute_script("window.scrollTo(0, 0)")
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-id="alice"]')
    assert row.size["width"] <= 390  # a card, not a table wider than the phone
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= 400
    shot(browser, tmp_path, "dashboard-phone")
