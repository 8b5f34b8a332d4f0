"""Monitoring (issue 17 item 1): train_metrics.csv rows appended every log_every as whole lines, TensorBoard event
files, validation bounds on the validation split with the best-validation checkpoint; off by default, and then
nothing of a run changes."""
import copy
import errno
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from avb import config, io, jobs, monitor, validate
from avb import train as tr
from avb.experiments import load_model
from test_train import run_config as tiny_run

MONITOR_ON = {"tensorboard": True, "sample_every": 4, "val_every": 4, "val_images": 48, "val_batch_size": 20,
              "iwae_samples": 3, "seed": 11}


def run_with(method="vae", steps=12, monitor_settings=None, **train):
    run = tiny_run(method, steps, **{"checkpoint_every": 100, "log_every": 2, **train})
    if monitor_settings is not None:
        run["monitor"] = config.section("monitor", copy.deepcopy(monitor_settings), "test")
    return run


def weights(path):
    return io.load_torch(path)["model"]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def table(path, drop=()):
    return pd.read_csv(path).drop(columns=list(drop))


# ------------------------------------------------------------------------------------------------- CSV appends
def test_train_metrics_rows_appear_every_log_every(tmp_path):
    """Between checkpoints (none before step 100 here) the file gains one row every log_every steps."""
    run = run_with("avb", steps=11, log_every=3)
    out = tmp_path / "run"
    seen = {}

    def look(step):
        path = out / "train_metrics.csv"
        seen[step] = [int(r["step"]) for r in monitor.read_rows(path)] if path.exists() else None

    model, batches, gen = tr.setup(run)
    tr.fit(model, batches, gen, run, out, progress=False, on_step=look)
    assert seen[1] is None and seen[2] is None and seen[3] == [3]  # the file appears with its first row
    assert seen[4] == [3]
    assert seen[5] == [3] and seen[6] == [3, 6]
    assert seen[10] == [3, 6, 9] and seen[11] == [3, 6, 9, 11]  # the run's last step: its (partial) row too
    assert list(table(out / "train_metrics.csv").step) == [3, 6, 9, 11]


READER = r"""
import csv, sys
from pathlib import Path
path, stop, n_fields = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
reads = bad = 0
while not stop.exists():
    raw = path.read_bytes()
    reads += 1
    rows = list(csv.reader(raw.decode().splitlines()))
    if not raw.endswith(b"\r\n") or any(len(r) != n_fields for r in rows):
        bad += 1
print(reads, bad)
"""


def test_a_reader_never_sees_a_partial_row(tmp_path):
    """A reader in another process, polling the file while rows are added, sees whole rows only: the file always
    ends with a line break and every line has the header's number of cells. (Appending each line with one write
    to the file fails this test on ext4: a read stops at a 4 KiB page boundary inside a line.)"""
    import subprocess
    import sys
    import time

    path, stop, fields = tmp_path / "m.csv", tmp_path / "stop", tr.METRIC_FIELDS
    log = monitor.CsvLog(path, fields)
    log.begin([], resumed=True)
    (tmp_path / "reader.py").write_text(READER)
    reader = subprocess.Popen([sys.executable, str(tmp_path / "reader.py"), str(path), str(stop), str(len(fields))],
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # the reader is polling
        rows = [{k: (i if k == "step" else math.pi * i * 1e-3) for k in fields} for i in range(2000)]
        for row in rows:
            log.append(row)
    finally:
        stop.touch()
        reads, bad = map(int, reader.communicate(timeout=60)[0].split())
    assert bad == 0, f"{bad} of {reads} reads saw a partial row"
    assert reads > 10
    assert len(monitor.read_rows(path)) == 2000
    monitor.write_rows(rows, tmp_path / "ref.csv", fields)  # the same bytes as one atomic write of every row
    assert path.read_bytes() == (tmp_path / "ref.csv").read_bytes()


def test_a_failed_append_keeps_the_previous_file_and_names_it(tmp_path, monkeypatch):
    path, fields = tmp_path / "train_metrics.csv", tr.METRIC_FIELDS
    log = monitor.CsvLog(path, fields)
    log.begin([{k: 1 for k in fields}], resumed=True)
    before = path.read_bytes()
    real_write = monitor._write

    def half_then_full(tmp, data):  # a disk that fills up in the middle of the file
        real_write(tmp, data[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(monitor, "_write", half_then_full)
    with pytest.raises(io.WriteFailed, match=r"train_metrics\.csv.*No space left on device.*free"):
        log.append({k: 2 for k in fields})
    assert path.read_bytes() == before
    monkeypatch.setattr(monitor, "_write", real_write)
    log.append({k: 3 for k in fields})  # room again: the row that failed is not in the file
    assert [r["step"] for r in monitor.read_rows(path)] == ["1", "3"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_read_rows_ignores_a_trailing_partial_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"step,elbo\r\n1,-3.5\r\n2,-3")
    assert monitor.read_rows(path) == [{"step": "1", "elbo": "-3.5"}]


# -------------------------------------------------------------------------------------------- off by default
def test_monitor_is_off_by_default_and_then_writes_nothing(tmp_path):
    defaults = config.defaults("monitor")
    assert defaults["tensorboard"] is False and defaults["val_every"] == 0
    cfg = config.load(Path(__file__).resolve().parent.parent / "config" / "quick.yaml")
    assert "monitor" not in jobs.train_config(cfg, "mnist", "vae", cfg["z_dims"][0], 0)  # config.json as before
    assert not jobs.validates(cfg)
    on = {**cfg, "monitor": {**cfg["monitor"], "val_every": 5}}
    assert jobs.train_config(on, "mnist", "vae", cfg["z_dims"][0], 0)["monitor"]["val_every"] == 5
    # a run config with the defaults written out is off too
    tr.train(run_with("avb_ac", 6, monitor_settings={}), tmp_path / "run", progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt", "model.pt",
                                                                    "train_metrics.csv"]


def test_monitoring_changes_no_weight_and_no_training_metric(tmp_path, one_thread):
    """Validation and sample grids draw from streams of their own: the training is bit-identical with them."""
    for method in ("vae", "avb", "avb_ac"):
        off = tr.train(run_with(method, 8), tmp_path / f"{method}-off", progress=False)
        on = tr.train(run_with(method, 8, MONITOR_ON), tmp_path / f"{method}-on", progress=False)
        assert same(weights(off), weights(on)), method
        assert table(off.parent / "train_metrics.csv", ["images_per_s"]).equals(
            table(on.parent / "train_metrics.csv", ["images_per_s"])), method


def test_a_validation_pass_consumes_no_training_random_number(tmp_path):
    run = run_with("avb_ac", 2, MONITOR_ON)
    model, _, _ = tr.setup(run)
    model.train()
    x = validate.validation_images(run, 30, 0)
    state = torch.get_rng_state()
    first = validate.bounds(model, x, run["monitor"], 16)
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training  # put back in the mode it was in
    second = validate.bounds(model, x, run["monitor"], 16)
    assert {k: v for k, v in first.items() if k != "seconds"} == {k: v for k, v in second.items() if k != "seconds"}


def test_changing_only_the_monitor_settings_continues_the_run(tmp_path, capsys):
    run = run_with("vae", 8, checkpoint_every=4)
    assert tr.config_change(run, {**run, "monitor": MONITOR_ON}) is None
    assert tr.config_change(run, {**run, "train": {**run["train"], "lr": 1.0}}) is not None
    out = tmp_path / "run"
    tr.train(run, out, progress=False)
    tr.train({**run, "train": {**run["train"], "steps": 12}, "monitor": dict(MONITOR_ON)}, out, progress=False)
    assert "resuming" in capsys.readouterr().out
    val = table(out / "val_metrics.csv")
    assert list(val.step) == [12]  # monitoring turned on at step 8: the passes from there on


# ------------------------------------------------------------------------------------------------ validation
def test_validation_rows_and_bounds(tmp_path):
    for method in ("vae", "avb", "avb_ac"):
        out = tmp_path / method
        tr.train(run_with(method, 10, MONITOR_ON), out, progress=False)
        val = table(out / "val_metrics.csv")
        assert list(val.step) == [4, 8, 10]  # every val_every and at the last step
        assert (val.elbo < 0).all() and val.elbo.notna().all()
        if method == "avb":  # the implicit encoder has no density: no IWAE bound, never a number made up
            assert val.iwae.isna().all()
        else:  # IWAE_k >= ELBO in expectation; with k = 3 and 48 images well within a few standard errors
            assert val.iwae.notna().all()
            assert (val.iwae > val.elbo - 3 * (val.elbo_se + val.iwae_se)).all()


def test_the_best_checkpoint_holds_the_weights_of_the_best_validation_elbo(tmp_path, monkeypatch):
    """Scripted validation ELBOs (best at step 4 of 2, 4, 6, 8, 10): model.best.pt holds step 4's weights, loads
    with weights_only, and the last checkpoint (model.pt) is kept beside it."""
    scripted = iter([-10.0, -3.0, -5.0, -4.0, -7.0])
    monkeypatch.setattr(validate, "bounds", lambda *a, **k: {"elbo": next(scripted), "elbo_se": 0.1,
                                                             "iwae": math.nan, "iwae_se": math.nan, "seconds": 0.0})
    run = run_with("avb", 10, {**MONITOR_ON, "val_every": 2, "tensorboard": False})
    out = tmp_path / "run"
    snapshots = {}
    model, batches, gen = tr.setup(run)

    def snap(step):
        snapshots[step] = {k: v.clone() for k, v in model.state_dict().items()}

    tr.fit(model, batches, gen, run, out, progress=False, on_step=snap,
           monitor=monitor.Monitor.for_run(run, out))
    assert list(table(out / "val_metrics.csv").elbo) == [-10.0, -3.0, -5.0, -4.0, -7.0]
    best = io.load_torch(out / "model.best.pt", "cpu", ("run", "step", "model", "val"))
    assert best["step"] == 4 and best["val"]["elbo"] == -3.0
    assert same(best["model"], snapshots[4]) and not same(best["model"], snapshots[10])
    assert same(weights(out / "model.pt"), snapshots[10])
    loaded, loaded_run = load_model(out / "model.best.pt")
    assert loaded_run["steps_done"] == 4


def test_the_best_survives_a_rerun_that_deleted_the_outputs(tmp_path, monkeypatch):
    """Snakemake deletes a killed job's outputs (model.best.pt, val_metrics.csv, train_metrics.csv) before the rerun:
    the best of the passes before the checkpoint must still win (it is kept in checkpoint.best.pt)."""
    script = {2: -10.0, 4: -3.0, 6: -5.0, 8: -4.0, 10: -7.0}
    at = {"step": 0}
    monkeypatch.setattr(validate, "bounds", lambda *a, **k: {"elbo": script[at["step"]], "elbo_se": 0.1,
                                                             "iwae": math.nan, "iwae_se": math.nan, "seconds": 0.0})
    run = run_with("avb", 10, {**MONITOR_ON, "val_every": 2, "tensorboard": False}, checkpoint_every=6)
    out = tmp_path / "run"
    snapshots = {}

    def fit(crash_at=None):
        model, batches, gen = tr.setup(run)

        def step(s):
            at["step"] = s
            snapshots[s] = {k: v.clone() for k, v in model.state_dict().items()}
            if s == crash_at:
                raise KeyboardInterrupt

        tr.fit(model, batches, gen, run, out, progress=False, on_step=step, monitor=monitor.Monitor.for_run(run, out))

    with pytest.raises(KeyboardInterrupt):
        fit(crash_at=9)
    assert not (out / "model.best.pt").exists()  # published at the end only
    for name in ("model.best.pt", "val_metrics.csv", "train_metrics.csv"):
        (out / name).unlink(missing_ok=True)
    fit()
    best = io.load_torch(out / "model.best.pt")
    assert best["step"] == 4 and same(best["model"], snapshots[4])
    assert list(table(out / "val_metrics.csv").elbo) == [-10.0, -3.0, -5.0, -4.0, -7.0]


def test_a_stale_best_checkpoint_of_another_run_is_removed(tmp_path, capsys):
    out = tmp_path / "run"
    tr.train(run_with("vae", 4, MONITOR_ON), out, progress=False)
    other = run_with("vae", 4, MONITOR_ON, lr=1e-2)  # another run config: starts afresh
    ck_step = io.load_torch(out / "model.best.pt")["step"]
    assert ck_step == 4
    tr.train(other, out, progress=False)
    assert "not resuming" in capsys.readouterr().out
    assert io.load_torch(out / "model.best.pt")["run"]["train"]["lr"] == 1e-2


def test_a_crash_after_the_checkpoint_resumes_to_the_same_files(tmp_path, one_thread):
    """Rows (training and validation) appended after the last checkpoint are dropped at the restart and made
    again: every file ends as the uninterrupted run's."""
    run = run_with("avb_ac", 14, MONITOR_ON, checkpoint_every=5)
    ref = tmp_path / "ref"
    tr.train(run, ref, progress=False)

    class Crash(RuntimeError):
        pass

    def crash(step):
        if step == 13:
            raise Crash

    out = tmp_path / "crashed"
    model, batches, gen = tr.setup(run)
    with pytest.raises(Crash):
        tr.fit(model, batches, gen, run, out, progress=False, on_step=crash, monitor=monitor.Monitor.for_run(run, out))
    assert list(table(out / "train_metrics.csv").step) == [2, 4, 6, 8, 10, 12]  # 12: after the checkpoint at 10
    assert list(table(out / "val_metrics.csv").step) == [4, 8, 12]
    tr.train(run, out, progress=False)
    assert table(out / "train_metrics.csv", ["images_per_s"]).equals(table(ref / "train_metrics.csv",
                                                                           ["images_per_s"]))
    assert table(out / "val_metrics.csv", ["seconds"]).equals(table(ref / "val_metrics.csv", ["seconds"]))
    for name in ("model.pt", "model.best.pt"):
        assert same(weights(out / name), weights(ref / name)), name


def test_too_many_validation_images_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"monitor.val_images = 6000 exceeds the 5000 validation images of mnist"):
        tr.train(run_with("vae", 2, {**MONITOR_ON, "val_images": 6000}), tmp_path, progress=False)


# ------------------------------------------------------------------------------------------------ TensorBoard
def test_tensorboard_event_files_hold_the_scalars_and_sample_grids(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    tr.train(run_with("avb_ac", 8, MONITOR_ON), out, progress=False)
    acc = EventAccumulator(str(out / monitor.TENSORBOARD_DIR), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    want = {f"train/{k}" for k in tr.METRIC_FIELDS if k != "step"} | {"val/elbo", "val/iwae", "val/elbo_se"}
    assert want <= set(tags["scalars"]), tags["scalars"]
    csv_rows = table(out / "train_metrics.csv")
    for key in ("elbo", "kl", "loss_primal", "loss_adversary", "adv_accuracy", "images_per_s"):
        events = acc.Scalars(f"train/{key}")
        assert [e.step for e in events] == list(csv_rows.step)
        assert [e.value for e in events] == pytest.approx(list(csv_rows[key]), rel=1e-6)
    val = table(out / "val_metrics.csv")
    assert [e.value for e in acc.Scalars("val/elbo")] == pytest.approx(list(val.elbo), rel=1e-6)
    assert [e.step for e in acc.Images("samples")] == [4, 8]


def test_tensorboard_skips_the_nan_columns_of_a_vae(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    tr.train(run_with("vae", 4, {"tensorboard": True}), out, progress=False)
    acc = EventAccumulator(str(out / monitor.TENSORBOARD_DIR))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert "train/elbo" in scalars and "train/loss_adversary" not in scalars and "train/adv_accuracy" not in scalars
    assert not (out / "val_metrics.csv").exists() and not (out / "model.best.pt").exists()


# ------------------------------------------------------------------------------------ figure, CLI and pipeline
def test_the_curves_figure_from_the_cli(tmp_path):
    from avb import cli

    out = tmp_path / "run"
    model = tr.train(run_with("avb_ac", 8, MONITOR_ON), out, progress=False)
    files = {name: tmp_path / name for name in ("f7.png", "f7.pdf", "i.png", "i.pdf", "c.png", "c.pdf")}
    assert cli.main(["figures", str(model), "--out-fig7", str(files["f7.png"]), str(files["f7.pdf"]), "--out-interp",
                     str(files["i.png"]), str(files["i.pdf"]), "--metrics", str(out / "train_metrics.csv"),
                     "--val-metrics", str(out / "val_metrics.csv"), "--out-curves", str(files["c.png"]),
                     str(files["c.pdf"])]) in (0, None)
    assert files["c.png"].stat().st_size > 10_000 and files["c.pdf"].stat().st_size > 5_000
    # without validation (the pipeline passes an empty --val-metrics) the training curves alone
    from avb.report.curves import training_curves
    training_curves(out / "train_metrics.csv", tmp_path / "t.png", val_csv=None, title="t")
    assert (tmp_path / "t.png").stat().st_size > 10_000


PIPELINE = {
    "preset": "mon", "methods": ["vae", "avb"], "z_dims": [2], "seeds": [0], "threads": 1,
    "model": {"hidden": 32, "eps_dim": 4, "eps_nbasis": 2, "adv_hidden": 16, "adv_embed": 16, "adv_layers": 1},
    "train": {"steps": 20, "batch_size": 32, "checkpoint_every": 10, "log_every": 5, "device": "cpu"},
    "eval": {"n_test": 8, "batch_size": 8, "ais_steps": 3, "ais_chains": 2, "elbo_samples": 1, "iwae_samples": 2,
             "device": "cpu"},
    "report": {"n_samples": 4}, "convergence": {"enabled": False},
    "monitor": {"tensorboard": True, "val_every": 10, "val_images": 64, "iwae_samples": 4, "sample_every": 10},
    "toy": {"enabled": True, "threads": 1, "methods": ["vae"], "model": {"hidden": 16},
            "train": {"steps": 20, "batch_size": 32, "checkpoint_every": 10, "log_every": 5, "device": "cpu"},
            "eval": {"grid_size": 20, "n_samples": 50, "kde_samples": 50, "scatter_samples": 8, "device": "cpu"}},
    "schools": {"enabled": True, "threads": 1, "device": "cpu", "methods": ["advi_meanfield"], "n_samples": 200,
                "kl_every": 10, "kl_samples": 60, "gold": {"chains": 4, "warmup": 30, "draws": 100, "thin": 1},
                "advi": {"steps": 20, "batch_size": 16, "checkpoint_every": 10, "log_every": 5},
                "metrics": {"divergence_samples": 50, "divergence_repeats": 2, "quad_grid": 101, "kl_repeats": 2}},
}


@pytest.mark.slow
def test_pipeline_with_monitoring_and_its_report(tmp_path):
    """Monitoring on through the Snakefile: validation files and TensorBoard events per run, the curves figure of
    every run in the report's training stage, and every toy and schools figure (their training curves too) in the
    report."""
    from snakemake_helpers import snakemake
    from test_pipeline_scale import report_items

    cfg = tmp_path / "mon.yaml"
    cfg.write_text(yaml.safe_dump(PIPELINE))
    r = snakemake(tmp_path, "--cores", "2", "--configfile", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "results" / "mon"
    for method in PIPELINE["methods"]:
        run = out / "runs" / "mnist" / method / "z2" / "seed0"
        assert list(table(run / "val_metrics.csv").step) == [10, 20]
        assert io.load_torch(run / "model.best.pt")["step"] in (10, 20)
        assert list((run / monitor.TENSORBOARD_DIR).glob("events.out.tfevents.*"))
        assert (run / "curves.png").stat().st_size > 10_000
    r = snakemake(tmp_path, "--configfile", str(cfg), "--report", "results/mon/report.html")
    assert r.returncode == 0, r.stderr[-3000:]
    _, categories = report_items((out / "report.html").read_text())
    runs = [f"results/mon/runs/mnist/{m}/z2/seed0" for m in PIPELINE["methods"]]
    assert categories["1. Training"] == {"mnist, z = 2": [f"{r}/{f}" for f in ("curves.png", "train_metrics.csv")
                                                          for r in runs]}
    assert categories["5. Toy"] == {"Other": [f"results/mon/toy/{f}" for f in ("latent_space.png", "table1.md",
                                                                              "training_curves.png")]}
    assert categories["6. Eight schools"] == {"Other": [f"results/mon/schools/{f}" for f in (
        "kl_iterations.png", "mu_tau.png", "training_curves.png")]}


@pytest.mark.gpu
def test_monitoring_on_cuda_consumes_no_training_random_number(tmp_path):
    """On a GPU the pass forks and restores the GPU's generator too: the CUDA training is the same with it."""
    run = run_with("avb_ac", 2, MONITOR_ON, device="cuda")
    model, _, _ = tr.setup(run)
    x = validate.validation_images(run, 30, 0)
    cpu, gpu = torch.get_rng_state(), torch.cuda.get_rng_state()
    validate.bounds(model, x, run["monitor"], 16)
    assert torch.equal(torch.get_rng_state(), cpu) and torch.equal(torch.cuda.get_rng_state(), gpu)
    for method in ("vae", "avb_ac"):
        off = [tr.train(run_with(method, 8, device="cuda"), tmp_path / f"{method}-off{i}", progress=False)
               for i in range(2)]
        if not same(weights(off[0]), weights(off[1])):
            pytest.skip("CUDA training is not bit-reproducible on this device")
        on = tr.train(run_with(method, 8, MONITOR_ON, device="cuda"), tmp_path / f"{method}-on", progress=False)
        assert same(weights(off[0]), weights(on)), method
        assert list(table(on.parent / "val_metrics.csv").step) == [4, 8]


def test_a_resumed_run_has_no_doubled_tensorboard_stretch(tmp_path):
    """Events a crashed run wrote after its last checkpoint are purged when it resumes (purge_step): each step has
    one value, the resumed run's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = run_with("vae", 8, {"tensorboard": True}, checkpoint_every=4)
    out = tmp_path / "run"
    model, batches, gen = tr.setup(run)

    def crash(step):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tr.fit(model, batches, gen, run, out, progress=False, on_step=crash, monitor=monitor.Monitor.for_run(run, out))
    tr.train(run, out, progress=False)
    acc = EventAccumulator(str(out / monitor.TENSORBOARD_DIR))
    acc.Reload()
    events = acc.Scalars("train/elbo")
    assert [e.step for e in events] == [2, 4, 6, 8]
    assert [e.value for e in events] == pytest.approx(list(table(out / "train_metrics.csv").elbo), rel=1e-6)
