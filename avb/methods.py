"""The methods' display labels, one table for every experiment and report (torch-free: the reports and the
Snakefile read it without the models). ``hmc`` is eight schools' gold standard, a reference rather than a method."""
from __future__ import annotations

LABELS = {"vae": "VAE", "avb": "AVB", "avb_ac": "AVB + AC", "iaf": "VAE + IAF", "auxvae": "Auxiliary VAE",
          "advi_meanfield": "ADVI mean-field",
          "advi_fullrank": "ADVI full-rank", "hmc": "HMC (gold)"}
