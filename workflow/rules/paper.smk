# paper/: `snakemake paper --configfile config/<preset>.yaml` renders paper/replication.md and paper/main.tex (with
# copies of the tables and figures) from results/<preset>/, stating the config, commit and machine; main.tex is
# built to PDF where latexmk is installed. The config reaches the job as a file (paper_config.json, from a tracked
# param), never on its command line.
#
# All or nothing: `avb paper` renders (and runs latexmk) in a staging copy of paper/ and only then moves each new or
# changed file into paper/ (os.replace, atomic per file). The rule's declared output is the stamp
# results/<preset>/paper.json (the files written, with their sha256), written last: Snakemake deletes a failed
# job's outputs, and this way that is only the stamp, so a failed render leaves the previous paper/ intact.

rule paper_config:
    output:
        f"{OUT}/paper_config.json",
    params:
        config=config,
    log:
        f"{OUT}/logs/paper_config.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    run:
        write_json(params.config, output[0])


rule paper:
    input:
        config=f"{OUT}/paper_config.json",
        **paper_inputs(),
    output:
        f"{OUT}/paper.json",
    params:
        # derived from the inputs (name=path; lists comma-separated), each quoted; provenance.json is read, not an
        # input: this invocation's own hooks rewrite it, which must not make paper/ look outdated
        inputs=lambda w, input: [f"provenance_json={OUT}/provenance.json"] + [
            f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in input.items() if k != "config"],
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
        avb("paper --config {input.config:q} --out paper --stamp {output:q} --latex --inputs {params.inputs:q} "
            "> {log:q} 2>&1")
