# Evaluation: AIS log p(x) per test image and the ELBO, with the preset's eval settings as a tracked param.
# Both outputs are written atomically at the end, so a killed job leaves nothing behind.

rule evaluate:
    input:
        f"{RUN}/model.pt",
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
        settings=lambda w: json.dumps(config["eval"], sort_keys=True),
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
        gpu=gpus("evaluate", lambda w: config["eval"]["device"]),
    shell:
        avb("evaluate {input} --settings '{params.settings}' --out-csv {output.per_image} "
            "--out-json {output.summary} --threads {threads} > {log} 2>&1")


# AIS against the annealing budget, with the BDMC sandwich on images simulated from the model (config `convergence`).
rule ais_convergence:
    input:
        f"{RUN}/model.pt",
    output:
        f"{RUN}/ais_convergence.csv",
    params:
        settings=lambda w: json.dumps(config["eval"], sort_keys=True),
        steps=" ".join(str(s) for s in config["convergence"]["steps"]),
        n_images=config["convergence"]["n_images"],
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
        gpu=gpus("evaluate", lambda w: config["eval"]["device"]),
    shell:
        avb("convergence {input} --settings '{params.settings}' --steps {params.steps} "
            "--n-images {params.n_images} --out-csv {output} --threads {threads} > {log} 2>&1")
