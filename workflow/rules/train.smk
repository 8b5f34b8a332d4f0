# Training: one job per run. The run's full config is a tracked param, written to config.json, so changing a value
# reruns exactly the runs it affects. A killed job leaves checkpoint.pt (not an output) and a rerun resumes from it.

rule run_config:
    output:
        f"{RUN}/config.json",
    params:
        run=run_config,
    log:
        f"{RUN}/logs/run_config.log",
    run:
        from avb import io
        io.write_json(params.run, output[0])


rule train:
    input:
        f"{RUN}/config.json",
    output:
        model=f"{RUN}/model.pt",
        metrics=f"{RUN}/train_metrics.csv",
    log:
        f"{RUN}/logs/train.log",
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "avb train {input} --out $(dirname {output.model}) --threads {threads} > {log} 2>&1"
