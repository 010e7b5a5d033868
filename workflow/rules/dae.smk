# KD-DAE stage 2: the domain expert, DAE's data mixture, and DAE training from the KD student.

DAE_KEYS = ["lam", "divergence", "temperature", "teacher_source"]

if config["dae"]["expert"]["source"]:

    rule expert:
        output:
            directory("results/models/expert"),
        log:
            "results/logs/models/expert.log",
        conda:
            ENV
        resources:
            mem_mb=8000,
            runtime=runtime_min(30),
        params:
            source=config["dae"]["expert"]["source"],
        shell:
            "python -m distill.models.resolve --source {params.source:q} --out {output} "
            "> {log} 2>&1"

else:

    rule expert:
        input:
            teacher="results/models/teacher",
            train="results/data/math/train.jsonl",
            valid="results/data/math/valid.jsonl",
        output:
            directory("results/models/expert"),
        log:
            "results/logs/train/expert.log",
        benchmark:
            "results/benchmarks/train/expert.tsv"
        conda:
            ENV
        threads: 2
        resources:
            **TRAIN_RESOURCES,
            mem_mb=16000,
            runtime=runtime_min(120),
        params:
            launch=TRAIN_LAUNCH,
            settings=as_json({**config["train"], **config["dae"]["expert"]["train"]}),
            seed=config["seed"],
            precision=PRECISION,
        shell:
            "{params.launch} --objective sft --student {input.teacher} "
            "--train {input.train} --valid {input.valid} --settings {params.settings:q} "
            "--seed {params.seed} --precision {params.precision} "
            "--ckpt-dir results/checkpoints/expert --out {output} > {log} 2>&1"


rule dae_data:
    input:
        general="results/data/instructions/{split}.jsonl",
        domain="results/data/math/{split}.jsonl",
    output:
        "results/data/dae/{split}.jsonl",
    log:
        "results/logs/data/dae_{split}.log",
    wildcard_constraints:
        split="train|valid",
    conda:
        ENV
    params:
        domains=config["dae"]["domains"],
        share=config["dae"]["domain_share"],
        seed=config["seed"],
    shell:
        "python -m distill.data.mixture --general {input.general} --domain {input.domain} "
        "--domains {params.domains} --share {params.share} --seed {params.seed} "
        "--out {output} > {log} 2>&1"


rule train_dae:
    input:
        **teacher_inputs("dae", "dae", {"teacher": "teacher", "expert": "expert"}),
        student="results/models/student_kd",
        train="results/data/dae/train.jsonl",
        valid="results/data/dae/valid.jsonl",
    output:
        directory("results/models/student_kd_dae"),
    log:
        "results/logs/train/student_kd_dae.log",
    benchmark:
        "results/benchmarks/train/student_kd_dae.tsv"
    conda:
        ENV
    threads: 2
    resources:
        **TRAIN_RESOURCES,
        mem_mb=16000,
        runtime=runtime_min(120),
    params:
        launch=TRAIN_LAUNCH,
        settings=train_settings("dae"),
        objective=lambda wildcards, input: objective_settings(
            "dae",
            DAE_KEYS,
            input,
            expert=input.expert,
            expert_cache=folder_of(input.get("expert_cache")),
            domains=config["dae"]["domains"],
        ),
        seed=config["seed"],
        precision=PRECISION,
    shell:
        "{params.launch} --objective dae --student {input.student} "
        "--train {input.train} --valid {input.valid} --settings {params.settings:q} "
        "--objective-settings {params.objective:q} --seed {params.seed} "
        "--precision {params.precision} "
        "--ckpt-dir results/checkpoints/student_kd_dae --out {output} > {log} 2>&1"
