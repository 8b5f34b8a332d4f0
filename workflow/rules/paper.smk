# paper/: `snakemake paper --configfile config/<preset>.yaml` renders paper/replication.md and paper/main.tex (with
# copies of the tables and figures) from results/<preset>/, stating the config, commit and machine; main.tex is
# built to PDF where latexmk is installed. The config reaches the job as a file (paper_config.json, from a tracked
# param), never on its command line; the job finds its inputs from it (avb.layout.paper_inputs, the same names the
# rule declares), so none is on its command line either.
#
# All or nothing: `avb paper` renders (and runs latexmk) in a staging copy of paper/ and only then moves each new or
# changed file into paper/ (os.replace, atomic per file). The rule's declared output is the stamp
# results/<preset>/paper.json (the files written, with their sha256), written last: Snakemake deletes a failed
# job's outputs, and this way that is only the stamp, so a failed render leaves the previous paper/ intact.


rule paper_config:
    output:
        f"{OUT}/paper_config.json",
    log:
        f"{OUT}/logs/paper_config.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=mem_mb("settings"),
        runtime=runtime("settings"),
    params:
        config=config,
    run:
        write_json(params.config, output[0])


# provenance.json is read, not an input: this invocation's own hooks rewrite it, which must not make paper/ look
# outdated.
rule paper:
    input:
        **avb_layout.paper_inputs(config),
        config=f"{OUT}/paper_config.json",
    output:
        f"{OUT}/paper.json",
    log:
        f"{OUT}/logs/paper.log",
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb("paper"),
        runtime=runtime("paper"),
    params:
        **AVB_PARAMS,
    shell:
        avb("paper --config {input.config:q} --out paper --stamp {output:q} --latex > {log:q} 2>&1")
