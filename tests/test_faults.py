"""Fault injection (issue 13): runs that always finish and never run a stranger's code.

Each probe injects one fault into a tiny run, or feeds one bad input, and checks the outcome: a fault is *survived*
when the run still finishes with the outputs of an undisturbed run (bit for bit on the CPU) or stops with the last
good state kept and a clear error; a bad input is *rejected* when it raises an error naming the file / folder and
writes nothing. Every probe is recorded in a ledger; its counts are printed at the end of the module
(`faults tried / survived, bad inputs tried / rejected`). Probes that start subprocesses are marked slow.
"""
import ast
import errno
import json
import logging
import math
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from avb import data, io
from avb import train as tr
from avb.experiments import load_model
from avb.report import tables
from test_train import run_config as _tiny_run

ROOT = Path(__file__).resolve().parent.parent
SHARED = next((p.resolve() for p in data._repo_shared() if p.is_dir()), ROOT.parent / "shared" / "data")
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not beside the checkout")


# ------------------------------------------------------------------------------------------------------- ledger
class Ledger:
    def __init__(self):
        self.tried, self.passed = Counter(), Counter()

    def probe(self, kind: str):
        assert kind in ("fault", "bad input")
        self.tried[kind] += 1
        ledger = self

        class _Done:
            def __enter__(self):
                return self

            def __exit__(self, exc_type, *exc):
                if exc_type is None:
                    ledger.passed[kind] += 1
                return False
        return _Done()

    def summary(self) -> str:
        return (f"fault injection: faults tried {self.tried['fault']}, survived {self.passed['fault']}; "
                f"bad inputs tried {self.tried['bad input']}, rejected {self.passed['bad input']}")

    def pytest_terminal_summary(self, terminalreporter):  # registered as a plugin: printed at the end of the run
        terminalreporter.write_sep("-", self.summary())


@pytest.fixture(scope="module")
def ledger(request):
    book = Ledger()
    request.config.pluginmanager.register(book, "avb-fault-ledger")
    yield book


# ------------------------------------------------------------------------------------------------------ helpers
def run_config(method="avb_ac", steps=40, **train):
    """test_train's tiny run, checkpointing every 7 steps and logging every 3 (steps that do not divide evenly)."""
    return _tiny_run(method, steps, **{"checkpoint_every": 7, "log_every": 3, **train})


def weights(path):
    return io.load_torch(path)["model"]


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def metrics(folder):
    return pd.read_csv(Path(folder) / "train_metrics.csv").drop(columns=["images_per_s"])


def same_run(a, b):
    """Bit-identical model tensors and identical metrics (but the timing column) of two run folders."""
    assert same_weights(Path(a) / "model.pt", Path(b) / "model.pt")
    pd.testing.assert_frame_equal(metrics(a), metrics(b), check_exact=True)
    return True


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The undisturbed tiny run (40 steps; checkpoints every 7, rows every 3) with one thread."""
    out = tmp_path_factory.mktemp("ref")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tr.train(run_config(), out, progress=False)
    finally:
        torch.set_num_threads(n)
    return out


class SignalAt:
    """Wraps a batch source: sends ``sig`` to this process when batch ``at`` (1-based) is drawn."""

    def __init__(self, batches, at: int, sig=signal.SIGUSR1):
        self.b, self.at, self.sig, self.n = batches, at, sig, 0

    def __next__(self):
        self.n += 1
        if self.n == self.at:
            os.kill(os.getpid(), self.sig)
        return next(self.b)

    def state_dict(self):
        return self.b.state_dict()

    def load_state_dict(self, state):
        self.b.load_state_dict(state)


def train_with(run, out, wrap=lambda b: b):
    """avb.train.train with the batch source wrapped by ``wrap``; returns the wrapper (it counts its batches)."""
    torch.manual_seed(run["seed"])
    gen = torch.Generator().manual_seed(run["seed"] + 1)
    batches = wrap(data.Batches(data.load("mnist"), "train", run["train"]["batch_size"], gen))
    tr.fit(tr.build(run), batches, gen, run, out, progress=False)
    return batches


class Counting:
    def __init__(self, batches):
        self.b, self.n = batches, 0

    def __next__(self):
        self.n += 1
        return next(self.b)

    def state_dict(self):
        return self.b.state_dict()

    def load_state_dict(self, state):
        self.b.load_state_dict(state)


# -------------------------------------------------------------------------------- 1. kills at several stages
KILLER = r'''
import json, os, signal, sys
from pathlib import Path
import torch
from avb import io, train as tr
cfg, out, stage, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(1)
seen = {"n": 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def hit():
    seen["n"] += 1
    return seen["n"] == nth

if stage in ("checkpoint.pt", "model.pt"):        # mid-write: the temporary file half written, then SIGKILL
    orig = torch.save
    def save(obj, f, *a, **k):
        orig(obj, f, *a, **k)
        if Path(f).name.startswith(f".{stage}.") and hit():
            with open(f, "r+b") as fh:
                fh.truncate(os.path.getsize(f) // 2)
            die()
    torch.save = save
elif stage == "rotation":                          # between checkpoint.pt -> checkpoint.prev.pt and tmp -> checkpoint.pt
    orig_replace = os.replace
    def replace(a, b):
        orig_replace(a, b)
        if Path(b).name == "checkpoint.prev.pt" and hit():
            die()
    os.replace = replace
elif stage == "metrics":                           # after a checkpoint, before its metrics file
    orig_metrics = tr.write_metrics
    def write_metrics(rows, path):
        if hit():
            die()
        orig_metrics(rows, path)
    tr.write_metrics = write_metrics
tr.train(json.loads(Path(cfg).read_text()), out, progress=False)
'''

# (stage, which occurrence): the first and the last checkpoint write (40 steps, every 7: 6 of them), between the
# two renames of the 3rd, before the metrics file of the 2nd and of the last, and model.pt.
KILL_STAGES = [("checkpoint.pt", 1), ("checkpoint.pt", 6), ("rotation", 3), ("metrics", 2), ("metrics", 6),
               ("model.pt", 1)]


@pytest.mark.slow
@pytest.mark.parametrize("stage,nth", KILL_STAGES, ids=[f"{s}-{n}" for s, n in KILL_STAGES])
def test_sigkill_at_any_stage_then_rerun_finishes_bit_identically(stage, nth, tmp_path, reference, one_thread,
                                                                  ledger, caplog):
    with ledger.probe("fault"):
        cfg = tmp_path / "run.json"
        cfg.write_text(json.dumps(run_config()))
        out = tmp_path / "run"
        (tmp_path / "killer.py").write_text(KILLER)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        r = subprocess.run([sys.executable, str(tmp_path / "killer.py"), str(cfg), str(out), stage, str(nth)],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
        assert not (out / "model.pt").exists() or stage != "model.pt"
        with caplog.at_level(logging.WARNING, logger="avb.io"):
            tr.train(run_config(), out, progress=False)
        assert same_run(out, reference)
        if stage in ("checkpoint.pt", "model.pt"):  # the half-written temporary file was found and removed
            assert any("partial file left by a killed write" in m for m in caplog.messages), caplog.messages
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_checkpoint_at_the_end_rewrites_every_output(tmp_path, ledger, capsys):
    """`snakemake -F` / `--forcerun train` deletes model.pt and train_metrics.csv but not checkpoint.pt (at
    train.steps): the rerun must write both outputs again, from the checkpoint."""
    with ledger.probe("fault"):
        run = run_config("vae", steps=12)
        tr.train(run, tmp_path / "a", progress=False)
        before = {f: (tmp_path / "a" / f).read_bytes() for f in ("train_metrics.csv",)}
        ref_model = weights(tmp_path / "a" / "model.pt")
        for f in ("model.pt", "train_metrics.csv"):
            (tmp_path / "a" / f).unlink()
        capsys.readouterr()
        counted = train_with(run, tmp_path / "a", Counting)
        assert counted.n == 0  # nothing retrained
        assert "is at step 12 = train.steps" in capsys.readouterr().out
        assert (tmp_path / "a" / "train_metrics.csv").read_bytes() == before["train_metrics.csv"]
        got = weights(tmp_path / "a" / "model.pt")
        assert all(torch.equal(got[k], ref_model[k]) for k in ref_model)


# --------------------------------------------------------------------------------------- 2. crafted pickles
class Payload:
    """Unpickling this creates the file ``marker`` (``open(marker, "w")``): proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# How the payload is wrapped: torch's zip format; a plain pickle stream of protocol 2 (torch's legacy format: its
# unpickler reaches the payload's GLOBAL) or of protocol 4 (stops at the first opcode).
FORMATS = ["zip", "pickle-p2", "pickle-p4"]


def crafted(path: Path, marker: Path, fmt: str = "zip") -> Path:
    obj = {"run": run_config(), "step": 1, "model": {"w": torch.zeros(2)}, "metrics": [], "evil": Payload(marker)}
    if fmt == "zip":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=int(fmt[-1])))
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_payload_is_real(fmt, tmp_path):
    """The crafted file does run code when loaded the unsafe way: the probes below are honest."""
    marker = tmp_path / "pwned"
    path = crafted(tmp_path / "x.pt", marker, fmt)
    torch.load(path, weights_only=False) if fmt == "zip" else pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("target", ["checkpoint", "checkpoint.prev", "load_model", "figures",
                                    "evaluate"])
def test_crafted_pickle_never_runs(target, fmt, tmp_path, ledger):
    """Never executed, and an error naming the file: UnsafeFile where torch's unpickler meets the payload, else
    (protocol 4: an opcode it does not know) CorruptFile; a crafted checkpoint.prev.pt is never skipped over."""
    refused = io.CorruptFile if fmt == "pickle-p4" else io.UnsafeFile
    with ledger.probe("bad input"):
        marker = tmp_path / "pwned"
        out = tmp_path / "run"
        out.mkdir()
        if target in ("checkpoint", "checkpoint.prev"):
            if target == "checkpoint.prev":  # checkpoint.pt corrupt: the fallback must not load a crafted prev
                (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
            path = crafted(out / f"{target}.pt", marker, fmt)
            with pytest.raises(refused, match=str(path)):
                tr.train(run_config("vae", steps=5), out, progress=False)
            assert not (out / "model.pt").exists()
        else:
            path = crafted(out / "model.pt", marker, fmt)
            with pytest.raises(refused, match=str(path)):
                if target == "load_model":
                    load_model(path)
                elif target == "figures":
                    from avb.report import figures
                    figures.sample_grid(path, 4)
                else:
                    from avb.evaluate import evaluate
                    evaluate(path, eval_settings(), tmp_path / "e.csv", tmp_path / "e.json", progress=False)
            assert not (tmp_path / "e.json").exists()
        assert not marker.exists(), "the pickle's code ran"


def test_existing_outputs_hold_tensors_and_plain_values_only(tmp_path, ledger):
    """What fit writes loads with weights_only=True; so does a checkpoint of the previous format (no running sums)."""
    with ledger.probe("fault"):
        run = run_config("avb", steps=10, checkpoint_every=4)
        tr.train(run, tmp_path / "a", progress=False)
        for f in ("model.pt", "checkpoint.pt", "checkpoint.prev.pt"):
            assert isinstance(torch.load(tmp_path / "a" / f, weights_only=True), dict)
        # the previous format: the same keys less acc / n_acc / tail (checkpoint at step 8 of 10)
        ck = io.load_torch(tmp_path / "a" / "checkpoint.prev.pt")
        assert ck["step"] == 8
        for k in ("acc", "n_acc", "tail"):
            ck.pop(k)
        (tmp_path / "b").mkdir()
        torch.save(ck, tmp_path / "b" / "checkpoint.pt")
        tr.train(run, tmp_path / "b", progress=False)
        assert same_weights(tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt")


# ---------------------------------------------------------------------------------------------- 3. bad data
def _mirror(src: Path, dst: Path, skip=()) -> Path:
    """A folder of symlinks to ``src``'s files (nothing is copied), less ``skip``."""
    for f in src.rglob("*"):
        if f.is_file() and f.relative_to(src).as_posix() not in skip:
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / f.relative_to(src)).symlink_to(f)
    return dst


@pytest.fixture
def fresh_data_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "_CACHE", {})
    monkeypatch.delenv("AVB_DATA_DIR", raising=False)
    monkeypatch.setenv("AVB_CACHE_DIR", str(tmp_path / "cache"))  # a download would land here: it must not happen

    def no_download(*a, **k):
        raise AssertionError("a download was attempted")
    monkeypatch.setattr(data, "_download_idx", no_download)
    monkeypatch.setattr(data, "_download_file", no_download)


@needs_shared
@pytest.mark.parametrize("how", ["config", "env"])
@pytest.mark.parametrize("case", ["missing folder", "empty folder", "no labels file"])
def test_explicit_data_dir_is_the_only_source(case, how, tmp_path, monkeypatch, fresh_data_cache, ledger):
    with ledger.probe("bad input"):
        root = tmp_path / "data"
        if case == "empty folder":
            root.mkdir()
        elif case == "no labels file":
            _mirror(SHARED, root, skip={"MNIST/raw/t10k-labels-idx1-ubyte.gz"})
        if how == "env":
            monkeypatch.setenv("AVB_DATA_DIR", str(root))
        want = "t10k-labels-idx1-ubyte" if case == "no labels file" else (
            "train-images-idx3-ubyte" if case == "empty folder" else "does not exist")
        with pytest.raises(data.DataError, match=str(root)) as e:
            data.load("mnist", data_dir=root if how == "config" else None)
        assert want in str(e.value) and "only source" in str(e.value)


@needs_shared
@pytest.mark.parametrize("name", ["MNIST/raw/train-labels-idx1-ubyte.gz", "MNIST/raw/t10k-labels-idx1-ubyte.gz",
                                  "MNIST/raw/train-images-idx3-ubyte.gz",
                                  "binarized_mnist/binarized_mnist_valid.amat.gz"])
@pytest.mark.parametrize("fault", ["truncated", "flipped byte"])
def test_corrupt_or_truncated_data_file_is_named(name, fault, tmp_path, fresh_data_cache, ledger):
    with ledger.probe("bad input"):
        root = _mirror(SHARED, tmp_path / "data", skip={name})
        raw = (SHARED / name).read_bytes()
        bad = raw[: len(raw) // 2] if fault == "truncated" else raw[:-20] + bytes([raw[-20] ^ 1]) + raw[-19:]
        (root / name).write_bytes(bad)
        dataset = "static_mnist" if "binarized" in name else "mnist"
        with pytest.raises(data.DataError, match=str(root / name)):
            data.load(dataset, data_dir=root)


@needs_shared
def test_verified_data_says_its_source(tmp_path, fresh_data_cache):
    root = _mirror(SHARED, tmp_path / "data")
    assert data.load("static_mnist", data_dir=root).source == f"config data_dir: {root / 'binarized_mnist'}"
    assert data.load("mnist", data_dir=root).source == f"config data_dir: {root / 'MNIST' / 'raw'}"


# ------------------------------------------------------------------------------------------------ 4. signals
@pytest.fixture
def caught():
    """While the test runs, SIGTERM / SIGUSR1 outside fit() are recorded instead of killing the test run."""
    got = []

    def record(signum, frame):
        got.append(signum)
    old = {s: signal.signal(s, record) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield record, got
    for s, h in old.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_writes_a_checkpoint_at_the_current_step(sig, tmp_path, reference, one_thread, ledger, caught):
    record, outside = caught
    with ledger.probe("fault"):
        out = tmp_path / "run"
        with pytest.raises(tr.TrainingInterrupted, match=rf"{sig.name} at step 17 of 40"):
            train_with(run_config(), out, lambda b: SignalAt(b, 17, sig))
        assert not outside, "the signal reached the handler outside fit()"
        assert io.load_torch(out / "checkpoint.pt")["step"] == 17  # not 14, the last periodic one
        assert not (out / "model.pt").exists()
        assert signal.getsignal(sig) is record  # the handlers from before fit() are back
        tr.train(run_config(), out, progress=False)
        assert same_run(out, reference)


@pytest.mark.slow
def test_sigterm_to_a_real_avb_train_process(tmp_path, ledger):
    with ledger.probe("fault"):
        run = run_config("avb_ac", steps=250, checkpoint_every=20, log_every=10)
        cfg = tmp_path / "run.json"
        cfg.write_text(json.dumps(run))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's avb (cwd elsewhere: it would go first)

        def cmd(out):
            return [sys.executable, "-m", "avb.cli", "train", str(cfg), "--out", str(out), "--threads", "1"]

        subprocess.run(cmd(tmp_path / "ref"), env=env, cwd=tmp_path, check=True, capture_output=True, timeout=300)
        out = tmp_path / "stopped"
        proc = subprocess.Popen(cmd(out), env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.time() + 120
        while not (out / "train_metrics.csv").exists() and time.time() < deadline:  # progress: first checkpoint
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode != 0, err
        assert not (out / "model.pt").exists(), "the run finished before the signal; make it longer"
        step = io.load_torch(out / "checkpoint.pt")["step"]
        assert 20 <= step < 250 and f"SIGTERM at step {step} of 250" in err, err
        subprocess.run(cmd(out), env=env, cwd=tmp_path, check=True, capture_output=True, timeout=300)
        assert same_run(out, tmp_path / "ref")


def test_slurm_profile_signals_the_training_process():
    """The profile asks SLURM for SIGTERM ahead of the time limit, to the job steps (not "B:", the batch shell
    only), in a form the executor plugin accepts and puts on the sbatch line."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    prof = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    extra = prof["default-resources"]["slurm_extra"]
    value = ast.literal_eval(extra)  # Snakemake evaluates resource expressions: the quotes make it a string
    assert value.startswith("--signal=TERM@") and "B:" not in value
    lead = int(value.rsplit("@", 1)[1])
    assert 30 <= lead <= 600  # more than a checkpoint write needs, a small part of any job

    class Res(dict):
        __getattr__ = dict.get
    job = type("Job", (), {"resources": Res(slurm_extra=value, mem_mb=1000, runtime=10), "threads": 1,
                           "name": "train", "is_group": lambda self: False})()
    validate_slurm_extra(job)
    settings = type("S", (), {"requeue": False, "no_requeue": False, "qos": None, "reservation": None})()
    call = get_submit_command(job, {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "c", "account": "",
                                    "partition": "", "workdir": "."}, settings)
    assert value in call
    # TERM, not USR1: the Snakemake inside the job step turns SIGTERM into "finish running jobs" and has no
    # SIGUSR1 handler (USR1 would kill it, and with it the step); training handles both.
    assert set(tr.STOP_SIGNALS) == {signal.SIGTERM, signal.SIGUSR1}


# ----------------------------------------------------------------------------------------------- 5. non-finite
def poison_after(monkeypatch, k: int):
    """The primal optimiser's k-th step leaves +inf in one parameter (the losses up to it stay finite)."""
    orig = tr.make_optimizers

    def make(model, t):
        opt_p, opt_a = orig(model, t)
        step, n = opt_p.step, {"i": 0}

        def poisoned(*a, **kw):
            res = step(*a, **kw)
            n["i"] += 1
            if n["i"] == k:
                with torch.no_grad():
                    next(iter(model.primal_parameters())).view(-1)[0] = math.inf
            return res
        opt_p.step = poisoned
        return opt_p, opt_a
    monkeypatch.setattr(tr, "make_optimizers", make)


def test_nonfinite_after_the_last_update_writes_nothing(tmp_path, monkeypatch, ledger):
    with ledger.probe("bad input"):
        poison_after(monkeypatch, 1)
        out = tmp_path / "run"
        with pytest.raises(tr.TrainingDiverged, match=rf"{out}: step 1: parameters not finite"):
            tr.train(run_config("vae", steps=1), out, progress=False)
        assert list(out.iterdir()) == []


def test_huge_learning_rate_stops_at_step_one(tmp_path, ledger):
    with ledger.probe("bad input"):
        out = tmp_path / "run"
        with pytest.raises(tr.TrainingDiverged, match=rf"{out}: step 1: parameters (not finite|diverged)"):
            tr.train(run_config("vae", steps=1, lr=1e38), out, progress=False)
        assert list(out.iterdir()) == []


def test_nonfinite_mid_run_names_the_first_step_and_keeps_the_checkpoint(tmp_path, monkeypatch, ledger):
    with ledger.probe("bad input"):
        poison_after(monkeypatch, 16)
        out = tmp_path / "run"
        with pytest.raises(tr.TrainingDiverged, match=r"step 16: parameters not finite .*checkpoint \(step 14\)"):
            tr.train(run_config("vae", steps=40), out, progress=False)
        assert io.load_torch(out / "checkpoint.pt")["step"] == 14 and not (out / "model.pt").exists()


def eval_settings():
    from avb import config
    return config.validate({"preset": "t", "eval": {
        "n_test": 4, "batch_size": 4, "ais_steps": 2, "ais_chains": 1, "elbo_samples": 1, "iwae_samples": 0,
        "bdmc_images": 0, "device": "cpu"}})["eval"]


def test_evaluate_refuses_nonfinite_results(tmp_path, monkeypatch, ledger):
    from avb import evaluate as ev
    with ledger.probe("bad input"):
        model = tr.train(run_config("vae", steps=3), tmp_path / "run", progress=False)
        orig = ev.elbo_per_image

        def nan_elbo(*a, **k):
            e = orig(*a, **k)
            e[2] = math.nan
            return e
        monkeypatch.setattr(ev, "elbo_per_image", nan_elbo)
        with pytest.raises(io.NonFiniteResult, match=rf"{model}: elbo is not finite"):
            ev.evaluate(model, eval_settings(), tmp_path / "e.csv", tmp_path / "e.json", progress=False)
        assert not (tmp_path / "e.csv").exists() and not (tmp_path / "e.json").exists()


def test_a_model_with_nonfinite_parameters_is_refused(tmp_path, ledger):
    with ledger.probe("bad input"):
        model = tr.train(run_config("vae", steps=3), tmp_path / "run", progress=False)
        d = io.load_torch(model)
        k = next(iter(d["model"]))
        d["model"][k].view(-1)[0] = math.nan
        torch.save(d, model)
        with pytest.raises(io.NonFiniteResult, match=str(model)):
            load_model(model)


@pytest.mark.parametrize("value", [math.nan, math.inf, None])
def test_report_refuses_nonfinite_eval_json(value, tmp_path, ledger):
    with ledger.probe("bad input"):
        good = {c: 1.0 for c in tables.COLUMNS} | {"method": "vae", "dataset": "mnist", "z_dim": 2, "seed": 0}
        (tmp_path / "a.json").write_text(json.dumps(good))
        (tmp_path / "b.json").write_text(json.dumps(good | {"log_px_ais": value}))
        tables.collect([tmp_path / "a.json"])
        with pytest.raises(io.NonFiniteResult, match=str(tmp_path / "b.json")):
            tables.collect([tmp_path / "a.json", tmp_path / "b.json"])


# ---------------------------------------------------------------------------------------------- 6. full disk
@pytest.mark.parametrize("err", [OSError(errno.ENOSPC, "No space left on device"),
                                 RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4352 vs "
                                              "4240")], ids=["ENOSPC", "torch-writer"])
def test_full_disk_while_checkpointing(err, tmp_path, monkeypatch, reference, one_thread, ledger):
    with ledger.probe("fault"):
        out = tmp_path / "run"
        orig, n = torch.save, {"i": 0}

        def save(obj, f, *a, **k):
            n["i"] += 1
            if n["i"] == 3:  # the third checkpoint: half a file, then the error
                Path(f).write_bytes(b"PK\x03\x04" + b"\0" * 100)
                raise err
            return orig(obj, f, *a, **k)
        monkeypatch.setattr(torch, "save", save)
        with pytest.raises(io.WriteFailed, match=rf"could not write {out / 'checkpoint.pt'}: .*free on its file "
                                                 rf"system \(the previous checkpoint.pt is kept\)"):
            tr.train(run_config(), out, progress=False)
        monkeypatch.setattr(torch, "save", orig)
        assert io.load_torch(out / "checkpoint.pt")["step"] == 14
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
        tr.train(run_config(), out, progress=False)  # room again: the run finishes as if nothing happened
        assert same_run(out, reference)


def test_full_disk_while_writing_metrics_names_the_file(tmp_path, monkeypatch, ledger):
    with ledger.probe("fault"):
        def full(rows, path):
            with io.atomic_path(path) as tmp:
                tmp.write_text("step\n")
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
        monkeypatch.setattr(tr, "write_metrics", full)
        with pytest.raises(io.WriteFailed, match=r"train_metrics\.csv.*No space left on device.* free"):
            tr.train(run_config("vae", steps=5), tmp_path, progress=False)


# ------------------------------------------------------------------------------------- corrupt checkpoints
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not a dict", "missing keys"])
def test_corrupt_checkpoint_falls_back_to_the_previous_one(damage, tmp_path, reference, one_thread, ledger, capsys,
                                                           caught):
    with ledger.probe("fault"):
        out = tmp_path / "run"
        with pytest.raises(tr.TrainingInterrupted):
            train_with(run_config(), out, lambda b: SignalAt(b, 23))
        assert io.load_torch(out / "checkpoint.prev.pt")["step"] == 21
        ck = out / "checkpoint.pt"
        raw = ck.read_bytes()
        if damage == "truncated":
            ck.write_bytes(raw[: len(raw) // 3])
        elif damage == "garbage":
            ck.write_bytes(random.Random(0).randbytes(len(raw)))
        elif damage == "empty":
            ck.write_bytes(b"")
        elif damage == "not a dict":
            torch.save([1, 2, 3], ck)
        else:
            torch.save({"step": 23}, ck)
        capsys.readouterr()
        tr.train(run_config(), out, progress=False)
        log = capsys.readouterr().out
        assert str(ck) in log and "using the previous checkpoint" in log and "step 21" in log, log
        assert (out / "checkpoint.corrupt.pt").exists()
        assert same_run(out, reference)


def test_no_readable_checkpoint_is_an_error_naming_both(tmp_path, ledger):
    with ledger.probe("bad input"):
        for f in ("checkpoint.pt", "checkpoint.prev.pt"):
            (tmp_path / f).write_bytes(b"not a torch file")
        with pytest.raises(io.CorruptFile, match="checkpoint.pt.*checkpoint.prev.pt"):
            tr.train(run_config("vae", steps=5), tmp_path, progress=False)
        assert not (tmp_path / "model.pt").exists()


# ----------------------------------------------------------------------------------------- stale temp files
def test_stale_temporary_files_are_removed_at_start(tmp_path, caplog, ledger):
    with ledger.probe("fault"):
        stale = [".checkpoint.pt.ab12cd_3.tmp", ".model.pt.zzzzzzzz.tmp", ".train_metrics.csv.0a1b2c3d.tmp",
                 ".samples.npz.k2j3h4g5.tmp"]
        kept = ["notes.tmp", ".hidden", "checkpoint.pt.tmp", ".x.tmp"]
        for f in stale + kept:
            (tmp_path / f).write_bytes(b"partial")
        with caplog.at_level(logging.WARNING, logger="avb.io"):
            tr.train(run_config("vae", steps=3), tmp_path, progress=False)
        names = {p.name for p in tmp_path.iterdir()}
        assert not names & set(stale) and set(kept) <= names
        assert all(any(f in m for m in caplog.messages) for f in stale)


# ------------------------------------------------------------------------------------------ 7. train longer
def test_raising_steps_continues_the_run(tmp_path, ledger, capsys):
    """20 steps, then the same config with 40: 20 more steps are drawn, and the result is the 40-step run's, bit
    for bit (model tensors and metrics; rows every 3 steps and checkpoints every 7 exercise the running sums)."""
    with ledger.probe("fault"):
        train_with(run_config(steps=20), tmp_path / "a")
        assert list(metrics(tmp_path / "a").step)[-2:] == [18, 20]  # a 2-step tail row at the end
        counted = train_with(run_config(steps=40), tmp_path / "a", Counting)
        assert counted.n == 20, "the run restarted instead of continuing"
        assert "train.steps raised from 20 to 40" in capsys.readouterr().out
        train_with(run_config(steps=40), tmp_path / "b")
        assert same_run(tmp_path / "a", tmp_path / "b")
        assert 20 not in list(metrics(tmp_path / "a").step)


@pytest.mark.parametrize("change", [{"lr": 5e-4}, {"steps": 10}, {"batch_size": 8}])
def test_any_other_change_restarts_and_says_why(change, tmp_path, capsys):
    train_with(run_config("vae", steps=20), tmp_path / "a")
    run = run_config("vae", **{"steps": 20, **change})
    capsys.readouterr()
    counted = train_with(run, tmp_path / "a", Counting)
    log = capsys.readouterr().out
    assert counted.n == run["train"]["steps"] and "starting afresh" in log
    key = next(iter(change))
    assert (f"train.{key}" in log) if key != "steps" else "beyond train.steps = 10" in log
    train_with(run, tmp_path / "b")
    assert same_weights(tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt")
