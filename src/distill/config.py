"""Validate the workflow config against workflow/schemas/config.schema.yaml and fill defaults.

We validate with jsonschema ourselves rather than with `snakemake.utils.validate` because its
error prints the whole schema; ours names the key (`train.lr`), the problem and the fix in one
paragraph, and suggests the closest known key for a typo.

    python -m distill.config                                          # the embedded default
    python -m distill.config --configfile configs/paper.yaml          # a whole config
    python -m distill.config --configfile config.yaml configs/ci.yaml # an overlay on its base

prints the effective config exactly as the Snakefile sees it: config.yaml only when no
--configfile is given (a config file is whole), the files merged in order as Snakemake merges
them, validated, every default filled.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import sys
from pathlib import Path

import yaml

from distill.io import InputError

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def _fill_defaults(validator_class):
    """A validator class that also writes each property's `default` into the instance."""
    import jsonschema

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _message(error, source: str) -> str:
    """One paragraph for a jsonschema.ValidationError: the key, the problem, the fix."""
    where = _key(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        extra = [k for k in error.instance if k not in known]
        hints = []
        for k in extra:
            close = difflib.get_close_matches(k, known, n=1)
            hints.append(f"`{k}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
        return (
            f"{source}: unknown config key {', '.join(hints)} under `{where}`. "
            f"Known keys there: {', '.join(known)}. Fix: correct or remove it "
            "(every key is documented in workflow/schemas/config.schema.yaml)."
        )
    description = schema.get("description", "")
    return (
        f"{source}: config key `{where}`: {error.message}."
        + (f" It is: {description}" if description else "")
        + " Fix: correct it (every key is documented in workflow/schemas/config.schema.yaml)."
    )


def validate_config(config: dict, source: str = "config", schema_path: Path = SCHEMA) -> dict:
    """Validate `config` in place (defaults filled) and return it; InputError on the first error."""
    import jsonschema  # here, not at the top: training imports this module for SCHEMA only

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator_class = _fill_defaults(jsonschema.validators.validator_for(schema))
    errors = sorted(
        validator_class(schema).iter_errors(config), key=lambda e: list(e.absolute_path)
    )
    if errors:
        raise InputError(_message(errors[0], source))
    return config


def schema_defaults(section: str = "") -> dict:
    """The schema's defaults of a config section, by dotted path (`kd`, `kd.cache`, `train`):
    the one home of every default, for modules run directly (benchmarks, tests)."""
    values = validate_config({}, "schema defaults")
    for key in filter(None, section.split(".")):
        values = values[key]
    return values


def with_defaults(section: str, settings: dict) -> dict:
    """`settings` with the keys it lacks filled from the schema's defaults of `section`."""
    return {**schema_defaults(section), **settings}


def effective_config(configfiles: list[str]) -> dict:
    """The config the Snakefile sees for `--configfile configfiles` (none: config.yaml)."""
    config: dict = {}
    for path in configfiles or [str(REPO / "config.yaml")]:
        _deep_update(config, yaml.safe_load(Path(path).read_text()) or {})
    return validate_config(config, " + ".join(configfiles or ["config.yaml"]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Without --configfile: config.yaml, as `snakemake` alone reads it.",
    )
    parser.add_argument(
        "--configfile", nargs="+", default=[], metavar="FILE",
        help="config files in the order given to snakemake --configfile",
    )  # fmt: skip
    args = parser.parse_args()
    try:
        config = effective_config(args.configfile)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def _deep_update(base: dict, new: dict) -> dict:
    """Merge `new` into `base` as Snakemake merges config files (dicts merge, the rest replaces)."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v
    return base


if __name__ == "__main__":
    main()
