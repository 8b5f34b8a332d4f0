# Evaluation: AIS log p(x) per test image and the ELBO, with the preset's eval settings as a tracked param.

rule evaluate:
    input:
        f"{RUN}/model.pt",
    output:
        per_image=f"{RUN}/eval_per_image.csv",
        summary=f"{RUN}/eval.json",
    params:
        settings=lambda w: json.dumps(config["eval"], sort_keys=True),
    log:
        f"{RUN}/logs/evaluate.log",
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "avb evaluate {input} --settings '{params.settings}' --out-csv {output.per_image} "
        "--out-json {output.summary} --threads {threads} > {log} 2>&1"
