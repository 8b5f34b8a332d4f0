# Report: the tidy summary over all runs, its Markdown table, and the samples + training-curves figure.

rule report:
    input:
        evals=run_files("eval.json"),
        models=run_files("model.pt"),
        metrics=run_files("train_metrics.csv"),
    output:
        csv=f"{OUT}/summary.csv",
        md=f"{OUT}/summary.md",
        png=f"{OUT}/samples_and_curves.png",
    params:
        n_samples=config["report"]["n_samples"],
    log:
        f"{OUT}/logs/report.log",
    shell:
        "avb report --evals {input.evals} --models {input.models} --metrics {input.metrics} "
        "--out-csv {output.csv} --out-md {output.md} --out-png {output.png} "
        "--n-samples {params.n_samples} > {log} 2>&1"
