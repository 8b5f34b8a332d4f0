# The MNIST-type experiment (Table 2): the sweep datasets x methods x z_dims x seeds, one run folder each
# (<results>/<preset>/runs/<dataset>/<method>/z<z_dim>/seed<seed>/, avb/layout.py): training, AIS evaluation, the
# AIS-budget study, the per-run figures, and the report over all runs. Targets are added to `rule all` via
# MNIST_TARGETS. Its functions (what each job reads, resolved per run) are in common.smk.
RUN = f"{OUT}/{avb_layout.RUN}"
# Validation during training (config `monitor.val_every` > 0): training then writes val_metrics.csv and model.best.pt.
VALIDATE = avb_jobs.validates(config)


wildcard_constraints:
    dataset=choices("datasets"),
    method=choices("methods"),
    z_dim=r"\d+",
    seed=r"\d+",


MNIST_TARGETS = [
    f"{OUT}/summary.csv",
    f"{OUT}/summary.md",
    f"{OUT}/samples_and_curves.png",
    f"{OUT}/samples_and_curves.pdf",
    f"{OUT}/table2.md",
    f"{OUT}/table2.tex",
    *([f"{OUT}/ais_convergence.png", f"{OUT}/ais_convergence.pdf"] if config["convergence"]["enabled"] else []),
    *(path for name in avb_layout.RUN_FIGURES for path in run_files(name)),
]


# --- training: one job per run. What the run's training reads (avb.jobs.train_config: the model / train keys
# its method uses, the dataset and its content checksum; overrides applied) is a tracked param, written to
# config.json, so changing a value reruns exactly the runs that read it: an adversary setting never retrains the VAE,
# moving the data retrains nothing. train_metrics.csv and checkpoint.pt are rewritten atomically at every
# checkpoint; a killed job leaves model.pt missing and the job marked incomplete, so no rerun trusts its outputs, and
# the rerun (--rerun-incomplete, in both profiles) resumes from checkpoint.pt (not an output: Snakemake never
# deletes it). With `monitor` on (TensorBoard, validation; avb/monitor.py) config.json holds the monitor section too:
# turning it on reruns training, which continues from the checkpoint (monitoring never restarts a run); TensorBoard's
# event files (<run>/tensorboard/) are no output. With validation, val_metrics.csv and model.best.pt (the weights of
# the best validation ELBO, beside model.pt) are outputs too.


rule run_config:
    output:
        f"{RUN}/config.json",
    log:
        f"{RUN}/logs/run_config.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=mem_mb("settings"),
        runtime=runtime("settings"),
    params:
        run=train_config,
    run:
        write_json(params.run, output[0])


rule train:
    input:
        f"{RUN}/config.json",
    output:
        model=f"{RUN}/model.pt",
        metrics=report(
            f"{RUN}/train_metrics.csv",
            caption="../report/train_metrics.rst",
            category="1. Training",
            subcategory="{dataset}, z = {z_dim}",
            labels={"method": "{method}", "seed": "{seed}", "file": "train_metrics.csv"},
        ),
        val=f"{RUN}/val_metrics.csv" if VALIDATE else [],
        best=f"{RUN}/model.best.pt" if VALIDATE else [],
    log:
        f"{RUN}/logs/train.log",
    benchmark:
        f"{RUN}/benchmarks/train.tsv"
    conda:
        ENV
    threads: config["threads"]
    resources:
        mem_mb=mem_mb("train"),
        runtime=runtime("train"),
        gpu=gpus("train", train_device, rule="train"),
        gpu_slots=gpu_slots("train", train_device),
    params:
        **AVB_PARAMS,
        data=data_dir,
        out=run_dir,
        resolved=lambda w, input: run_config(w),  # for the report's caption (untracked: config.json is)
    shell:
        avb(
            "train {input:q} --out {params.out:q} --data-dir={params.data:q} --threads {threads} > {log:q} 2>&1",
            gpu=True,
        )


# --- evaluation: AIS log p(x) per test image and the ELBO. Each job reads its settings from a JSON file in the run
# folder, written by a local rule from a tracked param holding only what the job reads: eval_config.json (the run's
# resolved eval section; overrides applied) for `evaluate`, convergence_config.json (the AIS settings less the main
# evaluation's own budgets n_test / ais_steps / ..., plus the `convergence` section) for `ais_convergence`. So a new
# eval.ais_steps reruns the evaluations, not the convergence study. Outputs are written atomically at the end, so a
# killed job leaves nothing behind.


rule eval_config:
    output:
        f"{RUN}/eval_config.json",
    log:
        f"{RUN}/logs/eval_config.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=mem_mb("settings"),
        runtime=runtime("settings"),
    params:
        settings=eval_config,
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
        gpu=gpus("evaluate", eval_device, rule="evaluate"),
        gpu_slots=gpu_slots("evaluate", eval_device),
    params:
        **AVB_PARAMS,
        data=data_dir,
        resolved=lambda w, input: run_config(w),  # for the report's caption (untracked: eval_config.json is)
    shell:
        avb(
            "evaluate {input.model:q} --config {input.settings:q} --data-dir={params.data:q} "
            "--out-csv {output.per_image:q} --out-json {output.summary:q} --threads {threads} > {log:q} 2>&1",
            gpu=True,
        )


rule convergence_config:
    output:
        f"{RUN}/convergence_config.json",
    log:
        f"{RUN}/logs/convergence_config.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=mem_mb("settings"),
        runtime=runtime("settings"),
    params:
        settings=convergence_config,
    run:
        write_json(params.settings, output[0])


# AIS against the annealing budget, with the BDMC sandwich on images simulated from the model (config `convergence`).
rule ais_convergence:
    input:
        model=f"{RUN}/model.pt",
        settings=f"{RUN}/convergence_config.json",
    output:
        f"{RUN}/ais_convergence.csv",
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
        gpu=gpus("evaluate", eval_device, rule="ais_convergence"),
        gpu_slots=gpu_slots("evaluate", eval_device),
    params:
        **AVB_PARAMS,
        data=data_dir,
    shell:
        avb(
            "convergence {input.model:q} --config {input.settings:q} --data-dir={params.data:q} --out-csv {output:q} "
            "--threads {threads} > {log:q} 2>&1",
            gpu=True,
        )


# --- report: the tidy summary over all runs, its Markdown table, the Table 2 replica (mean ± 95 % CI over seeds
# beside the published values; Markdown and LaTeX), the samples / reconstructions / training-curves figure and, with
# `convergence.enabled`, AIS against the annealing budget with the BDMC sandwich (its inputs and outputs are then
# empty, and so are their flags' arguments). Captioned items of `snakemake --report results/<preset>/report.html`
# (captions in workflow/report/). Its settings (the `report` section) are a tracked param, written to
# report_config.json.


rule report_config:
    output:
        f"{OUT}/report_config.json",
    log:
        f"{OUT}/logs/report_config.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=mem_mb("settings"),
        runtime=runtime("settings"),
    params:
        settings=config["report"],
    run:
        write_json(params.settings, output[0])


rule report:
    input:
        settings=f"{OUT}/report_config.json",
        evals=run_files("eval.json"),
        models=run_files("model.pt"),
        metrics=run_files("train_metrics.csv"),
        convergence=run_files("ais_convergence.csv") if config["convergence"]["enabled"] else [],
    output:
        csv=report(
            f"{OUT}/summary.csv",
            caption="../report/summary_csv.rst",
            category="3. Summary",
            labels={"file": "summary.csv", "content": "one row per run"},
        ),
        md=report(
            f"{OUT}/summary.md",
            caption="../report/summary_md.rst",
            category="3. Summary",
            labels={"file": "summary.md", "content": "Table 2"},
        ),
        png=report(
            f"{OUT}/samples_and_curves.png",
            caption="../report/samples_and_curves.rst",
            category="3. Summary",
            labels={"file": "samples_and_curves.png", "content": "figure"},
        ),
        pdf=f"{OUT}/samples_and_curves.pdf",
        table2_csv=f"{OUT}/table2.csv",
        table2_md=report(
            f"{OUT}/table2.md",
            caption="../report/table2.rst",
            category="3. Summary",
            labels={"file": "table2.md", "content": "Table 2 replica"},
        ),
        table2_tex=f"{OUT}/table2.tex",
        convergence=(
            report(
                f"{OUT}/ais_convergence.png",
                caption="../report/ais_convergence.rst",
                category="3. Summary",
                labels={"file": "ais_convergence.png", "content": "figure"},
            )
            if config["convergence"]["enabled"]
            else []
        ),
        convergence_pdf=f"{OUT}/ais_convergence.pdf" if config["convergence"]["enabled"] else [],
    log:
        f"{OUT}/logs/report.log",
    benchmark:
        f"{OUT}/benchmarks/report.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb("report"),
        runtime=runtime("report"),
    params:
        **AVB_PARAMS,
    shell:
        avb(
            "report --config {input.settings:q} --evals {input.evals:q} --models {input.models:q} "
            "--metrics {input.metrics:q} --out-csv {output.csv:q} --out-md {output.md:q} --out-png {output.png:q} "
            "--out-pdf {output.pdf:q} --table2 {output.table2_csv:q} {output.table2_md:q} {output.table2_tex:q} "
            "--convergence {input.convergence:q} --out-convergence {output.convergence:q} {output.convergence_pdf:q} "
            "> {log:q} 2>&1"
        )


# Per run: the Figure 7 replica (64 training images beside the decoder's Bernoulli means at 64 prior draws), 8
# latent interpolations between pairs of test images (one posterior draw per image, as the official training
# script) and the training curves with, where validation is on, the validation ELBO / IWAE (curves.png), PNG + PDF.
# Its own rule, so a run's figures rerun only when its training does.
rule run_figures:
    input:
        model=f"{RUN}/model.pt",
        metrics=f"{RUN}/train_metrics.csv",
        val=f"{RUN}/val_metrics.csv" if VALIDATE else [],
    output:
        fig7=report(
            f"{RUN}/fig7.png",
            caption="../report/fig7.rst",
            category="4. Figures",
            subcategory="{dataset}, z = {z_dim}",
            labels={"method": "{method}", "seed": "{seed}", "file": "fig7.png"},
        ),
        fig7_pdf=f"{RUN}/fig7.pdf",
        interp=report(
            f"{RUN}/interpolations.png",
            caption="../report/interpolations.rst",
            category="4. Figures",
            subcategory="{dataset}, z = {z_dim}",
            labels={"method": "{method}", "seed": "{seed}", "file": "interpolations.png"},
        ),
        interp_pdf=f"{RUN}/interpolations.pdf",
        curves=report(
            f"{RUN}/curves.png",
            caption="../report/curves.rst",
            category="1. Training",
            subcategory="{dataset}, z = {z_dim}",
            labels={"method": "{method}", "seed": "{seed}", "file": "curves.png"},
        ),
        curves_pdf=f"{RUN}/curves.pdf",
    log:
        f"{RUN}/logs/run_figures.log",
    benchmark:
        f"{RUN}/benchmarks/run_figures.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb("report"),
        runtime=runtime("report"),
    params:
        **AVB_PARAMS,
        data=data_dir,
        resolved=lambda w, input: run_config(w),  # for the report's caption (untracked: config.json is)
    shell:
        avb(
            "figures {input.model:q} --out-fig7 {output.fig7:q} {output.fig7_pdf:q} "
            "--out-interp {output.interp:q} {output.interp_pdf:q} --metrics {input.metrics:q} "
            "--val-metrics {input.val:q} --out-curves {output.curves:q} {output.curves_pdf:q} "
            "--data-dir={params.data:q} --threads 1 > {log:q} 2>&1"
        )
