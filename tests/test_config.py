"""The config schema: defaults fill in, and bad configs stop with an error that names the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from geoens.config import ConfigError, check_inputs_exist, grid_from_config, load_config, validate_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def demo_cfg() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_demo_config_validates_and_fills_defaults(demo_cfg: dict) -> None:
    cfg = validate_config(demo_cfg)
    assert cfg["grid"]["earth_radius_km"] == pytest.approx(6371.0088)
    assert cfg["labels"]["rows_per_shard"] == 1_000_000
    assert cfg["train"]["models"]["ls"]["patience"] == 3
    assert cfg["train"]["models"]["ls"]["augment"] == {
        "crop_scale_min": 0.35, "hflip": True, "vflip": True, "color_jitter": 0.3
    }  # fmt: skip
    assert cfg["evaluate"]["balanced_seed"] == 0
    assert grid_from_config(cfg).shape == (180, 360)
    # the input is not modified
    assert "rows_per_shard" not in demo_cfg.get("labels", {})


def test_paper_config_validates() -> None:
    cfg = load_config(REPO / "config" / "paper.yaml")
    assert grid_from_config(cfg).shape == (5400, 10800)
    assert cfg["partitions"]["source"] == "csv"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c["grid"].update(height="tall"), r"grid\.height.*not of type 'integer'"),
        (lambda c: c["grid"].update(width=100), r"'grid'.*twice its height"),
        (lambda c: c.update(unknown_key=1), r"<top level>.*unknown_key"),
        (lambda c: c["labels"].update(urban_cap=1.5), r"labels\.urban_cap"),
        (lambda c: c["train"]["models"]["ls"].update(epochs=0), r"train\.models\.ls\.epochs"),
        (lambda c: c["train"]["models"]["ls"].update(epoch=3), r"train\.models\.ls.*epoch"),
        (
            lambda c: c["train"]["models"]["geoest"].update(augment={"crop_scale_min": 0}),
            r"train\.models\.geoest\.augment\.crop_scale_min",
        ),
        (lambda c: c["geoclip"]["tower"].update(augment={"vflp": True}), r"geoclip\.tower\.augment.*vflp"),
        (lambda c: c["inputs"].pop("landscan"), r"inputs.*'landscan' is a required property"),
        (lambda c: c["inputs"]["testsets"].update(val={"images": "a", "metadata": "b"}), r"inputs\.testsets"),
        (lambda c: c["partitions"].update(source="csv"), r"partitions\.csv"),
        (lambda c: c["demo"].update(lc_format="zarr"), r"demo\.lc_format"),
    ],
)
def test_bad_config_names_the_key(demo_cfg: dict, edit, match: str) -> None:
    cfg = copy.deepcopy(demo_cfg)
    edit(cfg)
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)


def test_load_config_names_the_file(tmp_path: Path, demo_cfg: dict) -> None:
    demo_cfg["grid"]["height"] = -3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(demo_cfg))
    with pytest.raises(ConfigError, match=r"bad\.yaml: config key 'grid\.height'"):
        load_config(path)


def test_missing_real_inputs_are_named(tmp_path: Path, demo_cfg: dict) -> None:
    demo_cfg["demo"]["enabled"] = False
    cfg = validate_config(demo_cfg)
    with pytest.raises(ConfigError, match=r"inputs\.landscan = results/demo/landscan\.tif.*inputs\.testsets"):
        check_inputs_exist(cfg, base=tmp_path)
    # with the demo enabled, the demo rule makes them: nothing is missing
    cfg["demo"]["enabled"] = True
    check_inputs_exist(cfg, base=tmp_path)
