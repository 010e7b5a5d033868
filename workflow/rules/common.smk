# Helpers shared by every stage: config validation, settings as JSON, resource functions.
import json
import os

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
    "radar",
    "evaluation",
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
if config["ddk"]["teacher"] != "teacher":
    DOMAIN_EVAL_MODELS["ddk_teacher"] = f"results/models/{config['ddk']['teacher']}"
# Every model MT-Bench/AlpacaEval can judge: name -> model directory (the schema's
# eval.$defs.model_name lists the same names); EVAL_MODELS: those config eval.models picks.
MODEL_DIRS = {
    "teacher": "results/models/teacher",
    "student_init": "results/models/student_init",
    "sft": "results/models/student_sft",
    "kd": "results/models/student_kd",
    "kd_dae": "results/models/student_kd_dae",
    **{
        ("ddk" if m == "ddk" else f"ddk_{m}"): f"results/models/student_ddk_{m}"
        for m in ["ddk", "natural", "no_smoothing", "equal"]
    },
}
EVAL_MODELS = {name: MODEL_DIRS[name] for name in config["eval"]["models"]}
SPLITS = ["train", "valid", "test"]
PRECISION = config["precision"]
ENV = "../../envs/distill.yaml"  # the conda environment of every rule (--sdm conda)
GPUS = config["gpus"]  # the `gpu` resource of every rule that a GPU speeds up


# OpenMP threads that wait by sleeping, not spinning: with two jobs sharing 2 cores, spinning
# threads made torch steps 3-20x slower here. Jobs inherit this environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# How training starts: one process, or one per GPU through accelerate (DDP, FSDP or DeepSpeed).
TRAIN_GPUS = config["train_gpus"]
TRAIN_LAUNCH = (
    "python -m distill.train"
    if TRAIN_GPUS == 1
    else f"accelerate launch --num_processes {TRAIN_GPUS} "
    f"--config_file workflow/accelerate/{config['distributed']}.yaml -m distill.train"
)
# The SLURM executor's request for a training job: all GPUs to one task that starts the
# processes itself (tasks_per_gpu=0: the plugin would otherwise start the script once per GPU).
TRAIN_RESOURCES = {"gpu": max(GPUS, TRAIN_GPUS) if GPUS else 0}
if TRAIN_GPUS > 1:
    TRAIN_RESOURCES["tasks_per_gpu"] = 0


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
    """The cache's manifest: the rule's output is this file, not the folder, so that the shards
    a failed or killed job finished stay on disk (Snakemake deletes a failed job's outputs).
    """
    return f"results/cache/{teacher}/{dataset}/manifest.json"


def folder_of(path):
    return os.path.dirname(path) if path else None


def teacher_inputs(stage, dataset, models=None):
    """A stage's teacher directories by role (teacher, expert), and their caches when the stage
    reads from caches. `models` maps each role to a model name (default: the general teacher).
    """
    models = models or {"teacher": "teacher"}
    inputs = {role: f"results/models/{name}" for role, name in models.items()}
    if config[stage]["teacher_source"] == "cache":
        inputs.update(
            {f"{r}_cache": cache_path(name, dataset) for r, name in models.items()}
        )
    return inputs


# The student each teacher's cache measures its top-k error against (same tokenizer).
CACHE_STUDENT = {"teacher": "student_init", "expert": "student_init"}
CACHE_STUDENT[config["ddk"]["teacher"]] = config["ddk"]["student"]
TEACHER_NAMES = "|".join(sorted({"teacher", "expert", *config["models"]["extra"]}))


def objective_settings(stage, keys, input, **extra):
    """A stage's config keys as its objective's settings, with the teacher/cache paths."""
    settings = {k: config[stage][k] for k in keys}
    settings["teacher"] = input.teacher
    settings["cache"] = folder_of(input.get("teacher_cache"))
    settings.update(extra)
    return as_json(settings)
