# Models: resolve the teacher's source to a Hugging Face directory, build the student from it.


rule teacher:
    output:
        directory("results/models/teacher"),
    log:
        "results/logs/models/teacher.log",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=runtime_min(30),
    params:
        source=config["models"]["teacher"],
    shell:
        "python -m distill.models.resolve --source {params.source:q} --out {output} > {log} 2>&1"


rule student_init:
    input:
        "results/models/teacher",
    output:
        directory("results/models/student_init"),
    log:
        "results/logs/models/student_init.log",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=runtime_min(30),
    params:
        spec=as_json(config["models"]["student"]),
        seed=config["seed"],
    shell:
        "python -m distill.models.student --teacher {input} --spec {params.spec:q} "
        "--seed {params.seed} --out {output} > {log} 2>&1"


rule extra_model:
    output:
        directory("results/models/{name}"),
    log:
        "results/logs/models/{name}.log",
    wildcard_constraints:
        name="|".join(config["models"]["extra"]) or "(?!)",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=runtime_min(60),
    params:
        source=lambda wildcards: config["models"]["extra"][wildcards.name],
    shell:
        "python -m distill.models.resolve --source {params.source:q} --out {output} > {log} 2>&1"
