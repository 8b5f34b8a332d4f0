# Shared paths and helpers. Every output lives under <results_dir>/<preset>/, so presets never overwrite each other.
import os
import shlex
import sys

from avb.io import write_json  # atomic; avb.io imports no torch, so local run_config jobs stay instant

OUT = os.path.normpath(os.path.join(config["results_dir"], config["preset"]))
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
    """The shell command `exec python -m avb.cli <args>`: `exec` makes Python the job's process, so a SIGTERM from
    SLURM (its time limit, preemption) reaches it and it checkpoints before it exits, while Snakemake waits for it.
    No rule chains a command after it. (Concatenating AVB with a string literal can read as path composition to
    --lint when a later literal holds a slash.)"""
    return f"exec {AVB} {args}"


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
    return avb_config.sweep(config)


def run_files(name):
    return [f"{RUN}/{name}".format(**w) for w in sweep()]


def _run(w):
    return config, w.dataset, w.method, int(w.z_dim), int(w.seed)


def run_config(w):
    """The run's fully resolved model / train / eval sections (the config's `overrides` applied)."""
    return avb_config.run_config(*_run(w))


# Settings reach every job as JSON files, written by local rules from tracked params holding only what the job reads
# (avb.config.train_config / eval_config / convergence_config), and read with `--config FILE`: no config value is
# ever on a command line. Paths reach the shell quoted: {input:q}, {output:q}, {log:q}, {params.x:q}.
def train_config(w):
    return avb_config.train_config(*_run(w))


def eval_config(w):
    return avb_config.eval_config(*_run(w))


def convergence_config(w):
    return avb_config.convergence_config(*_run(w))


# The data folder is no setting of any run: config.json identifies the data by their content checksum, which the
# jobs check. The folder reaches the jobs that read data as `--data-dir DIR`, from a param computed from `input`;
# Snakemake does not track such params (they change with the input, which it tracks itself), so moving the data
# (a new data_dir) reruns nothing. Without data_dir the jobs look in AVB_DATA_DIR, ../shared/data, then download.
def data_dir_args(wildcards, input):
    return ["--data-dir", config["data_dir"]] if config["data_dir"] else []


def run_dir(wildcards, output):
    """The folder of a job's first output (a param computed from `output`: untracked, as the output path is)."""
    return os.path.dirname(output[0])



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
    [f"{TOY}/summary.csv", f"{TOY}/summary.md", f"{TOY}/latent_space.png", f"{TOY}/latent_space.pdf",
     f"{TOY}/table1.csv", f"{TOY}/table1.md", f"{TOY}/table1.tex"]
    if TOY_CFG["enabled"] else []
)


# --- schools experiment: paths, settings and targets (its rules are in schools.smk) ---
SCHOOLS = f"{OUT}/schools"
SCHOOLS_CFG = config["schools"]
SCHOOLS_METHODS = SCHOOLS_CFG["methods"]

wildcard_constraints:
    schools_method="|".join(["advi_meanfield", "advi_fullrank", "avb", "avb_ac"]),


wildcard_constraints:
    schools_job="gold|kl|report|fit_(advi_meanfield|advi_fullrank|avb|avb_ac)",


def schools_settings(*keys):
    """The schools keys given (a param that changes only when one of them does)."""
    return {k: SCHOOLS_CFG[k] for k in keys}


def schools_fit_settings(method):
    family = "advi" if method.startswith("advi") else "avb"
    return schools_settings("seed", "device", "n_samples", "kl_every", "kl_samples", family)


def schools_job_settings(w):
    """What schools job `w.schools_job` reads (written to settings/<job>.json): gold: seed + gold; fit_<method>: seed,
    device, n_samples, kl_every, kl_samples and its family's section (advi or avb); kl, report: seed + metrics."""
    if w.schools_job == "gold":
        return schools_settings("seed", "gold")
    if w.schools_job in ("kl", "report"):
        return schools_settings("seed", "metrics")
    return schools_fit_settings(w.schools_job.removeprefix("fit_"))


def schools_gpus(w):
    return 1 if uses_gpu(SCHOOLS_CFG["device"]) else 0


SCHOOLS_TARGETS = (
    [f"{SCHOOLS}/summary.csv", f"{SCHOOLS}/summary.md", f"{SCHOOLS}/per_parameter.csv", f"{SCHOOLS}/mu_tau.png",
     f"{SCHOOLS}/mu_tau.pdf", f"{SCHOOLS}/kl_curve.csv", f"{SCHOOLS}/kl_iterations.png", f"{SCHOOLS}/kl_iterations.pdf"]
    if SCHOOLS_CFG["enabled"] else []
)


# --- paper/: the report's inputs (its rule is in paper.smk) ---
def paper_inputs():
    """name -> result file for `avb paper`; sections whose experiment is off are left out."""
    files = {"table2_md": f"{OUT}/table2.md", "claims_md": f"{OUT}/claims.md", "summary_csv": f"{OUT}/summary.csv", "summary_md": f"{OUT}/summary.md",
             "samples_png": f"{OUT}/samples_and_curves.png", "samples_pdf": f"{OUT}/samples_and_curves.pdf",
             "per_image": run_files("eval_per_image.csv"),
             # per run (lists, in sweep order): the Figure 7 replica and the latent interpolations (rule run_figures)
             "fig7_png": run_files("fig7.png"), "fig7_pdf": run_files("fig7.pdf"),
             "interp_png": run_files("interpolations.png"), "interp_pdf": run_files("interpolations.pdf")}
    if config["convergence"]["enabled"]:
        files.update(convergence_png=f"{OUT}/ais_convergence.png", convergence_pdf=f"{OUT}/ais_convergence.pdf")
    if config["toy"]["enabled"]:
        files.update(toy_md=f"{TOY}/summary.md", toy_png=f"{TOY}/latent_space.png", toy_pdf=f"{TOY}/latent_space.pdf",
                     toy_table1_md=f"{TOY}/table1.md")
    if config["schools"]["enabled"]:
        files.update(schools_md=f"{SCHOOLS}/summary.md", schools_png=f"{SCHOOLS}/mu_tau.png",
                     schools_pdf=f"{SCHOOLS}/mu_tau.pdf", schools_kl_png=f"{SCHOOLS}/kl_iterations.png",
                     schools_kl_pdf=f"{SCHOOLS}/kl_iterations.pdf", schools_kl_csv=f"{SCHOOLS}/kl_curve.csv")
    return files
