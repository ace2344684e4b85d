"""Tables and figures from a small synthetic evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _rva_world import make_world, write_inputs
from geoens.core.grid import Grid
from geoens.evaluation.metrics import recall_at, summarise
from geoens.evaluation.testset import evaluate_testset
from geoens.reports import figures
from geoens.reports.tables import CAP_ALPHAS, KINDS, training_frame, write_tables, write_training_table


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], pd.DataFrame]:
    root = tmp_path_factory.mktemp("world")
    world = make_world(seed=21, h=12)
    paths = write_inputs(world, root, n_images=120)
    preds = {m: paths[m] for m in ("ls", "lc", "geoest", "geoclip")}
    df = evaluate_testset(
        paths["atoms"], paths["atom_index"], paths["absorption"], paths["labels"], paths["fine"], preds
    )
    return paths, df


def _outputs(root: Path, testset: str) -> dict[str, dict[str, Path]]:
    return {k: {f: root / f"{testset}_{k}.{f}" for f in ("csv", "md", "tex")} for k in KINDS}


def test_tables_written_with_cis_and_counts(evaluated, tmp_path: Path) -> None:
    _, df = evaluated
    out = _outputs(tmp_path, "demo")
    summ = write_tables(df, "demo", out, n_boot=50, seed=0, balanced_seed=0, demo=True)
    csv = pd.read_csv(out["original"]["csv"])
    assert len(csv) == 12
    assert list(csv["label"][:6]) == ["GeoEst.", "+LS", "+LS, urban prior", "+LC", "+LS+LC", "GeoEst. (cell)"]
    for col in ("rva_25km", "rva_25km_lo", "rva_25km_hi", "gcd_2500km", "n_bucket_lowest"):
        assert col in csv.columns
    ok = csv["rva_200km"].notna()
    assert ok.sum() == 10 and csv["rva_200km"].isna().sum() == 2  # own top-1 rows have no RvA
    assert np.all(csv.loc[ok, "rva_200km_lo"] <= csv.loc[ok, "rva_200km"] + 1e-9)
    assert np.all(csv.loc[ok, "rva_200km"] <= csv.loc[ok, "rva_200km_hi"] + 1e-9)
    # values are the recall of the per-image areas, in percent
    base = df[df["method"] == "GeoEst."]
    expect = 100 * recall_at(base["area_km2"], [CAP_ALPHAS[2]])[0]
    assert csv.loc[0, "rva_200km"] == pytest.approx(expect, abs=1e-3)
    md = out["balanced"]["md"].read_text()
    assert "synthetic demo world" in md and "Images per ground-truth LS bucket" in md and " [" in md
    bal = pd.read_csv(out["balanced"]["csv"])
    m = min(c for c in summ["balanced"].bucket_counts if c)
    assert bal["n"].iloc[0] == m * sum(1 for c in summ["balanced"].bucket_counts if c)
    tex = out["original"]["tex"].read_text()
    assert r"\begin{tabular}" in tex and r"\multicolumn{5}{c}{RvA}" in tex
    # deterministic bytes
    out2 = _outputs(tmp_path / "again", "demo")
    write_tables(df, "demo", out2, n_boot=50, seed=0, balanced_seed=0, demo=True)
    for k in KINDS:
        for f in ("csv", "md", "tex"):
            assert out[k][f].read_bytes() == out2[k][f].read_bytes()


def test_figures_written(evaluated, tmp_path: Path) -> None:
    paths, df = evaluated
    per = {"setA": df, "setB": df[df["image_id"] < "img0060"]}
    figures.rva_figure(
        per, tmp_path / "rva.pdf", tmp_path / "rva.png", n_boot=20, seed=0, balanced_seed=0, demo=True
    )
    assert (tmp_path / "rva.pdf").read_bytes()[:4] == b"%PDF"
    assert (tmp_path / "rva.pdf").stat().st_size > 10_000 and (tmp_path / "rva.png").stat().st_size > 10_000
    figures.buckets_figure(per, tmp_path / "buckets.pdf", demo=True)
    assert (tmp_path / "buckets.pdf").stat().st_size > 5_000
    preds = {m: paths[m] for m in ("ls", "lc", "geoest", "geoclip")}
    figures.probmap_figure(
        paths["atoms"], paths["atom_index"], paths["absorption"], paths["labels"], paths["fine"], preds,
        tmp_path / "probmap.png", n_examples=2, demo=True,
    )  # fmt: skip
    assert (tmp_path / "probmap.png").read_bytes()[:4] == b"\x89PNG"


def test_probmap_examples_are_images_whose_truth_has_mass(evaluated, tmp_path: Path) -> None:
    """The maps show images whose truth gets P > 0 under every column, never one outside the partition."""
    from fakes import write_prediction_parquet
    from geoens.evaluation.testset import read_absorption, read_probs
    from geoens.geo.atoms import read_atom_index, read_atoms
    from geoens.geo.lookup import PixelLookup

    paths, _ = evaluated
    atoms = read_atoms(paths["atoms"])
    index = read_atom_index(paths["atom_index"], atoms.n)
    lab = pd.read_parquet(paths["labels"]).set_index("image_id")
    ids, probs = read_probs(paths["geoest"])
    gt = PixelLookup(index, Grid(index.shape[0], index.shape[1])).atom_at(
        lab.loc[ids, "lat"].to_numpy(), lab.loc[ids, "lon"].to_numpy()
    )
    cell = np.where(gt >= 0, atoms.labels["s2"][np.maximum(gt, 0)], -1)
    ls = np.where(gt >= 0, atoms.labels["ls"][np.maximum(gt, 0)], -1)
    cells_abs, targets = read_absorption(paths["absorption"])
    # the first half of the images: no mass on the truth's cell (nor on the cells absorbed into it)
    zeroed = probs.copy()
    for k in range(len(ids) // 2):
        if cell[k] >= 0:
            zeroed[k, [cell[k], *cells_abs[targets == cell[k]]]] = 0.0
    preds = {m: paths[m] for m in ("ls", "lc", "geoclip")}
    preds["geoest"] = write_prediction_parquet(tmp_path / "geoest.parquet", ids, zeroed)
    args = (paths["atoms"], paths["atom_index"], paths["absorption"], paths["labels"], paths["fine"])
    inp = figures._probmap_inputs(*args, preds, n_examples=6, base="geoest", earth_radius_km=6371.0088)
    picked = [ids.index(i) for i in inp.ids]
    assert len(picked) == 6
    assert all(k >= len(ids) // 2 and cell[k] >= 0 and ls[k] >= 0 for k in picked)
    # with the original predictions the first half is eligible again (the filter is what moved the picks)
    preds["geoest"] = paths["geoest"]
    inp = figures._probmap_inputs(*args, preds, n_examples=6, base="geoest", earth_radius_km=6371.0088)
    assert any(ids.index(i) < len(ids) // 2 for i in inp.ids)


def test_truth_mass_counts_absorbed_cells_and_the_attribute_predictors(evaluated, tmp_path: Path) -> None:
    """An absorbed cell's mass reaches the truth's cell; an LS predictor with 0 on its bucket bars it."""
    from fakes import write_prediction_parquet
    from geoens.evaluation.testset import read_absorption, read_probs
    from geoens.geo.atoms import read_atom_index, read_atoms
    from geoens.geo.lookup import PixelLookup

    paths, _ = evaluated
    atoms = read_atoms(paths["atoms"])
    index = read_atom_index(paths["atom_index"], atoms.n)
    grid = Grid(index.shape[0], index.shape[1])
    lab = pd.read_parquet(paths["labels"]).set_index("image_id")
    ids, probs = read_probs(paths["geoest"])
    gt = PixelLookup(index, grid).atom_at(lab.loc[ids, "lat"].to_numpy(), lab.loc[ids, "lon"].to_numpy())
    cell = np.where(gt >= 0, atoms.labels["s2"][np.maximum(gt, 0)], -1)
    ls = np.where(gt >= 0, atoms.labels["ls"][np.maximum(gt, 0)], -1)
    lc = np.where(gt >= 0, atoms.labels["lc"][np.maximum(gt, 0)], -1)
    cells_abs, targets = read_absorption(paths["absorption"])
    receives = [k for k in range(len(ids)) if min(cell[k], ls[k], lc[k]) >= 0 and (targets == cell[k]).any()]
    plain = [k for k in range(len(ids)) if min(cell[k], ls[k], lc[k]) >= 0 and k not in receives]
    assert receives and plain, "the test world has absorbed cells and ordinary truths"
    base = probs.copy()
    k_abs = receives[0]
    base[k_abs, cell[k_abs]] = 0.0  # only an absorbed cell's mass is left on the truth's cell
    base[k_abs, cells_abs[targets == cell[k_abs]]] = 0.5
    k_ls = plain[0]
    ls_ids, ls_probs = read_probs(paths["ls"])
    ls_probs = ls_probs.copy()
    ls_probs[ls_ids.index(ids[k_ls]), ls[k_ls]] = 0.0  # the LS predictor rules the truth's bucket out
    ls_path = write_prediction_parquet(tmp_path / "ls.parquet", ls_ids, ls_probs)
    base_path = write_prediction_parquet(tmp_path / "geoest.parquet", ids, base)
    attr = {"ls": read_probs(ls_path), "lc": read_probs(paths["lc"])}
    pos = {f: {i: j for j, i in enumerate(attr[f][0])} for f in attr}
    ok = list(range(len(ids)))
    absorption = read_absorption(paths["absorption"])
    lookup = PixelLookup(index, grid)
    good = figures._truth_has_mass(atoms, lookup, lab, ids, ok, attr, pos, base_path, absorption)
    assert good[k_abs] and not good[k_ls]
    # every image against a brute-force reading of the rule
    lc_ids, lc_probs = attr["lc"]
    for k in ok:
        if min(cell[k], ls[k], lc[k]) < 0:
            assert not good[k]
            continue
        mass = base[k, cell[k]] + base[k, cells_abs[targets == cell[k]]].sum()
        attrs_ok = ls_probs[ls_ids.index(ids[k]), ls[k]] > 0 and lc_probs[pos["lc"][ids[k]], lc[k]] > 0
        want = mass > 0 and attrs_ok
        assert good[k] == want, k
    assert 0 < good.sum() < len(ok)


def test_gain_curves_zero_for_identical_methods(evaluated) -> None:
    _, df = evaluated
    sub = df[df["base"] == "geoest"].copy()
    same = sub[sub["method"] == "GeoEst."].assign(method="GeoEst.+LS")
    sub = pd.concat([sub[sub["method"] != "GeoEst.+LS"], same])
    s = summarise(sub, False, 0, 0, 0)
    g = figures.gain_curves(s, sub, 10, 0, 0, balanced=False)
    ls = g[g["method"] == "GeoEst.+LS"]
    assert np.all(ls["gain"] == 0) and np.all(ls["lo"] == 0) and np.all(ls["hi"] == 0)
    assert (g[g["method"] == "GeoEst.+LC"]["gain"] != 0).any()


def test_summarise_rejects_incomplete_table(evaluated) -> None:
    _, df = evaluated
    bad = df.drop(df.index[(df["method"] == "GeoEst.+LC")][:3])
    with pytest.raises(ValueError, match="GeoEst.\\+LC"):
        summarise(bad, False, 0, 0, 0)


def test_training_table_compares_with_majority(tmp_path: Path) -> None:
    common = {"backbone": "lcnet_050", "image_size": 64, "n_train": 100, "n_val": 20}
    common.update(best_epoch=3, epochs=4)
    summaries = {
        "ls": {**common, "val_acc": {"ls": 0.6}, "val_majority_acc": {"ls": 0.3}},
        "geoest": {
            **common,
            "heads": ["coarse", "middle", "fine"],  # the JSON file's dicts come back sorted by key
            "val_acc": {"coarse": 0.2, "fine": 0.05, "middle": 0.1},
            "val_majority_acc": {"coarse": 0.1, "fine": 0.0, "middle": None},
        },
    }
    df = write_training_table(summaries, tmp_path / "t.csv", tmp_path / "t.md", demo=True)
    assert list(zip(df["model"], df["head"], strict=True)) == [
        ("ls", "ls"), ("geoest", "coarse"), ("geoest", "middle"), ("geoest", "fine")
    ]  # fmt: skip
    assert df["ratio"].iloc[0] == pytest.approx(2.0) and df["ratio"].iloc[1] == pytest.approx(2.0)
    assert df["ratio"].iloc[2:].isna().all()  # no baseline, zero baseline: no ratio
    back = pd.read_csv(tmp_path / "t.csv")
    assert back["val_acc"].tolist() == pytest.approx([0.6, 0.2, 0.1, 0.05])
    md = (tmp_path / "t.md").read_text()
    assert "synthetic demo world" in md
    assert "| ls | ls | lcnet_050 @ 64 px | 100 / 20 | 3 of 4 | 60.0% | 30.0% | 2.00x |" in md
    with pytest.raises(KeyError, match="model 'ls' lacks key 'val_majority_acc'"):
        training_frame({"ls": {**common, "val_acc": {"ls": 0.5}}})


@pytest.mark.slow
def test_evaluate_rules_run_in_snakemake(tmp_path: Path) -> None:
    """The evaluate.smk rules end to end on a small world (the other stages' outputs faked in place)."""
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    world = make_world(seed=41, h=12)
    paths = write_inputs(world, tmp_path / "src", n_images=80)
    dest = {
        "atoms": "results/atoms/atoms.parquet",
        "atom_index": "results/atoms/atom_index.tif",
        "absorption": "results/masks/s2_absorption.parquet",
        "fine": "results/partitions/fine.csv",
        "labels": "results/labels/testsets/setA.parquet",
        **{m: f"results/predictions/setA/{m}.parquet" for m in ("ls", "lc", "geoest", "geoclip")},
    }
    for key, rel in dest.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(paths[key], tmp_path / rel)
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(
        "import json\n"
        "config.update({'seed': 0, 'grid': {'height': 12, 'width': 24, 'earth_radius_km': 6371.0088},\n"
        "  'evaluate': {'bootstrap': 20, 'probmap_examples': 2, 'balanced_seed': 0, 'batch_size': 30,\n"
        "               'chunk_elements': 5000, 'curve_points': 40, 'probmap_base': 'geoest'}})\n"
        "TESTSETS = ['setA']\nPRED_MODELS = ['ls', 'lc', 'geoest', 'geoclip']\nDEMO = True\n"
        "def params_of(*keys):\n"
        "    node = config\n"
        "    for k in keys:\n"
        "        node = node[k]\n"
        "    return json.dumps(node, sort_keys=True)\n"
        "def upstream(output):\n"
        "    return str(output)\n"
        "def external_evals(testset):\n"  # no external models in this run (rules/common.smk)
        "    return {}\n"
        # the upstream rules evaluate.smk names (rules.<name>.output.<key>), their outputs faked above
        "rule partitions:\n    output:\n        fine='results/partitions/fine.csv',\n"
        "rule mask_s2:\n    output:\n        absorption='results/masks/s2_absorption.parquet',\n"
        "rule atoms:\n    output:\n        atoms='results/atoms/atoms.parquet',\n"
        "        index='results/atoms/atom_index.tif',\n"
        "rule relabel_testset:\n    output:\n        labels='results/labels/testsets/{testset}.parquet',\n"
        f"include: '{repo}/rules/evaluate.smk'\n"
    )
    targets = [
        "results/tables/setA_balanced.md",
        "results/figures/rva.pdf",
        "results/figures/buckets.pdf",
        "results/figures/probmap_setA.png",
    ]
    snakemake = Path(sys.executable).parent / "snakemake"
    proc = subprocess.run(
        [str(snakemake), "-s", str(snakefile), "-d", str(tmp_path), "--cores", "2", *targets],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for t in targets:
        assert (tmp_path / t).stat().st_size > 0
    df = pd.read_parquet(tmp_path / "results/eval/setA/per_image.parquet")
    assert len(df) == 80 * 12
    assert (tmp_path / "logs/evaluate/evaluate_setA.log").exists()


def _coast_pixels(land: np.ndarray, coast: bool) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Coastline-coloured pixels of a map of ``land`` drawn by geoens.reports.landmap: their count, their
    bounding box and the box of the land's outline (lon -60..20, lat -10..30 in the test), both in image
    pixels ``(x0, y0, x1, y1)``."""
    import io

    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb
    from PIL import Image

    from geoens.reports import landmap

    fig, ax = plt.subplots(figsize=(4, 2), dpi=200)
    landmap.shade_land(ax, land)
    if coast:
        landmap.draw_coastline(ax, land)
    fig.canvas.draw()
    (x0, y0), (x1, y1) = ax.transData.transform([(-60.0, -10.0), (20.0, 30.0)])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=200)
    plt.close(fig)
    rgb = np.asarray(Image.open(buf).convert("RGB"), np.float64) / 255
    # the shading is grey (r = g = b); the coastline's blue, even blended by antialiasing, is not
    coast_blue = np.array(to_rgb(landmap.COAST_COLOUR))
    assert coast_blue[2] - coast_blue[0] > 0.3
    ys, xs = np.nonzero(rgb[..., 2] - rgb[..., 0] > 0.08)
    h = rgb.shape[0]
    box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())) if xs.size else ()
    return int(xs.size), box, (x0, h - y1, x1, h - y0)


def test_maps_shade_the_land_and_draw_its_coastline() -> None:
    land = np.zeros((90, 180), bool)
    land[30:50, 60:100] = True  # one continent: lat 30 N to 10 S, lon 60 W to 20 E (north row first)
    n, box, want = _coast_pixels(land, coast=True)
    assert n > 50
    # the coastline sits around the continent, not mirrored (north-south) or shifted: within 3 pixels
    assert np.allclose(box, want, atol=3), (box, want)
    assert _coast_pixels(land, coast=False)[0] == 0  # the colour is the coastline's, not the shading's
    assert _coast_pixels(np.ones((90, 180), bool), coast=True)[0] == 0  # no coast on an all-land world
