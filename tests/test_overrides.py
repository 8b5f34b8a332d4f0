"""Overrides as researchers expect them (issue 17 items 2 and 3): `--config 'train={steps: 100}'` typed as YAML and
merged into the preset's section, a second `--configfile` deep-merged over the first, `avb train CONFIG
train.steps=100 --device cpu` with dotted keys, each checked like the preset (a bad key or value is an error naming
it); and raising train.steps alone continues the run, from the command line and in the pipeline. The pipeline tests
use the test config of the snakemake-workflows convention, .test/config/config.yaml."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from avb import config as C
from avb.cli import main
from snakemake_helpers import snakemake

ROOT = Path(__file__).resolve().parent.parent
TEST_CONFIG = ROOT / ".test" / "config" / "config.yaml"
RUN = "results/test/runs/mnist/vae/z2/seed0"


# ------------------------------------------------------------------------------------------- the functions
def test_cli_config_reads_values_as_yaml():
    got = C.cli_config(["train={steps: 100, lr: 1.0e-4}", "model={arch: conv0}", "seeds=[1, 2]", "data_dir=",
                        "preset=mine"])
    assert got == {"train": {"steps": 100, "lr": 1e-4}, "model": {"arch": "conv0"}, "seeds": [1, 2],
                   "data_dir": None, "preset": "mine"}
    assert type(got["train"]["steps"]) is int  # Snakemake's own parser gives the string '100'


def test_merge_is_deep_for_mappings_and_replaces_everything_else():
    base = {"train": {"steps": 5, "lr": 0.1}, "seeds": [0, 1], "overrides": [{"match": {"method": "vae"}}]}
    over = {"train": {"steps": 9}, "seeds": [3], "overrides": []}
    assert C.merge(base, over) == {"train": {"steps": 9, "lr": 0.1}, "seeds": [3], "overrides": []}
    assert base["train"] == {"steps": 5, "lr": 0.1}  # a fresh copy: the preset is left as read


def test_cli_config_bad_yaml_and_duplicate_keys_name_the_entry():
    with pytest.raises(C.ConfigError, match=r"--config train is not valid YAML"):
        C.cli_config(["train={steps: [1}"])
    with pytest.raises(C.ConfigError, match=r"--config train: key written twice.*train\.steps"):
        C.cli_config(["train={steps: 1, steps: 2}"])
    with pytest.raises(C.ConfigError, match="expected KEY=VALUE"):
        C.cli_config(["train"])


def test_a_merged_preset_is_validated_like_the_preset_with_the_key_named():
    preset = C.read_yaml(TEST_CONFIG)
    cfg = C.validate(C.merge(preset, C.cli_config(["train={steps: 100}"])), "config")
    assert cfg["train"] == {**C.validate(preset)["train"], "steps": 100}
    with pytest.raises(C.ConfigError, match=r"train\.stepz: unknown key"):
        C.validate(C.merge(preset, C.cli_config(["train={stepz: 100}"])), "config")
    with pytest.raises(C.ConfigError, match=r"train\.steps: 'many' is not of type 'integer'"):
        C.validate(C.merge(preset, C.cli_config(["train={steps: many}"])), "config")


def test_assign_sets_dotted_keys_checked_against_the_schema():
    run = {"method": "vae", "model": {"arch": "mlp", "hidden": 32}, "train": {"steps": 20, "device": "cpu"}}
    got = C.assign(run, ["train.steps=100", "model.arch=conv0", "train.lr=1.0e-4"], {"model": "model",
                                                                                    "train": "train"}, "run")
    assert got == {"method": "vae", "model": {"arch": "conv0", "hidden": 32},
                   "train": {"steps": 100, "device": "cpu", "lr": 1e-4}}
    assert run["train"]["steps"] == 20  # a copy; nothing else filled in (no schema defaults added)
    sections = {"model": "model", "train": "train"}
    for entry, message in [("train.stepz=3", r"train\.stepz: unknown key \(allowed in train: .*steps"),
                           ("seed=3", r"seed: unknown key \(give SECTION\.KEY=VALUE"),
                           ("eval.n_test=3", r"eval\.n_test: unknown key"),
                           ("train.steps=many", r"train\.steps: 'many' is not of type 'integer'"),
                           ("train.steps=0", r"train\.steps: 0 is less than the minimum of 1"),
                           ("model.arch=conv9", r"model\.arch: 'conv9' is not one of"),
                           ("train.steps", "expected KEY=VALUE")]:
        with pytest.raises(C.ConfigError, match=message):
            C.assign(run, [entry], sections, "run")


# ------------------------------------------------------------------------------------ avb train key=value
def tiny_run(steps=20):
    from test_train import run_config
    return run_config("avb_ac", steps=steps, checkpoint_every=7, log_every=3)


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_avb_train_takes_dotted_settings_and_a_device(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny_run(steps=20)))
    assert main(["train", str(cfg), "train.steps=3", "model.hidden=8", "--device", "cpu", "--out",
                 str(tmp_path / "a")]) == 0
    run = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["run"]
    assert run["train"]["steps"] == 3 and run["model"]["hidden"] == 8 and run["train"]["device"] == "cpu"
    assert weights(tmp_path / "a" / "model.pt")["decoder.net.0.weight"].shape[0] == 8
    for args, message in [(["train.stepz=3"], "train.stepz: unknown key"),
                          (["train.steps=three"], "train.steps: 'three' is not of type 'integer'"),
                          (["--device", "gpu"], "train.device: 'gpu' does not match")]:
        capsys.readouterr()
        assert main(["train", str(cfg), *args, "--out", str(tmp_path / "bad")]) == 1
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()  # rejected before anything is written


def test_avb_train_raising_steps_continues_bit_for_bit(tmp_path, capsys):
    """20 steps, then `train.steps=40` on the command line into the same folder: the run continues (20 more steps)
    and ends where 40 steps from scratch end, bit for bit (CPU)."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny_run(steps=20)))
    assert main(["train", str(cfg), "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main(["train", str(cfg), "train.steps=40", "--out", str(tmp_path / "a")]) == 0
    assert "train.steps raised from 20 to 40" in capsys.readouterr().out
    (tmp_path / "40.json").write_text(json.dumps(tiny_run(steps=40)))
    assert main(["train", str(tmp_path / "40.json"), "--out", str(tmp_path / "b")]) == 0
    a, b = weights(tmp_path / "a" / "model.pt"), weights(tmp_path / "b" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    import pandas as pd
    ma, mb = (pd.read_csv(tmp_path / d / "train_metrics.csv").drop(columns="images_per_s") for d in "ab")
    assert ma.equals(mb) and list(ma.step)[-1] == 40  # the metric rows too (but for the timing)


@pytest.mark.gpu
def test_avb_train_device_cuda_trains_on_the_gpu(tmp_path, capsys):
    """`--device cuda:0` reaches training: the run's config records it and a 20 + 20 continuation on the GPU resumes
    (no bit-identity claimed on CUDA)."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny_run(steps=20)))
    assert main(["train", str(cfg), "--device", "cuda:0", "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main(["train", str(cfg), "train.steps=40", "--device", "cuda:0", "--out", str(tmp_path / "a")]) == 0
    assert "train.steps raised from 20 to 40" in capsys.readouterr().out
    ck = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert ck["run"]["train"]["device"] == "cuda:0" and ck["step"] == 40


def test_avb_toy_train_takes_the_toy_sections_settings(tmp_path, capsys):
    from avb import jobs
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(jobs.toy_run_config(C.load(ROOT / "config" / "quick.yaml")["toy"], "avb")))
    assert main(["toy", "train", str(cfg), "train.steps=3", "train.log_every=1", "model.adv_blocks=1", "--device",
                 "cpu", "--out", str(tmp_path / "a")]) == 0
    run = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["run"]
    assert run["train"]["steps"] == 3 and run["model"]["adv_blocks"] == 1 and run["train"]["device"] == "cpu"
    capsys.readouterr()
    assert main(["toy", "train", str(cfg), "model.adv_blocks=two", "--out", str(tmp_path / "b")]) == 1
    assert "toy.model.adv_blocks: 'two' is not of type 'integer'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------------------- in the pipeline
def run_config_json(tmp_path, *args):
    tmp_path.mkdir(parents=True, exist_ok=True)
    r = snakemake(tmp_path, "--cores", "1", f"{RUN}/config.json", "--configfile", str(TEST_CONFIG), *args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((tmp_path / RUN / "config.json").read_text())


@pytest.mark.slow
def test_snakemake_config_is_typed_and_merged_into_the_preset_section(tmp_path):
    preset = run_config_json(tmp_path / "preset")
    got = run_config_json(tmp_path / "cli", "--config", "train={steps: 7}", "model={arch: conv0}")
    assert got["train"] == {**preset["train"], "steps": 7}  # an int, and the preset's other train keys kept
    assert got["model"]["arch"] == "conv0"


@pytest.mark.slow
def test_snakemake_second_configfile_is_deep_merged(tmp_path):
    (tmp_path / "my.yaml").write_text(yaml.safe_dump({"train": {"steps": 9}}))
    preset = run_config_json(tmp_path / "preset")
    got = run_config_json(tmp_path / "mine", str(tmp_path / "my.yaml"))  # --configfile preset my.yaml
    assert got["train"] == {**preset["train"], "steps": 9} and got["model"] == preset["model"]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--config", "train={stepz: 7}"], "train.stepz: unknown key"),
    (["--config", "train={steps: seven}"], "train.steps: 'seven' is not of type 'integer'"),
    (["--config", "train={steps: [7}"], "--config train is not valid YAML"),
    (["my.yaml"], "train.lr: 'fast' is not of type 'number'"),
])
def test_snakemake_bad_overrides_fail_before_any_job_naming_the_key(tmp_path, args, message):
    (tmp_path / "my.yaml").write_text(yaml.safe_dump({"train": {"lr": "fast"}}))
    r = snakemake(tmp_path, "-n", "--configfile", str(TEST_CONFIG), *args)
    assert r.returncode != 0 and message in r.stdout + r.stderr, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.mark.slow
def test_raising_train_steps_in_the_pipeline_continues_from_the_checkpoint(tmp_path):
    """The test config's 20 steps, then `--config 'train={steps: 40}'`: the training job reruns (its config.json
    changed) and continues from checkpoint.pt; the model is the one 40 steps from scratch give, bit for bit."""
    r = snakemake(tmp_path, "--cores", "1", f"{RUN}/model.pt", "--configfile", str(TEST_CONFIG))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = snakemake(tmp_path, "--cores", "1", f"{RUN}/model.pt", "--configfile", str(TEST_CONFIG),
                  "--config", "train={steps: 40}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = (tmp_path / RUN / "logs" / "train.log").read_text()
    assert "train.steps raised from 20 to 40" in log, log
    # From scratch, as the job runs (one thread: `threads: 1` of the test config): 40 steps in a fresh folder.
    run = json.loads((tmp_path / RUN / "config.json").read_text())
    assert run["train"]["steps"] == 40
    (tmp_path / "scratch.json").write_text(json.dumps(run))
    import subprocess
    import sys
    subprocess.run([sys.executable, "-m", "avb.cli", "train", str(tmp_path / "scratch.json"), "--out",
                    str(tmp_path / "scratch"), "--threads", "1"], check=True, capture_output=True)
    a, b = weights(tmp_path / RUN / "model.pt"), weights(tmp_path / "scratch" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
