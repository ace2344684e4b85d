"""The map explorer in a real browser: Debian's headless Chromium driven by Selenium (no browser download).

The explorer of a tiny run (fixture ``tiny_explorer``) is opened from ``file://`` with the network off; the
tests read the page's state back (``window.GEOENS_APP``) and click it as a user would. CI installs Chromium
with tests/browser/install_chromium.sh; without it these tests skip (they fail instead with
``GEOENS_REQUIRE_BROWSER=1``, which CI sets).
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from browser import chromium

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium with no network (tests/browser/chromium.py)."""
    reason = chromium.unavailable_reason()
    if reason is not None:
        if os.environ.get("GEOENS_REQUIRE_BROWSER") == "1":  # set by .ci/run: CI must run these tests
            pytest.fail(f"GEOENS_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    driver = chromium.start()
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver: Any, page: Path) -> float:
    return chromium.open_page(driver, page, timeout=20.0)


def _wait(driver: Any, script: str, timeout: float = 10.0) -> Any:
    t0 = time.monotonic()
    while True:
        v = driver.execute_script(script)
        if v:
            return v
        assert time.monotonic() - t0 < timeout, f"timed out waiting for: {script}"
        time.sleep(0.05)


def _assert_not_blank(png: bytes, what: str) -> None:
    im = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int64)
    colours = np.unique(im.reshape(-1, 3) // 16, axis=0)
    assert im.shape[0] > 300 and im.shape[1] > 600, what
    assert len(colours) > 20 and im.std() > 10, f"{what}: the screenshot is blank"


def test_page_loads_offline_without_errors_and_shows_every_photo(
    browser: Any, tiny_explorer: Path, tmp_path: Path
) -> None:
    page = tiny_explorer / "results" / "explorer" / "index.html"
    _open(browser, page)
    assert chromium.console_errors(browser) == []
    per_image = pd.read_parquet(tiny_explorer / "results" / "eval" / "im2gps3k" / "per_image.parquet")
    assert browser.execute_script("return GEOENS_APP.shownCount()") == per_image["image_id"].nunique()
    # the base map is the run's own: its image and the outline are drawn, no tile layer
    assert browser.execute_script("return document.querySelectorAll('img.leaflet-image-layer').length") >= 1
    assert browser.execute_script("return document.querySelectorAll('.leaflet-tile').length") == 0
    png = browser.get_screenshot_as_png()
    (tmp_path / "explorer.png").write_bytes(png)
    _assert_not_blank(png, "explorer")
    # filtering by the truth's LS bucket hides exactly the photos of that bucket
    buckets = per_image.drop_duplicates("image_id")["ls_bucket"]
    k = int(buckets.mode()[0])
    browser.find_element("css selector", f"#buckets input[data-bucket='{k}']").click()
    assert browser.execute_script("return GEOENS_APP.shownCount()") == int((buckets != k).sum())


def test_selecting_a_method_recolours_the_points(browser: Any, tiny_explorer: Path) -> None:
    from selenium.webdriver.support.ui import Select  # deferred: see the browser fixture

    _open(browser, tiny_explorer / "results" / "explorer" / "index.html")
    Select(browser.find_element("id", "base")).select_by_visible_text("geoclip")
    assert browser.execute_script("return GEOENS_APP.state.method") == "GeoCLIP+LS+LC"
    n = browser.execute_script("return GEOENS_APP.shownCount()")
    before = browser.execute_script(f"return [...Array({n}).keys()].map(GEOENS_APP.colourOf)")
    Select(browser.find_element("id", "method")).select_by_visible_text("GeoCLIP")
    after = browser.execute_script(f"return [...Array({n}).keys()].map(GEOENS_APP.colourOf)")
    assert browser.execute_script("return GEOENS_APP.state.method") == "GeoCLIP"
    assert sum(a != b for a, b in zip(before, after, strict=True)) > n // 4
    # the colours follow the areas: the photo with the smallest area is the darkest
    summ = browser.execute_script("return GEOENS_SUMMARY['im2gps3k'].log_area['geoclip|GeoCLIP']")
    best = int(np.nanargmin(np.array([np.nan if v is None else v for v in summ], dtype=float)))
    lum = [sum(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in after]
    assert lum[best] == min(lum)
    assert chromium.console_errors(browser) == []


def test_clicking_a_photo_shows_its_numbers_and_the_budget_slider_grows_its_region(
    browser: Any, tiny_explorer: Path, tmp_path: Path
) -> None:
    res = tiny_explorer / "results"
    _open(browser, res / "explorer" / "index.html")
    per_image = pd.read_parquet(res / "eval" / "im2gps3k" / "per_image.parquet")
    rows = per_image[per_image["method"] == "GeoCLIP+LS+LC"].sort_values("area_km2")
    pid = rows["image_id"].iloc[len(rows) // 2]
    i = browser.execute_script(f"return GEOENS_SUMMARY['im2gps3k'].ids.indexOf({pid!r})")
    # a real click on the photo's point, centred on the map
    from selenium.webdriver.common.action_chains import ActionChains  # deferred: see the browser fixture

    browser.execute_script(
        f"var s = GEOENS_SUMMARY['im2gps3k'];"
        f"GEOENS_APP.map().setView([s.lat[{i}], s.lon[{i}]], 4, {{animate: false}})"
    )
    x, y = browser.execute_script(f"return GEOENS_APP.markerPoint({i})")
    box = browser.find_element("id", "map")
    w, h = box.size["width"], box.size["height"]
    ActionChains(browser).move_to_element_with_offset(box, int(x - w / 2), int(y - h / 2)).click().perform()
    _wait(browser, f"return document.getElementById('photo-title').textContent === {pid!r}")
    _wait(browser, "return GEOENS_APP.state.regionPixels > 0")
    table = browser.execute_script(
        "return [...document.querySelectorAll('#photo-table tbody tr')].map(tr => "
        "[tr.dataset.base, tr.dataset.method, tr.children[1].dataset.value, tr.children[3].dataset.value])"
    )
    want = per_image[per_image["image_id"] == pid]
    assert len(table) == len(want)
    for base, method, area, gcd in table:
        row = want[(want["base"] == base) & (want["method"] == method)].iloc[0]
        for got, col in ((area, "area_km2"), (gcd, "gcd_km")):
            if math.isnan(row[col]):
                assert got == ""
            else:
                assert float(got) == pytest.approx(row[col], rel=1e-6), (method, col)
    # the slider starts at the photo's area to hit; the region grows with the budget
    at_hit = browser.execute_script("return GEOENS_APP.state.regionPixels")
    png_small = browser.get_screenshot_as_png()
    slider = browser.find_element("id", "budget")
    sizes = []
    for v in (300, 600, 900, 1000):
        browser.execute_script(
            f"var s = arguments[0]; s.value = {v}; s.dispatchEvent(new Event('input'));", slider
        )
        time.sleep(0.2)
        sizes.append(browser.execute_script("return GEOENS_APP.state.regionPixels"))
    assert sizes == sorted(sizes) and sizes[-1] > at_hit > 0, sizes
    png_big = browser.get_screenshot_as_png()
    _assert_not_blank(png_big, "region")
    assert png_big != png_small, "the drawn region changed on screen"
    (tmp_path / "region.png").write_bytes(png_big)
    # the calibrated region at a coverage level sets the budget to its area
    opts = browser.execute_script("return [...document.getElementById('coverage').options].map(o => o.value)")
    assert "adaptive:0.9" in opts
    # and the adaptive region weighted to the test set's estimated mix (rule shift), as search --mix draws it
    labels = browser.execute_script(
        "return [...document.getElementById('coverage').options].map(o => o.textContent)"
    )
    assert "90% adaptive, weighted to this set's mix" in labels
    assert "adaptive weighted LS:0.9" in opts
    browser.execute_script(
        "var s = document.getElementById('coverage'); s.value = 'adaptive weighted LS:0.9';"
        " s.dispatchEvent(new Event('change'));"
    )
    area = browser.execute_script(
        "var st = GEOENS_APP.state; return st.photo.detail.cal[st.base + '|' + st.method]"
        "['adaptive weighted LS']['0.9'];"
    )
    budget = browser.execute_script("return GEOENS_APP.state.budgetLog")
    assert area > 0 and budget == pytest.approx(math.log10(area), abs=1e-6)
    assert chromium.console_errors(browser) == []


def test_search_viewer_opens_offline(browser: Any, tiny_explorer: Path) -> None:
    import os
    import subprocess
    import sys

    from cluster.workflow import TINY_CONFIG

    images = tiny_explorer / "results" / "demo" / "testsets" / "streetview" / "images"
    photos = [str(p) for p in sorted(images.glob("*.jpg"))[:2]]
    out = tiny_explorer / "search_html"
    cmd = [sys.executable, "-m", "geoens.apps.cli", "search", *photos, "--budget-km2", "1e7", "--html"]
    cmd += ["--config", str(TINY_CONFIG), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tiny_explorer, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _open(browser, out / "viewer" / "index.html")
    assert browser.execute_script("return GEOENS_APP.shownCount()") == 2
    browser.execute_script("GEOENS_APP.openPhoto(1)")
    _wait(browser, "return GEOENS_APP.state.regionPixels > 0")
    assert (
        browser.execute_script("return document.getElementById('photo-title').textContent")
        == Path(photos[1]).name
    )
    assert chromium.console_errors(browser) == []
