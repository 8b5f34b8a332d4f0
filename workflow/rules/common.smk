# The workflow's functions (Snakemake's convention, which --lint checks: rule files hold rules and globals, functions
# live here): first the generic ones (where outputs go, how a job runs `avb`, what it asks of the scheduler), then one
# section per experiment. The experiments' paths, targets and wildcard constraints are in their rule files
# (mnist.smk, toy.smk, schools.smk). Every output lives under <results_dir>/<preset>/ (avb/layout.py), so presets
# never overwrite each other.
import os
import sys

from avb import layout as avb_layout
from avb.io import write_json  # atomic; avb.io imports no torch, so the local settings rules stay instant

OUT = avb_layout.out_dir(config)

# Software: every rule runs the package this workflow imported (this checkout's avb/) as `python -m avb.cli`, in the
# conda env ENV with --use-conda (workflow/envs/avb.yaml, a link to environment.yml: the dependencies, not the
# package itself), else with the interpreter that runs Snakemake, so that `.venv/bin/snakemake` works without
# activating the venv. Both folders reach the command as params (AVB_PARAMS, in every rule that runs avb) computed
# from `output`, which Snakemake does not track: the command text holds no path, so moving the checkout reruns
# nothing (Snakemake tracks a rule's command text). Nothing global is set: no shell.prefix, no environment variable,
# so a workflow that imports this one as a module keeps its own rules' shell and environment as they were.
ENV = "../envs/avb.yaml"
AVB_PYTHONPATH = os.path.dirname(os.path.dirname(os.path.abspath(avb_layout.__file__)))
AVB_BIN = "" if workflow.deployment_settings.deployment_method else os.path.dirname(sys.executable) + os.pathsep


def avb_pythonpath(wildcards, output):
    return AVB_PYTHONPATH


def avb_bin(wildcards, output):
    return AVB_BIN


AVB_PARAMS = {"avb_pythonpath": avb_pythonpath, "avb_bin": avb_bin}


def avb(args, gpu=False):
    """The shell command `exec python -m avb.cli <args>` with this workflow's PYTHONPATH and PATH (its rule has
    `params: **AVB_PARAMS`). `exec` makes Python the job's process, so a SIGTERM from SLURM (its time limit,
    preemption) reaches it and it checkpoints before it exits, while Snakemake waits for it. No rule chains a command
    after it. (The doubled braces are Snakemake's escape for a literal brace.) `gpu`: the rule has a `gpu` resource;
    the job gets AVB_REQUIRE_GPU = that count, so a job that asked for a GPU and finds none fails (avb/device.py)
    instead of running on the CPU."""
    require = " AVB_REQUIRE_GPU={resources.gpu}" if gpu else ""
    return (
        "export PYTHONPATH={params.avb_pythonpath:q}${{PYTHONPATH:+:$PYTHONPATH}} PATH={params.avb_bin:q}$PATH"
        f"{require}; exec python -m avb.cli {args}"
    )


# Paths reach the shell quoted: {input:q}, {output:q}, {log:q}, {params.x:q}. Settings reach every job as a JSON
# file (written by a local settings rule from a tracked param holding only what the job reads); no config value is
# ever on a command line.
def run_dir(wildcards, output):
    """The folder of a job's first output (a param computed from `output`: untracked, as the output path is)."""
    return os.path.dirname(output[0])


# Resources: the config's `resources` section, one entry per stage (defaults in the schema, sizes per preset in
# config/*.yaml). They are what a job asks of the scheduler: locally `--cores` / `--resources gpu_slots=N mem_mb=M`
# cap concurrency (gpu_slots: N GPU jobs at once), on SLURM they become --mem, --time, --cpus-per-task and --gpus. A
# retried job (--retries) asks for attempt x mem_mb and attempt x runtime; training resumes from its last
# checkpoint, so a job killed at its time limit loses little.
def mem_mb(stage):
    return lambda wildcards, attempt: avb_jobs.JobResources.of(config, stage).mem_mb * attempt


def runtime(stage):
    return lambda wildcards, attempt: avb_jobs.JobResources.of(config, stage).runtime * attempt


def gpus(stage, device, rule=None):
    """GPUs per job of `stage` (avb.jobs.gpu_request): the configured count where the job's device (a function of
    the wildcards) may be a GPU (cuda, auto), else 0: a CPU run never waits for, or asks SLURM for, a GPU. Where
    `rule` is put in a job group (--groups RULE=GROUP --group-components GROUP=K, profiles/slurm), a string, so
    that the group asks for one job's GPUs, which its K jobs share."""
    n = avb_jobs.JobResources.of(config, stage).gpu
    grouped = rule is not None and rule in workflow.group_settings.overwrite_groups
    return lambda wildcards: avb_jobs.gpu_request(n, device(wildcards), grouped)


def gpu_slots(stage, device):
    """GPU slots per job of `stage` (avb.jobs.gpu_slots): 1 where the job holds a GPU, else 0. The local cap:
    profiles/default allows gpu_slots=1 at once; --resources gpu_slots=N runs N GPU jobs at once (K per GPU x the
    GPUs; with AVB_GPUS each job takes its own device, avb/gpus.py)."""
    n = avb_jobs.JobResources.of(config, stage).gpu
    return lambda wildcards: avb_jobs.gpu_slots(n, device(wildcards))


def choices(name):
    """A wildcard constraint: the values the schema allows for the list setting `name` (avb.config.choices)."""
    return "|".join(avb_config.choices(name))


# --- MNIST-type runs (mnist.smk): a run's wildcards dataset, method, z_dim, seed
def run_files(name):
    return avb_layout.run_files(config, name)


def _run(w):
    return config, w.dataset, w.method, int(w.z_dim), int(w.seed)


def run_config(w):
    """The run's fully resolved model / train / eval sections (the config's `overrides` applied)."""
    return avb_config.run_config(*_run(w))


# What each job of a run reads (avb.jobs.train_config / eval_config / convergence_config): tracked params, written
# to the run folder by the local rules of mnist.smk and read with `--config FILE` (training: its run config).
def train_config(w):
    return avb_jobs.train_config(*_run(w))


def eval_config(w):
    return avb_jobs.eval_config(*_run(w))


def convergence_config(w):
    return avb_jobs.convergence_config(*_run(w))


def train_device(w):
    return run_config(w)["train"]["device"]


def eval_device(w):
    return run_config(w)["eval"]["device"]


# The data folder is no setting of any run: config.json identifies the data by their content checksum, which the
# jobs check. The folder reaches the jobs that read data as `--data-dir=DIR` (unset: `--data-dir=`, then the job
# looks in AVB_DATA_DIR, ../shared/data, else downloads; the `=` because Snakemake leaves an empty value unquoted),
# from a param computed from `input`: Snakemake does not track such params (they change with the input, which it
# tracks itself), so moving the data (a new data_dir) reruns nothing.
def data_dir(wildcards, input):
    return config["data_dir"] or ""


# --- toy experiment (toy.smk)
def toy_run_config(w):
    return avb_jobs.toy_run_config(TOY_CFG, w.toy_method)


def toy_files(name):
    return [f"{TOY}/{m}/{name}" for m in TOY_CFG["methods"]]


def toy_train_device(w):
    return TOY_CFG["train"]["device"]


def toy_eval_device(w):
    return TOY_CFG["eval"]["device"]


# --- eight schools (schools.smk)
def schools_job_config(w):
    return avb_jobs.schools_job_config(SCHOOLS_CFG, w.schools_job)


def schools_device(w):
    return SCHOOLS_CFG["device"]
