# The eight-schools experiment (notebooks/Stan-example.ipynb): gold-standard HMC, ADVI mean-field / full-rank, AVB and
# AVB + AC, the Figure 3 replica (rule schools_kl: kNN KL to the HMC draws of snapshots taken during training) and a
# report against the exact (quadrature) posterior moments. Outputs under <results>/<preset>/schools/.
# Each job's settings are a tracked param holding only the config keys it depends on (avb.jobs.schools_job_config:
# HMC: seed + gold; a method: seed, device, n_samples, kl_every, kl_samples and its family's section, advi or avb;
# kl and report: seed + metrics), written by the local rule schools_settings to settings/<job>.json, which the job
# reads (`--config`); so a changed value reruns only the jobs it affects, and no value is ever on a command line.
# Every output is written atomically; a killed fit resumes from its checkpoint.pt.
# Targets are added to `rule all` via SCHOOLS_TARGETS; its functions are in common.smk.
SCHOOLS = f"{OUT}/{avb_layout.SCHOOLS}"
SCHOOLS_CFG = config["schools"]
SCHOOLS_METHODS = SCHOOLS_CFG["methods"]
SCHOOLS_TARGETS = avb_layout.schools_targets(config)


wildcard_constraints:
    schools_method=choices("schools.methods"),
    schools_job="|".join(avb_jobs.schools_jobs()),


rule schools_settings:
    output:
        f"{SCHOOLS}/settings/{{schools_job}}.json",
    log:
        f"{SCHOOLS}/logs/settings_{{schools_job}}.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=mem_mb("settings"),
        runtime=runtime("settings"),
    params:
        settings=schools_job_config,
    run:
        write_json(params.settings, output[0])


rule schools_gold:
    input:
        settings=f"{SCHOOLS}/settings/gold.json",
    output:
        npz=f"{SCHOOLS}/gold/draws.npz",
        json=f"{SCHOOLS}/gold/diagnostics.json",
    log:
        f"{SCHOOLS}/logs/gold.log",
    benchmark:
        f"{SCHOOLS}/benchmarks/gold.tsv"
    conda:
        ENV
    threads: SCHOOLS_CFG["threads"]
    resources:
        mem_mb=mem_mb("schools_gold"),
        runtime=runtime("schools_gold"),
    params:
        **AVB_PARAMS,
    shell:
        avb(
            "schools gold --config {input.settings:q} --out-npz {output.npz:q} --out-json {output.json:q} "
            "--threads {threads} > {log:q} 2>&1"
        )


rule schools_fit:
    input:
        settings=f"{SCHOOLS}/settings/fit_{{schools_method}}.json",
    output:
        samples=f"{SCHOOLS}/{{schools_method}}/samples.npz",
        info=f"{SCHOOLS}/{{schools_method}}/fit.json",
        model=f"{SCHOOLS}/{{schools_method}}/model.pt",
        metrics=f"{SCHOOLS}/{{schools_method}}/train_metrics.csv",
        snapshots=f"{SCHOOLS}/{{schools_method}}/snapshots.npz",
    log:
        f"{SCHOOLS}/logs/fit_{{schools_method}}.log",
    benchmark:
        f"{SCHOOLS}/benchmarks/fit_{{schools_method}}.tsv"
    conda:
        ENV
    threads: SCHOOLS_CFG["threads"]
    resources:
        mem_mb=mem_mb("schools_fit"),
        runtime=runtime("schools_fit"),
        gpu=gpus("schools_fit", schools_device, rule="schools_fit"),
        gpu_slots=gpu_slots("schools_fit", schools_device),
    params:
        **AVB_PARAMS,
        out=run_dir,
    shell:
        avb(
            "schools fit --method {wildcards.schools_method:q} --config {input.settings:q} --out {params.out:q} "
            "--threads {threads} > {log:q} 2>&1",
            gpu=True,
        )


rule schools_kl:
    input:
        settings=f"{SCHOOLS}/settings/kl.json",
        npz=rules.schools_gold.output.npz,
        snapshots=expand(f"{SCHOOLS}/{{schools_method}}/snapshots.npz", schools_method=SCHOOLS_METHODS),
    output:
        csv=f"{SCHOOLS}/kl_curve.csv",
        png=report(
            f"{SCHOOLS}/kl_iterations.png",
            caption="../report/schools_kl.rst",
            category="6. Eight schools",
            labels={"file": "kl_iterations.png", "content": "Figure 3 replica"},
        ),
        pdf=f"{SCHOOLS}/kl_iterations.pdf",
    log:
        f"{SCHOOLS}/logs/kl.log",
    benchmark:
        f"{SCHOOLS}/benchmarks/kl.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb("schools_kl"),
        runtime=runtime("schools_kl"),
    params:
        **AVB_PARAMS,
    shell:
        avb(
            "schools kl --gold-npz {input.npz:q} --snapshots {input.snapshots:q} --config {input.settings:q} "
            "--out-csv {output.csv:q} --out-png {output.png:q} --out-pdf {output.pdf:q} --threads {threads} > {log:q} 2>&1"
        )


rule schools_report:
    input:
        settings=f"{SCHOOLS}/settings/report.json",
        npz=rules.schools_gold.output.npz,
        json=rules.schools_gold.output.json,
        kl=rules.schools_kl.output.csv,
        fits=expand(f"{SCHOOLS}/{{schools_method}}/fit.json", schools_method=SCHOOLS_METHODS),
        samples=expand(f"{SCHOOLS}/{{schools_method}}/samples.npz", schools_method=SCHOOLS_METHODS),
        metrics=expand(f"{SCHOOLS}/{{schools_method}}/train_metrics.csv", schools_method=SCHOOLS_METHODS),
    output:
        csv=f"{SCHOOLS}/summary.csv",
        md=f"{SCHOOLS}/summary.md",
        params=f"{SCHOOLS}/per_parameter.csv",
        png=report(
            f"{SCHOOLS}/mu_tau.png",
            caption="../report/schools_mu_tau.rst",
            category="6. Eight schools",
            labels={"file": "mu_tau.png", "content": "figure"},
        ),
        pdf=f"{SCHOOLS}/mu_tau.pdf",
        curves=report(
            f"{SCHOOLS}/training_curves.png",
            caption="../report/schools_curves.rst",
            category="6. Eight schools",
            labels={"file": "training_curves.png", "content": "figure"},
        ),
        curves_pdf=f"{SCHOOLS}/training_curves.pdf",
    log:
        f"{SCHOOLS}/logs/report.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb("schools_report"),
        runtime=runtime("schools_report"),
    params:
        **AVB_PARAMS,
    shell:
        avb(
            "schools report --gold-npz {input.npz:q} --gold-json {input.json:q} --fits {input.fits:q} "
            "--config {input.settings:q} --out-csv {output.csv:q} --out-md {output.md:q} --out-params {output.params:q} "
            "--out-fig {output.png:q} --kl-curve {input.kl:q} --metrics {input.metrics:q} "
            "--out-curves {output.curves:q} {output.curves_pdf:q} --threads {threads} > {log:q} 2>&1"
        )
