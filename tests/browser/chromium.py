"""Headless Debian Chromium for the explorer's browser tests and bench/bench_explorer.py (no download).

``start()`` gives a Selenium driver with no network (a proxy to a closed port, no DNS, offline emulation)
and the browser console's log; ``open_page()`` loads a page and waits until the explorer says it is ready.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = Path(__file__).resolve().parent / "install_chromium.sh"


def unavailable_reason() -> str | None:
    """Why no headless Chromium can run here (``None`` when it can)."""
    for p in (CHROMIUM, CHROMEDRIVER):
        if not p.exists():
            return f"{p} not found: install it with {INSTALL} (CI does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is missing: pip install -c constraints.txt -e '.[test]'"
    return None


def start(width: int = 1400, height: int = 900) -> Any:
    """A headless Chromium with the network off; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    args += [
        f"--window-size={width},{height}",
        "--proxy-server=127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ]
    for arg in args:
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
    driver.execute_cdp_cmd("Network.enable", {})
    offline = {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0}
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", offline)
    return driver


def open_page(driver: Any, page: Path, timeout: float = 60.0) -> float:
    """Load an explorer page from ``file://`` and wait until it is ready; return the seconds it took."""
    t0 = time.monotonic()
    driver.get(page.resolve().as_uri())
    while not driver.execute_script("return !!(window.GEOENS_APP && window.GEOENS_APP.ready)"):
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{page} did not get ready in {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - t0


def console_errors(driver: Any) -> list[str]:
    """Error messages of the browser console since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
