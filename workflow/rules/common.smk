# Helpers shared by every stage: config validation, settings as JSON, resource functions.
import json

from distill.config import validate_config
from distill.io import InputError

try:
    validate_config(config, "config (config.yaml + --configfile/--config)")
except InputError as error:
    raise WorkflowError(str(error)) from None

# Every figure the workflow makes; `rule all` asks for these.
FIGURES = [f"results/figures/{name}.png" for name in ["sft_loss"]]
SPLITS = ["train", "valid", "test"]
PRECISION = config["precision"]
ENV = "../../envs/distill.yaml"  # the conda environment of every rule (--sdm conda)
GPUS = config["gpus"]  # the `gpu` resource of every rule that a GPU speeds up


def as_json(value):
    """A config section as one JSON argument (quote it with {params.x:q} in shell)."""
    return json.dumps(value, sort_keys=True)


def train_settings(stage):
    """The shared `train` settings with the stage's own `train:` overrides applied."""
    return as_json({**config["train"], **config[stage].get("train", {})})


def runtime_min(base):
    """A resource function: `base` minutes, doubled on each retry (a job past its limit)."""
    return lambda wildcards, attempt: base * 2 ** (attempt - 1)
