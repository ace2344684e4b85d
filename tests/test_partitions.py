"""S2 partitions: GeoEstimation's adaptive rule, CSV layout, look-ups, hierarchy; real GeoEstimation files."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import s2sphere

from fakes import write_partition_csv
from geoens.geo import partitions as pt
from geoens.geo import s2

REPO = Path(__file__).resolve().parents[1]
GEOCELLS = REPO.parent / "shared" / "reference" / "peers" / "GeoEstimation" / "geo-cells"


def clustered_points(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[48.85, 2.35], [40.7, -74.0], [35.7, 139.7], [-33.9, 151.2], [64.0, -179.5]])
    k = rng.integers(0, len(centres), n)
    scale = rng.choice([0.01, 0.3, 3.0], n)
    lat = np.clip(centres[k, 0] + rng.normal(0, 1, n) * scale, -90, 90)
    lon = centres[k, 1] + rng.normal(0, 1, n) * scale
    lon = np.mod(lon + 180, 360) - 180
    # a hot spot: 60 photos at one spot (stays above tau_max at level 30), plus scattered singletons
    lat[:60], lon[:60] = 51.5007, -0.1246
    lat[60:100], lon[60:100] = rng.uniform(-60, 70, 40), rng.uniform(-180, 180, 40)
    return lat, lon


def geoestimation_reference(
    lat: np.ndarray, lon: np.ndarray, t_min: int, t_max: int, lvl_min: int, lvl_max: int
) -> dict[str, int]:
    """GeoEstimation's create_cells loop, literally, with s2sphere tokens: {token: images}."""
    leaves = [
        s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(a, b))
        for a, b in zip(lat, lon, strict=True)
    ]
    hexid = [c.parent(lvl_min).to_token() for c in leaves]
    h = Counter(hexid)
    keep = [i for i, t in enumerate(hexid) if h[t] > t_min]
    leaves = [leaves[i] for i in keep]
    hexid = [hexid[i] for i in keep]
    h = Counter(hexid)
    level = lvl_min
    while any(v > t_max for v in h.values()) and level < lvl_max:
        level += 1
        hexid = [
            c.parent(level).to_token() if h[t] > t_max else t for c, t in zip(leaves, hexid, strict=True)
        ]
        h = Counter(hexid)
    return {t: v for t, v in h.items() if v > t_min}


@pytest.mark.parametrize(
    ("t_min", "t_max", "lvl_min", "lvl_max"), [(5, 50, 2, 30), (3, 20, 4, 12), (10, 400, 2, 30)]
)
def test_build_matches_geoestimation_reference(t_min: int, t_max: int, lvl_min: int, lvl_max: int) -> None:
    lat, lon = clustered_points()
    part = pt.build_partition(s2.latlng_to_leaf(lat, lon), lat, lon, t_min, t_max, lvl_min, lvl_max)
    ref = geoestimation_reference(lat, lon, t_min, t_max, lvl_min, lvl_max)
    got = dict(zip(part.tokens(), part.imgs_per_cell.tolist(), strict=True))
    assert got == ref
    assert part.num_images == lat.size


def test_partition_invariants() -> None:
    lat, lon = clustered_points(seed=1)
    leaf = s2.latlng_to_leaf(lat, lon)
    part = pt.build_partition(leaf, lat, lon, 5, 50, 2, 30)
    levels = s2.level(part.cells)
    counts = part.imgs_per_cell
    assert np.all(counts > 5)
    assert np.all((counts <= 50) | (levels == 30))
    assert (levels == 30).sum() == 1 and counts[levels == 30][0] >= 60  # the hot spot
    assert np.all(np.diff(part.cells.astype(np.float64)) > 0)  # class labels in increasing cell id
    lab = pt.cell_of(leaf, part)
    # every kept point is in exactly one cell (disjoint ranges, counted once), dropped points in none
    np.testing.assert_array_equal(np.bincount(lab[lab >= 0], minlength=len(part)), counts)
    assert counts.sum() == (lab >= 0).sum()
    inside = np.zeros(lat.size, dtype=int)
    for c in part.cells:
        inside += s2.contains(np.full(leaf.size, c, dtype=np.uint64), leaf)
    assert inside.max() == 1
    np.testing.assert_array_equal(inside, (lab >= 0).astype(int))
    # dropped points sit in cells of at most tau_min images at their level
    assert (lab < 0).sum() > 0


def test_cell_of_matches_s2sphere() -> None:
    lat, lon = clustered_points(seed=2)
    part = pt.build_partition(s2.latlng_to_leaf(lat, lon), lat, lon, 5, 50, 2, 30)
    rng = np.random.default_rng(3)
    qlat = np.r_[rng.normal(48.85, 1, 300), rng.uniform(-90, 90, 100)]
    qlon = np.r_[rng.normal(2.35, 1, 300), rng.uniform(-180, 180, 100)]
    got = pt.cell_of(s2.latlng_to_leaf(qlat, qlon), part)
    cells = [s2sphere.CellId(int(c)) for c in part.cells]
    for i in range(qlat.size):
        leaf = s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(qlat[i], qlon[i]))
        hits = [k for k, c in enumerate(cells) if c.contains(leaf)]
        assert hits == ([got[i]] if got[i] >= 0 else [])


def test_parent_of_leaves_equals_s2_parent() -> None:
    lat, lon = clustered_points(500)
    leaf = s2.latlng_to_leaf(lat, lon)
    for level in (0, 2, 13, 29, 30):
        np.testing.assert_array_equal(pt._parent_of_leaves(leaf, level), s2.parent(leaf, level))


def test_mean_location_near_antimeridian() -> None:
    # S2 cell edges run along lon 180 (level >= 1), so each side gets its own cell and its plain mean
    lat = np.array([64.0, 64.1, 64.2, 64.0, 64.1])
    lon = np.array([179.9, 179.7, -179.9, -179.7, -180.0])
    part = pt.build_partition(s2.latlng_to_leaf(lat, lon), lat, lon, 1, 100, 2, 30)
    assert len(part) == 2
    means = sorted(zip(part.lon_mean.tolist(), part.lat_mean.tolist(), strict=True))
    assert means[0] == pytest.approx((-179.866666666666, 64.1))
    assert means[1] == pytest.approx((179.8, 64.05))
    lat2, lon2 = np.array([10.0, 11.0]), np.array([20.0, 21.0])
    p2 = pt.build_partition(s2.latlng_to_leaf(lat2, lon2), lat2, lon2, 1, 100, 2, 30)
    assert p2.lon_mean[0] == pytest.approx(20.5, abs=1e-12) and p2.lat_mean[0] == pytest.approx(10.5)


def test_csv_layout_and_round_trip(tmp_path: Path) -> None:
    lat, lon = clustered_points()
    part = pt.build_partition(s2.latlng_to_leaf(lat, lon), lat, lon, 5, 50, 2, 30, "fine")
    path = tmp_path / "fine.csv"
    pt.write_partition_csv(part, path)
    lines = path.read_text().splitlines()
    assert lines[0] == f"num_images: {lat.size}"
    assert lines[1] == "min_concept_probability: ---"
    assert lines[2] == "class_label,hex_id,imgs_per_cell,latitude_mean,longitude_mean"
    back = pt.read_partition_csv(path)
    np.testing.assert_array_equal(back.cells, part.cells)
    np.testing.assert_array_equal(back.imgs_per_cell, part.imgs_per_cell)
    np.testing.assert_allclose(back.lat_mean, part.lat_mean, rtol=1e-14)
    np.testing.assert_allclose(back.lon_mean, part.lon_mean, rtol=1e-14)
    assert back.num_images == lat.size
    # GeoEstimation's own reader: pandas with skiprows=2
    df = pd.read_csv(path, skiprows=2)
    assert df["class_label"].tolist() == list(range(len(part)))


def _write(path: Path, body: str) -> Path:
    return write_partition_csv(path, body.splitlines(), num_images=10, header=False)


def test_bad_partition_csvs(tmp_path: Path) -> None:
    hdr = "class_label,hex_id,imgs_per_cell,latitude_mean,longitude_mean\n"
    with pytest.raises(pt.PartitionError, match=r"nomean\.csv: missing column.*longitude_mean"):
        pt.read_partition_csv(
            _write(tmp_path / "nomean.csv", "class_label,hex_id,imgs_per_cell,latitude_mean\n")
        )
    with pytest.raises(pt.PartitionError, match=r"labels\.csv: class_label 1 is missing.*line 5 has 2"):
        pt.read_partition_csv(_write(tmp_path / "labels.csv", hdr + "0,8747c,5,1,1\n2,365,5,1,1\n"))
    # lines: 1-2 comments, 3 header, 4.. rows
    with pytest.raises(
        pt.PartitionError,
        match=r"overlap\.csv: line 5 \(token 87, level 2\) contains line 4 \(token 8747c, level 7\): "
        r"the cells of a partition must not overlap",
    ):
        pt.read_partition_csv(_write(tmp_path / "overlap.csv", hdr + "0,8747c,5,1,1\n1,87,5,1,1\n"))
    with pytest.raises(pt.PartitionError, match=r"dup\.csv: line 6 duplicates line 4: token 8747c \("):
        pt.read_partition_csv(
            _write(tmp_path / "dup.csv", hdr + "0,8747c,5,1,1\n1,365,5,1,1\n2,8747c,5,1,1\n")
        )
    # rows out of class_label order: the lines are still those of the file
    with pytest.raises(pt.PartitionError, match=r"order\.csv: line 6 \(token 87, level 2\) contains line 4 "):
        pt.read_partition_csv(
            _write(tmp_path / "order.csv", hdr + "2,8747c,5,1,1\n0,365,5,1,1\n1,87,5,1,1\n")
        )
    with pytest.raises(pt.PartitionError, match=r"token\.csv.*invalid S2 token"):
        pt.read_partition_csv(_write(tmp_path / "token.csv", hdr + "0,zz,5,1,1\n"))


def test_hierarchy_by_ancestry_and_fallbacks() -> None:
    lat, lon = clustered_points(seed=4)
    parts = pt.build_partitions(
        lat,
        lon,
        {"coarse": {"tau_min": 5, "tau_max": 400}, "middle": {"tau_min": 5, "tau_max": 150},
         "fine": {"tau_min": 5, "tau_max": 50}},
    )  # fmt: skip
    frame, stats = pt.build_hierarchy(parts)
    assert frame["fine"].tolist() == list(range(len(parts["fine"])))
    assert stats["middle"]["by_ancestry"] == len(parts["fine"])
    for lv in ("middle", "coarse"):
        anc = parts[lv].cells[frame[lv].to_numpy()]
        assert s2.contains(anc, parts["fine"].cells).all()
    # drop some middle cells: their fine cells fall back, the map stays complete
    mid = parts["middle"]
    keep = np.arange(len(mid)) % 3 != 0
    cut = pt.Partition(
        mid.cells[keep], mid.imgs_per_cell[keep], mid.lat_mean[keep], mid.lon_mean[keep], 0, "cut"
    )
    lab, counts = pt.parent_labels(parts["fine"], cut)
    assert (lab >= 0).all() and lab.max() < len(cut)
    assert counts["by_mean_location"] + counts["by_nearest_mean"] > 0
    assert sum(counts.values()) == len(parts["fine"])
    ok = s2.contains(cut.cells[lab], parts["fine"].cells)
    assert ok.sum() == counts["by_ancestry"]


def test_run_partitions_build_and_csv(tmp_path: Path) -> None:
    lat, lon = clustered_points(seed=5)
    meta = tmp_path / "meta.csv"
    ids = [f"{i}.jpg" for i in range(lat.size)]
    pd.DataFrame({"IMG_ID": ids, "LAT": lat, "LON": lon}).to_csv(meta, index=False)
    cfg = {
        "source": "build",
        "levels": {"coarse": {"tau_min": 5, "tau_max": 400}, "middle": {"tau_min": 5, "tau_max": 150},
                   "fine": {"tau_min": 5, "tau_max": 50}},
        "min_level": 2,
        "max_level": 30,
    }  # fmt: skip
    out = {lv: tmp_path / "a" / f"{lv}.csv" for lv in pt.LEVELS} | {"hierarchy": tmp_path / "a" / "h.parquet"}
    report = pt.run_partitions(meta, cfg, out, max_bad_fraction=0.0)
    tab = pq.read_table(out["hierarchy"])
    assert tab.schema.equals(pt.HIERARCHY_SCHEMA)
    assert tab.num_rows == report["cells"]["fine"]
    # csv source: the same CSVs read back give the same artifacts
    out2 = {lv: tmp_path / "b" / f"{lv}.csv" for lv in pt.LEVELS} | {
        "hierarchy": tmp_path / "b" / "h.parquet"
    }
    pt.run_partitions(None, {"source": "csv", "csv": {lv: out[lv] for lv in pt.LEVELS}}, out2)
    for key in out:
        assert out[key].read_bytes() == out2[key].read_bytes()


@pytest.mark.skipif(not GEOCELLS.is_dir(), reason="GeoEstimation reference cells not present")
def test_real_geoestimation_partitions() -> None:
    files = {"coarse": "cells_50_5000.csv", "middle": "cells_50_2000.csv", "fine": "cells_50_1000.csv"}
    parts = pt.read_partitions({lv: GEOCELLS / f for lv, f in files.items()})
    assert {lv: len(p) for lv, p in parts.items()} == {"coarse": 3298, "middle": 7202, "fine": 12893}
    assert all(p.num_images == 4723695 for p in parts.values())
    assert (s2.level(parts["fine"].cells) == 30).sum() == 3
    frame, stats = pt.build_hierarchy(parts)
    assert len(frame) == 12893 and (frame[["middle", "coarse"]] >= 0).all().all()
    assert stats["middle"]["by_ancestry"] == 12893 and stats["coarse"]["by_ancestry"] == 12893
    # ancestry checked with s2sphere on a sample
    rng = np.random.default_rng(0)
    for i in rng.choice(12893, 300, replace=False):
        f = s2sphere.CellId(int(parts["fine"].cells[i]))
        for lv in ("middle", "coarse"):
            p = s2sphere.CellId(int(parts[lv].cells[frame[lv][i]]))
            assert f.parent(p.level()) == p
    # class label i is the row with class_label == i, tokens unchanged
    df = pd.read_csv(GEOCELLS / files["fine"], skiprows=2, dtype={"hex_id": str}).sort_values("class_label")
    assert parts["fine"].tokens() == df["hex_id"].tolist()


def _first_inside(part: pt.Partition, parent: int) -> int:
    """Class label of the cell of ``part`` that S2 order puts first inside the cell id ``parent``."""
    lo = s2.range_min(part.cells)
    inside = (lo >= s2.range_min(np.array([parent], np.uint64))[0]) & (
        lo <= s2.range_max(np.array([parent], np.uint64))[0]
    )
    return int(np.flatnonzero(inside)[np.argmin(lo[inside])])


def _append_row(path: Path, label: int, token: str) -> int:
    """Append a data row with ``token`` to a partition CSV; return its (1-based) line number."""
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, f"{label},{token},60,1.0,2.0"]) + "\n")
    return len(lines) + 1


def _overlap_and_duplicate_are_named(path: Path, tmp_path: Path, name: str = "") -> None:
    """Append a repeated cell, then a parent cell, to copies of ``path``: the errors name file and lines."""
    part = pt.read_partition_csv(path)
    n, tokens = len(part), part.tokens()
    k = n // 2
    dup = tmp_path / f"dup_{path.name}"
    dup.write_text(path.read_text())
    line = _append_row(dup, n, tokens[k])
    assert part.lines is not None
    first = int(part.lines[k])
    with pytest.raises(
        pt.PartitionError,
        match=rf"{re.escape(str(dup))}: line {line} duplicates line {first}: token {tokens[k]} ",
    ):
        pt.read_partition_csv(dup, name=name)
    parent = s2.parent(part.cells[[k]], int(s2.level(part.cells[[k]])[0]) - 1)
    over = tmp_path / f"over_{path.name}"
    over.write_text(path.read_text())
    line = _append_row(over, n, s2.id_to_token(parent)[0])
    inner = _first_inside(part, int(parent[0]))
    want = rf"{re.escape(str(over))}: line {line} \(token {s2.id_to_token(parent)[0]}, level \d+\) contains "
    want += (
        rf"line {part.lines[inner]} \(token {tokens[inner]}, level \d+\): the cells of a partition must not"
    )
    with pytest.raises(pt.PartitionError, match=want):
        pt.read_partition_csv(over, name=name)


def test_overlapping_or_repeated_cells_of_the_runs_partition_name_the_file_and_both_lines(
    tmp_path: Path,
) -> None:
    lat, lon = clustered_points(seed=2)
    part = pt.build_partition(s2.latlng_to_leaf(lat, lon), lat, lon, 5, 50, name="fine")
    path = tmp_path / "fine.csv"
    pt.write_partition_csv(part, path)
    assert pt.read_partition_csv(path).lines.tolist() == list(range(4, 4 + len(part)))  # type: ignore[union-attr]
    # read as the workflow reads it (a level name, not the file, as the partition's name)
    _overlap_and_duplicate_are_named(path, tmp_path, name="fine")


@pytest.mark.skipif(not GEOCELLS.is_dir(), reason="peers' reference data not available")
def test_overlapping_or_repeated_cells_of_a_geoestimation_csv_name_the_file_and_both_lines(
    tmp_path: Path,
) -> None:
    head = tmp_path / "cells_50_5000.csv"
    head.write_text("".join((GEOCELLS / "cells_50_5000.csv").open().readlines()[: 3 + 200]))
    _overlap_and_duplicate_are_named(head, tmp_path)
    # a partition held in memory (no file) names the class labels instead
    part = pt.read_partition_csv(head)
    twice = pt.Partition(part.cells[[0, 1, 0]], part.imgs_per_cell[[0, 1, 0]], part.lat_mean[[0, 1, 0]],
                         part.lon_mean[[0, 1, 0]], 10, "mem")  # fmt: skip
    with pytest.raises(
        pt.PartitionError,
        match=rf"partition mem: class_label 2 duplicates class_label 0: token {part.tokens()[0]} ",
    ):
        twice.sorted_ranges()
