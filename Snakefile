# avb-replication pipeline: train -> evaluate (AIS) -> report.  Default preset: config/quick.yaml
# Test config:    snakemake --directory .test (its config/config.yaml; results in .test/results/test/)
# Other presets:  snakemake --configfile config/<preset>.yaml
# Profiles:       profiles/default (local; Snakemake loads it by itself, as the workflow profile beside this file)
#                 or --workflow-profile profiles/slurm (SLURM cluster; it replaces the default one)
# Report:         snakemake --report results/<preset>/report.html [--configfile config/<preset>.yaml]
# Rules:          workflow/rules/<experiment>.smk (mnist, toy, schools; then claims and paper over all of them)
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")  # as pyproject.toml's snakemake>=9 (tests/test_workflow.py checks they agree)

from avb import config as avb_config
from avb import jobs as avb_jobs
from avb.report import provenance as avb_provenance

# quick.yaml is the default only: a preset given with --configfile is used alone (plus schema defaults), never merged
# over quick.yaml, so a preset cannot silently inherit quick's small networks for a key it leaves out. A working
# directory with its own config/config.yaml runs that one (the snakemake-workflows convention:
# `snakemake --directory .test` runs the test config .test/config/config.yaml).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml" if os.path.exists("config/config.yaml") else "config/quick.yaml"


report: "workflow/report/workflow.rst"


# Overrides (config/README.md): each further --configfile is deep-merged over the ones before (Snakemake's merge),
# then the --config KEY=VALUE entries, their values read as YAML (avb.config.cli_config; Snakemake's own parser
# leaves nested values strings), so `--config 'train={steps: 100}'` sets train.steps = 100 and keeps the preset's
# other train keys. A module's config is given whole by the workflow importing it: no --config of that one applies.
# Validated once, here, against workflow/schemas/config.schema.yaml (defaults filled in). Snakemake's YAML loader
# keeps the last of a key written twice; re-read each preset file with one that refuses it.
try:
    for _configfile in workflow.configfiles:  # the --configfile files, else config/quick.yaml
        avb_config.read_yaml(_configfile)
    _cli = {} if workflow.modifier.skip_configfile else avb_config.cli_config(workflow.config_settings.config_args)
    config = avb_config.validate(
        avb_config.merge(config, _cli),
        "config ("
        + " + ".join([*map(str, workflow.configfiles), *(["--config"] if _cli else [])])
        + "; see workflow/schemas/config.schema.yaml)",
    )
except avb_config.ConfigError as err:
    raise WorkflowError(str(err))


include: "workflow/rules/common.smk"
include: "workflow/rules/mnist.smk"
include: "workflow/rules/toy.smk"
include: "workflow/rules/schools.smk"
include: "workflow/rules/claims.smk"
include: "workflow/rules/paper.smk"


# Provenance: each invocation that runs jobs appends its commit, machine, command and wall time (avb/report/provenance.py).
# Jobs submitted to a cluster run with --no-hooks, so only the main invocation writes the record.
PROVENANCE = f"{OUT}/provenance.json"
_invocation = {}


onstart:
    _jobs = list(workflow.dag.needrun_jobs())
    _invocation["id"] = avb_provenance.started(PROVENANCE, sys.argv, [j.rule.name for j in _jobs], len(_jobs))


onsuccess:
    avb_provenance.finished(PROVENANCE, _invocation["id"], "success")


onerror:
    avb_provenance.finished(PROVENANCE, _invocation["id"], "failed")


rule all:
    default_target: True
    input:
        MNIST_TARGETS,
        f"{OUT}/claims.csv",
        f"{OUT}/claims.md",
        TOY_TARGETS,
        SCHOOLS_TARGETS,
