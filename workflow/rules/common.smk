# Helpers shared by every stage: config validation, model paths, launch commands, resources.
# Rules are declarations; whatever they compute comes from a named function here.
import json
import math
import os
from urllib.parse import quote

from distill.config import validate_config
from distill.eval.judge_check import summary_line
from distill.io import InputError

CONFIG_SOURCE = " + ".join(map(str, workflow.overwrite_configfiles or ["config.yaml"]))
try:
    validate_config(config, f"config ({CONFIG_SOURCE})")
except InputError as error:
    raise WorkflowError(str(error)) from None

SEEDS = config["seeds"]
SPLITS = ["train", "valid", "test"]
PRECISION = config["precision"]
ENV = "../../envs/distill.yaml"  # the conda environment of every rule (--sdm conda)

# One thread per generation/judging job: on 2 cores two of them run side by side. Small-batch
# decoding of a small model gains little from a second thread, and a 2-thread job beside any
# other busy process slowed about 20x here (OpenMP threads spin-waiting for the shared core).
EVAL_THREADS = 1

# OpenMP threads that wait by sleeping, not spinning: with two jobs sharing 2 cores, spinning
# threads made torch steps 3-20x slower here. Jobs inherit this environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# ---- models ----------------------------------------------------------------------------------
# Models resolved from a source (hub id, GGUF inside a PyPI package, local or tiny directory).
MODEL_SOURCES = {"teacher": config["models"]["teacher"], **config["models"]["extra"]}
if config["dae"]["expert"]["source"]:
    MODEL_SOURCES["expert"] = config["dae"]["expert"]["source"]
# The config key of each source, for messages about it.
MODEL_KEYS = {"teacher": "models.teacher", "expert": "dae.expert.source"}
# Students trained by the workflow, once per replicate seed: name -> results/models/<dir>.
STUDENT_DIRS = {
    "student_init": "student_init",
    "sft": "student_sft",
    "kd": "student_kd",
    "kd_dae": "student_kd_dae",
    "ddk": "student_ddk_ddk",
    **{f"ddk_{m}": f"student_ddk_{m}" for m in ["natural", "no_smoothing", "equal"]},
}


def model_dir(name, seed=None):
    """The directory of a workflow model: students per replicate seed, the others unseeded."""
    if name in STUDENT_DIRS:
        return f"results/models/{STUDENT_DIRS[name]}/seed{seed}"
    if name.startswith("sweep/"):  # the λ' sweep's runs: sweep/lambda_<λ'>
        return f"results/models/{name}/seed{seed}"
    return f"results/models/{name}"


def ddk_run_name(mode):
    """DDK's students by mode: `ddk` for the method itself, ddk_<mode> for its ablations."""
    return "ddk" if mode == "ddk" else f"ddk_{mode}"


# The compared training runs of the training-curves figure: label -> student name.
TRAINING_RUNS = {
    "sft": "sft",
    "kd": "kd",
    "kd_dae": "kd_dae",
    **{f"ddk_{m}": ddk_run_name(m) for m in config["ddk"]["modes"]},
}


def run_logs(runs):
    """--runs arguments of the comparison figures: label=<model>/train_log.csv once per seed."""
    return [
        f"{label}={model_dir(name, seed)}/train_log.csv"
        for label, name in runs.items()
        for seed in SEEDS
    ]


def run_dirs(runs):
    return [model_dir(name, seed) for name in runs.values() for seed in SEEDS]


def model_gpus(name):
    """GPUs of a non-training job that loads model `name` (config gpus / model_gpus)."""
    return config["model_gpus"].get(name, config["gpus"])


# ---- training launch -------------------------------------------------------------------------
def stage_config(stage):
    """A stage's config section: `dae.expert` is addressed as stage "expert"."""
    return config["dae"]["expert"] if stage == "expert" else config[stage]


def train_settings(stage):
    """The shared `train` settings with the stage's own `train:` overrides applied."""
    return {**config["train"], **stage_config(stage)["train"]}


def launch_settings(stage):
    return {**config["launch"], **stage_config(stage)["launch"]}


def launch_command(stage):
    """How a stage's training starts: one process, accelerate on GPUs, torchrun on CPUs."""
    launch = launch_settings(stage)
    processes, distributed = launch["processes"], launch["distributed"]
    if processes == 1:
        return "python -m distill.train"
    if launch["gpus"] > 0:
        return (
            f"accelerate launch --num_processes {processes} "
            f"--config_file workflow/accelerate/{distributed}.yaml "
            f"-m distill.train --distributed {distributed}"
        )
    # accelerate launch starts only one process on a CPU machine; torchrun starts gloo ranks.
    return (
        f"torchrun --standalone --nproc_per_node {processes} "
        f"-m distill.train --distributed {distributed}"
    )


def train_resources(stage, mem_mb):
    """A training job's resources: its GPUs (all to one SLURM task that starts the processes
    itself: tasks_per_gpu=0, else the plugin starts the script once per GPU), memory, and a
    runtime of min(hours, the partition limit) per attempt: a job killed at the limit is retried
    and resumes from its checkpoint (train_retries gives enough attempts for the planned hours).
    """
    launch = launch_settings(stage)
    resources = {
        "gpu": launch["gpus"],
        "mem_mb": mem_mb,
        "runtime": round(60 * min(launch["hours"], config["job_hours_limit"])),
    }
    if launch["gpus"] > 1:
        resources["tasks_per_gpu"] = 0
    return resources


def train_retries(stage):
    """Attempts beyond the first: as many job time limits as the planned hours need, plus one."""
    return math.ceil(launch_settings(stage)["hours"] / config["job_hours_limit"])


def runtime_min(base):
    """A resource function: `base` minutes, doubled on each retry (a job past its limit)."""

    def runtime(wildcards, attempt):
        return base * 2 ** (attempt - 1)

    return runtime


def as_json(value):
    """A config section as one JSON argument (quote it with {params.x:q} in shell)."""
    return json.dumps(value, sort_keys=True)


def stage_train_json(stage):
    return as_json(train_settings(stage))


def run_seed(stage):
    """A params function: the run's seed = the stage's train.seed + the replicate."""

    def seed(wildcards):
        return train_settings(stage)["seed"] + int(wildcards.seed)

    return seed


# The one training command of every training rule; its params are launch, objective, settings,
# objective_settings, seed, precision, ckpt_dir; its input student, train, valid.
TRAIN_SHELL = (
    "{params.launch} --objective {params.objective} --student {input.student} "
    "--train {input.train} --valid {input.valid} --settings {params.settings:q} "
    "--objective-settings {params.objective_settings:q} --seed {params.seed} "
    "--precision {params.precision} --ckpt-dir {params.ckpt_dir} --out {output} > {log} 2>&1"
)


def checkpoint_dir(wildcards, output):
    """Resume checkpoints beside results/models: results/checkpoints/<the model's path>."""
    return output[0].replace("results/models/", "results/checkpoints/", 1)


# ---- teacher caches --------------------------------------------------------------------------
def stage_temperature(stage):
    return stage_config(stage)["temperature"]


def cache_path(stage, teacher, dataset):
    """The manifest of `teacher`'s cache on `dataset` at the stage's temperature and max_len (a
    cache's contents depend on exactly these, so stages that agree share it). The rule's output is
    this file, not the folder, so the shards a failed job finished stay on disk.
    """
    temperature = stage_temperature(stage)
    max_len = train_settings(stage)["max_len"]
    return (
        f"results/cache/{teacher}/{dataset}/t{temperature:g}_len{max_len}/manifest.json"
    )


def teacher_inputs(stage, dataset, roles):
    """A stage's teachers by role ({role: model name}) and, when it reads caches, their caches."""
    inputs = {role: model_dir(name) for role, name in roles.items()}
    if stage_config(stage)["teacher_source"] == "cache":
        for role, name in roles.items():
            inputs[f"{role}_cache"] = cache_path(stage, name, dataset)
    return inputs


def cache_student(wildcards):
    """The student a cache measures its quality against (same tokenizer as the teacher)."""
    if wildcards.teacher == config["ddk"]["teacher"] and wildcards.teacher != "teacher":
        return model_dir(config["ddk"]["student"], SEEDS[0])
    return model_dir("student_init", SEEDS[0])


def folder_of(path):
    return os.path.dirname(path) if path else None


def output_folder(wildcards, output):
    """The folder of a job's first output (for tools that take a folder)."""
    return os.path.dirname(output[0])


def objective_json(stage, keys, **extra):
    """A params function: the stage's config keys as its objective's settings, with the
    teacher/cache paths from the job's input (and `extra`, values or functions of wildcards).
    """

    def settings(wildcards, input):
        values = {k: stage_config(stage)[k] for k in keys}
        values["teacher"] = input.teacher
        values["cache"] = folder_of(input.get("teacher_cache"))
        for key, value in extra.items():
            values[key] = value(wildcards, input) if callable(value) else value
        return as_json(values)

    return settings


# ---- checks before any job runs ---------------------------------------------------------------
# Before the first job (not in dry runs): the judge's key and hub access. Checks made while
# the DAG is planned are called from the stage files (check_sweep_launch, check_alpaca_reference).
def check_before_jobs():
    """What must hold before any GPU time is spent: the judge's API key, hub access."""
    from distill.eval.judges import check_judge_ready
    from distill.models.resolve import check_hub_access

    try:
        for name, source in MODEL_SOURCES.items():
            check_hub_access(source, MODEL_KEYS.get(name, f"models.extra.{name}"))
        if config["models"]["student"]["method"] == "source":
            check_hub_access(
                config["models"]["student"]["source"], "models.student.source"
            )
        check_judge_ready(config["eval"]["judge"])
    except InputError as error:
        raise WorkflowError(str(error)) from None


# ---- data.smk ----------------------------------------------------------------------------------
def math_config(wildcards):
    """The math data's settings: `math` is data.math, `sweep_math` the sweep's own data."""
    return (
        config["data"]["math"]
        if wildcards.dataset == "math"
        else config["sweep"]["data"]
    )


# ---- models.smk --------------------------------------------------------------------------------
def model_source(wildcards):
    return MODEL_SOURCES[wildcards.name]


def expert_name_pattern():
    """`expert` is fine-tuned here unless dae.expert.source names a model (then it is resolved)."""
    return "(?!)" if "expert" in MODEL_SOURCES else "expert"


# ---- kd.smk ------------------------------------------------------------------------------------
def cache_settings(wildcards):
    """The cache's build settings: kd.cache, with the temperature and max_len of its path."""
    return {
        **config["kd"]["cache"],
        "temperature": float(wildcards.temperature),
        "max_len": int(wildcards.max_len),
    }


def teacher_gpus(wildcards):
    return model_gpus(wildcards.teacher)


# ---- dae.smk -----------------------------------------------------------------------------------
def expert_cache(wildcards, input):
    return folder_of(input.get("expert_cache"))


def expert_dir(wildcards, input):
    return input.expert


# ---- ddk.smk -----------------------------------------------------------------------------------
def ddk_mode(wildcards, input):
    return wildcards.mode


def weighted_mode():
    """The mode whose domain weights the weights figure draws (DDK itself, else its ablation)."""
    return next(
        m for m in ["ddk", "no_smoothing", "equal", "natural"] if m in DDK["modes"]
    )


def local_sources(section):
    """The local files among a data section's sources (hub sources are downloaded by the job)."""
    return sorted(
        {d["source"] for d in section.values() if not d["source"].startswith("hf:")}
    )


def domain_eval_model(wildcards):
    return model_dir(wildcards.model, wildcards.seed)


def domain_eval_gpus(wildcards):
    return model_gpus(wildcards.model)


def domain_results():
    """label=path of every per-domain result: seeded students once per seed."""
    return [
        f"{name}=results/eval/domains/{name}/seed{seed}.json"
        for name, seeds in DOMAIN_EVAL_MODELS.items()
        for seed in seeds
    ]


def domain_result_files():
    return [result.split("=", 1)[1] for result in domain_results()]


# ---- sweep.smk ---------------------------------------------------------------------------------
def check_sweep_launch():
    """The feedback objective's launch limits, refused while the DAG is planned (not in a job)."""
    from distill.objectives.feedback import check_launch

    launch = launch_settings("sweep")
    try:
        check_launch(launch["processes"], launch["distributed"])
    except InputError as error:
        raise WorkflowError(str(error)) from None


def sweep_objective(wildcards, input):
    """The objective's settings: the sweep's keys, this run's λ', the teacher, the schedule."""
    settings = train_settings("sweep")
    return as_json(
        {
            **{k: SWEEP[k] for k in SWEEP_KEYS},
            "grad_accum": settings["grad_accum"],
            "eval_every": settings["eval_every"],
            "lam_prime": float(wildcards.lam),
            "teacher": input.teacher,
        }
    )


def sweep_title():
    sizes = SWEEP["student_sizes"]
    return (
        f"λ' sweep: {SWEEP['teacher']} → student (hidden {sizes.get('hidden_size', '?')}, "
        f"{sizes.get('num_hidden_layers', '?')} layers), {', '.join(SWEEP['data']['modules'])}"
    )


# ---- eval.smk ----------------------------------------------------------------------------------
def alpaca_reference_file(seed):
    if ALPACA_CONFIG["reference_outputs"] == "instructions":
        return ALPACA_SET
    if ALPACA_CONFIG["reference_outputs"]:
        return ALPACA_CONFIG["reference_outputs"]
    return f"{ALPACA}/seed{seed}/outputs/{ALPACA_CONFIG['reference_model']}.json"


def alpaca_reference(wildcards):
    return alpaca_reference_file(wildcards.seed)


def eval_model(wildcards):
    return model_dir(wildcards.model, wildcards.seed)


def eval_gpus(wildcards):
    return model_gpus(wildcards.model)


def alpaca_data_input(wildcards):
    """A local evaluation set is an input (a changed file reruns); `hub` has none."""
    source = ALPACA_CONFIG["instructions"]
    return [] if source in ("hub", "heldout") else [source]


def repeated(option, paths):
    """`option path` once per path, as one shell string (plots take one file per seed)."""
    return " ".join(f"{option} {path}" for path in paths)


def seed_files(pattern):
    return [pattern.format(seed=seed) for seed in SEEDS]


def model_seed_files(pattern, seed):
    return [pattern.format(model=name, seed=seed) for name in EVAL["models"]]


def mtbench_judgments_of_seed(wildcards):
    return model_seed_files(
        "results/eval/mtbench/seed{seed}/judgments/{model}.jsonl", wildcards.seed
    )


def alpaca_annotations_of_seed(wildcards):
    return model_seed_files(
        "results/eval/alpaca/seed{seed}/annotations/{model}.json", wildcards.seed
    )


def math_results():
    """label=path of the math accuracy of each judged model that distill.eval.domains measures
    (DOMAIN_EVAL_MODELS, ddk.smk: name -> seeds)."""
    return [
        f"{name}=results/eval/domains/{name}/seed{seed}.json"
        for name in EVAL["models"]
        if name in DOMAIN_EVAL_MODELS
        for seed in DOMAIN_EVAL_MODELS[name]
    ]


def math_result_files():
    return [result.split("=", 1)[1] for result in math_results()]


def mtbench_check_line(wildcards, input):
    """The judge check's sentence for the radar's caption (read when the job runs)."""
    return summary_line(input.check, JUDGE["min_accuracy"], ["mtbench"])


def both_check_line(wildcards, input):
    return summary_line(input.check, JUDGE["min_accuracy"], ["mtbench", "alpaca"])


# The judge's settings for --judge-json (distill.eval.judges.judge_from_config), and its name,
# mode and scale for the figures' titles and captions.
def judge_settings():
    if JUDGE_DIR:
        keys = {"precision": PRECISION, "rating": JUDGE["rating"]}
        keys["max_new_tokens"] = JUDGE["max_new_tokens"]
        return {
            "kind": "transformers",
            "model_dir": JUDGE_DIR,
            "name": JUDGE["model"],
            **keys,
        }
    names = ["model", "base_url", "api_key_env", "max_concurrency", "max_retries"]
    names += ["timeout_s", "rating"]
    # Paid replies outlive reruns: one cache per judge model, outside any rule's outputs.
    cache = f"results/eval/judge_cache/{quote(JUDGE['model'], safe='')}.jsonl"
    return {"kind": "openai", **{k: JUDGE[k] for k in names}, "cache_path": cache}


def check_alpaca_reference():
    """AlpacaEval's reference must exist for the chosen instructions (checked while planning)."""
    if (
        ALPACA_CONFIG["reference_outputs"] == "instructions"
        and ALPACA_INSTRUCTIONS != ALPACA_SET
    ):
        raise WorkflowError(
            "config eval.alpaca: reference_outputs is `instructions` (the outputs stored in the "
            "evaluation set), but eval.alpaca.instructions is `heldout`, whose rows hold no "
            "reference outputs. Fix: set eval.alpaca.instructions to `hub` or to a local "
            "alpaca_eval.json, or set eval.alpaca.reference_outputs to '' (compare with "
            "eval.alpaca.reference_model)."
        )


def alpaca_reference_name():
    """Whose outputs AlpacaEval compares with: the evaluation set's own (AlpacaEval 1.0:
    text-davinci-003's), a given file, or the reference model's outputs of the same seed.
    """
    if ALPACA_CONFIG["reference_outputs"] == "instructions":
        return "the evaluation set's outputs (text-davinci-003 in alpaca_eval.json)"
    return ALPACA_CONFIG["reference_outputs"] or ALPACA_CONFIG["reference_model"]
