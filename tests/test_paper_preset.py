"""config/paper.yaml is the official MNIST launch scripts row by row.

SCRIPTS is transcribed by hand from the launch scripts (experiments/<name>/run.py at HEAD ee29153; reference document
avb-reference.md, sections 2 and 4), not computed from the preset: one dict per script with its flags, plus the
settings the scripts take from their runner (run_avae.py: adaptive AIS step; run_vae.py: fixed step) and from the
code (Adam beta1 0.5, L = 10 leapfrog steps, linear schedule). Each resolved run of the paper preset must equal its
script field by field.
"""
from pathlib import Path

import pytest

from avb import config as C
from avb import jobs as J
from snakemake_helpers import job_stats, snakemake

ROOT = Path(__file__).resolve().parent.parent
COMMON = {"steps": 2500000, "adam_beta1": 0.5, "ais_eps": 1e-2, "leapfrog_steps": 10, "ais_schedule": "linear",
          "ais_leapfrog": "official"}
SCRIPTS = {
    "avb_mnist_8": {"method": "avb", "z_dim": 8, "arch": "conv0", "adv_arch": "conv0", "eps_dim": 32,
                    "lr": 5e-5, "lr_adversary": 1e-4, "batch_size": 128,
                    "ais_steps": 1000, "ais_chains": 5, "ais_adapt": "official", **COMMON},
    "avb_mnist_8_ac": {"method": "avb_ac", "z_dim": 8, "arch": "conv0", "adv_arch": "conv0", "eps_dim": 32,
                       "eps_nbasis": 16, "lr": 5e-5, "lr_adversary": 1e-4, "batch_size": 128,
                       "ais_steps": 2000, "ais_chains": 8, "ais_adapt": "official", **COMMON},
    "avb_mnist_32_ac": {"method": "avb_ac", "z_dim": 32, "arch": "conv0", "adv_arch": "conv0", "eps_dim": 64,
                        "eps_nbasis": 32, "lr": 5e-5, "lr_adversary": 1e-4, "batch_size": 128,
                        "ais_steps": 2000, "ais_chains": 8, "ais_adapt": "official", **COMMON},
    "vae_mnist_8": {"method": "vae", "z_dim": 8, "arch": "conv1", "lr": 1e-4, "batch_size": 64,
                    "ais_steps": 2000, "ais_chains": 8, "ais_adapt": "none", **COMMON},
    "vae_mnist_32": {"method": "vae", "z_dim": 32, "arch": "conv1", "lr": 1e-4, "batch_size": 64,
                     "ais_steps": 2000, "ais_chains": 8, "ais_adapt": "none", **COMMON},
}
# The sweep also trains plain AVB at z = 32, which has no script: it takes avb_mnist_8's settings (paper.yaml says so).
# VAE + IAF and the auxiliary VAE have no launch script either: vae_mnist_8's settings with their runners' own flags
# and AIS step rule (run_iaf.py: --iaf-nlayers 8 --iaf-a-dim 32 --iaf-h-dim 128, test_is_adaptive_eps True;
# run_auxvae.py: --a-dim 100, False), as paper.yaml states.
BASELINES = {"iaf": {"method": "iaf", "arch": "conv1", "lr": 1e-4, "batch_size": 64, "ais_steps": 2000,
                     "ais_chains": 8, "ais_adapt": "official", "iaf_layers": 8, "iaf_a_dim": 32, "iaf_h_dim": 128,
                     "iaf_train_flow": False, **COMMON},
             "auxvae": {"method": "auxvae", "arch": "conv1", "lr": 1e-4, "batch_size": 64, "ais_steps": 2000,
                        "ais_chains": 8, "ais_adapt": "none", "aux_a_dim": 100, "aux_head_scale": None, **COMMON}}
ROWS = {**{(s["method"], s["z_dim"]): s for s in SCRIPTS.values()},
        ("avb", 32): {**SCRIPTS["avb_mnist_8"], "z_dim": 32},
        **{(m, z): {**b, "z_dim": z} for m, b in BASELINES.items() for z in (8, 32)}}
# Where each script field lives in a resolved run; the AIS batch is the training batch size (the scripts evaluate in
# batches of that size, and the AC moments use them).
WHERE = {"arch": ("model", "arch"), "adv_arch": ("model", "adv_arch"), "eps_dim": ("model", "eps_dim"),
         "eps_nbasis": ("model", "eps_nbasis"), "steps": ("train", "steps"), "lr": ("train", "lr"),
         "lr_adversary": ("train", "lr_adversary"), "batch_size": ("train", "batch_size"),
         "adam_beta1": ("train", "adam_beta1"), "ais_steps": ("eval", "ais_steps"),
         "ais_chains": ("eval", "ais_chains"), "ais_eps": ("eval", "ais_eps"), "ais_adapt": ("eval", "ais_adapt"),
         "ais_schedule": ("eval", "ais_schedule"), "ais_leapfrog": ("eval", "ais_leapfrog"),
         "leapfrog_steps": ("eval", "leapfrog_steps"), "iaf_layers": ("model", "iaf_layers"),
         "iaf_a_dim": ("model", "iaf_a_dim"), "iaf_h_dim": ("model", "iaf_h_dim"),
         "iaf_train_flow": ("model", "iaf_train_flow"), "aux_a_dim": ("model", "aux_a_dim"),
         "aux_head_scale": ("model", "aux_head_scale")}


@pytest.fixture(scope="module")
def paper():
    return C.load(ROOT / "config/paper.yaml")


def test_the_sweep_is_the_scripts_rows(paper):
    assert {(r["method"], r["z_dim"]) for r in C.sweep(paper)} == set(ROWS)
    assert paper["datasets"] == ["mnist"] and paper["seeds"] == [0, 1, 2]


@pytest.mark.parametrize("row", sorted(ROWS), ids=lambda r: f"{r[0]}-{r[1]}")
def test_each_row_resolves_to_its_launch_script(paper, row):
    script = ROWS[row]
    for seed in paper["seeds"]:
        run = C.run_config(paper, "mnist", script["method"], script["z_dim"], seed)
        got = {field: run[section][key] for field, (section, key) in WHERE.items() if field in script}
        assert got == {f: v for f, v in script.items() if f in WHERE}, (row, seed)
        assert run["eval"]["batch_size"] == script["batch_size"]
        assert run["eval"]["ac_moment_draws"] is None   # = train.batch_size, the scripts' in-batch moments
        assert run["eval"]["n_test"] == 2048            # identical test images for every row (a listed departure)
        # what the run trains with is the script's too (config.json holds these keys only)
        tracked = J.train_config(paper, "mnist", script["method"], script["z_dim"], seed)
        assert tracked["model"]["arch"] == script["arch"] and tracked["train"]["lr"] == script["lr"]
        assert ("eps_nbasis" in tracked["model"]) == (script["method"] == "avb_ac")


def test_departures_are_written_at_the_top_of_the_preset():
    head = (ROOT / "config/paper.yaml").read_text().split("\npreset:", 1)[0]
    for phrase in ("AVB 32-dim", "no launch script", "n_test = 2048", "2560", "1280", "standard error over images",
                   "--is-train", "VAE + IAF and the auxiliary VAE", "--iaf-nlayers 8", "--a-dim 100",
                   "the IAF from the prior"):
        assert phrase in head, phrase


def test_paper_preset_dry_run_resolves(tmp_path):
    r = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config/paper.yaml"), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = job_stats(r.stdout + r.stderr)
    assert stats["train"] == stats["evaluate"] == stats["run_config"] == stats["eval_config"] == len(ROWS) * 3
    assert not (tmp_path / "results").exists()
