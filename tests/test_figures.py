"""Per-run figures: the Figure 7 replica (training images beside samples) and latent interpolations between test
images, as the official training script writes them (8 x 8 grids of decoder Bernoulli means)."""
import matplotlib.image
import numpy as np
import pytest
import torch

from avb import cli, io
from avb import evaluate as ev
from avb import experiments as ex
from avb.report import figures

Z, SEED = 3, 5
SMALL = dict(arch="mlp", hidden=16, eps_dim=4, eps_nbasis=2, adv_hidden=8, adv_embed=8, adv_layers=1)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Untrained small models of each method, saved as model.pt (the figures only need a decoder and an encoder)."""
    out = tmp_path_factory.mktemp("models")
    paths = {}
    for method in ex.METHODS:
        torch.manual_seed(0)
        model_cfg = {**SMALL, "aux_head_scale": 0.1} if method == "auxvae" else SMALL
        run = {"method": method, "dataset": "mnist", "z_dim": Z, "seed": 0, "data_dir": None, "model": model_cfg,
               "train": {"steps": 0, "batch_size": 32}}
        model = ex.build(run)
        with torch.no_grad():  # untrained AVB heads start at std 1e-5 (z ~ 0 for every image): spread the codes,
            enc = model.encoder  # and the decoder's outputs, so that different codes decode to different images
            if method == "avb":
                enc.net.out.weight.normal_(0.0, 0.3)
            elif method == "avb_ac":
                enc.z0.weight.normal_(0.0, 0.3)
                enc.a.bias.add_(3.0)
            model.decoder.net[-1].weight.mul_(20.0)
        paths[method] = out / f"{method}.pt"
        io.save_torch({"run": run, "step": 0, "model": model.state_dict()}, paths[method])
    return paths


def test_interpolate_is_the_official_line_from_z2_to_z1():
    z1, z2 = torch.randn(4, Z), torch.randn(4, Z)
    path = figures.interpolate(z1, z2, 8).view(4, 8, Z)
    assert torch.equal(path[:, 0], z2) and torch.allclose(path[:, -1], z1)
    alpha = torch.linspace(0, 1, 8)
    for j in range(8):
        assert torch.allclose(path[:, j], alpha[j] * z1 + (1 - alpha[j]) * z2)


@pytest.mark.parametrize("method", ex.METHODS)
def test_interpolation_endpoints_decode_from_the_two_images_codes(model_files, method):
    """Row i runs from the decoded code of test image 8 + i to that of test image i; each code is one draw of
    q(z|x) (VAE: mean + std * eps; AVB: the encoder at one noise draw), reproducible from the seed."""
    model, _ = figures.load_model(model_files[method])
    x = ev.test_images({"dataset": "mnist"}, 16, 0)
    grid, z1, z2 = figures.interpolation_grid(model, x[:8], x[8:], SEED)
    assert grid.shape == (8, 8, 28, 28)
    with torch.no_grad():  # the draws recomputed by hand, in one batch of 16 as the official code encodes them
        torch.manual_seed(SEED)
        if method == "vae":
            mean, log_std = model.encoder(x)
            z = mean + torch.randn(16, Z) * torch.exp(log_std)
        elif method == "iaf":  # the official z_real: the flow's output at one draw of the Gaussian base
            mean, log_std, a = model.encoder(x)
            z = model.flow(mean + torch.randn(16, Z) * torch.exp(log_std), a)[0]
        elif method == "auxvae":  # a ~ q(a|x), then z ~ q(z|x, a)
            a_mean, a_log_std = model.encoder_aux(x)
            z_mean, z_log_std = model.encoder(x, a_mean + torch.randn(16, model.a_dim) * torch.exp(a_log_std))
            z = z_mean + torch.randn(16, Z) * torch.exp(z_log_std)
        else:
            z = model.encoder(x)[0] if method == "avb_ac" else model.encoder(x)
        first, last = torch.sigmoid(model.decoder(z[8:])), torch.sigmoid(model.decoder(z[:8]))
    assert torch.allclose(z1, z[:8]) and torch.allclose(z2, z[8:])
    assert np.allclose(grid[:, 0].reshape(8, -1), first.numpy(), atol=1e-6)
    assert np.allclose(grid[:, -1].reshape(8, -1), last.numpy(), atol=1e-6)
    assert np.abs(grid[:, 0] - grid[:, -1]).max() > 0.1  # the two ends differ: not the same image's code twice


def test_figures_command_writes_both_figures_with_8x8_grids(model_files, tmp_path, monkeypatch):
    shown = []
    real_save = figures.save

    def spy(fig, png, pdf=None):
        shown.append([ax.images[0].get_array().shape for ax in fig.axes if ax.images])
        real_save(fig, png, pdf)

    monkeypatch.setattr(figures, "save", spy)
    out = {"fig7": (tmp_path / "fig7.png", tmp_path / "fig7.pdf"),
           "interp": (tmp_path / "interp.png", tmp_path / "interp.pdf")}
    rc = cli.main(["figures", str(model_files["avb_ac"]), "--out-fig7", *map(str, out["fig7"]),
                   "--out-interp", *map(str, out["interp"]), "--seed", "1"])
    assert rc == 0
    side = 8 * 29 + 1  # 8 images of 28 pixels and 9 one-pixel borders
    assert shown == [[(side, side), (side, side)], [(side, 29 + 1), (side, side), (side, 29 + 1)]]
    for png, pdf in out.values():
        assert matplotlib.image.imread(png).ndim == 3 and pdf.read_bytes().startswith(b"%PDF")
    assert not list(tmp_path.glob(".*.tmp"))


def test_training_images_are_binarised_training_data():
    imgs = figures.training_images({"dataset": "mnist"}, 64, 1)
    assert imgs.shape == (64, 28, 28) and set(np.unique(imgs)) <= {0.0, 1.0}
    assert np.array_equal(imgs, figures.training_images({"dataset": "mnist"}, 64, 1))
