"""A real browser for console tests: Debian's chromium driven by chromium-driver through selenium."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"


@contextmanager
def chromium(width: int = 1280, height: int = 1000) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, DRIVER) if not Path(p).exists()]
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: apt-get install chromium chromium-driver")
    profile = tempfile.mkdtemp(prefix="beiran-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-proxy-server", f"--user-data-dir={profile}",
                f"--window-size={width},{height}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def save_screenshot(driver: Any, name: str, also: Path | None = None) -> Path:
    """Keep a screenshot of the page where a person can look at it after the run (not in the repo)."""
    out_dir = Path(os.environ.get("BEIRAN_ARTIFACTS") or Path(tempfile.gettempdir()) / "beiran-artifacts")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    driver.save_screenshot(str(path))
    if also is not None:
        shutil.copy(path, also)
    return path


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text
