"""The workflow config: one function gives the config a run uses (:func:`effective_config`).

Layering, the same for ``snakemake`` and ``geoens validate``:

1. With no ``--configfile``, the demo config ``config.yaml`` is the config. With one or more, the demo
   config is **not** read: the user's files, deep-merged in order (later files win, lists are replaced),
   are the whole config.
2. ``--config key=value`` pairs are merged over that.
3. Every key left out gets the default of the JSON Schema shipped in the package
   (``geoens/schemas/config.schema.yaml``), never a value of the demo config.

The result is validated against the schema (unknown keys, wrong types and missing required keys are errors
naming the key path) and checked for consistency (grid shape, partition CSVs, the demo world's paths).
"""

from __future__ import annotations

import copy
import importlib.resources
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import yaml

from geoens.core.constants import EXPORT_DIR
from geoens.core.grid import Grid

#: The folder the demo world is generated into; nothing else is ever written by the demo rule.
DEMO_ROOT = PurePosixPath("results/demo")
#: The config used when no config file is given (relative to the workflow directory).
DEMO_CONFIG = "config.yaml"


class ConfigError(ValueError):
    """A config that does not satisfy the schema or names a missing input file."""


def schema_text() -> str:
    """The config JSON Schema (YAML text) as shipped inside the package."""
    return importlib.resources.files("geoens").joinpath("schemas/config.schema.yaml").read_text("utf-8")


def load_schema() -> dict[str, Any]:
    """Return the config JSON Schema as a dict."""
    schema: dict[str, Any] = yaml.safe_load(schema_text())
    return schema


def deep_update(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into ``base`` in place and return it.

    As Snakemake merges config files: mappings recursively, anything else (lists included) replaced.
    """
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read one YAML (or JSON) config file.

    Raises:
        ConfigError: If the file is missing, not YAML, or its top level is not a mapping.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return raw


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
    for name, node in cfg.get("models", {}).get("external", {}).items():
        _check_external(name, node, set(cfg["inputs"]["testsets"]))
    return cfg


def _check_external(name: str, node: Mapping[str, Any], testsets: set[str]) -> None:
    """Consistency of one ``models.external.<name>`` section beyond the schema.

    Raises:
        ConfigError: Naming the key: a predictions file for a test set the config does not have, none for
            any test set, or a point model whose ``kappa: fit`` has no ``val`` file to be fitted on.
    """
    key = f"models.external.{name}"
    datasets = set(node["predictions"])
    unknown = sorted(datasets - testsets - {"val"})
    if unknown:
        raise ConfigError(
            f"config key '{key}.predictions.{unknown[0]}': no test set {unknown[0]!r} in inputs.testsets "
            f"(test sets: {sorted(testsets)}; 'val' is the only other dataset)"
        )
    if not datasets & testsets:
        raise ConfigError(f"config key '{key}.predictions': no predictions file for any test set")
    if node["kind"] == "point" and node.get("kappa", "fit") == "fit" and "val" not in datasets:
        raise ConfigError(
            f"config key '{key}.kappa': kappa: fit needs a val predictions file ({key}.predictions.val) to "
            "fit the vMF concentration of the point predictions on; give one, or give kappa as a number"
        )


def external_files(cfg: Mapping[str, Any]) -> dict[str, str]:
    """Map each external model's predictions and partition files to their config key paths.

    Files under :data:`~geoens.core.constants.EXPORT_DIR` are left out: the run itself writes them
    (rule ``export_predictions``).
    """
    files = {}
    for name, node in cfg.get("models", {}).get("external", {}).items():
        for ds, path in node["predictions"].items():
            files[f"models.external.{name}.predictions.{ds}"] = path
        if node.get("partition"):
            files[f"models.external.{name}.partition"] = node["partition"]
    export = PurePosixPath(EXPORT_DIR)
    return {k: v for k, v in files.items() if export not in PurePosixPath(str(v)).parents}


def _check_demo_paths(cfg: Mapping[str, Any]) -> None:
    """With ``demo.enabled`` every input is generated: it must lie under ``results/demo/``.

    The demo rule writes the files the ``inputs`` section names; this keeps it from ever writing over a
    user's own data (a config copied from ``config/paper.yaml`` with ``demo.enabled: true`` left in).

    Raises:
        ConfigError: Naming the first input key whose path lies outside ``results/demo/``.
    """
    for key, path in input_files(cfg).items():
        if key.startswith("partitions."):
            continue
        parts = PurePosixPath(str(path).replace("\\", "/")).parts
        if ".." in parts or PurePosixPath(*parts[:2]) != DEMO_ROOT or len(parts) < 3:
            raise ConfigError(
                f"config key '{key}': {path} is outside {DEMO_ROOT}/, but demo.enabled is true and the demo "
                f"world is only ever generated under {DEMO_ROOT}/ (it would be written over your file). "
                "Set demo.enabled: false to use your own inputs"
            )


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
    files.update(external_files(cfg))
    root = base or Path.cwd()
    missing = [f"{key} = {path}" for key, path in files.items() if not (root / path).exists()]
    if missing:
        raise ConfigError("input file(s) not found: " + "; ".join(missing))


def effective_config(
    files: Sequence[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
    demo_config: str | Path = DEMO_CONFIG,
) -> dict[str, Any]:
    """The config a run uses: the workflow (``rules/common.smk``) and ``geoens validate`` both call this.

    Args:
        files: The user's config files (Snakemake's ``--configfile``), deep-merged in order. When empty,
            ``demo_config`` is the config; it is never merged under the user's files.
        overrides: Values merged last (Snakemake's ``--config key=value``).
        demo_config: The demo config file, read only when ``files`` is empty.

    Returns:
        The merged config with every left-out key set to its schema default, validated.

    Raises:
        ConfigError: Naming the file(s) and the key path of the first problem.
    """
    sources = [Path(f) for f in files] or [Path(demo_config)]
    merged: dict[str, Any] = {}
    for path in sources:
        deep_update(merged, read_config_file(path))
    deep_update(merged, overrides or {})
    try:
        cfg = validate_config(merged)
        if cfg["demo"]["enabled"]:
            _check_demo_paths(cfg)
        return cfg
    except ConfigError as exc:
        names = " + ".join(str(p) for p in sources) + (" + --config" if overrides else "")
        raise ConfigError(f"{names}: {exc}") from exc


def load_config(path: str | Path | Sequence[str | Path], check_files: bool = False) -> dict[str, Any]:
    """Read config file(s) as a run would (:func:`effective_config`), optionally checking the inputs exist.

    Args:
        path: One YAML file or several (merged in order, like repeated ``--configfile``).
        check_files: Also require every real input file to exist (relative to the current directory).

    Raises:
        ConfigError: On a schema violation (naming the key) or a missing input file.
    """
    files = [path] if isinstance(path, str | Path) else list(path)
    cfg = effective_config(files)
    if check_files:
        check_inputs_exist(cfg)
    return cfg


def explicit_keys(config: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Key paths of every value present in ``config`` (leaves and mappings), as tuples."""
    keys: set[tuple[str, ...]] = set()
    for key, value in config.items():
        path = (*prefix, str(key))
        keys.add(path)
        if isinstance(value, Mapping):
            keys |= explicit_keys(value, path)
    return keys


def render_config(cfg: Mapping[str, Any], given: set[tuple[str, ...]], indent: int = 0) -> str:
    """The effective config as YAML, each value that came from a schema default marked ``# default``.

    Args:
        cfg: The effective config.
        given: Key paths the user's file(s) set (:func:`explicit_keys` of the merged raw config).
        indent: Indentation (spaces) of the top level.
    """
    return "\n".join(_render_lines(cfg, given, (), indent)) + "\n"


def _render_lines(
    node: Mapping[str, Any], given: set[tuple[str, ...]], prefix: tuple[str, ...], indent: int
) -> list[str]:
    lines: list[str] = []
    pad = " " * indent
    for key, value in node.items():
        path = (*prefix, str(key))
        mark = "" if path in given else "  # default"
        if isinstance(value, Mapping) and value:
            lines.append(f"{pad}{key}:{mark}")
            lines.extend(_render_lines(value, given, path, indent + 2))
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            text = text.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"{pad}{key}: {text}{mark}")
    return lines


def grid_from_config(cfg: Mapping[str, Any]) -> Grid:
    """The :class:`~geoens.core.grid.Grid` a config describes."""
    g = cfg["grid"]
    return Grid(int(g["height"]), int(g["width"]), float(g.get("earth_radius_km", 6371.0088)))
