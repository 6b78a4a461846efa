"""The workflow's config: validated against its JSON schema, with its paths resolved.

The schema (``workflow/schemas/config.schema.yaml``) is the one statement of what a config may
hold; this module only turns its verdicts into one line a person can act on, and resolves the
relative paths a campaign's own config file names.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import jsonschema
import yaml

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "workflow" / "schemas"
CONFIG_SCHEMA = SCHEMA_DIR / "config.schema.yaml"
SHIPPED_CONFIG = SCHEMA_DIR.parents[1] / "config" / "config.yaml"
PATH_KEYS = ("series_sheet", "results_dir")  # resolved against the file that names them


class ConfigError(ValueError):
    """A config the workflow refuses; the message names the key and what is wrong with it."""


def shipped_defaults() -> dict:
    """The shipped defaults (``config/config.yaml``), for stage commands run outside the workflow."""
    return _load(SHIPPED_CONFIG)


def section(name: str, given: dict) -> dict:
    """The config section ``name`` as a stage command given it alone (as JSON) must read it: the
    shipped section's keys overridden by ``given``'s, checked against the same schema as the
    workflow's config, with the same messages (:class:`ConfigError`), the schema's defaults
    filled in. Code that reads a section then trusts it: no check here is made twice."""
    config = shipped_defaults()
    config[name] = {**config.get(name, {}), **given}
    validate(config)
    return config[name]


def validate(config: dict, schema: Path = CONFIG_SCHEMA) -> None:
    """Validate ``config`` in place (schema defaults filled in) with Snakemake's validator.

    Raises :class:`ConfigError` with one line naming the key, for the first problem found.
    """
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as snakemake_validate

    try:
        snakemake_validate(config, str(schema), set_default=True)
    except WorkflowError as exc:
        cause = exc.__context__  # the validator's error, which Snakemake's message prints whole
        if not isinstance(cause, jsonschema.ValidationError):
            raise
        raise ConfigError(f"Error validating config file: {explain(cause)}") from None


def explain(error: jsonschema.ValidationError) -> str:
    """One line for a schema violation: the dotted key, the value and what the schema wants.

    An unknown key is named with the closest valid key at its level, as a typo usually is one.
    """
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = list(error.schema.get("properties", {}))
        parts = []
        for key in (k for k in error.instance if k not in known):
            name = f"{where}.{key}" if where else key
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys here: {', '.join(known)}"
            parts.append(f"unknown key {name!r}; {hint}")
        return "; ".join(parts)
    return f"{where!r} {violation(error)}" if where else f"the config {violation(error)}"


def violation(error: jsonschema.ValidationError) -> str:
    """What is wrong with the value that broke the schema, without naming its key: "is 300000,
    outside the range 20 to 3000 (given in V? voltage_kv is in kV)"."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    value = error.instance
    if error.validator == "required":
        return f"lacks {error.message.split(' is a required')[0]}"
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        name = str(error.absolute_path[-1]) if error.absolute_path else ""
        return f"is {value!r}, outside {_bounds(schema)}{UNIT_SLIPS.get(name, '')}"
    if error.validator in ("enum", "const", "oneOf", "anyOf"):
        return f"is {value!r}; allowed: {_allowed(schema)}"
    if error.validator == "pattern":
        return f"is {value!r}, which does not have the form {schema.get('pattern')!r}"
    if error.validator == "minItems":
        return "is empty"
    if error.validator == "type":
        kind = schema["type"] if isinstance(schema["type"], str) else " or ".join(schema["type"])
        hint = " (on the command line: --config key=True or key=False)" if kind == "boolean" else ""
        return f"is {value!r}, not {'an' if kind[0] in 'aeiou' else 'a'} {kind}{hint}"
    return error.message


# The likely slip behind an out-of-range microscope value: a unit.
UNIT_SLIPS = {
    "voltage_kv": " (given in V? voltage_kv is in kV)",
    "cs_mm": " (given in um or nm? cs_mm is in mm)",
    "pixel_size_nm": " (given in another unit? pixel_size_nm is in nm)",
}


def _bounds(schema: dict) -> str:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if low is not None and high is not None:
        return f"the range {low:g} to {high:g}"
    return f"the range >= {low:g}" if low is not None else f"the range <= {high:g}"


def _allowed(schema: dict) -> str:
    """The values or kinds a schema of enum, const or oneOf accepts, in words."""
    if "enum" in schema:
        return ", ".join(map(repr, schema["enum"]))
    if "const" in schema:
        return repr(schema["const"])
    options = schema.get("oneOf") or schema.get("anyOf") or []
    words = []
    for option in options:
        if "description" in option:
            words.append(option["description"])
        elif "const" in option or "enum" in option:
            words.append(_allowed(option))
        elif "type" in option:
            kind = option["type"] if isinstance(option["type"], str) else " or ".join(option["type"])
            low = option.get("minimum", option.get("exclusiveMinimum"))
            words.append(f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}" + (f" >= {low:g}" if low is not None else ""))
    return " or ".join(words)


def resolve_paths(config: dict, configfiles: list[Path], cli_keys: set[str], cwd: Path) -> dict[str, str]:
    """The config's paths (``series_sheet``, ``results_dir``), each resolved against the place that set it.

    A path set by a ``--configfile F`` (the last one that sets it) resolves against F's folder, so
    that a campaign's config file and sheet travel together; a path from ``--config`` (``cli_keys``:
    the top-level keys given there) or from the shipped defaults resolves against ``cwd``. A path
    inside ``cwd`` is returned relative to it (the outputs' paths then do not depend on where the
    campaign folder is mounted), any other absolute. ``series_sheet: demo`` stays as it is.
    """
    resolved = {}
    for key in PATH_KEYS:
        value = config[key]
        if key == "series_sheet" and value == "demo":
            resolved[key] = value
            continue
        base = cwd
        if key not in cli_keys:
            base = next((Path(f).parent for f in reversed(configfiles) if key in _load(f)), cwd)
        path = (base / Path(value).expanduser()).resolve()
        resolved[key] = str(path.relative_to(cwd.resolve())) if path.is_relative_to(cwd.resolve()) else str(path)
    return resolved


def _load(path: Path) -> dict:
    """The top level of a config file (YAML or JSON), empty when it holds no mapping."""
    with open(path) as fh:
        data = yaml.safe_load(fh)
    return data if isinstance(data, dict) else {}
