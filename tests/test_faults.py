"""Bad inputs and faults (the table of docs/faults.md): each ends in one clear error naming the file and the
line, row, code or offset, or is handled as documented; nothing is left half-written."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np
import pandas as pd
import pytest
import torch

from fakes import write_geotiff, write_lc_netcdf
from geoens.core.constants import LANDSCAN_NODATA
from geoens.core.grid import Grid
from geoens.data import metadata
from geoens.data.metadata import MetadataError
from geoens.data.shards import available_ids
from geoens.geo import labels as lb
from geoens.geo import landcover, masks

# ---------------------------------------------------------------------------------------------------
# metadata CSVs
# ---------------------------------------------------------------------------------------------------


def test_metadata_with_a_utf8_bom_is_read(tmp_path: Path) -> None:
    csv = tmp_path / "excel.csv"
    csv.write_bytes(b"\xef\xbb\xbfIMG_ID,LAT,LON\r\na.jpg,1.5,2\r\nb.jpg,-3,4\r\n")
    meta, bad = metadata.read_metadata(csv, available_ids=["a.jpg", "b.jpg"])
    assert meta["image_id"].tolist() == ["a.jpg", "b.jpg"]
    assert meta["lat"].tolist() == [1.5, -3.0] and bad.n_bad == 0


@pytest.mark.parametrize("line", [1, 3, 2500])
def test_metadata_that_is_not_utf8_names_the_line(tmp_path: Path, line: int) -> None:
    rows = [b"IMG_ID,LAT,LON"] + [f"img{i}.jpg,1,2".encode() for i in range(2, 3000)]
    rows[line - 1] = rows[line - 1].replace(b"I", b"\xc9").replace(b"img", b"caf\xe9")  # Latin-1 accents
    csv = tmp_path / "latin1.csv"
    csv.write_bytes(b"\n".join(rows) + b"\n")
    with pytest.raises(MetadataError, match=rf"latin1\.csv: not UTF-8 text at line {line}, byte \d+"):
        metadata.read_metadata(csv)


# ---------------------------------------------------------------------------------------------------
# partition CSVs
# ---------------------------------------------------------------------------------------------------

PARTITION_HEADER = "num_images: 10\nmin_concept_probability: ---\n"
PARTITION_COLUMNS = "class_label,hex_id,imgs_per_cell,latitude_mean,longitude_mean\n"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        # lines: 1-2 comments, 3 header, 4.. rows
        ("0,8747c,5,1,1\n,365,5,1,1\n", r"line 5: class_label is empty, expected an integer"),
        (
            "0,8747c,5,1,1\n2,365,5,1,1\n",
            r"class_label 1 is missing \(after line 4, class_label 0\); line 5 has 2",
        ),
        ("1,8747c,5,1,1\n0,365,5,1,1\n0,3c,5,1,1\n", r"class_label 0 appears twice, on lines 5 and 6"),
        ("0,8747c,5,1,1\n1,X,5,1,1\n", r"line 5: hex_id is 'X', expected an S2 cell token"),
        ("0,8747c,5,1,1\n1,365,five,1,1\n", r"line 5: imgs_per_cell is 'five', expected an integer"),
        ("0,8747c,5,1,1\n1,365,5,,1\n", r"line 5: latitude_mean is empty, expected a number"),
    ],
)
def test_partition_csv_errors_name_the_line(tmp_path: Path, rows: str, message: str) -> None:
    from geoens.geo import partitions as pt

    path = tmp_path / "cells.csv"
    path.write_text(PARTITION_HEADER + PARTITION_COLUMNS + rows)
    with pytest.raises(pt.PartitionError, match=r"cells\.csv: " + message):
        pt.read_partition_csv(path)


# ---------------------------------------------------------------------------------------------------
# rasters and shards cut short, population sentinels
# ---------------------------------------------------------------------------------------------------


def _population(h: int = 96, w: int = 192) -> np.ndarray:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 5000, size=(h, w), dtype=np.int32)
    arr[:10] = LANDSCAN_NODATA
    return arr


@pytest.mark.parametrize("tiled", [False, True])
def test_truncated_geotiff_names_the_file_and_the_rows(tmp_path: Path, tiled: bool) -> None:
    extra = {"tiled": True, "blockxsize": 64, "blockysize": 64} if tiled else {"blockysize": 8}
    tif = write_geotiff(tmp_path / "landscan.tif", _population(), LANDSCAN_NODATA, **extra)
    tif.write_bytes(tif.read_bytes()[: tif.stat().st_size * 2 // 3])  # header intact, data cut
    grid = Grid(24, 48)
    with pytest.raises(ValueError, match=r"landscan\.tif: reading rows \d+\.\.\d+, .*truncated or corrupt"):
        masks.ls_mask(tif, grid, [0, 1, 2, 3, 4])
    # the relabel stage reads the same file point-wise: the same error
    with pytest.raises(ValueError, match=r"landscan\.tif: reading rows \d+\.\.\d+, .*truncated or corrupt"):
        lb.sample_landscan(tif, np.linspace(-89, 89, 500), np.linspace(-179, 179, 500))


def test_negative_population_that_is_not_nodata_is_an_error(tmp_path: Path) -> None:
    arr = _population()
    arr[:10] = -9999  # ocean sentinel, but the file has no nodata tag
    tif = write_geotiff(tmp_path / "nonodata.tif", arr, None)
    grid = Grid(24, 48)
    msg = r"nonodata\.tif: 1920 pixel\(s\) hold negative population value\(s\) -9999, .*not the nodata"
    with pytest.raises(ValueError, match=msg):
        masks.ls_mask(tif, grid, [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match=msg.replace("1920", "1")):
        lb.sample_landscan(tif, [89.5, 0.0], [0.0, 0.0])
    # declared as nodata, the same values are simply "no data"
    ok = write_geotiff(tmp_path / "declared.tif", arr, -9999)
    labels, n_nodata = masks.ls_mask(ok, grid, [0, 1, 2, 3, 4])
    assert n_nodata > 0 and (labels[:2] == -1).all()


def test_truncated_shard_names_the_file_record_and_byte(tmp_path: Path) -> None:
    from geoens.data.shards import ShardFormatError
    from geoens.models.datasets import ShardIndex

    shards = tmp_path / "shards"
    shards.mkdir()
    records = [msgpack.packb({"id": f"a/{i}.jpg", "image": bytes(100 + i)}) for i in range(5)]
    (shards / "shard-000.msgpack").write_bytes(b"".join(records)[:-30])  # record 4 cut short
    cut = sum(len(r) for r in records[:4])
    msg = (
        rf"shard-000\.msgpack: truncated record 4 at byte {cut} \(file has {cut + len(records[4]) - 30} bytes"
    )
    # the relabel stage (ids present) and the shard indexer (byte ranges) both stop with the same message
    with pytest.raises(ShardFormatError, match=msg):
        available_ids(shards)
    with pytest.raises(ShardFormatError, match=msg):
        ShardIndex.build(shards)


# ---------------------------------------------------------------------------------------------------
# land cover: unknown codes, fill values only, too little land with a class
# ---------------------------------------------------------------------------------------------------


def _codes(h: int = 48, w: int = 96) -> np.ndarray:
    codes = np.full((h, w), 210, dtype=np.uint8)  # water
    codes[: h // 2] = 10  # cropland in the north
    codes[h // 2 :, : w // 2] = 50  # broadleaf trees
    return codes


def test_unknown_lc_codes_are_an_error_naming_codes_counts_and_file(tmp_path: Path) -> None:
    codes = _codes()
    codes[:2, :5] = 99  # not an LCCS code
    codes[-1, :] = 17  # a code of another product's legend
    nc = write_lc_netcdf(tmp_path / "modis.nc", codes.view(np.int8), fill=0)
    grid = Grid(12, 24)
    msg = r"modis\.nc: 106 pixels hold codes outside the ESA CCI LCCS legend: "
    msg += r"17 \(96 pixels\), 99 \(10 pixels\)"
    with pytest.raises(landcover.LandCoverError, match=msg + r".*masks\.unknown_lc_codes: none"):
        masks.lc_mask(nc, grid)
    # by choice they are no class, counted in the summary
    summary = masks.make_lc_mask(nc, grid, tmp_path / "lc.tif", unknown_codes="none")
    assert summary["unknown_codes"] == {"17": 96, "99": 10}
    assert summary["native_classified"] == codes.size - 106


@pytest.mark.parametrize("declared", [True, False])
def test_land_cover_of_fill_values_only_stops_the_mask_stage(tmp_path: Path, declared: bool) -> None:
    # netCDF's default int8 fill value -127 reads as code 129 (uint8): declared as _FillValue it is
    # nodata, undeclared it is an unknown code; either way no pixel has a class
    raw = np.full((48, 96), -127, dtype=np.int8)
    nc = write_lc_netcdf(tmp_path / "fill.nc", raw, fill=-127 if declared else None)
    grid = Grid(12, 24)
    if declared:
        match = r"fill\.nc: none of the 4,608 pixels holds a land-cover class: 4,608 are no data .*nodata 129"
    else:
        match = r"fill\.nc: none of .*: 0 are no data .*unknown codes 129 \(4,608 pixels\)"
    match += r".*-127 reads as code 129"
    for mode in ("error", "none"):
        with pytest.raises(landcover.LandCoverError, match=match):
            masks.make_lc_mask(nc, grid, tmp_path / "lc.tif", unknown_codes=mode)  # type: ignore[arg-type]
    assert not (tmp_path / "lc.tif").exists() and not list(tmp_path.glob(".*tmp*"))


def test_land_cover_missing_over_most_populated_land_is_an_error() -> None:
    ls = np.full((12, 24), -1, dtype=np.int8)
    ls[:6] = 2  # populated northern half
    lc = np.full((12, 24), -1, dtype=np.int8)
    lc[:2] = 0  # classes over a third of it only
    with pytest.raises(
        landcover.LandCoverError, match=r"lc\.tif: only 33\.3% of the 144 pixels with LandScan"
    ):
        landcover.check_lc_coverage(ls, lc, 0.5, "lc.tif")
    lc[:4] = 0
    assert landcover.check_lc_coverage(ls, lc, 0.5, "lc.tif") == pytest.approx(4 / 6)


def _label_frame(lc_code: list[int], ls_value: list[float]) -> pd.DataFrame:
    top, cls = lb.lc_labels(lc_code)
    return pd.DataFrame({"lc_code": np.asarray(lc_code, np.uint8), "lc7": cls, "ls_value": ls_value})


def test_relabel_stops_when_the_images_have_no_land_cover_class() -> None:
    # every training image with population data has lc7 = none (fill values sampled as nodata 0)
    frame = _label_frame([0, 0, 0, 10], [5.0, 80.0, 3.0, np.nan])
    with pytest.raises(
        landcover.LandCoverError, match=r"lc\.nc at the 4 geotags of mp16: lc7 is 'none' for 3 of"
    ):
        lb.check_lc_labels(frame, "lc.nc", "mp16")
    # unknown codes at the geotags: an error, or (by choice) counted in the summary
    frame = _label_frame([99, 10, 10, 10], [5.0, 80.0, 3.0, 1.0])
    with pytest.raises(
        landcover.LandCoverError, match=r"lc\.nc at the 4 geotags of mp16: 1 pixels .*99 \(1 pixels\)"
    ):
        lb.check_lc_labels(frame, "lc.nc", "mp16")
    assert lb.check_lc_labels(frame, "lc.nc", "mp16", {"unknown_lc_codes": "none"}) == {"99": 1}


# ---------------------------------------------------------------------------------------------------
# writing: a full disk, a read-only results folder
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["disk full", "killed"])
@pytest.mark.parametrize("is_dir", [False, True])
def test_disk_full_during_a_write_leaves_the_old_output_and_no_partial_file(
    tmp_path: Path, is_dir: bool, fault: str
) -> None:
    import errno

    from geoens.core.io import atomic_path, write_json

    out = tmp_path / "results" / ("labels" if is_dir else "summary.json")
    if is_dir:
        out.mkdir(parents=True)
        (out / "part-00000.parquet").write_bytes(b"old part")
    else:
        write_json(out, {"version": "old"})
    before = {p.name: p.read_bytes() for p in out.parent.rglob("*") if p.is_file()}

    def write_then_fail(target: Path) -> None:
        target.write_bytes(b"x" * 4096)  # part of the new output is on disk ...
        if fault == "killed":  # ... then Snakemake stops the job (SIGINT) ...
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, "No space left on device", str(target))  # ... or the disk is full

    error = KeyboardInterrupt if fault == "killed" else OSError
    with pytest.raises(error), atomic_path(out, is_dir=is_dir) as tmp:
        write_then_fail(tmp / "part-00000.parquet" if is_dir else tmp)
    after = {p.name: p.read_bytes() for p in out.parent.rglob("*") if p.is_file()}
    assert after == before  # the previous output untouched, no temporary file left behind
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def _without_root_override() -> list[str]:
    """Command prefix that makes root respect file permissions (drops CAP_DAC_OVERRIDE), or [] if not root."""
    import os
    import shutil

    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be simulated")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def test_read_only_results_stop_before_any_job_with_one_clear_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    from cluster.workflow import TINY_CONFIG, copy_workflow, snakemake_env

    workdir = copy_workflow(tmp_path / "wf")
    results = workdir / "results"
    (results / "masks").mkdir(parents=True)
    results.chmod(0o555)
    try:
        proc = subprocess.run(
            [*_without_root_override(), sys.executable, "-m", "snakemake", "all", "--cores", "1",
             "--configfile", str(TINY_CONFIG)],
            cwd=workdir, env=snakemake_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        results.chmod(0o755)
    assert proc.returncode != 0
    assert "cannot write to results/ (Permission denied)" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert list(results.rglob("*")) == [results / "masks"]  # nothing was run


# ---------------------------------------------------------------------------------------------------
# odd but valid images; a second run on the same folder
# ---------------------------------------------------------------------------------------------------


def test_odd_but_valid_images_are_read_as_rgb(tmp_path: Path) -> None:
    import io

    from PIL import Image

    from geoens.models.datasets import FolderSource, ImageDataset, collate_skip, make_transforms

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    odd = {
        "grey.jpg": (rgb.convert("L"), "JPEG"),
        "cmyk.jpg": (rgb.convert("CMYK"), "JPEG"),
        "alpha.png": (rgb.convert("RGBA"), "PNG"),
        "palette.gif": (rgb.convert("P"), "GIF"),
        "deep.png": (Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)), "PNG"),
        "one_pixel.jpg": (rgb.resize((1, 1)), "JPEG"),
        "wide.webp": (rgb.resize((300, 7)), "WEBP"),
    }
    for name, (img, fmt) in odd.items():
        buf = io.BytesIO()
        img.save(buf, fmt)
        (tmp_path / name).write_bytes(buf.getvalue())
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    ids = sorted(p.name for p in tmp_path.iterdir())
    ds = ImageDataset(FolderSource(tmp_path), ids, None, make_transforms(16, train=False))
    batch = collate_skip([ds[i] for i in range(len(ids))])
    assert sorted(ids[i] for i in batch.skipped) == ["empty.jpg", "text.jpg"]
    assert batch.images.shape == (len(odd), 3, 16, 16) and torch.isfinite(batch.images).all()


@pytest.mark.slow
def test_a_second_run_on_the_same_folder_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from cluster.workflow import TINY_CONFIG, copy_workflow, snakemake_env

    workdir = copy_workflow(tmp_path / "wf")
    cmd = [sys.executable, "-m", "snakemake", "all", "--cores", "1", "--configfile", str(TINY_CONFIG)]
    first = subprocess.Popen(
        cmd, cwd=workdir, env=snakemake_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        locks = workdir / ".snakemake" / "locks"
        deadline = time.monotonic() + 120
        while not (locks.is_dir() and any(locks.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, "the first run ended before the second could start"
        second = subprocess.run(
            cmd, cwd=workdir, env=snakemake_env(), capture_output=True, text=True, timeout=300
        )
        assert second.returncode != 0
        assert "Directory cannot be locked" in second.stdout + second.stderr
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=60)


def test_fault_table_names_tests_that_exist_and_states_its_count() -> None:
    import re

    repo = Path(__file__).resolve().parents[1]
    page = (repo / "docs" / "faults.md").read_text(encoding="utf-8")
    section = page.split("# What happens when things go wrong", 1)[1]
    rows = [line for line in section.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(r.split("|")[1]) for r in rows] == list(range(1, len(rows) + 1))
    assert f"**{len(rows)} cases**" in section
    for row in rows:
        file, name = re.findall(r"`(test_\w+\.py)::(test_\w+)`", row)[-1]
        source = (repo / "tests" / file).read_text(encoding="utf-8")
        assert re.search(rf"^def {name}\(", source, re.M), (
            f"docs/faults.md fault table: {file}::{name} does not exist"
        )


# ---------------------------------------------------------------------------------------------------
# fidelity: mixed precision never decides the ranking of cells
# ---------------------------------------------------------------------------------------------------


def test_prediction_heads_leave_autocast_so_bf16_cannot_tie_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from geoens.models import predictors
    from geoens.models.datasets import FolderSource
    from geoens.models.nets import build_model
    from geoens.models.training import runtime

    torch.manual_seed(0)
    n_fine = 400
    net = build_model("geoest", "test_resnet", n_cells=[1, 1, n_fine])
    heads = {name: net.heads[name].out_features for name in net.head_names}
    meta = {"model": "geoest", "backbone": "test_resnet", "image_size": 32, "heads": heads}
    meta |= {"mean": [0.5] * 3, "std": [0.25] * 3, "hierarchy": np.zeros((n_fine, 2), dtype=np.int64)}
    predictors.save_model(net, meta, tmp_path / "m.pt")
    rng = np.random.default_rng(1)
    ids = [f"{i}.png" for i in range(4)]
    for name in ids:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name)

    # the GPU path (bf16 autocast), run on the CPU
    def bf16_autocast(device: torch.device) -> tuple[object, torch.dtype]:
        return torch.autocast("cpu", dtype=torch.bfloat16), torch.bfloat16

    monkeypatch.setattr(runtime, "autocast", bf16_autocast)
    chunks = list(predictors.iter_predictions(tmp_path / "m.pt", FolderSource(tmp_path), ids, device="cpu"))
    probs = np.concatenate([c[1] for c in chunks])
    assert probs.shape == (4, n_fine) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    # 400 near-equal logits of an untrained head: bf16 logits (8 significant bits) would tie many of them
    assert min(np.unique(row).size for row in probs) == n_fine
