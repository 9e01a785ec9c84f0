"""The console in a real headless Chromium (Debian's chromium and chromium-driver, through
Selenium) against a running tandem whose trunks are SIPp processes (tests/system's layout)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService

from tests.conftest import REPO
from tests.system.conftest import System, start_system
from tests.system.sipp import Sipp

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = REPO / ".tandem" / "console-screenshots"  # kept after the run, for people


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = start_system(tmp_path_factory.mktemp("tandem"))
    yield running
    running.up.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if shutil.which(path) is None:  # a missing browser fails, never skips
            raise FileNotFoundError(f"{path} not found: install Debian {package} (make test does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1440,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture
def sipp_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    Sipp.stop_all()


def screenshot(driver: webdriver.Chrome, name: str, tmp_path: Path) -> Path:
    """Save the page as pytest's artifact and under .tandem/console-screenshots."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    shutil.copy(path, tmp_path / path.name)
    return path
