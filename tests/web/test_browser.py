"""The web view in a real browser: Debian's headless chromium driven by Selenium through
Debian's chromium-driver (Playwright's own browser builds cannot be fetched here)."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.web.conftest import Site

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOT = os.environ.get("DATARUN_WEB_SCREENSHOT", "")


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[webdriver.Chrome]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        message = "chromium and chromium-driver are not installed: ./dev installs them (apt)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    # Headless chromium drops downloads unless told where they go.
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    yield driver
    driver.quit()


def _wait(browser: webdriver.Chrome, how: str, what: str) -> WebElement:
    """The element once it is there: a click on a link returns before the next page has loaded."""
    return WebDriverWait(browser, 30).until(expected_conditions.presence_of_element_located((how, what)))


def _click_and_wait(browser: webdriver.Chrome, element: WebElement) -> None:
    element.click()

    def gone(_: webdriver.Chrome) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as err:
            # Chrome, asked about a node while the next page replaces the document, answers with
            # this inspector error instead of a stale reference (seen once in CI): it is as gone.
            if "does not belong to the document" in str(err):
                return True
            raise
        return False

    WebDriverWait(browser, 30).until(gone)


def _wait_for_file(folder: Path, name: str, timeout: float = 30) -> Path:
    deadline = time.monotonic() + timeout
    target = folder / name
    while time.monotonic() < deadline:
        if target.exists() and not list(folder.glob("*.crdownload")):
            return target
        time.sleep(0.1)
    raise AssertionError(f"{name} was not downloaded; the folder holds {sorted(p.name for p in folder.iterdir())}")


def test_browse_to_a_file_and_download_it(browser: webdriver.Chrome, site: Site, downloads: Path) -> None:
    browser.get(site.base + "/")
    _click_and_wait(browser, _wait(browser, By.LINK_TEXT, "cams"))
    assert "camera frames" in browser.page_source
    _click_and_wait(browser, _wait(browser, By.CSS_SELECTOR, f'#bundles a[href$="{site.second}"]'))
    _click_and_wait(browser, _wait(browser, By.LINK_TEXT, "images/"))
    _click_and_wait(browser, _wait(browser, By.LINK_TEXT, "day1/"))
    row = _wait(browser, By.XPATH, "//table[@id='files']//tr[td/a[text()='frame 1.bin']]")
    assert row.find_element(By.CSS_SELECTOR, "td.num").text == "5.0 MiB"
    if SCREENSHOT:
        browser.get(f"{site.base}/repos/cams/bundles/{site.second}")
        browser.save_screenshot(SCREENSHOT)
        browser.back()
    _wait(browser, By.LINK_TEXT, "frame 1.bin").click()
    got = _wait_for_file(downloads, "frame 1.bin")
    assert hashlib.sha256(got.read_bytes()).hexdigest() == site.big_sha256


def test_diff_two_bundles_from_the_form(browser: webdriver.Chrome, site: Site) -> None:
    browser.get(site.base + "/repos/cams")
    _click_and_wait(browser, _wait(browser, By.ID, "diff-link"))
    Select(_wait(browser, By.ID, "old")).select_by_value(site.first)
    Select(browser.find_element(By.ID, "new")).select_by_value(site.second)
    _click_and_wait(browser, browser.find_element(By.ID, "compare"))
    _wait(browser, By.ID, "changes")
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#changes tr")[1:]]
    assert rows == ["added added.txt 4 B", "removed images/link", "removed images/notes.txt 6 B"]
    _click_and_wait(browser, browser.find_element(By.ID, "next"))
    _wait(browser, By.ID, "changes")
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#changes tr")[1:]]
    assert rows == ["modified meta.csv 12 B 16 B"]


def test_unknown_repo_is_a_404_page(browser: webdriver.Chrome, site: Site) -> None:
    browser.get(site.base + "/repos/ghosts")
    assert browser.find_element(By.TAG_NAME, "h1").text == "404"
    assert "repo `ghosts` not found" in browser.find_element(By.ID, "error").text


def test_path_traversal_in_the_url_is_refused(browser: webdriver.Chrome, site: Site, downloads: Path) -> None:
    before = set(downloads.iterdir())
    browser.get(site.base + "/repos/cams/bundles/latest/raw/..%2f..%2f..%2fetc%2fpasswd")
    assert browser.find_element(By.TAG_NAME, "h1").text == "400"
    assert "is refused" in browser.find_element(By.ID, "error").text
    # A browser folds plain `..` itself; what reaches the server then names no bundle file.
    browser.get(site.base + "/repos/cams/bundles/latest/raw/images/../../../../etc/passwd")
    assert browser.find_element(By.TAG_NAME, "h1").text == "404"
    time.sleep(0.5)
    assert set(downloads.iterdir()) == before
