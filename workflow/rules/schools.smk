# The eight-schools experiment (notebooks/Stan-example.ipynb): gold-standard HMC, ADVI mean-field / full-rank, AVB and
# AVB + AC, and a report against the exact (quadrature) posterior moments. Outputs under <results>/<preset>/schools/.
# Each job's settings are a tracked param holding only the config keys it depends on (HMC: seed + gold; a method:
# seed, device, n_samples and its family's section, advi or avb; report: seed + metrics), so a changed value reruns only
# the jobs it affects. Every output is written atomically; a killed fit resumes from its checkpoint.pt.
# Targets are added to `rule all` via SCHOOLS_TARGETS.

rule schools_gold:
    output:
        npz=f"{SCHOOLS}/gold/draws.npz",
        json=f"{SCHOOLS}/gold/diagnostics.json",
    params:
        settings=schools_settings("seed", "gold"),
    log:
        f"{SCHOOLS}/logs/gold.log",
    benchmark:
        f"{SCHOOLS}/benchmarks/gold.tsv"
    conda:
        ENV
    threads: SCHOOLS_CFG["threads"]
    resources:
        mem_mb=lambda w, attempt: 2000 * attempt,
        runtime=lambda w, attempt: 60 * attempt,
    shell:
        avb("schools gold --settings '{params.settings}' --out-npz {output.npz} --out-json {output.json} "
        "--threads {threads} > {log} 2>&1")


rule schools_fit:
    output:
        samples=f"{SCHOOLS}/{{schools_method}}/samples.npz",
        info=f"{SCHOOLS}/{{schools_method}}/fit.json",
        model=f"{SCHOOLS}/{{schools_method}}/model.pt",
        metrics=f"{SCHOOLS}/{{schools_method}}/train_metrics.csv",
    params:
        settings=schools_fit_settings,
    log:
        f"{SCHOOLS}/logs/fit_{{schools_method}}.log",
    benchmark:
        f"{SCHOOLS}/benchmarks/fit_{{schools_method}}.tsv"
    conda:
        ENV
    threads: SCHOOLS_CFG["threads"]
    resources:
        mem_mb=lambda w, attempt: 2000 * attempt,
        runtime=lambda w, attempt: 120 * attempt,
        gpu=schools_gpus,
    shell:
        avb("schools fit --method {wildcards.schools_method} --settings '{params.settings}' "
        "--out $(dirname {output.samples}) --threads {threads} > {log} 2>&1")


rule schools_report:
    input:
        npz=rules.schools_gold.output.npz,
        json=rules.schools_gold.output.json,
        fits=expand(f"{SCHOOLS}/{{schools_method}}/fit.json", schools_method=SCHOOLS_METHODS),
        samples=expand(f"{SCHOOLS}/{{schools_method}}/samples.npz", schools_method=SCHOOLS_METHODS),
    output:
        csv=f"{SCHOOLS}/summary.csv",
        md=f"{SCHOOLS}/summary.md",
        params=f"{SCHOOLS}/per_parameter.csv",
        png=f"{SCHOOLS}/mu_tau.png",
        pdf=f"{SCHOOLS}/mu_tau.pdf",
    params:
        settings=schools_settings("seed", "metrics"),
        fits=lambda w, input: " ".join(os.path.dirname(f) for f in input.fits),
    log:
        f"{SCHOOLS}/logs/report.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=lambda w, attempt: 2000 * attempt,
        runtime=lambda w, attempt: 30 * attempt,
    shell:
        avb("schools report --gold-npz {input.npz} --gold-json {input.json} --fits {params.fits} "
        "--settings '{params.settings}' --out-csv {output.csv} --out-md {output.md} --out-params {output.params} "
        "--out-fig {output.png} --threads {threads} > {log} 2>&1")
