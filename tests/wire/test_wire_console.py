"""The call console in a real browser (headless Chromium driven by Selenium through
Debian's chromium-driver): `sipagent serve` with the app, the console and recordings; a
call routed by the app as Plivo would is seen in the live list with what the agent is doing
(changing without a reload: the caller puts the agent on hold), ends, and its page shows
the transcript the worker logged, one waterfall bar group per turn and a playable
recording; without the credential the page and the recording are refused.

The call page's screenshot is saved in the test's directory, and over docs/console-call.png
when SIPAGENT_UPDATE_SCREENSHOTS=1 (how the README's picture is made).
"""

from __future__ import annotations

import html
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver import Chrome
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.fakes.http import request
from tests.helpers.wire import answer, finish_call, running_pool, start_call, wait_for

pytestmark = [pytest.mark.wire, pytest.mark.timeout(240)]

TOKEN = "console-wire-token"
CALLER = "+14155551234"
QUESTION = "What are your opening hours?"
HOLD_S = 5  # the caller holds the agent this long after asking: the page polls every 2 s
ACTIVITY = (
    "const s = document.querySelector('#live-calls tr.call span.activity');"
    "return s ? [s.textContent, s.className] : null;"
)  # read at once in the page: the rows are replaced on every refresh
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console-call.png"


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if os.environ.get("CI") and not (browser and driver):
        pytest.fail("chromium and chromium-driver are not installed (.ci/run installs them)")
    if not (browser and driver):
        pytest.skip("chromium and chromium-driver are not installed")
    return browser, driver


@pytest.fixture
def browser() -> Iterator[Chrome]:
    binary, driver_path = _chromium()
    options = Options()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,1000",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(arg)
    # The driver from chromium-driver: Selenium must not look for (download) one.
    driver = Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def status_and_type(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            return int(resp.status), resp.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        exc.read()
        exc.close()
        return int(exc.code), exc.headers.get_content_type()


def test_console_shows_a_real_call_live_then_its_page_and_recording(
    tmp_path: Path, browser: Chrome
) -> None:
    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    with running_pool(
        tmp_path,
        1,
        pool__spare="false",
        app__console_token=TOKEN,
        records__recording_dir=str(tmp_path / "recordings"),
    ) as pool:
        app = pool.app_url
        assert app is not None
        # Nothing without the credential.
        assert request(app + "/console/live")[0] == 401
        assert request(app + "/console/")[0] == 401

        # ?token= once: the cookie carries the browser from here (JS polling included).
        browser.get(app + f"/console/live?token={TOKEN}")
        assert browser.current_url == app + "/console/live"
        assert len(browser.find_elements(By.CSS_SELECTOR, "#workers tr.worker")) == 1

        call_uuid, uri, headers = answer(pool, CALLER)
        call = start_call(uri, "--say", QUESTION, "--put-on-hold", str(HOLD_S), *headers)
        try:
            # The page updates itself: the call appears without a reload.
            wait.until(
                lambda d: CALLER in d.find_element(By.CSS_SELECTOR, "#live-calls tbody").text,
                "the call in the live list",
            )
            row = browser.find_element(By.CSS_SELECTOR, "#live-calls tr.call").text
            assert row.startswith("0 ")  # worker 0
            # What the agent does, as it changes: greeting, listening, answering, then
            # held by the caller (a SIP re-INVITE the worker saw).
            seen: list[list[str]] = []

            def held(d: Chrome) -> bool:
                shown = d.execute_script(ACTIVITY)
                if shown and shown[0] and (not seen or seen[-1] != shown):
                    seen.append(shown)
                return bool(seen) and seen[-1][0] == "on hold"

            wait.until(held, "the agent shown on hold")
            assert seen[-1] == ["on hold", "activity on-hold"]
            assert seen[0][0] in ("thinking", "speaking", "listening"), seen
            assert all(cls == "activity " + text for text, cls in seen[:-1]), seen
            assert browser.save_screenshot(str(tmp_path / "console-live.png"))
        finally:
            report = finish_call(call, timeout=120)
        assert report["returncode"] == 0 and report["answered"], report["stderr"][-2000:]
        wait.until(
            lambda d: not d.find_elements(By.CSS_SELECTOR, "#live-calls tr.call"),
            "the call gone from the live list",
        )
        wait_for(lambda: len(pool.turns()) >= 2, 30, "the call's turns logged")
        turns = pool.turns()

        # Recent calls -> the call's page.
        browser.get(app + "/console/")
        browser.find_element(By.CSS_SELECTOR, "#recent-calls tr.call a").click()
        wait.until(lambda d: d.find_elements(By.ID, "waterfall"), "the call page")
        assert call_uuid in browser.page_source
        transcript = browser.find_element(By.ID, "transcript").text
        for t in turns:
            for said in (t["user_text"], t["agent_text"]):
                if said:
                    assert str(said) in transcript, (said, transcript)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#transcript li.turn")) == len(turns)
        groups = browser.find_elements(By.CSS_SELECTOR, "#waterfall .turn-bars")
        assert len(groups) == len(turns)
        assert all(g.find_elements(By.CSS_SELECTOR, ".bar") for g in groups[1:])

        # The recording: the browser loads it (with its cookie) and knows its length.
        audio = browser.find_element(By.ID, "recording")
        src = html.unescape(str(audio.get_attribute("src")))
        assert src.startswith(app + "/console/calls/")
        wait.until(
            lambda d: (
                (d.execute_script("return document.getElementById('recording').duration") or 0) > 0
            ),
            "the recording's metadata",
        )
        fetched = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0]).then(r => done([r.status, r.headers.get('content-type')]));",
            src,
        )
        assert fetched == [200, "audio/wav"]
        assert status_and_type(src, {"Authorization": f"Bearer {TOKEN}"}) == (200, "audio/wav")
        assert status_and_type(src)[0] == 401
        assert status_and_type(browser.current_url)[0] == 401

        shot = tmp_path / "console-call.png"
        assert browser.save_screenshot(str(shot))
        if os.environ.get("SIPAGENT_UPDATE_SCREENSHOTS") == "1":
            shutil.copyfile(shot, SCREENSHOT)
