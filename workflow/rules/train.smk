# Training: one job per run. What the run's training reads (avb.config.train_config: the model / train keys its
# method uses, the dataset and its content checksum; overrides applied) is a tracked param, written to config.json,
# so changing a value reruns exactly the runs that read it: an adversary setting never retrains the VAE, moving the
# data retrains nothing. train_metrics.csv and checkpoint.pt are rewritten atomically at every checkpoint; a killed
# job leaves model.pt missing and the job marked incomplete, so no rerun trusts its outputs, and the rerun
# (--rerun-incomplete, in both profiles) resumes from checkpoint.pt (not an output: Snakemake never deletes it).

rule run_config:
    output:
        f"{RUN}/config.json",
    params:
        run=train_config,
    log:
        f"{RUN}/logs/run_config.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
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
        gpu=gpus("train", lambda w: run_config(w)["train"]["device"]),
    params:
        data=data_dir_args,
        out=run_dir,
        resolved=lambda w, input: run_config(w),  # for the report's caption (untracked: config.json is)
    shell:
        avb("train {input:q} --out {params.out:q} {params.data:q} --threads {threads} > {log:q} 2>&1")
