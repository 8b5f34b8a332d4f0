# Evaluation: AIS log p(x) per test image and the ELBO. Each job reads its settings from a JSON file in the run folder,
# written by a local rule from a tracked param holding only what the job reads: eval_config.json (the run's resolved
# eval section; overrides applied) for `evaluate`, convergence_config.json (the AIS settings less the main
# evaluation's own budgets n_test / ais_steps / ..., plus the `convergence` section) for `ais_convergence`. So a new
# eval.ais_steps reruns the evaluations, not the convergence study. Outputs are written atomically at the end, so a
# killed job leaves nothing behind.

rule eval_config:
    output:
        f"{RUN}/eval_config.json",
    params:
        settings=eval_config,
    log:
        f"{RUN}/logs/eval_config.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    run:
        write_json(params.settings, output[0])


rule evaluate:
    input:
        model=f"{RUN}/model.pt",
        settings=f"{RUN}/eval_config.json",
    output:
        per_image=report(
            f"{RUN}/eval_per_image.csv",
            caption="../report/eval_per_image.rst",
            category="2. Evaluation",
            subcategory="{dataset}, z = {z_dim}",
            labels={"method": "{method}", "seed": "{seed}", "file": "eval_per_image.csv"},
        ),
        summary=f"{RUN}/eval.json",
    params:
        data=data_dir_args,
        resolved=lambda w, input: run_config(w),  # for the report's caption (untracked: eval_config.json is)
    log:
        f"{RUN}/logs/evaluate.log",
    benchmark:
        f"{RUN}/benchmarks/evaluate.tsv"
    conda:
        ENV
    threads: config["threads"]
    resources:
        mem_mb=mem_mb("evaluate"),
        runtime=runtime("evaluate"),
        gpu=gpus("evaluate", lambda w: run_config(w)["eval"]["device"]),
    shell:
        avb("evaluate {input.model:q} --config {input.settings:q} {params.data:q} --out-csv {output.per_image:q} "
            "--out-json {output.summary:q} --threads {threads} > {log:q} 2>&1")


rule convergence_config:
    output:
        f"{RUN}/convergence_config.json",
    params:
        settings=convergence_config,
    log:
        f"{RUN}/logs/convergence_config.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    run:
        write_json(params.settings, output[0])


# AIS against the annealing budget, with the BDMC sandwich on images simulated from the model (config `convergence`).
rule ais_convergence:
    input:
        model=f"{RUN}/model.pt",
        settings=f"{RUN}/convergence_config.json",
    output:
        f"{RUN}/ais_convergence.csv",
    params:
        data=data_dir_args,
    log:
        f"{RUN}/logs/ais_convergence.log",
    benchmark:
        f"{RUN}/benchmarks/ais_convergence.tsv"
    conda:
        ENV
    threads: config["threads"]
    resources:
        mem_mb=mem_mb("evaluate"),
        runtime=runtime("evaluate"),
        gpu=gpus("evaluate", lambda w: run_config(w)["eval"]["device"]),
    shell:
        avb("convergence {input.model:q} --config {input.settings:q} {params.data:q} --out-csv {output:q} "
            "--threads {threads} > {log:q} 2>&1")
