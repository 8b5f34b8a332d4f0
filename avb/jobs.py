"""What each job of a run reads, which is all that job tracks (so a changed key reruns only the jobs that read it),
and what each job asks of the scheduler.

* ``train_config`` (training; the run's ``config.json``), ``eval_config`` (AIS evaluation), ``convergence_config``
  (the AIS-budget study), from ``avb.config.run_config``; ``toy_run_config`` and ``schools_job_config`` for the
  other experiments.
* Data are identified by their content checksum (``DATASET_SHA256``, ``check_data``), never by the folder holding
  them.
* ``JobResources``: a stage's ``resources`` entry, typed; ``uses_gpu``: whether a device may be a GPU;
  ``gpu_request`` / ``gpu_slots``: a job's ``gpu`` and ``gpu_slots`` resources.

Like ``avb.config``, this module imports no torch (the Snakefile imports it).
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from .config import ConfigError, choices, defaults, run_config

# Keys a job does not read are left out of what it tracks, so that changing them reruns nothing of it. Only keys
# known to be unread are dropped: a key added to the schema later is kept (it reruns too much, never too little).
ADVERSARY_TRAIN_KEYS = ("lr_adversary", "adversary_steps")
ADVERSARY_FREE = ("vae", "iaf", "auxvae")   # the image methods without an adversary
SPEED_KEYS = ("precision", "compile", "channels_last", "cudnn_benchmark", "adam")  # avb.speed's train options


def unread_model_keys(method: str, model: dict[str, Any]) -> set[str]:
    """The ``model`` keys that ``avb.experiments.build`` does not read for ``method`` with these networks."""
    unread = set()
    if method in ADVERSARY_FREE:   # no adversary, no encoder noise
        unread |= {k for k in model if k.startswith("adv_")} | {"eps_dim", "eps_nbasis"}
    elif method == "avb":  # no noise basis
        unread.add("eps_nbasis")
    if method != "iaf":
        unread |= {k for k in model if k.startswith("iaf_")}
    if method != "auxvae":
        unread |= {k for k in model if k.startswith("aux_")}
    full = {**defaults("model"), **model}  # unset keys: the schema's defaults, as avb.experiments.build fills them
    arch, adv_arch = full["arch"], full["adv_arch"]
    if method not in ADVERSARY_FREE and adv_arch != "conv0":  # the conv1 adversary has fixed sizes
        unread |= {"adv_hidden", "adv_embed", "adv_layers"}
    if arch != "mlp":
        unread.add("hidden")
    if arch != "conv0":
        unread.add("conv0_decoder_act")
    return unread


# Content checksums of the verified splits as ``avb.data.load`` returns them (``data_sha256``): a run's config.json
# records its dataset's, and training and evaluation check the data they load against it. The folder the data come
# from is no part of any run's settings, so moving the data reruns nothing.
DATASET_SHA256 = {
    "mnist": "dccb843ebcbb95cdc9c9f03efab1ca6fe9e45015459f5e720d43107166c6cc1f",
    "fashion_mnist": "fc3ccbdf096b2f4e70d7768ba4154a8a5c541b0b462e324aec218e927ba0428e",
    "static_mnist": "027caf6f7dabedc892a2543c31c3883b11508c33ca5c10f576552c1783ebbecf",
}


def data_sha256(splits: Any) -> str:
    """SHA-256 over the train, validation and test images (dtype, shape and bytes) of an ``avb.data.Splits``."""
    h = hashlib.sha256()
    for a in (splits.train, splits.val, splits.test):
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check_data(run: dict[str, Any], splits: Any) -> None:
    """Raise ``ConfigError`` if ``splits`` are not the data the run config records (runs without a record pass)."""
    expected = run.get("data_sha256")
    if expected is None:
        return
    got = data_sha256(splits)
    if got != expected:
        raise ConfigError(f"dataset {run['dataset']} from {splits.source} has content sha256 {got}, but the run "
                          f"config records {expected}: these are other data than the run was set up for")


def train_config(cfg: dict[str, Any], dataset: str, method: str, z_dim: int, seed: int) -> dict[str, Any]:
    """What training reads (written to the run's ``config.json``; ``avb.train.fit`` keys its checkpoint on it):
    the wildcards, the dataset's content checksum, the ``model`` / ``train`` keys the method reads and, only where
    monitoring is on (TensorBoard or validation), the ``monitor`` section (``fit`` ignores it when it decides
    whether a checkpoint can be continued). With monitoring off, config.json is as it was without it; so it is
    with the train speed options (``avb.speed``) at their defaults, which are left out."""
    run = run_config(cfg, dataset, method, z_dim, seed)
    unread = unread_model_keys(method, run["model"])
    train = {k: v for k, v in run["train"].items() if (method not in ADVERSARY_FREE or k not in ADVERSARY_TRAIN_KEYS)
             and not (k in SPEED_KEYS and v == defaults("train")[k])}  # speed options at their defaults: unset
    out = {"method": method, "dataset": dataset, "z_dim": int(z_dim), "seed": int(seed),
           "data_sha256": DATASET_SHA256[dataset],
           "model": {k: v for k, v in run["model"].items() if k not in unread}, "train": train}
    monitor = cfg.get("monitor", {})
    if monitor.get("tensorboard") or monitor.get("val_every", 0) > 0:
        out["monitor"] = dict(monitor)
    return out


def validates(cfg: dict[str, Any]) -> bool:
    """Whether the MNIST-type runs of ``cfg`` make validation passes (``monitor.val_every`` > 0): training then
    writes val_metrics.csv and model.best.pt too."""
    return cfg.get("monitor", {}).get("val_every", 0) > 0


def eval_config(cfg: dict[str, Any], dataset: str, method: str, z_dim: int, seed: int) -> dict[str, Any]:
    """The run's resolved ``eval`` section, as ``avb evaluate --config`` reads it (``ac_moment_draws`` only for
    AVB + AC, the one method with moments to estimate; ``iaf_ais_start`` only for VAE + IAF; the speed keys only
    where they are not at their defaults, ``EVAL_SPEED_DEFAULTS``)."""
    ev = run_config(cfg, dataset, method, z_dim, seed)["eval"]
    return {k: v for k, v in ev.items() if (k != "ac_moment_draws" or method == "avb_ac")
            and (k != "iaf_ais_start" or method == "iaf") and (k not in EVAL_SPEED_DEFAULTS or
                                                               v != EVAL_SPEED_DEFAULTS[k])}


# eval keys of issue 15, left out of eval_config.json at their defaults (the evaluation as before): a run's settings
# file, and so its evaluation, stay as they were unless the preset sets them.
EVAL_SPEED_DEFAULTS = {"ais_call_images": None, "precision": "fp32"}
# eval keys the AIS-budget study does not read: it runs its own budgets on its own images (config `convergence`).
CONVERGENCE_UNREAD_EVAL_KEYS = ("n_test", "batch_size", "ais_steps", "elbo_samples", "iwae_samples", "bdmc_images",
                                "ais_call_images")


def convergence_config(cfg: dict[str, Any], dataset: str, method: str, z_dim: int, seed: int) -> dict[str, Any]:
    """What ``avb convergence --config`` reads: the budgets and image count of ``convergence``, and the run's AIS
    settings (``eval`` less the keys of the main evaluation only)."""
    ev = eval_config(cfg, dataset, method, z_dim, seed)
    return {"eval": {k: v for k, v in ev.items() if k not in CONVERGENCE_UNREAD_EVAL_KEYS},
            "steps": list(cfg["convergence"]["steps"]), "n_images": int(cfg["convergence"]["n_images"])}


# The model keys each toy method uses: a run config holds only these, so e.g. an adversary setting never reruns the VAE.
TOY_RUN_MODEL_KEYS = {
    "vae": ["hidden"],
    "avb": ["hidden", "eps_dim", "adv_hidden", "adv_blocks", "adv_prior_term"],
    "avb_ac": ["hidden", "ac_nbasis", "ac_eps_dim", "adv_hidden", "adv_blocks", "adv_prior_term"],
}


def toy_run_config(toy: dict[str, Any], method: str) -> dict[str, Any]:
    """Everything that determines one toy training run (JSON-able; ``avb.train.fit`` keys its checkpoint on it).

    ``toy`` is the validated ``toy`` section of a config. The VAE has no adversary, so its adversary settings are
    None (``fit`` reads them only for a model with an adversary).
    """
    train = dict(toy["train"])
    if method == "vae":
        train.update(lr_adversary=None, adversary_steps=None)
    return {"experiment": "toy", "method": method, "seed": int(toy["seed"]),
            "model": {k: toy["model"][k] for k in TOY_RUN_MODEL_KEYS[method]}, "train": train}


# The eight-schools jobs and the keys of the ``schools`` section each reads (written to settings/<job>.json): so a
# changed value reruns only the jobs it affects. A fit reads its family's section (advi or avb).
SCHOOLS_FIT_KEYS = ("seed", "device", "n_samples", "kl_every", "kl_samples")
SCHOOLS_JOB_KEYS = {"gold": ("seed", "gold"), "kl": ("seed", "metrics"), "report": ("seed", "metrics")}


def schools_jobs() -> list[str]:
    """Every schools job that reads a settings file: gold, kl, report and fit_<method> for each schema method."""
    return [*SCHOOLS_JOB_KEYS, *(f"fit_{m}" for m in choices("schools.methods"))]


def schools_job_config(schools: dict[str, Any], job: str) -> dict[str, Any]:
    """What schools job ``job`` reads, from the validated ``schools`` section: gold: seed + gold; kl, report: seed +
    metrics; fit_<method>: seed, device, n_samples, kl_every, kl_samples and its family's section (advi or avb)."""
    if job in SCHOOLS_JOB_KEYS:
        keys = SCHOOLS_JOB_KEYS[job]
    elif job.startswith("fit_") and job.removeprefix("fit_") in choices("schools.methods"):
        keys = (*SCHOOLS_FIT_KEYS, "advi" if job.startswith("fit_advi") else "avb")
    else:
        raise ValueError(f"unknown schools job {job!r}; expected one of {', '.join(schools_jobs())}")
    return {k: schools[k] for k in keys}


# --------------------------------------------------------------------------------------------------- resources
@dataclasses.dataclass(frozen=True)
class JobResources:
    """What one job of a stage asks of the scheduler (config ``resources.<stage>``): memory (MB), wall time
    (minutes) and GPUs (held only where the job's device may be a GPU)."""

    mem_mb: int
    runtime: int
    gpu: int = 0  # a stage whose schema has no gpu key (a report, a settings file) holds none

    @classmethod
    def of(cls, cfg: dict[str, Any], stage: str) -> "JobResources":
        """``resources.<stage>`` of the validated config ``cfg``."""
        if stage not in cfg["resources"]:
            raise KeyError(f"no resources.{stage} in the config schema (stages: {', '.join(cfg['resources'])})")
        return cls(**cfg["resources"][stage])


def uses_gpu(device: str) -> bool:
    """Whether a job on ``device`` (auto, cpu, cuda, cuda:N) may run on a GPU."""
    return device == "auto" or device.startswith("cuda")


def gpu_request(n: int, device: str, grouped: bool = False) -> int | str:
    """The ``gpu`` resource of a job on ``device`` whose stage asks for ``n`` GPUs: n where the device may be a
    GPU, else 0. In a job group (SLURM: ``--groups RULE=GROUP --group-components GROUP=K``, K jobs in one
    allocation) a non-zero count is the string ``str(n)``: Snakemake sums a group's integer resources over the jobs
    that run side by side but keeps a string (the same for all) as it is, so the group asks for the n GPUs of one
    job and its K jobs share them, instead of asking for K x n."""
    count = n if uses_gpu(device) else 0
    return str(count) if grouped and count else count


def gpu_slots(n: int, device: str) -> int:
    """The ``gpu_slots`` resource of such a job: 1 where it holds a GPU, else 0. Locally ``--resources
    gpu_slots=N`` runs N GPU jobs at once (K per GPU x the GPUs; ``avb.gpus`` gives each its device)."""
    return 1 if n and uses_gpu(device) else 0
