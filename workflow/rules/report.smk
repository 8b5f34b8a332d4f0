# Report: the tidy summary over all runs, its Markdown table, the Table 2 replica (mean ± 95 % CI over seeds beside
# the published values; Markdown and LaTeX), the samples / reconstructions / training-curves figure and, with
# `convergence.enabled`, AIS against the annealing budget with the BDMC sandwich. Captioned items of
# `snakemake --report results/<preset>/report.html` (captions in workflow/report/). Its settings (the `report`
# section) are a tracked param, written to report_config.json.

rule report_config:
    output:
        f"{OUT}/report_config.json",
    params:
        settings=config["report"],
    log:
        f"{OUT}/logs/report_config.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
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
            ["--convergence", *input.convergence, "--out-convergence", output.convergence, output.convergence_pdf]
            if input.convergence else []),
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
        avb("report --config {input.settings:q} --evals {input.evals:q} --models {input.models:q} "
            "--metrics {input.metrics:q} --out-csv {output.csv:q} --out-md {output.md:q} --out-png {output.png:q} "
            "--out-pdf {output.pdf:q} --table2 {output.table2_csv:q} {output.table2_md:q} {output.table2_tex:q} "
            "{params.convergence:q} > {log:q} 2>&1")


# Per run: the Figure 7 replica (64 training images beside the decoder's Bernoulli means at 64 prior draws) and 8
# latent interpolations between pairs of test images (one posterior draw per image, as the official training
# script), PNG + PDF. Its own rule, so a run's figures rerun only when its model does.
RUN_FIGURES = ["fig7.png", "fig7.pdf", "interpolations.png", "interpolations.pdf"]


rule run_figures:
    input:
        f"{RUN}/model.pt",
    output:
        fig7=report(f"{RUN}/fig7.png", caption="../report/fig7.rst", category="4. Figures",
                    subcategory="{dataset}, z = {z_dim}",
                    labels={"method": "{method}", "seed": "{seed}", "file": "fig7.png"}),
        fig7_pdf=f"{RUN}/fig7.pdf",
        interp=report(f"{RUN}/interpolations.png", caption="../report/interpolations.rst", category="4. Figures",
                      subcategory="{dataset}, z = {z_dim}",
                      labels={"method": "{method}", "seed": "{seed}", "file": "interpolations.png"}),
        interp_pdf=f"{RUN}/interpolations.pdf",
    params:
        data=data_dir_args,
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
    shell:
        avb("figures {input:q} --out-fig7 {output.fig7:q} {output.fig7_pdf:q} "
            "--out-interp {output.interp:q} {output.interp_pdf:q} {params.data:q} --threads 1 > {log:q} 2>&1")
