"""The train speed options on the CPU (issue 15 item 4; avb/speed.py): defaults train as before, bf16 autocast
trains with finite losses and changes the numbers (it is applied), the compiled step matches the eager one within
float tolerance. GPU figures: tests/test_gpu.py and benchmarks/gpu_throughput.py, on a GPU only."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from avb import experiments as ex, speed, train as tr
from test_train import run_config, same, weights

X_DIM = 784


def test_explicit_defaults_train_bit_identically_to_no_keys(tmp_path):
    """Every speed key at its default (and adam: for, torch's own CPU choice) = a run config without them."""
    plain = tr.train(run_config("avb_ac", steps=6), tmp_path / "plain", progress=False)
    explicit = tr.train(run_config("avb_ac", steps=6, **speed.DEFAULTS), tmp_path / "explicit", progress=False)
    loop = tr.train(run_config("avb_ac", steps=6, adam="for"), tmp_path / "for", progress=False)
    assert same(weights(plain), weights(explicit)) and same(weights(plain), weights(loop))
    cut = lambda d: pd.read_csv(tmp_path / d / "train_metrics.csv").drop(columns="images_per_s")  # noqa: E731
    pd.testing.assert_frame_equal(cut("plain"), cut("explicit"))


def test_cpu_has_no_job_flags_and_no_channels_last():
    """tf32, cudnn_benchmark and channels_last touch CUDA only."""
    model = ex.build({**run_config("vae"), "model": {"arch": "conv0"}})
    opts = speed.options({"precision": "tf32", "cudnn_benchmark": True, "channels_last": True})
    before = torch.backends.cudnn.benchmark
    with speed.job_flags(opts, torch.device("cpu"), model):
        assert torch.backends.cudnn.benchmark == before
    speed.prepare(model, opts, torch.device("cpu"))
    assert all(p.is_contiguous() for p in model.parameters())
    assert speed.adam_kwargs(speed.options({}), torch.device("cpu")) == {}
    assert speed.adam_kwargs(speed.options({}), torch.device("cuda")) == {"fused": True}
    with pytest.raises(ValueError, match="train.precision"):
        speed.options({"precision": "fp16"})


@pytest.mark.parametrize("method", ["vae", "avb_ac"])
def test_bf16_autocast_trains_with_finite_losses_and_is_applied(tmp_path, method):
    run = run_config(method, steps=6, log_every=3, precision="bf16")
    tr.train(run, tmp_path / "bf16", progress=False)
    tr.train(run_config(method, steps=6, log_every=3), tmp_path / "fp32", progress=False)
    a, b = (pd.read_csv(tmp_path / d / "train_metrics.csv") for d in ("bf16", "fp32"))
    losses = ["loss_primal"] + (["loss_adversary"] if method != "vae" else [])
    assert a[losses].notna().all().all() and torch.isfinite(torch.tensor(a[losses].values)).all()
    assert (a.loss_primal - b.loss_primal).abs().max() < 0.05 * b.loss_primal.abs().max()  # close to fp32 ...
    assert not a.loss_primal.equals(b.loss_primal)  # ... but not fp32 itself: the autocast ran


def _steps(model, opts, backend, n=4, seed=5):
    """``n`` training steps of ``model`` (a fresh copy per call, same seed) as the loop takes them: losses per
    step and the final parameters."""
    torch.manual_seed(seed)
    opt_p, opt_a = tr.make_optimizers(model, {"lr": 1e-3, "lr_adversary": 1e-3, "adam_beta1": 0.5})
    forward = speed.compiled(model, opts, backend)
    g = torch.Generator().manual_seed(1)
    xs = [(torch.rand(16, X_DIM, generator=g) < 0.3).float() for _ in range(n)]
    out = []
    for i, x in enumerate(xs):
        s = tr.train_step(forward, x, opt_p, opt_a, model.primal_parameters(), model.adversary_parameters(),
                          step=i + 1, check=False)
        out.append(torch.stack([s.primal.detach()] + ([s.adversary.detach()] if s.adversary is not None else [])))
    return torch.stack(out), [p.detach().clone() for p in model.parameters()]


def _inductor_reason() -> str | None:
    if shutil.which("cc") is None and shutil.which("gcc") is None and shutil.which("clang") is None:
        return "inductor needs a C compiler on the CPU and none is on PATH (the aot_eager_decomp_partition case runs)"
    try:
        import torch._inductor  # noqa: F401
    except Exception as err:  # pragma: no cover - a torch build without inductor
        return f"torch inductor unavailable: {err}"
    return None


# aot_eager_decomp_partition: AOTAutograd without a C compiler. Plain aot_eager fails here on avb_ac (torch 2.14: its
# backward views a non-contiguous elu_backward gradient after the adversary-only backward); with decompositions it
# runs, as inductor (which decomposes too) does.
@pytest.mark.parametrize("backend", ["aot_eager_decomp_partition", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("method", ["vae", "avb_ac"])
def test_compiled_step_matches_the_eager_step(method, backend, request):
    """train.compile: the compiled forward (its backward through AOTAutograd) gives the eager step's losses and
    parameters within float tolerance over a few updates. Inductor draws its own random numbers unless told to
    use eager's (fallback_random), which the comparison needs."""
    if backend == "inductor":
        reason = _inductor_reason()
        if reason:
            pytest.skip(reason)
        import torch._inductor.config as inductor_config
        # torch's own config patch (monkeypatch's undo deletes the key from inductor's config: later compiles fail)
        patch = inductor_config.patch(fallback_random=True)
        patch.__enter__()
        request.addfinalizer(lambda: patch.__exit__(None, None, None))
    torch._dynamo.reset()
    run = run_config(method)
    torch.manual_seed(0)
    eager_model = ex.build(run)
    init = [p.detach().clone() for p in eager_model.parameters()]
    torch.manual_seed(0)
    compiled_model = ex.build(run)
    l_e, p_e = _steps(eager_model, speed.options({}), None)
    l_c, p_c = _steps(compiled_model, speed.options({"compile": "default"}), None if backend == "inductor"
                      else backend)
    assert torch.isfinite(l_c).all()
    torch.testing.assert_close(l_c, l_e, rtol=1e-4, atol=1e-5)
    for a, b in zip(p_c, p_e):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    moved = max((a - b).abs().max().item() for a, b in zip(p_e, init))
    assert moved > 1e-4  # the steps changed the parameters (the comparison is not of two untouched models)
