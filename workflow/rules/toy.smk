# The four-image toy experiment (paper section 5.1; notebooks/AVB_toy_example.ipynb, VAE_toy_example.ipynb): one
# training run per method through the shared loop (avb.train.fit), an exact evaluation per run (log p(x) and p(z|x) by
# quadrature on a grid, KL estimates from encoder samples), and a report (summary table and latent-space figure).
# Outputs under <results>/<preset>/toy/. Each job's settings are tracked params holding only what it depends on (a
# run: seed + toy.model + toy.train, written to config.json; an evaluation: toy.eval), so a changed value reruns only
# the affected jobs. Every output is written atomically; a killed training job resumes from its checkpoint.pt.
# Targets are added to `rule all` via TOY_TARGETS.

rule toy_run_config:
    output:
        f"{TOY_RUN}/config.json",
    params:
        run=toy_run_config,
    log:
        f"{TOY_RUN}/logs/run_config.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    run:
        write_json(params.run, output[0])


rule toy_train:
    input:
        f"{TOY_RUN}/config.json",
    output:
        model=f"{TOY_RUN}/model.pt",
        metrics=f"{TOY_RUN}/train_metrics.csv",
    log:
        f"{TOY_RUN}/logs/train.log",
    benchmark:
        f"{TOY_RUN}/benchmarks/train.tsv"
    conda:
        ENV
    threads: TOY_CFG["threads"]
    resources:
        mem_mb=lambda w, attempt: 2000 * attempt,
        runtime=runtime("train"),
        gpu=gpus("train", lambda w: TOY_CFG["train"]["device"]),
    shell:
        avb("toy train {input} --out $(dirname {output.model}) --threads {threads} > {log} 2>&1")


rule toy_evaluate:
    input:
        f"{TOY_RUN}/model.pt",
    output:
        summary=f"{TOY_RUN}/eval.json",
        arrays=f"{TOY_RUN}/eval.npz",
    params:
        settings=lambda w: json.dumps(TOY_CFG["eval"], sort_keys=True),
    log:
        f"{TOY_RUN}/logs/evaluate.log",
    benchmark:
        f"{TOY_RUN}/benchmarks/evaluate.tsv"
    conda:
        ENV
    threads: TOY_CFG["threads"]
    resources:
        mem_mb=lambda w, attempt: 3000 * attempt,
        runtime=lambda w, attempt: 30 * attempt,
        gpu=gpus("evaluate", lambda w: TOY_CFG["eval"]["device"]),
    shell:
        avb("toy evaluate {input} --settings '{params.settings}' --out-json {output.summary} "
        "--out-npz {output.arrays} --threads {threads} > {log} 2>&1")


rule toy_report:
    input:
        evals=toy_files("eval.json"),
        arrays=toy_files("eval.npz"),
    output:
        csv=f"{TOY}/summary.csv",
        md=f"{TOY}/summary.md",
        png=f"{TOY}/latent_space.png",
        pdf=f"{TOY}/latent_space.pdf",
    log:
        f"{TOY}/logs/report.log",
    benchmark:
        f"{TOY}/benchmarks/report.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=lambda w, attempt: 2000 * attempt,
        runtime=lambda w, attempt: 15 * attempt,
    shell:
        avb("toy report --evals {input.evals} --npz {input.arrays} --out-csv {output.csv} --out-md {output.md} "
        "--out-png {output.png} --out-pdf {output.pdf} > {log} 2>&1")
