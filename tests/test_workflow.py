"""The snakemake-workflows template's conventions (issue 17 item 7): snakefmt-clean rules, `min_version`,
config/README.md documenting every preset and the override mechanisms, a `.test/` config the workflow runs on, and
`.snakemake-workflow-catalog.yml`; and `avb check-config` merging override files and `--config` as the Snakefile
does."""
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from avb import config as C
from avb.cli import main
from snakemake_helpers import snakemake

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RULE_FILES = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]


def test_snakefile_and_rules_are_snakefmt_clean():
    """`snakefmt --check` (pyproject's [tool.snakefmt]: the project's 120 columns) on the Snakefile and every rule
    file. To fix: .venv/bin/snakefmt Snakefile workflow/rules"""
    exe = BIN / "snakefmt" if (BIN / "snakefmt").exists() else shutil.which("snakefmt")
    assert exe, "snakefmt is not installed: run `make setup` (pyproject's test extra)"
    r = subprocess.run([str(exe), "--check", "--diff", *map(str, RULE_FILES)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"not snakefmt-clean (fix: .venv/bin/snakefmt Snakefile workflow/rules):\n" \
                              f"{r.stdout[-4000:]}{r.stderr[-2000:]}"


def test_min_version_agrees_with_pyproject():
    got = re.search(r'^min_version\("([\d.]+)"\)', (ROOT / "Snakefile").read_text(), re.M)
    assert got, "Snakefile: no min_version(...)"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lower = re.search(r"snakemake>=([\d.]+)", next(d for d in deps if d.startswith("snakemake>")))
    assert lower and tuple(map(int, got.group(1).split("."))) == tuple(map(int, (lower.group(1) + ".0").split(".")))[:2]


def test_config_readme_documents_every_preset_and_every_override_mechanism():
    text = (ROOT / "config" / "README.md").read_text()
    presets = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "config").glob("*.yaml"))]
    assert presets and all(f"`{p}`" in text for p in [*presets, ".test/config/config.yaml"]), presets
    for mechanism in ("--config 'train={steps: 100}'", "--configfile config/paper.yaml my.yaml", "overrides:",
                      "avb train results/", "--device", "Training longer", "workflow/schemas/config.schema.yaml"):
        assert mechanism in text, mechanism
    # the presets' own names and where their outputs go
    for p in presets:
        assert f"results/{C.read_yaml(ROOT / p)['preset']}/" in text, p


def test_catalog_file_declares_usage():
    cat = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())
    usage = cat["usage"]
    assert usage["software-stack-deployment"]["conda"] is True and usage["report"] is True
    assert "config/README.md" in usage["mandatory-flags"]["desc"]
    assert (ROOT / "LICENSE").exists() and (ROOT / "config" / "README.md").exists()


def test_test_config_is_valid_and_tiny():
    cfg = C.load(ROOT / ".test" / "config" / "config.yaml")
    assert cfg["preset"] == "test" and cfg["train"]["steps"] <= 50 and cfg["eval"]["n_test"] <= 16
    assert cfg["train"]["device"] == cfg["eval"]["device"] == "cpu"


@pytest.mark.slow
def test_snakemake_directory_dot_test_plans_the_whole_workflow_on_the_test_config(tmp_path):
    """`snakemake --directory .test` (the template's CI call) runs .test/config/config.yaml, without --configfile:
    a working directory's config/config.yaml is its default preset (else config/quick.yaml)."""
    shutil.copytree(ROOT / ".test", tmp_path / ".test")
    r = snakemake(tmp_path / ".test", "-n", "--cores", "1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "rule train:" in r.stdout and "rule claims:" in r.stdout
    assert "results/test/runs/mnist/avb_ac/z2/seed0/model.pt" in r.stdout and "results/quick" not in r.stdout


# ------------------------------------------------------------------------------------------- avb check-config
def test_check_config_merges_override_files_and_cli_config_as_the_snakefile(tmp_path, capsys):
    my = tmp_path / "my.yaml"
    my.write_text(yaml.safe_dump({"train": {"steps": 9}, "seeds": [4]}))
    preset = ROOT / "config" / "quick.yaml"
    assert main(["check-config", str(preset), str(my), "--config", "model={arch: conv0}", "eval={n_test: 3}"]) == 0
    got = json.loads(capsys.readouterr().out)
    plain = C.load(preset)
    assert got["train"] == {**plain["train"], "steps": 9} and got["seeds"] == [4]
    assert got["model"] == {**plain["model"], "arch": "conv0"} and got["eval"] == {**plain["eval"], "n_test": 3}
    assert main(["check-config", str(preset), "--config", "train={stepz: 9}"]) == 1
    assert "train.stepz: unknown key" in capsys.readouterr().err
    my.write_text("train: {steps: nine}\n")
    assert main(["check-config", str(preset), str(my)]) == 1
    assert "train.steps: 'nine' is not of type 'integer'" in capsys.readouterr().err


def test_make_passes_a_quoted_config_override_on_to_snakemake():
    """config/README.md's `make replicate PRESET=quick ARGS="--config 'train={steps: 100}'"` reaches Snakemake as
    one --config entry (the shell line make runs, parsed as the shell will)."""
    import os
    import shlex
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    r = subprocess.run(["make", "--no-print-directory", "-n", "replicate", "PRESET=quick",
                        "ARGS=--config 'train={steps: 100}'"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=env)
    assert r.returncode == 0, r.stderr
    argv = shlex.split(r.stdout.strip().splitlines()[-1])
    assert argv[1:3] == ["--workflow-profile", "profiles/default"]
    assert argv[-4:] == ["--configfile", "config/quick.yaml", "--config", "train={steps: 100}"]
    assert "make replicate PRESET=quick ARGS=\"--config 'train={steps: 100}'\"" in \
        (ROOT / "config" / "README.md").read_text()
