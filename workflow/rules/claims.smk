# The paper's claims, checked: one row per claim (Table 2, Table 1, Figure 3) with the paper's numbers, ours and a
# verdict (replicated / not replicated / inconclusive), computed by avb/report/claims.py from the results below. Experiments
# that are off leave their claims out (their inputs are then empty, and so are --toy / --schools).


rule claims:
    input:
        per_image=run_files("eval_per_image.csv"),
        summary=f"{OUT}/summary.csv",
        toy=f"{TOY}/summary.csv" if TOY_CFG["enabled"] else [],
        schools=f"{SCHOOLS}/summary.csv" if SCHOOLS_CFG["enabled"] else [],
    output:
        csv=f"{OUT}/claims.csv",
        md=report(
            f"{OUT}/claims.md",
            caption="../report/claims.rst",
            category="3. Summary",
            labels={"file": "claims.md", "content": "the paper's claims, checked"},
        ),
    log:
        f"{OUT}/logs/claims.log",
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb("claims"),
        runtime=runtime("claims"),
    params:
        **AVB_PARAMS,
    shell:
        avb(
            "claims --per-image {input.per_image:q} --summary {input.summary:q} --toy {input.toy:q} "
            "--schools {input.schools:q} --out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"
        )
