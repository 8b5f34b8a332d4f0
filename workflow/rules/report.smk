# Report: the tidy summary over all runs, its Markdown table, the Table 2 replica (mean ± 95 % CI over seeds beside
# the published values; Markdown and LaTeX), the samples / reconstructions / training-curves figure and, with
# `convergence.enabled`, AIS against the annealing budget with the BDMC sandwich. Captioned items of
# `snakemake --report results/<preset>/report.html` (captions in workflow/report/).

rule report:
    input:
        evals=run_files("eval.json"),
        models=run_files("model.pt"),
        metrics=run_files("train_metrics.csv"),
        convergence=run_files("ais_convergence.csv") if config["convergence"]["enabled"] else [],
    output:
        csv=report(f"{OUT}/summary.csv", caption="../report/summary_csv.rst", category="3. Summary",
                   labels={"file": "summary.csv", "content": "one row per run"}),
        md=report(f"{OUT}/summary.md", caption="../report/summary_md.rst", category="3. Summary",
                  labels={"file": "summary.md", "content": "Table 2"}),
        png=report(f"{OUT}/samples_and_curves.png", caption="../report/samples_and_curves.rst",
                   category="3. Summary", labels={"file": "samples_and_curves.png", "content": "figure"}),
        pdf=f"{OUT}/samples_and_curves.pdf",
        table2_csv=f"{OUT}/table2.csv",
        table2_md=report(f"{OUT}/table2.md", caption="../report/table2.rst", category="3. Summary",
                         labels={"file": "table2.md", "content": "Table 2 replica"}),
        table2_tex=f"{OUT}/table2.tex",
        convergence=report(f"{OUT}/ais_convergence.png", caption="../report/ais_convergence.rst",
                           category="3. Summary", labels={"file": "ais_convergence.png", "content": "figure"})
        if config["convergence"]["enabled"] else [],
        convergence_pdf=f"{OUT}/ais_convergence.pdf" if config["convergence"]["enabled"] else [],
    params:
        convergence=lambda w, input, output: (
            f"--convergence {' '.join(input.convergence)} --out-convergence {output.convergence} "
            f"{output.convergence_pdf}" if input.convergence else ""),
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
            "--out-csv {output.csv} --out-md {output.md} --out-png {output.png} --out-pdf {output.pdf} "
            "--table2 {output.table2_csv} {output.table2_md} {output.table2_tex} {params.convergence} "
            "--n-samples {params.n_samples} > {log} 2>&1")
