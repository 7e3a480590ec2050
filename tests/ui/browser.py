"""A real headless Chromium (Debian's chromium + chromium-driver) driven with Selenium, for the web UI's tests
and benchmark. It never fetches anything from the internet: the browser and its driver are the system's
(no Selenium Manager download), and the flags keep Chromium's own background traffic off.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--password-store=basic",
    "--window-size=1400,1000",
]


class Browser:
    """One Chromium with a fresh profile. `shot(name)` saves a screenshot into `artifacts`."""

    def __init__(self, artifacts: Path, *, extra_flags: list[str] | None = None) -> None:
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a driver
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        for path in (CHROMIUM, CHROMEDRIVER):
            if not Path(path).exists():
                raise RuntimeError(f"{path} is missing: dev/setup installs chromium and chromium-driver")
        self.artifacts = artifacts
        self.profile = Path(tempfile.mkdtemp(prefix="dstack-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*FLAGS, f"--user-data-dir={self.profile}", *(extra_flags or [])]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_script_timeout(60)

    # -- driving -----------------------------------------------------------------------------------------

    def get(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        """The text of the first element matching `css`, or "" if there is none."""
        found = self.find_all(css)
        return str(found[0].text) if found else ""

    def wait(self, condition: Callable[[], Any], *, timeout: float = 60, what: str) -> Any:
        """Poll `condition` (exceptions count as not yet) until it returns something truthy."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = condition()
            except Exception as e:  # an element not there yet, or replaced while read
                last_error = e
                value = None
            if value:
                return value
            time.sleep(0.05)
        self.shot(f"timeout-{what[:40].replace(' ', '-')}")
        detail = f" (last error: {last_error})" if last_error else ""
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}{detail}; page: {self.page_text()}"
        )

    def wait_text(self, css: str, needle: str, *, timeout: float = 60) -> str:
        return str(
            self.wait(
                lambda: self.text(css) if needle in self.text(css) else None,
                timeout=timeout,
                what=f"{needle!r} in {css}",
            )
        )

    def page_text(self) -> str:
        try:
            return str(self.find("body").text)[:3000]
        except Exception:
            return "(no page)"

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]

    def shot(self, name: str) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            _kill_marked(f"--user-data-dir={self.profile}")
            shutil.rmtree(self.profile, ignore_errors=True)


def _kill_marked(marker: str) -> None:
    """Chromium processes of this profile that outlived the driver (only ours: the profile is unique)."""
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass
