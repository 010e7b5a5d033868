# Helpers shared by every stage: config validation, settings as JSON, resource functions.
import json

from distill.config import validate_config
from distill.io import InputError

try:
    validate_config(config, "config (config.yaml + --configfile/--config)")
except InputError as error:
    raise WorkflowError(str(error)) from None

# Every figure the workflow makes; `rule all` asks for these.
FIGURE_NAMES = [
    "sft_loss",
    "training_curves",
    "ddk_weights",
    "ddk_domain_ppl",
    "lambda_sweep",
]
FIGURES = [f"results/figures/{name}.png" for name in FIGURE_NAMES]
FIGURES.append("results/eval/domains/accuracy.csv")
# The student runs whose curves join the training-curves figure: label -> model directory.
TRAINING_RUNS = {
    "sft": "results/models/student_sft",
    "kd": "results/models/student_kd",
    "kd_dae": "results/models/student_kd_dae",
    **{f"ddk_{m}": f"results/models/student_ddk_{m}" for m in config["ddk"]["modes"]},
}
# Models whose per-domain perplexity and math accuracy are measured (DDK's figure, the table).
DOMAIN_EVAL_MODELS = {"teacher": "results/models/teacher", **TRAINING_RUNS}
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


KD_KEYS = ["lam", "divergence", "temperature", "teacher_source"]
KD_KEYS += [
    "beta",
    "alpha",
    "scale_by_t2",
    "w_attn",
    "layer_map",
    "w_hid",
    "hidden_kind",
]


def cache_path(teacher, dataset):
    return f"results/cache/{teacher}/{dataset}"


def teacher_inputs(stage, dataset, teachers=("teacher",)):
    """A stage's teacher directories, and their caches when the stage reads from caches."""
    inputs = {name: f"results/models/{name}" for name in teachers}
    if config[stage]["teacher_source"] == "cache":
        inputs.update({f"{name}_cache": cache_path(name, dataset) for name in teachers})
    return inputs


def objective_settings(stage, keys, input, **extra):
    """A stage's config keys as its objective's settings, with the teacher/cache paths."""
    settings = {k: config[stage][k] for k in keys}
    settings["teacher"] = input.teacher
    settings["cache"] = input.get("teacher_cache")
    settings.update(extra)
    return as_json(settings)
