"""Screenshot of an explorer with one photo's ranked region drawn (docs/img/explorer.png), headless Chromium.

Usage: python tests/browser/screenshot.py [--explorer results/explorer] [--out docs/img/explorer.png]
The photo is the one of the first test set whose area to hit for the base's full ensemble is the median
among the photos with detail; its region is drawn at that area, the map zoomed on its truth.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from browser import chromium  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--explorer", default="results/explorer", help="the explorer's folder")
    ap.add_argument("--out", default="docs/img/explorer.png", help="the PNG to write")
    ap.add_argument("--base", default="geoclip", help="base model shown")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=960)
    args = ap.parse_args()
    reason = chromium.unavailable_reason()
    if reason is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    driver = chromium.start(args.width, args.height)
    try:
        chromium.open_page(driver, Path(args.explorer) / "index.html")
        driver.execute_script("GEOENS_APP.setBase(arguments[0])", args.base)
        i = driver.execute_script(
            "var s = GEOENS_SUMMARY[GEOENS_APP.state.testset], k = GEOENS_APP.state.base + '|' + "
            "GEOENS_APP.state.method, c = [];"
            "s.ids.forEach(function (_, i) {"
            "  if (s.detail[i] >= 0 && s.log_area[k][i] !== null) c.push(i);"
            "});"
            "c.sort(function (a, b) { return s.log_area[k][a] - s.log_area[k][b]; });"
            "return c[Math.floor(c.length / 2)];"
        )
        driver.execute_script("GEOENS_APP.openPhoto(arguments[0])", i)
        t0 = time.monotonic()
        while not driver.execute_script("return GEOENS_APP.state.regionPixels > 0"):
            if time.monotonic() - t0 > 20:
                raise TimeoutError("the region was not drawn")
            time.sleep(0.05)
        time.sleep(0.5)
        errors = chromium.console_errors(driver)
        if errors:
            print(f"error: the page logged errors: {errors}", file=sys.stderr)
            return 1
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    im = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    im.save(out, format="PNG", optimize=True)
    print(f"{out}: {im.width} x {im.height}, {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
