# The four-image toy experiment (paper section 5.1; notebooks/AVB_toy_example.ipynb, VAE_toy_example.ipynb): one
# training run per method through the shared loop (avb.train.fit), an exact evaluation per run (log p(x) and p(z|x) by
# quadrature on a grid, KL estimates from encoder samples), and a report (summary table and latent-space figure).
# Outputs under <results>/<preset>/toy/. Each job's settings are tracked params holding only what it depends on (a
# run: seed + toy.model + toy.train, written to config.json; an evaluation: toy.eval, written to eval_config.json), so
# a changed value reruns only the affected jobs; jobs read them from those files (`--config`), never from their
# command line. Every output is written atomically; a killed training job resumes from its checkpoint.pt.
# Targets are added to `rule all` via TOY_TARGETS; its functions are in common.smk.
TOY = f"{OUT}/{avb_layout.TOY}"
TOY_CFG = config["toy"]
TOY_RUN = f"{TOY}/{{toy_method}}"
TOY_TARGETS = avb_layout.toy_targets(config)


wildcard_constraints:
    toy_method=choices("toy.methods"),


rule toy_run_config:
    output:
        f"{TOY_RUN}/config.json",
    log:
        f"{TOY_RUN}/logs/run_config.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=mem_mb("settings"),
        runtime=runtime("settings"),
    params:
        run=toy_run_config,
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
        mem_mb=mem_mb("toy_train"),
        runtime=runtime("toy_train"),
        gpu=gpus("toy_train", toy_train_device, rule="toy_train"),
        gpu_slots=gpu_slots("toy_train", toy_train_device),
    params:
        **AVB_PARAMS,
        out=run_dir,
    shell:
        avb(
            "toy train {input:q} --out {params.out:q} --threads {threads} > {log:q} 2>&1",
            gpu=True,
        )


rule toy_eval_config:
    output:
        f"{TOY_RUN}/eval_config.json",
    log:
        f"{TOY_RUN}/logs/eval_config.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=mem_mb("settings"),
        runtime=runtime("settings"),
    params:
        settings=TOY_CFG["eval"],
    run:
        write_json(params.settings, output[0])


rule toy_evaluate:
    input:
        model=f"{TOY_RUN}/model.pt",
        settings=f"{TOY_RUN}/eval_config.json",
    output:
        summary=f"{TOY_RUN}/eval.json",
        arrays=f"{TOY_RUN}/eval.npz",
    log:
        f"{TOY_RUN}/logs/evaluate.log",
    benchmark:
        f"{TOY_RUN}/benchmarks/evaluate.tsv"
    conda:
        ENV
    threads: TOY_CFG["threads"]
    resources:
        mem_mb=mem_mb("toy_evaluate"),
        runtime=runtime("toy_evaluate"),
        gpu=gpus("toy_evaluate", toy_eval_device, rule="toy_evaluate"),
        gpu_slots=gpu_slots("toy_evaluate", toy_eval_device),
    params:
        **AVB_PARAMS,
    shell:
        avb(
            "toy evaluate {input.model:q} --config {input.settings:q} --out-json {output.summary:q} "
            "--out-npz {output.arrays:q} --threads {threads} > {log:q} 2>&1",
            gpu=True,
        )


rule toy_report:
    input:
        evals=toy_files("eval.json"),
        arrays=toy_files("eval.npz"),
        metrics=toy_files("train_metrics.csv"),
    output:
        csv=f"{TOY}/summary.csv",
        md=f"{TOY}/summary.md",
        png=report(
            f"{TOY}/latent_space.png",
            caption="../report/toy_latent_space.rst",
            category="5. Toy",
            labels={"file": "latent_space.png", "content": "figure"},
        ),
        pdf=f"{TOY}/latent_space.pdf",
        table1_csv=f"{TOY}/table1.csv",
        table1_md=report(
            f"{TOY}/table1.md",
            caption="../report/toy_table1.rst",
            category="5. Toy",
            labels={"file": "table1.md", "content": "Table 1 replica"},
        ),
        table1_tex=f"{TOY}/table1.tex",
        curves=report(
            f"{TOY}/training_curves.png",
            caption="../report/toy_curves.rst",
            category="5. Toy",
            labels={"file": "training_curves.png", "content": "figure"},
        ),
        curves_pdf=f"{TOY}/training_curves.pdf",
    log:
        f"{TOY}/logs/report.log",
    benchmark:
        f"{TOY}/benchmarks/report.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb("toy_report"),
        runtime=runtime("toy_report"),
    params:
        **AVB_PARAMS,
    shell:
        avb(
            "toy report --evals {input.evals:q} --npz {input.arrays:q} --out-csv {output.csv:q} --out-md {output.md:q} "
            "--out-png {output.png:q} --out-pdf {output.pdf:q} "
            "--out-table1 {output.table1_csv:q} {output.table1_md:q} {output.table1_tex:q} "
            "--metrics {input.metrics:q} --out-curves {output.curves:q} {output.curves_pdf:q} > {log:q} 2>&1"
        )
