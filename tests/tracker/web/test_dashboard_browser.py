"""The dashboard in a real headless Chromium, against a real tracker and two boards.

Skips where Debian's chromium, chromium-driver or Selenium are missing, unless
COMPASS_REQUIRE_BROWSER=1 (CI sets it), which turns the skip into a failure.
Screenshots go to $COMPASS_ARTIFACTS/dashboard, else to the test's tmp_path.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compassd.client import connect_tracker

from .conftest import KEY, TOKENS, Lab, post, wait_for

CHROMIUM = os.environ.get("COMPASS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("COMPASS_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000")


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "Selenium is not installed (pip install 'compassd[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    why = _missing()
    if why is not None:
        if os.environ.get("COMPASS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"COMPASS_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def sign_in(driver: Any, lab: Lab, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(lab.http + "/")
    field = driver.find_element(By.ID, "token")
    field.send_keys(token)
    field.submit()
    wait_for("the dashboard after signing in",
             lambda: driver.find_elements(By.ID, "board-rows"), deadline=10)
    wait_for("the live feed", lambda: "Live" in driver.find_element(By.ID, "live").text,
             deadline=10)


def rows(driver: Any, body: str) -> dict[str, str]:
    """The text of each row of C{tbody#body}, by its first cell (read in one script, so
    a live update cannot swap the rows out half-way)."""
    pairs = driver.execute_script(
        "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tr'))"
        ".filter(r => r.cells.length > 1)"
        ".map(r => [r.cells[0].innerText, r.innerText]);", body)
    return {first: text for first, text in pairs}


def test_boards_queue_grants_and_admin_drain_in_a_real_browser(
    lab: Lab, browser: Any, artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    lab.reset()
    driver.get(lab.http + "/")
    assert driver.find_elements(By.ID, "token"), "an unknown visitor gets the sign-in page"
    driver.save_screenshot(str(artifacts / "01-sign-in.png"))
    sign_in(driver, lab, TOKENS["admin"])
    boards = rows(driver, "board-rows")
    assert set(boards) == {"board-1", "board-2"}
    assert all("free" in text for text in boards.values()), boards
    driver.execute_script("window.compassMarker = 'no reload';")
    driver.save_screenshot(str(artifacts / "02-two-free-boards.png"))

    carl = connect_tracker(lab.host, lab.port, token=TOKENS["client"], timeout=20)
    try:
        lease = carl.request(KEY, lease=600, wait=20)
        granted = time.monotonic()
        held = wait_for(
            "the grant on the page",
            lambda: [name for name, text in rows(driver, "board-rows").items()
                     if "carl" in text and "busy" in text],
            deadline=2.0, every=0.02)
        assert time.monotonic() - granted <= 2.0
        assert held == [lease.device]
        assert driver.execute_script("return window.compassMarker;") == "no reload"
        driver.save_screenshot(str(artifacts / "03-granted-live.png"))

        other = carl.request(KEY, lease=600, wait=20)
        from compassd.client import AsyncTracker, _reactor
        from compassd.protocol import client_tracker as ct

        waiter = _reactor.call(
            lambda: AsyncTracker.connect(_reactor.reactor(), lab.host, lab.port,
                                         token=TOKENS["client"], timeout=20), timeout=20)
        try:
            answer = _reactor.call(waiter.call, ct.Request, key=KEY, priority=3, timeout=20)
            waiting = wait_for(
                "the waiting request on the page",
                lambda: rows(driver, "waiting-rows").get(KEY, ""), deadline=5, every=0.02)
            assert answer["request"] in waiting and "carl" in waiting
            assert "first in line" in waiting
            queue = rows(driver, "queue-rows")[KEY]
            assert queue.split()[1:] == ["0", "2", "1"], queue  # free, online, waiting
            driver.save_screenshot(str(artifacts / "04-queue.png"))

            # An admin drains the first board from the page, confirming the dialog.
            button = driver.find_element(
                By.CSS_SELECTOR, f"button[data-action=drain][data-device='{lease.device}']")
            button.click()
            alert = driver.switch_to.alert
            assert f"Drain {lease.device}?" in alert.text
            alert.accept()
            wait_for("the drain to reach the tracker",
                     lambda: next(d for d in carl.devices()
                                  if d["name"] == lease.device)["state"] == "draining",
                     deadline=10)
            wait_for("the notice of the drain",
                     lambda: "draining" in driver.find_element(By.ID, "notice").text,
                     deadline=5)
            wait_for("the drained board on the page",
                     lambda: "draining" in rows(driver, "board-rows")[lease.device],
                     deadline=2)
            driver.save_screenshot(str(artifacts / "05-drained.png"))
        finally:
            _reactor.call(waiter.close, timeout=20)
        other.release()
        lease.release()
    finally:
        carl.close()


def test_a_client_token_sees_the_boards_but_cannot_drain(
    lab: Lab, browser: Any, artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    lab.reset()
    sign_in(driver, lab, TOKENS["client"])
    assert "carl" in driver.find_element(By.ID, "user").text
    assert set(rows(driver, "board-rows")) == {"board-1", "board-2"}
    assert not driver.find_elements(By.CSS_SELECTOR, "button[data-action]"), \
        "a client sees no admin buttons"
    target = "board-2"
    before = lab.board(target)["state"]
    assert before == "free"
    # The page's own script, with carl's token in the header, as a crafted click would.
    answer = driver.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch('/api/drain', {method: 'POST', credentials: 'same-origin',
          headers: {'Authorization': 'Bearer ' + localStorage.getItem('compassToken'),
                    'Content-Type': 'application/json'},
          body: JSON.stringify({device: arguments[0]})})
        .then(r => r.json().then(j => done([r.status, j.error])));""", target)
    assert answer[0] == 403
    assert "carl may not drain: it needs the admin role" in answer[1]
    driver.save_screenshot(str(artifacts / "06-client-view.png"))
    # The admin's cookie alone (a cross-site form) is refused too.
    status, body = post(f"{lab.http}/api/drain", {"device": target},
                        cookie=TOKENS["admin"])
    assert status == 403 and "Authorization" in body["error"]
    assert lab.board(target)["state"] == before
