"""Bad inputs and faults (README "What happens when things go wrong"): each ends in one clear error naming
the file and the line, row, code or offset, or is handled as documented; nothing is left half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoens import labels as lb

# ---------------------------------------------------------------------------------------------------
# metadata CSVs
# ---------------------------------------------------------------------------------------------------


def test_metadata_with_a_utf8_bom_is_read(tmp_path: Path) -> None:
    csv = tmp_path / "excel.csv"
    csv.write_bytes(b"\xef\xbb\xbfIMG_ID,LAT,LON\r\na.jpg,1.5,2\r\nb.jpg,-3,4\r\n")
    meta, bad = lb.read_metadata(csv, available_ids=["a.jpg", "b.jpg"])
    assert meta["image_id"].tolist() == ["a.jpg", "b.jpg"]
    assert meta["lat"].tolist() == [1.5, -3.0] and bad.n_bad == 0


@pytest.mark.parametrize("line", [1, 3, 2500])
def test_metadata_that_is_not_utf8_names_the_line(tmp_path: Path, line: int) -> None:
    rows = [b"IMG_ID,LAT,LON"] + [f"img{i}.jpg,1,2".encode() for i in range(2, 3000)]
    rows[line - 1] = rows[line - 1].replace(b"I", b"\xc9").replace(b"img", b"caf\xe9")  # Latin-1 accents
    csv = tmp_path / "latin1.csv"
    csv.write_bytes(b"\n".join(rows) + b"\n")
    with pytest.raises(lb.MetadataError, match=rf"latin1\.csv: not UTF-8 text at line {line}, byte \d+"):
        lb.read_metadata(csv)


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
    from geoens import partitions as pt

    path = tmp_path / "cells.csv"
    path.write_text(PARTITION_HEADER + PARTITION_COLUMNS + rows)
    with pytest.raises(pt.PartitionError, match=r"cells\.csv: " + message):
        pt.read_partition_csv(path)
