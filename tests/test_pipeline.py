"""The Snakemake pipeline end to end on a tiny config, and config validation."""
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from avb import config as avb_config
from snakemake_helpers import job_stats
from snakemake_helpers import snakemake as run_snakemake

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "preset": "tiny", "methods": ["vae", "avb", "avb_ac"], "z_dims": [2], "seeds": [0],
    "model": {"hidden": 32, "eps_dim": 4, "eps_nbasis": 2, "adv_hidden": 16, "adv_embed": 16, "adv_layers": 1},
    "train": {"steps": 20, "batch_size": 32, "checkpoint_every": 10, "log_every": 5, "device": "cpu"},
    "eval": {"n_test": 8, "batch_size": 8, "ais_steps": 3, "ais_chains": 2, "elbo_samples": 1, "device": "cpu"},
    "report": {"n_samples": 4},
    "toy": {"enabled": False},      # the toy and eight-schools pipelines have their own tests
    "schools": {"enabled": False},
    "convergence": {"steps": [2, 4], "n_images": 4},
}


def snakemake(workdir: Path, *args: str):
    return run_snakemake(workdir, "--cores", "2", *args)


@pytest.mark.slow
def test_pipeline_produces_summary_and_reruns_nothing(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    r = snakemake(tmp_path, "--configfile", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "results" / "tiny"
    df = pd.read_csv(out / "summary.csv")
    assert sorted(df.method) == ["avb", "avb_ac", "vae"]
    for col in ("method", "dataset", "z_dim", "seed", "log_px_ais", "elbo"):
        assert col in df.columns
    assert df[["log_px_ais", "elbo"]].notna().all().all()
    assert (df.log_px_ais < 0).all() and (df.dataset == "mnist").all()
    assert "| VAE (2-dim" in (out / "summary.md").read_text()
    assert (out / "samples_and_curves.png").stat().st_size > 1000
    # The invocation left its provenance record: commit, machine, the rules it ran, its wall time.
    records = json.loads((out / "provenance.json").read_text())
    assert len(records) == 1 and records[0]["status"] == "success" and records[0]["wall_s"] > 0
    assert {"train", "evaluate", "report"} <= set(records[0]["rules"]) and records[0]["jobs"] > 10
    assert len(records[0]["commit"]) >= 40 and "cores" in records[0]["machine"]
    # A completed pipeline has nothing left to do.
    dry = snakemake(tmp_path, "--configfile", str(cfg), "-n")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
    # Changing an eval setting reruns the evaluations and the report, not the training.
    cfg2 = tmp_path / "tiny2.yaml"
    cfg2.write_text(yaml.safe_dump({**TINY, "eval": {**TINY["eval"], "ais_steps": 4}}))
    dry = snakemake(tmp_path, "--configfile", str(cfg2), "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert job_stats(dry.stdout + dry.stderr) == {"evaluate": 3, "ais_convergence": 3, "report": 1, "all": 1,
                                                  "total": 8}
    # The Table 2 replica and the convergence figure are part of the report.
    assert "unverified" in (out / "table2.md").read_text() and r"\toprule" in (out / "table2.tex").read_text()
    conv = pd.concat(pd.read_csv(p) for p in out.glob("runs/*/*/*/*/ais_convergence.csv"))
    assert sorted(conv.n_steps.unique()) == [2, 4] and set(conv.estimate) == {"ais_test", "bdmc_lower", "bdmc_upper"}
    assert (out / "ais_convergence.pdf").stat().st_size > 1000
    # `snakemake paper` renders paper/ from the results, stating the commit and the config.
    r = snakemake(tmp_path, "paper", "--configfile", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    md = (tmp_path / "paper" / "replication.md").read_text()
    assert "preset `tiny`" in md and "at commit `" in md and '"preset": "tiny"' in md and "| VAE (2-dim)" in md
    tex = (tmp_path / "paper" / "main.tex").read_text()
    assert r"\input{tables/tiny_table2.tex}" in tex and (tmp_path / "paper/tables/tiny_table2.tex").exists()
    # The report names the invocation that produced the numbers (not the paper render itself, not the dry runs) ...
    provenance_rows = [line for line in md.splitlines() if line.startswith(f"| {records[0]['started']} |")]
    assert len(provenance_rows) == 1 and "success" in provenance_rows[0]
    assert len(json.loads((out / "provenance.json").read_text())) == 2   # + the paper invocation
    # ... and the paper invocation's own record does not make paper/ outdated.
    dry = snakemake(tmp_path, "paper", "--configfile", str(cfg), "-n")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr


def test_unknown_config_key_fails_naming_it_and_writes_nothing(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "stpes": 5}}))
    r = snakemake(tmp_path, "--configfile", str(cfg), "-n")
    assert r.returncode != 0
    assert "stpes" in r.stdout + r.stderr
    assert not (tmp_path / "results").exists()


def test_schema_fills_defaults_and_rejects_bad_values():
    cfg = avb_config.validate({"preset": "x"})
    assert cfg["train"]["adam_beta1"] == 0.5 and cfg["eval"]["ais_steps"] == 1000 and cfg["eval"]["ais_chains"] == 5
    with pytest.raises(avb_config.ConfigError, match=r"z_dims\.0"):
        avb_config.validate({"preset": "x", "z_dims": [0]})
    with pytest.raises(avb_config.ConfigError, match=r"methods\.0"):
        avb_config.validate({"preset": "x", "methods": ["iwae"]})
    run = avb_config.run_config(avb_config.validate(
        {"preset": "x", "method_overrides": {"vae": {"train": {"lr": 1e-4, "batch_size": 64}}}}), "mnist", "vae", 8, 0)
    assert run["train"]["lr"] == 1e-4 and run["train"]["batch_size"] == 64 and run["train"]["adam_beta1"] == 0.5


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_shipped_presets_are_valid(preset):
    avb_config.load(ROOT / "config" / preset)
