"""The external predictions contract (docs/byo.md): each kind read back, and every bad input named."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geoens.data.predictions import (
    PredictionsError,
    PredictionSpec,
    WeightedPoints,
    align_to_truth,
    prediction_spec_from_config,
    read_cell_predictions,
    read_geoestimation_summary,
    read_point_predictions,
    read_predictions,
    read_weighted_points,
    write_cell_predictions,
    write_weighted_points,
)

GEOEST_CSV = """img_id,gt_lat,predicted_lat,gt_long,predicted_long,great_circle_distance
a.jpg,10.0,11.000000,20.0,21.500000,197.17
b.jpg,-5.0,-5.000001,100.0,100.000002,0.00

street acc (1km),city acc (25km),region acc (200km),country acc (750km),continent acc (2500km),"""
GEOEST_CSV += """mean deviation (km)
0.5,0.5,1.0,1.0,1.0,98.59
"""


def _write(path: Path, cols: dict[str, object]) -> Path:
    pq.write_table(pa.table(cols), path)
    return path


def spec(kind: str, **kw: object) -> PredictionSpec:
    return PredictionSpec("m", kind, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# each kind
# --------------------------------------------------------------------------------------------------
def test_point_csv_in_geoestimation_layout_reads_rows_not_the_summary(tmp_path: Path) -> None:
    f = tmp_path / "r.csv"
    f.write_text(GEOEST_CSV)
    p = read_point_predictions(f, spec("point"))
    assert p.ids == ["a.jpg", "b.jpg"]
    np.testing.assert_allclose(p.lat, [11.0, -5.000001])
    np.testing.assert_allclose(p.lon, [21.5, 100.000002])
    assert read_geoestimation_summary(f)["mean deviation (km)"] == 98.59
    f2 = tmp_path / "no_summary.csv"
    f2.write_text(GEOEST_CSV.split("\n\n")[0] + "\n")
    with pytest.raises(PredictionsError, match=r"no_summary.csv: no summary block"):
        read_geoestimation_summary(f2)


def test_point_csv_with_mapped_columns_and_radians(tmp_path: Path) -> None:
    f = tmp_path / "llm.csv"
    f.write_text("IMG_ID,LAT_pred,LON_pred\nx.jpg,0.5,-1.0\ny.jpg,-1.5,3.1\n")
    p = read_point_predictions(f, spec("point", units="radians"))
    np.testing.assert_allclose(p.lat, np.rad2deg([0.5, -1.5]))
    np.testing.assert_allclose(p.lon, np.rad2deg([-1.0, 3.1]))
    g = tmp_path / "odd.csv"
    g.write_text("photo,y,x\nx.jpg,45,7\n")
    s = spec("point", columns={"image_id": "photo", "lat": "y", "lon": "x"})
    assert read_point_predictions(g, s).lon[0] == 7.0
    with pytest.raises(PredictionsError, match=r"odd.csv: no column for 'image_id'"):
        read_point_predictions(g, spec("point"))


def test_coords_pairs_follow_the_declared_order(tmp_path: Path) -> None:
    f = _write(tmp_path / "p.parquet", {"image_id": ["a"], "coords": [[7.0, 45.0]]})
    p = read_point_predictions(f, spec("point", order="lonlat"))
    assert (p.lat[0], p.lon[0]) == (45.0, 7.0)
    p = read_point_predictions(f, spec("point", order="latlon"))
    assert (p.lat[0], p.lon[0]) == (7.0, 45.0)
    both = _write(
        tmp_path / "both.parquet", {"image_id": ["a"], "coords": [[7.0, 45.0]], "lat": [1.0], "lon": [2.0]}
    )
    assert read_point_predictions(both, spec("point")).lat[0] == 1.0  # named columns win over a pair
    assert read_point_predictions(both, spec("point", columns={"coords": "coords"})).lat[0] == 7.0


def test_points_and_samples_become_normalised_csr(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "pts.parquet",
        {"image_id": ["a", "b"], "lat": [[1.0, 2.0, 3.0], [4.0]], "lon": [[5.0, 6.0, 7.0], [8.0]],
         "weight": [[0.2, 0.1, 0.1], [0.5]]},
    )  # fmt: skip
    wp = read_weighted_points(f, spec("points"))
    np.testing.assert_array_equal(wp.offsets, [0, 3, 4])
    np.testing.assert_allclose(wp.weight, [0.5, 0.25, 0.25, 1.0])
    ws = read_weighted_points(f, spec("samples"))
    np.testing.assert_allclose(ws.weight, [1 / 3, 1 / 3, 1 / 3, 1.0])
    out = tmp_path / "back.parquet"
    write_weighted_points(out, wp)
    again = read_predictions(out, spec("points"))
    assert isinstance(again, WeightedPoints)
    np.testing.assert_allclose(again.weight, wp.weight)
    np.testing.assert_allclose(again.lat, wp.lat)


def test_cells_round_trip_and_small_sum_errors_are_normalised_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "cells.parquet"
    write_cell_predictions(f, ["a", "b"], np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]))
    ids, p = read_cell_predictions(f, spec("cells"), 3)
    assert ids == ["a", "b"] and p.dtype == np.float32
    g = _write(
        tmp_path / "off.parquet", {"image_id": ["a", "b"], "probs": [[0.5, 0.5, 0.0], [0.2, 0.3, 0.503]]}
    )
    with caplog.at_level(logging.WARNING):
        _, p = read_cell_predictions(g, spec("cells"), 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    assert "normalised (worst off by 0.003" in caplog.text and "'b'" in caplog.text


# --------------------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------------------
def test_bad_probability_vectors_are_named(tmp_path: Path) -> None:
    cases = {
        "short": (
            [[0.5, 0.5]],
            r"short.parquet: probability vector of length 2, the partition has 3 cells, at row 0",
        ),
        "negative": (
            [[0.5, 0.7, -0.2]],
            r"negative.parquet: negative or NaN probability at row 0 \(image 'a'\)",
        ),
        "nan": ([[0.5, float("nan"), 0.5]], r"nan.parquet: negative or NaN probability at row 0"),
        "sum": (
            [[0.5, 0.2, 0.1]],
            r"sum.parquet: 1 row\(s\) of probs do not sum to 1 \(tolerance 0.01\); worst 0.8",
        ),
        "zero": ([[0.0, 0.0, 0.0]], r"zero.parquet: probs sum to 0 at row 0"),
    }
    for name, (probs, msg) in cases.items():
        f = _write(tmp_path / f"{name}.parquet", {"image_id": ["a"], "probs": probs})
        with pytest.raises(PredictionsError, match=msg):
            read_cell_predictions(f, spec("cells"), 3)


def test_points_in_the_wrong_units_or_order_are_named(tmp_path: Path) -> None:
    f = _write(tmp_path / "deg.parquet", {"image_id": ["a", "b"], "lat": [10.0, 120.0], "lon": [5.0, 45.0]})
    with pytest.raises(PredictionsError, match=r"deg.parquet: 1 latitude\(s\) impossible in degrees .* row 1 "
                       r"\(image 'b'\) \(latitude and longitude swapped\? check 'order'\)"):  # fmt: skip
        read_point_predictions(f, spec("point"))
    g = _write(tmp_path / "rad.parquet", {"image_id": ["a"], "lat": [0.5], "lon": [12.0]})
    with pytest.raises(PredictionsError, match=r"rad.parquet: 1 longitude\(s\) impossible in radians .*"
                       r"\(degrees declared as radians\? check 'units'\)"):  # fmt: skip
        read_point_predictions(g, spec("point", units="radians"))
    # radians with lat/lon swapped: both causes are possible, both are named; beyond pi only the units
    r = _write(tmp_path / "rswap.parquet", {"image_id": ["a"], "lat": [2.5], "lon": [0.7]})
    both = r"\(degrees declared as radians\? check 'units'; or latitude and longitude swapped"
    with pytest.raises(
        PredictionsError, match=r"rswap.parquet: 1 latitude\(s\) impossible in radians .*" + both
    ):
        read_point_predictions(r, spec("point", units="radians"))
    d = _write(tmp_path / "rdeg.parquet", {"image_id": ["a"], "lat": [48.8], "lon": [2.3]})
    with pytest.raises(
        PredictionsError, match=r"rdeg.parquet: .*\(degrees declared as radians\? check 'units'\)$"
    ):
        read_point_predictions(d, spec("point", units="radians"))
    h = _write(tmp_path / "swap.parquet", {"image_id": ["a"], "coords": [[170.0, 40.0]]})
    with pytest.raises(PredictionsError, match=r"swap.parquet: .*latitude\(s\) impossible .*swapped"):
        read_point_predictions(h, spec("point", order="latlon"))
    assert read_point_predictions(h, spec("point", order="lonlat")).lat[0] == 40.0


def test_bad_point_lists_and_ids_are_named(tmp_path: Path) -> None:
    def pts(name: str, **cols: object) -> Path:
        base: dict[str, object] = {"image_id": ["a", "b"], "lat": [[1.0], [2.0]], "lon": [[1.0], [2.0]],
                                   "weight": [[1.0], [1.0]]}  # fmt: skip
        return _write(tmp_path / f"{name}.parquet", base | cols)

    cases = [
        (
            pts("empty", lat=[[1.0], []], lon=[[1.0], []], weight=[[1.0], []]),
            r"empty.parquet: empty point list at row 1",
        ),
        (
            pts("ragged", lon=[[1.0], [2.0, 3.0]]),
            r"ragged.parquet: lists 'lat' and 'lon' differ in length at row 1",
        ),
        (
            pts("wlen", weight=[[1.0], [0.5, 0.5]]),
            r"wlen.parquet: lists 'lat' and 'weight' differ in length at row 1",
        ),
        (pts("nanw", weight=[[1.0], [float("nan")]]), r"nanw.parquet: negative or NaN weight at row 1"),
        (pts("negw", weight=[[-1.0], [1.0]]), r"negw.parquet: negative or NaN weight at row 0"),
        (pts("nanc", lat=[[1.0], [float("nan")]]), r"nanc.parquet: NaN or infinite coordinate at row 1"),
        (pts("dup", image_id=["a", "a"]), r"dup.parquet: 1 duplicate image_id\(s\): row 1 \(image 'a'\)"),
        (pts("noid", image_id=["a", ""]), r"noid.parquet: empty image_id at row 1"),
    ]
    for path, msg in cases:
        with pytest.raises(PredictionsError, match=msg):
            read_weighted_points(path, spec("points"))
    with pytest.raises(PredictionsError, match=r"missing.parquet: predictions file not found \(model 'm'\)"):
        read_weighted_points(tmp_path / "missing.parquet", spec("points"))


def test_ids_missing_or_not_in_the_truth_are_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        m = align_to_truth(["b", "x", "a", "y"], ["a", "b", "c"], "f.parquet")
    np.testing.assert_array_equal(m.truth_rows, [0, 1])
    np.testing.assert_array_equal(m.pred_rows, [2, 0])
    assert (m.n_missing, m.missing, m.n_extra, m.extra) == (1, ["c"], 2, ["x", "y"])
    assert "1 of 3 truth images have no prediction" in caplog.text
    assert "2 predicted images are not in the truth" in caplog.text
    assert m.summary()["n_not_in_truth"] == 2
    with pytest.raises(PredictionsError, match=r"g.csv: none of 1 predicted images is in the truth"):
        align_to_truth(["z"], ["a"], "g.csv")


def test_the_spec_and_its_config_node_are_checked() -> None:
    s = prediction_spec_from_config(
        "osv5m", {"kind": "point", "units": "radians", "predictions": {"im2gps3k": "p.parquet"}, "kappa": 20}
    )
    assert (s.name, s.units, s.kappa, dict(s.predictions)) == (
        "osv5m",
        "radians",
        20.0,
        {"im2gps3k": "p.parquet"},
    )
    with pytest.raises(PredictionsError, match=r"models.external.x: unknown key\(s\) \['unit'\]"):
        prediction_spec_from_config("x", {"kind": "point", "unit": "radians"})
    with pytest.raises(PredictionsError, match=r"models.external.x: missing key 'kind'"):
        prediction_spec_from_config("x", {})
    with pytest.raises(PredictionsError, match=r"model 'x': kind 'grid' is not one of cells, points"):
        PredictionSpec("x", "grid")
    with pytest.raises(PredictionsError, match=r"model 'x': units 'deg' is not one of degrees, radians"):
        PredictionSpec("x", "point", units="deg")
    with pytest.raises(PredictionsError, match=r"model 'x': columns maps unknown name\(s\) \['latitude'\]"):
        PredictionSpec("x", "point", columns={"latitude": "y"})


def test_a_csv_of_another_kind_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("image_id,probs\na,1\n")
    with pytest.raises(PredictionsError, match=r"x.csv: CSV is read for kind 'point' only"):
        read_cell_predictions(f, spec("cells"), 1)
