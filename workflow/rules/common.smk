# Helpers shared by every stage: config validation, settings as JSON, resource functions.
import json

from distill.config import validate_config
from distill.io import InputError

try:
    validate_config(config, "config (config.yaml + --configfile/--config)")
except InputError as error:
    raise WorkflowError(str(error)) from None

# Every figure the workflow makes; `rule all` asks for these.
FIGURES = [f"results/figures/{name}.png" for name in ["sft_loss", "training_curves"]]
# The student runs whose curves join the training-curves figure: label -> model directory.
TRAINING_RUNS = {"sft": "results/models/student_sft", "kd": "results/models/student_kd"}
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


KD_KEYS = ["lam", "divergence", "beta", "alpha", "temperature", "scale_by_t2", "w_attn"]
KD_KEYS += ["layer_map", "w_hid", "hidden_kind", "teacher_source"]


def kd_inputs(wildcards):
    """The teacher directory, and the cache when KD reads the teacher from it."""
    inputs = {"teacher": "results/models/teacher"}
    if config["kd"]["teacher_source"] == "cache":
        inputs["cache"] = "results/cache/teacher"
    return inputs


def kd_objective_settings(wildcards, input):
    """The `kd:` config as the KD objective's settings, with the teacher/cache paths."""
    settings = {k: config["kd"][k] for k in KD_KEYS}
    settings["teacher"] = input.teacher
    settings["cache"] = input.get("cache")
    return as_json(settings)
