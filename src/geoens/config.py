"""Load and validate a workflow config against ``schemas/config.schema.yaml``, filling in defaults.

The Snakefile validates through :func:`snakemake.utils.validate` with the same schema; scripts and the CLI
use :func:`load_config`. Both give errors that name the offending key.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from geoens.grid import Grid

#: The repository root (the package lives in ``src/geoens``).
REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config that does not satisfy the schema or names a missing input file."""


def load_schema() -> dict[str, Any]:
    """Return the config JSON Schema as a dict."""
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        schema: dict[str, Any] = yaml.safe_load(fh)
    return schema


def _extend_with_default(validator_class: Any) -> Any:
    """A validator class that fills ``default`` values into the instance before validating it."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Any, instance: Any, schema: Any) -> Iterator[Any]:
        if isinstance(instance, dict):
            for prop, subschema in properties.items():
                if "$ref" in subschema and "default" in subschema and prop not in instance:
                    instance[prop] = copy.deepcopy(subschema["default"])
                elif "default" in subschema:
                    instance.setdefault(prop, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``config`` and return a copy with defaults filled in.

    Raises:
        ConfigError: Naming the key path and the reason of the first violation.
    """
    cfg = copy.deepcopy(dict(config))
    schema = load_schema()
    validator = _extend_with_default(jsonschema.Draft202012Validator)(schema)
    # Two passes: the first fills nested defaults of objects that were themselves defaulted.
    for _ in range(2):
        errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
        if errors:
            err = errors[0]
            raise ConfigError(f"config key '{_key_path(err)}': {err.message}")
    grid = cfg["grid"]
    try:
        Grid(grid["height"], grid["width"], grid["earth_radius_km"])
    except ValueError as exc:
        raise ConfigError(f"config key 'grid': {exc}") from exc
    if cfg.get("partitions", {}).get("source") == "csv":
        missing = {"coarse", "middle", "fine"} - set(cfg["partitions"].get("csv", {}))
        if missing:
            raise ConfigError(f"config key 'partitions.csv': source is csv but {sorted(missing)} not given")
    return cfg


def input_files(cfg: Mapping[str, Any]) -> dict[str, str]:
    """Map each user-supplied input's config key path to its file path."""
    inp = cfg["inputs"]
    files = {
        "inputs.landscan": inp["landscan"],
        "inputs.landcover": inp["landcover"],
        "inputs.train.shards_dir": inp["train"]["shards_dir"],
        "inputs.train.metadata": inp["train"]["metadata"],
    }
    for name, ts in inp["testsets"].items():
        files[f"inputs.testsets.{name}.images"] = ts["images"]
        files[f"inputs.testsets.{name}.metadata"] = ts["metadata"]
    if cfg.get("partitions", {}).get("source") == "csv":
        for level, path in cfg["partitions"]["csv"].items():
            files[f"partitions.csv.{level}"] = path
    return files


def check_inputs_exist(cfg: Mapping[str, Any], base: Path | None = None) -> None:
    """Fail before any job if a real (non-demo) input path does not exist.

    Raises:
        ConfigError: Naming every missing input with its config key.
    """
    if cfg.get("demo", {}).get("enabled"):
        files = {k: v for k, v in input_files(cfg).items() if k.startswith("partitions.")}
    else:
        files = input_files(cfg)
    root = base or Path.cwd()
    missing = [f"{key} = {path}" for key, path in files.items() if not (root / path).exists()]
    if missing:
        raise ConfigError("input file(s) not found: " + "; ".join(missing))


def load_config(path: str | Path, check_files: bool = False) -> dict[str, Any]:
    """Read a YAML config, validate it and fill in defaults.

    Args:
        path: The YAML file.
        check_files: Also require every real input file to exist.

    Raises:
        ConfigError: On a schema violation (naming the key) or a missing input file.
    """
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    try:
        cfg = validate_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if check_files:
        check_inputs_exist(cfg)
    return cfg


def grid_from_config(cfg: Mapping[str, Any]) -> Grid:
    """The :class:`~geoens.grid.Grid` a config describes."""
    g = cfg["grid"]
    return Grid(int(g["height"]), int(g["width"]), float(g.get("earth_radius_km", 6371.0088)))
