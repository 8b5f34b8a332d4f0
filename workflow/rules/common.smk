# Shared paths and helpers. Every output lives under <results_dir>/<preset>/, so presets never overwrite each other.
import itertools
import json

OUT = f"{config['results_dir']}/{config['preset']}"
RUN = f"{OUT}/runs/{{dataset}}/{{method}}/z{{z_dim}}/seed{{seed}}"

wildcard_constraints:
    dataset="|".join(config["datasets"]),
    method="|".join(config["methods"]),
    z_dim=r"\d+",
    seed=r"\d+",


def sweep():
    """One dict of wildcards per run of the sweep dataset x method x z_dim x seed."""
    keys = ("dataset", "method", "z_dim", "seed")
    grid = itertools.product(config["datasets"], config["methods"], config["z_dims"], config["seeds"])
    return [dict(zip(keys, values)) for values in grid]


def run_files(name):
    return [f"{RUN}/{name}".format(**w) for w in sweep()]


def run_config(w):
    return avb_config.run_config(config, w.dataset, w.method, int(w.z_dim), int(w.seed))
