# Shared paths and helpers. Every output lives under <results_dir>/<preset>/, so presets never overwrite each other.
import itertools
import json
import os
import shlex
import sys

from avb.io import write_json  # atomic; avb.io imports no torch, so local run_config jobs stay instant

OUT = f"{config['results_dir']}/{config['preset']}"
RUN = f"{OUT}/runs/{{dataset}}/{{method}}/z{{z_dim}}/seed{{seed}}"

wildcard_constraints:
    dataset="|".join(config["datasets"]),
    method="|".join(config["methods"]),
    z_dim=r"\d+",
    seed=r"\d+",

# Software: every rule runs the package of this checkout as `python -m avb.cli`, in the conda env ENV with
# --use-conda (workflow/envs/avb.yaml, a link to environment.yml: the dependencies, not the package itself), else in
# the active environment (the project's venv). The shell prefix puts the checkout on PYTHONPATH in every job, SLURM
# jobs included; the rules' command text holds no path, so moving the checkout reruns nothing.
ENV = "../envs/avb.yaml"
AVB = "python -m avb.cli"


def avb(args):
    """The shell command `python -m avb.cli <args>`. (Concatenating AVB with a string literal can read as path
    composition to --lint when a later literal holds a slash.)"""
    return f"{AVB} {args}"


# Without --use-conda, jobs run the interpreter that runs Snakemake (its bin/ goes first on PATH), so calling
# `.venv/bin/snakemake` without activating the venv works. (shell.prefix() formats its argument as Snakemake formats
# a shell command: hence the doubled braces.)
def _braces(text):
    return shlex.quote(text).replace("{", "{{").replace("}", "}}")


_prefix = f"set -euo pipefail; export PYTHONPATH={_braces(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
if not workflow.deployment_settings.deployment_method:
    _prefix += f"export PATH={_braces(os.path.dirname(sys.executable))}:$PATH; "
shell.prefix(_prefix)


def sweep():
    """One dict of wildcards per run of the sweep dataset x method x z_dim x seed."""
    keys = ("dataset", "method", "z_dim", "seed")
    grid = itertools.product(config["datasets"], config["methods"], config["z_dims"], config["seeds"])
    return [dict(zip(keys, values)) for values in grid]


def run_files(name):
    return [f"{RUN}/{name}".format(**w) for w in sweep()]


def run_config(w):
    return avb_config.run_config(config, w.dataset, w.method, int(w.z_dim), int(w.seed))



# Resources (the config's `resources` section; defaults in the schema, sizes per preset in config/*.yaml). They
# are what a job asks of the scheduler: locally `--cores` / `--resources gpu=N mem_mb=M` cap concurrency, on SLURM
# they become --mem, --time, --cpus-per-task and --gpus. A retried job (--retries) asks for attempt x mem_mb and
# attempt x runtime; training resumes from its last checkpoint, so a job killed at its time limit loses little.
def mem_mb(stage):
    return lambda wildcards, attempt: config["resources"][stage]["mem_mb"] * attempt


def runtime(stage):
    return lambda wildcards, attempt: config["resources"][stage]["runtime"] * attempt


def uses_gpu(device):
    return device == "auto" or device.startswith("cuda")


def gpus(stage, device):
    """GPUs per job of `stage`: the configured count where the job's device (a function of the wildcards) may be
    a GPU (cuda, auto), else 0: a CPU run never waits for, or asks SLURM for, a GPU."""
    return lambda wildcards: config["resources"][stage]["gpu"] if uses_gpu(device(wildcards)) else 0


# --- toy experiment: paths, settings and targets (its rules are in toy.smk) ---
TOY = f"{OUT}/toy"
TOY_CFG = config["toy"]
TOY_RUN = f"{TOY}/{{toy_method}}"

wildcard_constraints:
    toy_method="|".join(["vae", "avb", "avb_ac"]),


def toy_run_config(w):
    return avb_config.toy_run_config(TOY_CFG, w.toy_method)


def toy_files(name):
    return [f"{TOY}/{m}/{name}" for m in TOY_CFG["methods"]]


TOY_TARGETS = (
    [f"{TOY}/summary.csv", f"{TOY}/summary.md", f"{TOY}/latent_space.png", f"{TOY}/latent_space.pdf"]
    if TOY_CFG["enabled"] else []
)


# --- schools experiment: paths, settings and targets (its rules are in schools.smk) ---
SCHOOLS = f"{OUT}/schools"
SCHOOLS_CFG = config["schools"]
SCHOOLS_METHODS = SCHOOLS_CFG["methods"]

wildcard_constraints:
    schools_method="|".join(["advi_meanfield", "advi_fullrank", "avb", "avb_ac"]),


def schools_settings(*keys):
    """JSON of the schools keys given (sorted keys: a param that changes only when one of them does)."""
    return json.dumps({k: SCHOOLS_CFG[k] for k in keys}, sort_keys=True)


def schools_fit_settings(w):
    family = "advi" if w.schools_method.startswith("advi") else "avb"
    return schools_settings("seed", "device", "n_samples", family)


def schools_gpus(w):
    return 1 if uses_gpu(SCHOOLS_CFG["device"]) else 0


SCHOOLS_TARGETS = (
    [f"{SCHOOLS}/summary.csv", f"{SCHOOLS}/summary.md", f"{SCHOOLS}/per_parameter.csv", f"{SCHOOLS}/mu_tau.png",
     f"{SCHOOLS}/mu_tau.pdf"]
    if SCHOOLS_CFG["enabled"] else []
)


# --- paper/: the report's inputs (its rule is in paper.smk) ---
def paper_inputs():
    """name -> result file for `avb paper`; sections whose experiment is off are left out."""
    files = {"table2_md": f"{OUT}/table2.md", "summary_csv": f"{OUT}/summary.csv", "summary_md": f"{OUT}/summary.md",
             "samples_png": f"{OUT}/samples_and_curves.png", "samples_pdf": f"{OUT}/samples_and_curves.pdf",
             "per_image": run_files("eval_per_image.csv")}
    if config["convergence"]["enabled"]:
        files.update(convergence_png=f"{OUT}/ais_convergence.png", convergence_pdf=f"{OUT}/ais_convergence.pdf")
    if config["toy"]["enabled"]:
        files.update(toy_md=f"{TOY}/summary.md", toy_png=f"{TOY}/latent_space.png", toy_pdf=f"{TOY}/latent_space.pdf")
    if config["schools"]["enabled"]:
        files.update(schools_md=f"{SCHOOLS}/summary.md", schools_png=f"{SCHOOLS}/mu_tau.png",
                     schools_pdf=f"{SCHOOLS}/mu_tau.pdf")
    return files
