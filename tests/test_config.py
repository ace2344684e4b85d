"""The config schema: defaults fill in, and bad configs stop with an error that names the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from geoens.core.config import (
    ConfigError,
    check_inputs_exist,
    effective_config,
    grid_from_config,
    load_config,
    validate_config,
)

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


# --- layering: a user's config is complete on its own (issue: the demo config was merged under it) ---------


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _user_cfg() -> dict:
    """A real-data config as a user writes it: no demo section, no training budget keys."""
    cfg = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    cfg.pop("demo")
    cfg["inputs"]["testsets"] = {"im2gps3k": cfg["inputs"]["testsets"]["im2gps3k"]}
    return cfg


def test_user_config_is_not_merged_over_the_demo_config(tmp_path: Path) -> None:
    cfg = effective_config([_write(tmp_path / "my.yaml", _user_cfg())])
    # left-out keys take the schema defaults, never the demo's values
    assert cfg["demo"]["enabled"] is False
    assert cfg["train"]["models"]["ls"]["max_train_images"] is None  # demo: 3000
    assert cfg["train"]["models"]["ls"]["epochs"] == 100
    assert sorted(cfg["inputs"]["testsets"]) == ["im2gps3k"]  # the demo's streetview is not added
    assert cfg["grid"]["height"] == 5400


def test_no_config_file_means_the_demo_config(tmp_path: Path) -> None:
    cfg = effective_config([], demo_config=REPO / "config.yaml")
    assert cfg["demo"]["enabled"] is True
    assert cfg["train"]["models"]["ls"]["max_train_images"] == 3000


def test_several_config_files_merge_in_order_and_overrides_win(tmp_path: Path) -> None:
    base = _write(tmp_path / "a.yaml", _user_cfg())
    patch = _write(tmp_path / "b.yaml", {"train": {"models": {"ls": {"epochs": 7}}}, "seed": 3})
    cfg = effective_config([base, patch], overrides={"seed": 11})
    assert cfg["train"]["models"]["ls"]["epochs"] == 7
    assert cfg["train"]["models"]["ls"]["backbone"] == "resnetv2_50x1_bit.goog_in21k"  # kept from a.yaml
    assert cfg["seed"] == 11


def test_user_config_lacking_a_required_key_names_it_and_the_file(tmp_path: Path) -> None:
    user = _user_cfg()
    user.pop("grid")
    path = _write(tmp_path / "my.yaml", user)
    with pytest.raises(ConfigError, match=r"my\.yaml: config key '<top level>': 'grid' is a required"):
        effective_config([path])
    user = _user_cfg()
    del user["inputs"]["train"]["metadata"]
    path = _write(tmp_path / "my2.yaml", user)
    with pytest.raises(ConfigError, match=r"config key 'inputs\.train': 'metadata' is a required property"):
        effective_config([path])


@pytest.mark.parametrize(
    "path", ["data/landscan.tif", "/abs/landscan.tif", "results/demo/../../data/x.tif", "results/other.tif"]
)
def test_demo_config_may_not_point_outside_results_demo(tmp_path: Path, demo_cfg: dict, path: str) -> None:
    demo_cfg["inputs"]["landscan"] = path
    with pytest.raises(ConfigError, match=r"inputs\.landscan.*outside results/demo/.*demo\.enabled: false"):
        effective_config([_write(tmp_path / "c.yaml", demo_cfg)])


def test_missing_config_file_and_non_mapping_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        effective_config([tmp_path / "nope.yaml"])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: top level must be a mapping"):
        effective_config([tmp_path / "list.yaml"])


def test_validate_command_prints_the_effective_config_marking_defaults(tmp_path: Path, capsys) -> None:
    from geoens.apps.cli import main

    path = _write(tmp_path / "my.yaml", _user_cfg())
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid; grid 5400 x 10800; test sets ['im2gps3k']" in out
    printed = yaml.safe_load(out.split("\n", 1)[1])  # the rest is YAML (marks are comments)
    assert printed == effective_config([path])
    assert "max_train_images: null  # default" in out
    assert "  enabled: false  # default" in out
    assert "epochs: 100\n" in out  # set by the user: no mark


def test_validate_command_check_files_names_missing_inputs(tmp_path: Path, capsys) -> None:
    from geoens.apps.cli import main

    path = _write(tmp_path / "my.yaml", _user_cfg())
    assert main(["validate", "-q", "--check-files", str(path)]) == 2
    assert "inputs.landscan = data/landscan-global-2021.tif" in capsys.readouterr().err


def test_schema_ships_inside_the_package() -> None:
    import importlib.resources

    text = importlib.resources.files("geoens").joinpath("schemas/config.schema.yaml").read_text()
    assert yaml.safe_load(text)["title"] == "geoens workflow configuration"
    assert not (REPO / "schemas").exists(), "one schema, in the package"


def _tree_digest(root: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_user_inputs_are_never_overwritten(tmp_path: Path) -> None:
    """A user config without `demo:` and with one input missing: the run stops naming the input, and the
    user's files stay byte-identical (before: the demo world was generated over them, exit 0)."""
    from cluster.workflow import copy_workflow, run_snakemake
    from geoens.demo.generate import generate_world
    from geoens.demo.spec import output_paths

    work = copy_workflow(tmp_path / "wf")
    user = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())
    user.pop("demo")
    inputs = user["inputs"]
    inputs["landscan"], inputs["landcover"] = "data/landscan.tif", "data/landcover.nc"
    inputs["train"].update(shards_dir="data/mp16/shards", metadata="data/mp16/metadata.csv")
    for name, ts in inputs["testsets"].items():
        ts.update(images=f"data/{name}/images", metadata=f"data/{name}/metadata.csv")
    tiny_demo = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())["demo"]
    world_cfg = validate_config({**user, "demo": tiny_demo})
    generate_world(world_cfg, {k: work / v for k, v in output_paths(world_cfg).items()})
    (work / "data" / "landscan.tif").unlink()
    before = _tree_digest(work / "data")
    _write(work / "user.yaml", user)

    run = run_snakemake(work, "all", "--cores", "1", "--configfile", "user.yaml")
    assert run.returncode != 0
    assert "inputs.landscan = data/landscan.tif" in run.output
    assert _tree_digest(work / "data") == before
    assert not (work / "results").exists()

    # demo.enabled: true with the user's paths is refused before any job, naming the key
    _write(work / "user.yaml", {**user, "demo": {"enabled": True}})
    run = run_snakemake(work, "all", "--cores", "1", "--configfile", "user.yaml")
    assert run.returncode != 0
    assert "inputs.landscan" in run.output and "outside results/demo/" in run.output
    assert _tree_digest(work / "data") == before
    assert not (work / "results").exists()


@pytest.mark.slow
def test_every_rule_writes_under_results(tmp_path: Path) -> None:
    """No rule output lies outside results/ (logs/ and benchmarks/ aside): inputs are never outputs."""
    from cluster.workflow import TINY_CONFIG, copy_workflow, run_snakemake

    work = copy_workflow(tmp_path / "wf")
    run = run_snakemake(work, "all", "--cores", "1", "--configfile", str(TINY_CONFIG), "--summary").check()
    lines = [ln for ln in run.output.splitlines() if "\t" in ln and not ln.startswith("output_file")]
    outputs = [ln.split("\t")[0] for ln in lines]
    assert len(outputs) > 30
    outside = [o for o in outputs if not o.startswith("results/")]
    assert not outside, outside
