# paper/: `snakemake paper --configfile config/<preset>.yaml` renders paper/replication.md and paper/main.tex (with
# copies of the tables and figures) from results/<preset>/, stating the config, commit and machine. main.tex is
# built to PDF only where latexmk is installed.

rule paper:
    input:
        **paper_inputs(),
    output:
        md="paper/replication.md",
        tex="paper/main.tex",
    params:
        config=json.dumps(config, sort_keys=True),
        inputs=lambda w, input: " ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in input.items()),
        # read, not an input: this invocation's own hooks rewrite it, which must not make paper/ look outdated
        provenance=f"{OUT}/provenance.json",
    log:
        f"{OUT}/logs/paper.log",
    conda:
        ENV
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        avb("paper --config '{params.config}' --out paper --inputs provenance_json={params.provenance} {params.inputs} > {log} 2>&1; "
            "if command -v latexmk > /dev/null; then (cd paper && latexmk -pdf -interaction=nonstopmode main.tex) "
            ">> {log} 2>&1; fi")
