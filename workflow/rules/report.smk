# Report: the tidy summary over all runs, its Markdown table, and the samples + training-curves figure. All three
# are captioned items of `snakemake --report results/<preset>/report.html` (captions in workflow/report/).

rule report:
    input:
        evals=run_files("eval.json"),
        models=run_files("model.pt"),
        metrics=run_files("train_metrics.csv"),
    output:
        csv=report(f"{OUT}/summary.csv", caption="../report/summary_csv.rst", category="3. Summary",
                   labels={"file": "summary.csv", "content": "one row per run"}),
        md=report(f"{OUT}/summary.md", caption="../report/summary_md.rst", category="3. Summary",
                  labels={"file": "summary.md", "content": "Table 2"}),
        png=report(f"{OUT}/samples_and_curves.png", caption="../report/samples_and_curves.rst",
                   category="3. Summary", labels={"file": "samples_and_curves.png", "content": "figure"}),
    params:
        n_samples=config["report"]["n_samples"],
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
    shell:
        avb("report --evals {input.evals} --models {input.models} --metrics {input.metrics} "
            "--out-csv {output.csv} --out-md {output.md} --out-png {output.png} "
            "--n-samples {params.n_samples} > {log} 2>&1")
