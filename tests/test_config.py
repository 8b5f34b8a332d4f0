"""The config flow: per-run overrides, validation errors that name their key, duplicate keys, non-finite numbers,
path values, what each job tracks, `avb check-config --rows`, settings files, and the all-or-nothing paper render."""
import json
import re
from pathlib import Path

import pytest
import yaml

from avb import config as C
from avb import jobs as J
from avb.report import publish
from snakemake_helpers import snakemake

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"arch": "mlp", "hidden": 16, "eps_dim": 4, "eps_nbasis": 2, "adv_hidden": 8, "adv_embed": 8, "adv_layers": 1}


def errors(cfg: dict) -> str:
    with pytest.raises(C.ConfigError) as info:
        C.validate(cfg)
    return str(info.value)


# ------------------------------------------------------------------------------------------------------ overrides
def test_overrides_apply_in_order_to_the_runs_they_match():
    cfg = C.validate({"preset": "x", "z_dims": [8, 32], "train": {"lr": 5e-5}, "eval": {"ais_steps": 1000},
                      "overrides": [
                          {"match": {"method": "vae"}, "train": {"lr": 1e-4, "batch_size": 64}},
                          {"match": {"method": "vae", "z_dim": 32}, "train": {"lr": 2e-4}},
                          {"match": {"dataset": "mnist", "method": "avb_ac"}, "eval": {"ais_steps": 2000}},
                      ]})
    got = {(r["method"], r["z_dim"]): (r["train"]["lr"], r["train"]["batch_size"], r["eval"]["ais_steps"])
           for r in C.rows(cfg)}
    assert got == {("vae", 8): (1e-4, 64, 1000), ("vae", 32): (2e-4, 64, 1000),   # later item wins
                   ("avb", 8): (5e-5, 128, 1000), ("avb", 32): (5e-5, 128, 1000),
                   ("avb_ac", 8): (5e-5, 128, 2000), ("avb_ac", 32): (5e-5, 128, 2000)}
    # an override sets only what it names: the other keys keep the top-level values and defaults
    assert C.run_config(cfg, "mnist", "vae", 8, 0)["train"]["adam_beta1"] == 0.5
    assert cfg["overrides"][0] == {"match": {"method": "vae"}, "train": {"lr": 1e-4, "batch_size": 64}}


def test_override_errors_name_their_path():
    base = {"preset": "x", "z_dims": [8]}
    msg = errors({**base, "overrides": [{"match": {"method": "vae"}, "eval": {"ais_steps": 3}},
                                        {"match": {"method": "avb"}, "eval": {"ais_stepz": 3}}]})
    assert "overrides[1].eval.ais_stepz: unknown key" in msg
    # values are checked against the same definitions as the top-level sections
    assert "overrides[0].train.lr: 0 is less than or equal to the minimum of 0" in errors(
        {**base, "overrides": [{"match": {"method": "vae"}, "train": {"lr": 0}}]})
    assert "overrides[0].model.arch" in errors({**base, "overrides": [{"match": {"method": "vae"},
                                                                       "model": {"arch": "resnet"}}]})
    assert "overrides[0].match" in errors({**base, "overrides": [{"match": {}, "train": {"lr": 1e-4}}]})
    assert "overrides[0].match.seed: unknown key" in errors(
        {**base, "overrides": [{"match": {"seed": 0}, "train": {"lr": 1e-4}}]})
    assert "overrides[0]: 'match' is a required property" in errors({**base, "overrides": [{"train": {"lr": 1e-4}}]})
    # an override that matches no run of the sweep is an error naming it, before any job runs
    msg = errors({**base, "methods": ["vae", "avb"],
                  "overrides": [{"match": {"method": "vae"}, "train": {"lr": 1e-4}},
                                {"match": {"method": "avb", "z_dim": 32}, "train": {"lr": 1e-4}}]})
    assert "overrides[1]: match {'method': 'avb', 'z_dim': 32} matches no run of the sweep" in msg
    assert "overrides[0]" not in msg


def test_method_overrides_is_refused_with_its_replacement():
    msg = errors({"preset": "x", "method_overrides": {"vae": {"train": {"lr": 1e-4}}}})
    assert "method_overrides: no longer supported; it is now `overrides`" in msg
    assert yaml.safe_load(msg.split("Write instead:\n", 1)[1]) == {
        "overrides": [{"match": {"method": "vae"}, "train": {"lr": 1e-4}}]}


def test_unmatched_override_fails_the_dry_run(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"preset": "bad", "z_dims": [8],
                                   "overrides": [{"match": {"z_dim": 32}, "eval": {"ais_steps": 5}}]}))
    r = snakemake(tmp_path, "-n", "--configfile", str(cfg))
    assert r.returncode != 0 and "overrides[0]: match {'z_dim': 32} matches no run" in r.stdout + r.stderr
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------------- duplicate keys, non-finite values
DUPLICATED = """\
preset: dup
train:
  steps: 10
  lr: 1.0e-4
eval: {ais_steps: 3}
train:
  steps: 20
"""


def test_key_written_twice_is_rejected_naming_key_and_file(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(DUPLICATED)
    with pytest.raises(C.ConfigError, match=r"dup\.yaml.*train \(lines 2 and 6\)"):
        C.load(path)
    path.write_text("preset: dup\ntrain:\n  lr: 1.0e-4\n  steps: 3\n  lr: 2.0e-4\n")
    with pytest.raises(C.ConfigError, match=r"dup\.yaml.*train\.lr \(lines 3 and 5\)"):
        C.load(path)
    path.write_text("preset: dup\noverrides:\n  - match: {method: vae}\n    train: {lr: 1.0e-4, lr: 2.0e-4}\n")
    with pytest.raises(C.ConfigError, match=r"overrides\[0\]\.train\.lr"):
        C.load(path)


def test_key_written_twice_fails_the_dry_run(tmp_path):
    # Snakemake's own loader would silently keep the second `train`
    path = tmp_path / "dup.yaml"
    path.write_text(DUPLICATED)
    r = snakemake(tmp_path, "-n", "--configfile", str(path))
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "train (lines 2 and 6)" in out and str(path) in out


@pytest.mark.parametrize("text, key", [("train: {lr: .nan}", "train.lr"), ("eval: {ais_eps: .inf}", "eval.ais_eps"),
                                       ("overrides:\n- match: {method: vae}\n  train: {lr: -.inf}",
                                        "overrides[0].train.lr"),
                                       ("schools: {gold: {step_size: .NaN}}", "schools.gold.step_size")])
def test_non_finite_numbers_are_rejected_naming_the_key(tmp_path, text, key):
    path = tmp_path / "nan.yaml"
    path.write_text(f"preset: nan\n{text}\n")
    with pytest.raises(C.ConfigError, match=rf"{re.escape(key)}: -?(nan|inf) is not a finite number"):
        C.load(path)


@pytest.mark.parametrize("key, value, says", [
    ("results_dir", "", "results_dir: '' should be non-empty"),
    ("data_dir", "", "data_dir: '' should be non-empty"),
    ("results_dir", "out/{preset}", "results_dir: 'out/{preset}': a path here may not hold braces"),
    ("results_dir", "a,b", "results_dir: 'a,b': a path here may not hold"),
    ("data_dir", "da\nta", "data_dir: 'da\\nta': a path may not hold control characters"),
])
def test_bad_path_values_are_rejected_naming_the_key(key, value, says):
    assert says in errors({"preset": "x", key: value})


def test_odd_but_valid_paths_are_accepted():
    # spaces, quotes and shell syntax are fine: every shell command quotes them (tests/test_pipeline.py runs them)
    C.validate({"preset": "x", "results_dir": "r e/$(touch x) it's \"q\"", "data_dir": "/d a/`id`;&|<>"})


# ------------------------------------------------------------------------------------------ what each job tracks
def test_training_tracks_only_the_keys_its_method_reads():
    cfg = C.validate({"preset": "x", "methods": ["vae", "avb", "avb_ac"], "data_dir": "/somewhere", "model": SMALL})
    vae, avb, ac = (J.train_config(cfg, "mnist", m, 2, 0) for m in ("vae", "avb", "avb_ac"))
    assert not {k for k in vae["model"] if k.startswith("adv_")} and "eps_dim" not in vae["model"]
    assert "eps_nbasis" not in vae["model"] and "conv0_decoder_act" not in vae["model"]
    assert "lr_adversary" not in vae["train"] and "adversary_steps" not in vae["train"]
    assert "eps_nbasis" not in avb["model"] and avb["model"]["eps_dim"] == 4 and avb["train"]["adversary_steps"] == 1
    assert ac["model"]["eps_nbasis"] == 2 and ac["model"]["adv_hidden"] == 8
    for run in (vae, avb, ac):   # the data by identity, not by folder
        assert "data_dir" not in run and run["data_sha256"] == J.DATASET_SHA256["mnist"]
    conv = C.validate({"preset": "x", "model": {"arch": "conv1", "adv_arch": "conv1"}})
    assert J.train_config(conv, "mnist", "avb", 8, 0)["model"] == {"arch": "conv1", "eps_dim": 32, "adv_arch": "conv1"}


@pytest.mark.parametrize("method", ["vae", "avb", "avb_ac"])
@pytest.mark.parametrize("arch, adv_arch", [("mlp", "conv0"), ("conv0", "conv0"), ("conv1", "conv1")])
def test_dropped_model_keys_are_unread(method, arch, adv_arch):
    """The networks built from the tracked keys alone equal those built from every key: nothing dropped was read."""
    from avb.experiments import build

    model = {**SMALL, "arch": arch, "adv_arch": adv_arch, "conv0_decoder_act": "elu", "hidden": 7}
    kept = {k: v for k, v in model.items() if k not in J.unread_model_keys(method, model)}
    shapes = [{k: tuple(v.shape) for k, v in build({"method": method, "z_dim": 2, "model": m}).state_dict().items()} for m in (model, kept)]
    assert shapes[0] == shapes[1]


def test_convergence_tracks_its_own_budgets_not_the_main_evaluation():
    a = C.validate({"preset": "x", "eval": {"n_test": 100, "ais_steps": 10}})
    b = C.validate({"preset": "x", "eval": {"n_test": 200, "ais_steps": 20, "batch_size": 64, "iwae_samples": 0}})
    assert J.convergence_config(a, "mnist", "avb", 8, 0) == J.convergence_config(b, "mnist", "avb", 8, 0)
    assert J.eval_config(a, "mnist", "avb", 8, 0) != J.eval_config(b, "mnist", "avb", 8, 0)
    c = C.validate({"preset": "x", "eval": {"ais_chains": 3}})
    assert J.convergence_config(c, "mnist", "avb", 8, 0)["eval"]["ais_chains"] == 3
    assert "ac_moment_draws" not in J.eval_config(a, "mnist", "vae", 8, 0)  # read for AVB + AC only
    assert "ac_moment_draws" in J.eval_config(a, "mnist", "avb_ac", 8, 0)


def test_dataset_checksums_are_those_of_the_loaded_data():
    from avb import data

    splits = data.load("mnist")
    assert J.data_sha256(splits) == J.DATASET_SHA256["mnist"]
    J.check_data({"dataset": "mnist", "data_sha256": J.DATASET_SHA256["mnist"]}, splits)
    with pytest.raises(C.ConfigError, match="other data than the run was set up for"):
        J.check_data({"dataset": "mnist", "data_sha256": J.DATASET_SHA256["fashion_mnist"]}, splits)


def test_no_rule_passes_settings_or_an_unquoted_path_on_its_command_line():
    rules = {p.name: p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk")}
    for name, text in rules.items():
        assert "--settings" not in text and "$(dirname" not in text, name
        fields = re.findall(r"\{(?:input|output|log|params)(?:\.\w+)?(?::\w+)?\}", text)
        assert all(f.endswith(":q}") for f in fields), (name, [f for f in fields if not f.endswith(":q}")])


# ---------------------------------------------------------------------------------------- check-config --rows
def test_check_config_rows_prints_one_resolved_run_per_line(capsys):
    from avb.cli import main

    assert main(["check-config", str(ROOT / "config/paper.yaml"), "--rows"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    cfg = C.load(ROOT / "config/paper.yaml")
    assert len(lines) == len(C.sweep(cfg)) == 30  # 5 methods (VAE, AVB, AVB + AC, IAF, auxiliary VAE) x 2 z x 3 seeds
    rows = [json.loads(line) for line in lines]
    assert all(set(r) == {"method", "dataset", "z_dim", "seed", "model", "train", "eval"} for r in rows)
    vae = next(r for r in rows if r["method"] == "vae")
    assert vae["model"]["arch"] == "conv1" and vae["train"]["batch_size"] == 64 and vae["eval"]["ais_adapt"] == "none"


def test_settings_files_are_validated_naming_the_file(tmp_path, capsys):
    from avb.cli import main

    bad = tmp_path / "eval_config.json"
    bad.write_text(json.dumps({"ais_stepz": 3}))
    assert main(["evaluate", "model.pt", "--config", str(bad), "--out-csv", "a", "--out-json", "b"]) == 1
    err = capsys.readouterr().err
    assert "ais_stepz: unknown key" in err and str(bad) in err
    bad.write_text("{not json")
    assert main(["toy", "evaluate", "model.pt", "--config", str(bad), "--out-json", "a", "--out-npz", "b"]) == 1
    assert f"settings file {bad}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ paper/: all or nothing
def test_staged_render_replaces_nothing_when_it_fails(tmp_path):
    out = tmp_path / "paper"
    (out / "tables").mkdir(parents=True)
    (out / "replication.md").write_text("old report")
    (out / "tables" / "t.tex").write_text("old table")
    (out / "README.md").write_text("kept")

    def failing(stage: Path) -> None:
        (stage / "replication.md").write_text("half-written")
        raise RuntimeError("render failed")

    with pytest.raises(RuntimeError, match="render failed"):
        publish.staged(out, failing)
    assert (out / "replication.md").read_text() == "old report" and (out / "tables/t.tex").read_text() == "old table"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paper"]   # no staging folder left

    def ok(stage: Path) -> None:
        (stage / "replication.md").write_text("new report")
        (stage / "figures").mkdir()
        (stage / "figures" / "f.png").write_bytes(b"png")

    changed = publish.staged(out, ok)
    assert sorted(changed) == ["figures/f.png", "replication.md"]
    assert (out / "replication.md").read_text() == "new report" and (out / "figures/f.png").read_bytes() == b"png"
    assert (out / "README.md").read_text() == "kept" and (out / "tables/t.tex").read_text() == "old table"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paper"]


# ----------------------------------------------------------------------------- one config flow: the schema only
def test_a_job_checks_its_file_against_the_schema_section_not_a_fake_preset():
    # defaults and checks come from the schema's definition of the section, with key paths as in a preset
    assert C.section("eval", {"ais_steps": 7}, "f.json") == {**C.defaults("eval"), "ais_steps": 7}
    assert C.section("toy.eval", {}, "f.json") == C.validate({"preset": "x"})["toy"]["eval"]
    with pytest.raises(C.ConfigError, match=r"invalid f\.json:\n  schools\.gold\.chains: 2 is less than"):
        C.section("schools", {"gold": {"chains": 2}}, "f.json")
    with pytest.raises(C.ConfigError, match=r"report\.n_samples: nan is not a finite number"):
        C.section("report", {"n_samples": float("nan")}, "f.json")
    # a file the pipeline wrote is complete: it passes unchanged, but for the method-specific keys the method does not
    # read (left out of its file so that they rerun nothing of it) and the evaluation speed keys at their defaults
    # (issue 15: left out so that a settings file stays as it was), which get their defaults
    cfg = C.validate({"preset": "x", "methods": ["avb_ac", "iaf"]})
    for method in ("avb_ac", "iaf"):
        ev = J.eval_config(cfg, "mnist", method, 8, 0)
        full = C.section("eval", ev, "eval_config.json")
        reads = {"avb_ac": "ac_moment_draws", "iaf": "iaf_ais_start"}[method]
        assert {k: full[k] for k in ev} == ev
        assert set(full) - set(ev) == ({"ac_moment_draws", "iaf_ais_start"} - {reads}) | set(J.EVAL_SPEED_DEFAULTS)
        assert {k: full[k] for k in J.EVAL_SPEED_DEFAULTS} == J.EVAL_SPEED_DEFAULTS


def test_renamed_toy_key_is_an_error_naming_the_new_one():
    msg = errors({"preset": "x", "toy": {"eval": {"knn_k": 5}}})
    assert "toy.eval.knn_k: renamed to toy.eval.kl_k (write `kl_k: 5`)" in msg
    with pytest.raises(C.ConfigError, match=r"toy\.eval\.knn_k: renamed to toy\.eval\.kl_k"):
        C.section("toy.eval", {"knn_k": 3}, "eval_config.json")
    assert C.defaults("toy.eval")["kl_k"] == C.defaults("schools")["metrics"]["kl_k"] == 3


def test_defaults_are_written_in_the_schema_only():
    """The networks' builders take every model key from the run config or the schema: no keyword defaults, no
    DEFAULT_* tables beside the schema."""
    import inspect

    from avb import experiments, toy

    assert [n for n, p in inspect.signature(experiments._images).parameters.items()
            if p.default is not inspect.Parameter.empty] == []
    assert not [name for name in vars(toy) if name.startswith("DEFAULT")]
    # a run config holding only what its method reads builds the same networks as one with every key
    small = J.train_config(C.validate({"preset": "x", "model": SMALL}), "mnist", "vae", 2, 0)
    assert "eps_dim" not in small["model"]
    full = {"method": "vae", "z_dim": 2, "model": {**C.defaults("model"), **SMALL}}
    shapes = [{k: tuple(v.shape) for k, v in experiments.build(r).state_dict().items()} for r in (small, full)]
    assert shapes[0] == shapes[1]


def test_schools_jobs_read_only_their_keys():
    s = C.validate({"preset": "x"})["schools"]
    assert J.schools_jobs() == ["gold", "kl", "report", "fit_advi_meanfield", "fit_advi_fullrank", "fit_avb",
                                "fit_avb_ac"]
    assert set(J.schools_job_config(s, "gold")) == {"seed", "gold"}
    assert set(J.schools_job_config(s, "kl")) == set(J.schools_job_config(s, "report")) == {"seed", "metrics"}
    assert set(J.schools_job_config(s, "fit_advi_fullrank")) == {*J.SCHOOLS_FIT_KEYS, "advi"}
    assert set(J.schools_job_config(s, "fit_avb_ac")) == {*J.SCHOOLS_FIT_KEYS, "avb"}
    with pytest.raises(ValueError, match="unknown schools job 'fit_hmc'"):
        J.schools_job_config(s, "fit_hmc")


def test_wildcard_constraints_come_from_the_schema():
    """No rule file restates the schema's choices (methods, datasets, toy and schools methods): its constraints are
    built from them (avb.config.choices)."""
    schema = C._schema()
    assert C.choices("methods") == schema["$defs"]["method"]["enum"]
    assert C.choices("datasets") == schema["$defs"]["dataset"]["enum"]
    assert C.choices("toy.methods") == schema["properties"]["toy"]["properties"]["methods"]["items"]["enum"]
    assert C.choices("schools.methods") == schema["properties"]["schools"]["properties"]["methods"]["items"]["enum"]
    values = {v for name in ("methods", "datasets", "toy.methods", "schools.methods") for v in C.choices(name)}
    for path in [ROOT / "Snakefile", *(ROOT / "workflow/rules").glob("*.smk")]:
        text = path.read_text()
        assert not [v for v in values if re.search(rf"""["']{v}["']""", text)], path.name
        assert not re.search(r"\b(mem_mb|runtime|gpu)=\d", text), path.name   # resources: from the config


# -------------------------------------------------------------------------------------------------- the CLI
def test_help_lists_every_command_on_one_line_and_version_is_the_package_version(capsys):
    from importlib.metadata import version

    from avb.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    commands = ["train", "evaluate", "convergence", "report", "figures", "schools", "toy", "paper", "claims",
                "readme", "check-config", "plan"]
    for cmd in commands:
        line = re.search(rf"^    {re.escape(cmd)} +(\S.*)$", out, re.M)
        assert line and len(line.group(1)) > 10, (cmd, out)
    assert len(re.findall(r"^    [a-z-]+ +\S", out, re.M)) == len(commands)   # one line each, none wrapped
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"avb-replication {version('avb-replication')}"


def test_speed_options_at_their_defaults_leave_config_json_as_before():
    """The train speed keys (issue 15 item 4): the schema's defaults are avb.speed's (today's training), and
    config.json holds a speed key only where it is set to another value (a run at the defaults resumes its
    checkpoint as before them)."""
    from avb import speed
    assert {k: C.defaults("train")[k] for k in J.SPEED_KEYS} == speed.DEFAULTS
    plain = J.train_config(C.validate({"preset": "x"}), "mnist", "avb", 8, 0)
    assert not set(J.SPEED_KEYS) & set(plain["train"])
    fast = J.train_config(C.validate({"preset": "x", "train": {"precision": "bf16", "adam": "auto",
                                                               "compile": "default"}}), "mnist", "avb", 8, 0)
    assert {k: fast["train"][k] for k in J.SPEED_KEYS if k in fast["train"]} == {"precision": "bf16",
                                                                                   "compile": "default"}
    with pytest.raises(C.ConfigError):
        C.validate({"preset": "x", "train": {"precision": "fp16"}})
