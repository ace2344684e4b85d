"""Golden test: `geoens rva` on the published per-image predictions of GeoEstimation's six models.

`../shared/reference/peers/GeoEstimation/results/{im2gps,im2gps3k}/*.csv` end with the summary row the
authors printed (accuracy at 1/25/200/750/2500 km, mean deviation). Scoring the rows with R = 6371 km must
reproduce it to the printed precision. The commands of docs/byo.md's golden block are run exactly as printed
(from a folder where `../shared` resolves) and the table they write must be the one docs/byo.md shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import PEERS
from geoens.data.predictions import read_geoestimation_summary

REPO = Path(__file__).resolve().parents[1]
GEOEST = PEERS / "GeoEstimation"
SETS = ("im2gps", "im2gps3k")
pytestmark = pytest.mark.skipif(not GEOEST.is_dir(), reason="../shared/reference/peers/GeoEstimation absent")

ACC = ["acc_1km", "acc_25km", "acc_200km", "acc_750km", "acc_2500km"]


def golden_commands() -> list[str]:
    """The bash block of docs/byo.md marked as run by this file."""
    text = (REPO / "docs" / "byo.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- run by tests/test_byo_golden.py -->\n```bash\n(.*?)```", text, re.S)
    assert m, "docs/byo.md must print the golden command block"
    return [ln for ln in m.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("golden")
    (root / "shared").symlink_to(PEERS.parent.parent.resolve())
    work = root / "work"
    work.mkdir()
    script = "set -euo pipefail\n" + "\n".join(golden_commands()) + "\n"
    # `geoens` as a user has it: the venv's bin first on PATH (pytest may run without the venv activated)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "results" / "byo"


@pytest.mark.parametrize("testset", SETS)
def test_rva_reproduces_the_published_summary_rows(golden_run: Path, testset: str) -> None:
    table = pd.read_csv(golden_run / testset / "table.csv").set_index("model")
    files = sorted((GEOEST / "results" / testset).glob("*.csv"))
    assert len(files) == 6 and sorted(table.index) == sorted(f.stem for f in files)
    for f in files:
        ref = list(read_geoestimation_summary(f).values())
        row = table.loc[f.stem]
        assert row["n_missing"] == 0
        for col, want in zip(ACC, ref[:5], strict=True):
            assert abs(row[col] - want) <= 5e-7, (f, col, row[col], want)  # printed to 6 decimals
        assert abs(row["mean_km"] - ref[5]) <= 0.005 + 1e-9, (f, row["mean_km"], ref[5])  # printed to 0.01
        # a single point's RvA at the cap area of r is its accuracy at r (same sphere, d <= r)
        for r in ("1km", "25km", "200km", "750km", "2500km"):
            assert row[f"rva_{r}"] == row[f"acc_{r}"]


def test_the_docs_show_the_table_the_command_writes(golden_run: Path) -> None:
    docs = (REPO / "docs" / "byo.md").read_text(encoding="utf-8")
    for testset in SETS:
        table = (golden_run / testset / "table.md").read_text(encoding="utf-8").strip()
        assert table in docs, f"docs/byo.md does not show the current {testset} table:\n{table}"
    per_image = pd.read_parquet(golden_run / "im2gps3k" / "per_image.parquet")
    assert len(per_image) == 6 * 2997 and set(per_image["base"]) == {
        f.stem for f in (GEOEST / "results" / "im2gps3k").glob("*.csv")
    }
    assert (golden_run / "im2gps3k" / "rva.pdf").stat().st_size > 0


def test_the_published_file_is_read_without_its_summary_block() -> None:
    from geoens.data.predictions import PredictionSpec, read_point_predictions

    f = GEOEST / "results" / "im2gps" / "base_M-m.csv"
    pred = read_point_predictions(f, PredictionSpec("base_M-m", "point"))
    assert len(pred.ids) == 237 and pred.ids[0].endswith(".jpg")
    summary = read_geoestimation_summary(f)
    assert list(summary)[-1] == "mean deviation (km)"


def readme_table(table: pd.DataFrame) -> str:
    """The README's compact Im2GPS3k table, rendered from the command's ``table.csv``."""
    lines = [
        "| Im2GPS3k (2,997 photos) | acc 1 km | 25 km | 200 km | 750 km | 2500 km | median error | GeoGuessr "
        "| median RvA area |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, r in table.iterrows():
        accs = " | ".join(f"{100 * r[c]:.1f}%" for c in ACC)
        lines.append(
            f"| {model} | {accs} | {r['median_km']:,.0f} km | {r['geoguessr']:.0f} "
            f"| {r['median_rva_km2']:.3g} km^2 |"
        )
    return "\n".join(lines)


def test_the_readme_shows_the_published_models_table(golden_run: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- run by tests/test_byo_golden.py -->\n```bash\n(.*?)```", readme, re.S)
    assert block and [ln for ln in block.group(1).splitlines() if ln.strip()] == golden_commands()
    want = readme_table(pd.read_csv(golden_run / "im2gps3k" / "table.csv").set_index("model"))
    assert want in readme, f"README does not show the current table:\n{want}"
