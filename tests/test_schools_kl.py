"""Figure 3 machinery (avb/schools_kl.py): training snapshots leave training untouched and survive a resume; the
Gaussian-q KL is exact for a Gaussian posterior."""
import json

import numpy as np
import pytest
import torch

from avb import experiments, knn
from avb import schools as S
from avb import schools_kl as K


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def _run(steps=30, every=10, checkpoint_every=10):
    return S.run_config({"seed": 3, "device": "cpu", "n_samples": 100, "kl_every": every, "kl_samples": 50,
                         "advi": {"steps": steps, "batch_size": 8, "lr": 0.01, "adam_beta1": 0.9, "init_range": 2.0,
                                  "checkpoint_every": checkpoint_every, "log_every": 5}}, "advi_fullrank")


def _fit(run, out, on_step=None):
    from avb.train import fit

    torch.manual_seed(run["seed"])
    model = experiments.build(run)
    snaps = K.Snapshots(model, run, out / K.SNAPSHOT_FILE) if on_step else None
    if snaps is not None and 0 not in snaps.samples:
        snaps.take(0)
    fit(model, S.DummyBatches(8, torch.device("cpu")), torch.Generator().manual_seed(4), run, out, progress=False,
        on_step=snaps)
    return model, snaps


def test_snapshot_steps():
    assert K.snapshot_steps(30, 10) == [0, 10, 20, 30]
    assert K.snapshot_steps(25, 10) == [0, 10, 20, 25]
    assert K.snapshot_steps(5, 10) == [0, 5]


def test_snapshots_leave_training_bit_identical_and_hold_the_due_iterations(tmp_path):
    plain, _ = _fit(_run(), tmp_path / "plain")
    snapped, snaps = _fit(_run(), tmp_path / "snap", on_step=True)
    a, b = plain.state_dict(), snapped.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    method, steps, draws = K.read_snapshots(tmp_path / "snap" / K.SNAPSHOT_FILE)
    assert method == "advi_fullrank" and steps.tolist() == [0, 10, 20, 30] and draws.shape == (4, 50, 10)
    assert not snaps.missing()
    # the last snapshot is a draw of the trained model: its mean is near the model's location
    assert np.abs(draws[-1].mean(0) - plain.loc.detach().numpy()).max() < 1.0
    assert not np.allclose(draws[0], draws[-1])


def test_interrupted_fit_resumes_with_the_same_snapshots(tmp_path, monkeypatch):
    from avb import train as tr

    _fit(_run(), tmp_path / "ref", on_step=True)
    orig, calls = tr.train_step, {"n": 0}

    def dies_at_25(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt
        return orig(*args, **kwargs)

    monkeypatch.setattr(tr, "train_step", dies_at_25)
    with pytest.raises(KeyboardInterrupt):
        _fit(_run(), tmp_path / "b", on_step=True)
    monkeypatch.setattr(tr, "train_step", orig)
    assert K.read_snapshots(tmp_path / "b" / K.SNAPSHOT_FILE)[1].tolist() == [0, 10, 20]
    _fit(_run(), tmp_path / "b", on_step=True)    # resumes from the checkpoint at step 20
    _, s_ref, d_ref = K.read_snapshots(tmp_path / "ref" / K.SNAPSHOT_FILE)
    _, s_b, d_b = K.read_snapshots(tmp_path / "b" / K.SNAPSHOT_FILE)
    assert s_ref.tolist() == s_b.tolist() and np.array_equal(d_ref, d_b)
    # snapshots written for another run config are dropped, not mixed in
    other = _run(every=15)
    assert K.Snapshots(experiments.build(other), other, tmp_path / "b" / K.SNAPSHOT_FILE).samples == {}
    with open(tmp_path / "b" / K.SNAPSHOT_FILE, "rb") as f:
        assert json.loads(str(np.load(f)["run"]))["snapshots"] == {"every": 10, "samples": 50}


def test_raising_steps_continues_with_the_earlier_snapshots_though_snakemake_deleted_them(tmp_path):
    """A fit of 20 steps (snapshots 0, 15, 20), its outputs deleted (as Snakemake does before rerunning the job whose
    steps were raised), then 40 steps: it continues from the checkpoint and its snapshots are those 40 steps from
    scratch take (0, 15, 30, 40), bit for bit; the 20-step run's last one (20) is not one of them."""
    _fit(_run(steps=40, every=15), tmp_path / "ref", on_step=True)
    _fit(_run(steps=20, every=15), tmp_path / "b", on_step=True)
    assert K.read_snapshots(tmp_path / "b" / K.SNAPSHOT_FILE)[1].tolist() == [0, 15, 20]
    for name in (K.SNAPSHOT_FILE, "model.pt", "train_metrics.csv"):
        (tmp_path / "b" / name).unlink()
    _fit(_run(steps=40, every=15), tmp_path / "b", on_step=True)
    _, s_ref, d_ref = K.read_snapshots(tmp_path / "ref" / K.SNAPSHOT_FILE)
    _, s_b, d_b = K.read_snapshots(tmp_path / "b" / K.SNAPSHOT_FILE)
    assert s_ref.tolist() == s_b.tolist() == [0, 15, 30, 40] and np.array_equal(d_ref, d_b)


def test_gaussian_kl_to_posterior_matches_the_closed_form():
    """For Gaussian draws and a Gaussian target the plug-in -H(q_hat) - E log p matches KL(q || p) within 4 standard
    errors plus the plug-in bias of the fitted Gaussian's entropy (|bias| < d (d + 3) / (4 N) = 0.0016 here)."""
    g = np.random.default_rng(0)
    d, n = 10, 20000
    a = g.standard_normal((d, d))
    c0, c1 = a @ a.T / (2 * d) + 0.5 * np.eye(d), np.diag(np.linspace(0.5, 2.0, d))
    m0, m1 = np.full(d, 0.2), np.zeros(d)
    z = m0 + g.standard_normal((n, d)) @ np.linalg.cholesky(c0).T
    c1_inv, logdet1 = np.linalg.inv(c1), np.linalg.slogdet(2 * np.pi * c1)[1]

    def log_p(x):
        r = x - m1
        return -0.5 * np.einsum("ni,ij,nj->n", r, c1_inv, r) - 0.5 * logdet1

    kl, se = K.gaussian_kl_to_posterior(z, log_p)
    assert abs(kl - knn.gaussian_kl(m0, c0, m1, c1)) < 4 * se + d * (d + 3) / (4 * n), (kl, se)


def test_gaussian_kl_on_eight_schools_uses_the_exact_posterior_density():
    g = np.random.default_rng(0)
    ref = S.exact_posterior(201)
    z = ref["mean"] + g.standard_normal((20000, 10)) * ref["sd"]
    kl, _ = K.gaussian_kl_to_posterior(z, K.schools_log_posterior(ref["log_evidence"]))
    log_q = -0.5 * (((z - ref["mean"]) / ref["sd"]) ** 2).sum(1) - np.log(ref["sd"]).sum() - 5 * np.log(2 * np.pi)
    log_p = S.log_joint(torch.as_tensor(z)).numpy() - ref["log_evidence"]
    assert kl == pytest.approx(float((log_q - log_p).mean()), abs=0.01)   # the fitted q_hat is q up to sampling
    assert kl > 1   # a Gaussian with the exact marginal sds is far from the funnel-shaped, bimodal-in-tau posterior


def test_paper_preset_trains_every_method_for_figure_3s_iterations():
    import yaml
    from pathlib import Path

    from avb.report import published
    from avb.config import validate

    raw = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "paper.yaml").read_text())
    cfg = validate({"preset": "paper", "schools": raw["schools"]})["schools"]
    for method in S.METHODS:
        run = S.run_config(cfg, method)
        assert run["train"]["steps"] == published.FIGURE3_ITERATIONS, method
        assert K.snapshot_steps(run["train"]["steps"], run["snapshots"]["every"]) == list(range(0, 50_001, 5000))
