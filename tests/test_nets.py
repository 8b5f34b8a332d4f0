"""Networks of every arch: shapes, hand-derived parameter counts, TF 'SAME' geometry, activations and centring;
the shared blocks (init helper, residual adversary) and the state-dict names of checkpoints written before them."""
import functools

import pytest
import torch
import torch.nn.functional as F

from avb import experiments as ex
from avb import objectives as ob
from avb.convnets import Conv2dSame, ConvTranspose2dSame
from avb.nets import X_DIM, init_, linear

Z, E, M = 8, 32, 4            # z_dim, eps_dim, eps_nbasis
AH, AEMB, AL = 16, 32, 2      # small conv0 adversary: hidden width, inner-product dim, hidden layers
B = 2
K = 5 * 5                     # every conv kernel is 5x5
SMALL_ADV = dict(adv_hidden=AH, adv_embed=AEMB, adv_layers=AL)

# Parameter counts derived by hand from the official files (weights + biases; "bn" = batch-norm gamma + beta).
V_NETS = M * ((E * 128 + 128) + 2 * (128 * 128 + 128) + (128 * Z + Z))  # m noise MLPs: eps -> 3x128 ELU -> z
# conv0 trunk: 64/128/256/512, batch norm (no conv bias) on the first three, bias on the last; 7*7*512 features
CONV0_TRUNK = (K * 1 * 64 + 2 * 64) + (K * 64 * 128 + 2 * 128) + (K * 128 * 256 + 2 * 256) + (K * 256 * 512 + 512)
CONV0_CONVS = (K * 1 * 64 + 64) + (K * 64 * 128 + 128) + (K * 128 * 256 + 256) + (K * 256 * 512 + 512)  # all biased
CONV0_MAPS = 64 * 28 * 28 + 128 * 28 * 28 + 256 * 14 * 14 + 512 * 7 * 7   # add_linear output sizes (strides 1,1,2,2)
CONV0_FEAT = 512 * 7 * 7
# conv1 trunk: 16/32/32 s2 (28 -> 14 -> 7 -> 4), all biased, then FC 4*4*32 -> 800
CONV1_CONVS = (K * 1 * 16 + 16) + (K * 16 * 32 + 32) + (K * 32 * 32 + 32)
CONV1_MAPS = 16 * 14 * 14 + 32 * 7 * 7 + 32 * 4 * 4
CONV1_FC = 32 * 4 * 4 * 800 + 800
MLP_BODY = (784 * 300 + 300) + (300 * 300 + 300)

PARAMS = {
    ("mlp", "decoder"): (Z * 300 + 300) + (300 * 300 + 300) + (300 * 784 + 784),
    ("mlp", "vae"): MLP_BODY + 2 * (300 * Z + Z),
    ("mlp", "avb"): (E * 784 + 784) + 2 * (E * 300 + 300) + MLP_BODY + (300 * Z + Z),
    ("mlp", "avb_ac"): MLP_BODY + (300 * Z + Z) + (300 * M * Z + M * Z) + V_NETS,
    # FC z -> 512*7*7, deconvs 512 -> 256 -> 128 -> 64 -> 1
    ("conv0", "decoder"): (Z * 512 * 49 + 512 * 49) + (K * 512 * 256 + 256) + (K * 256 * 128 + 128)
    + (K * 128 * 64 + 64) + (K * 64 * 1 + 1),
    ("conv0", "vae"): CONV0_TRUNK + 2 * (CONV0_FEAT * Z + Z),
    ("conv0", "avb"): CONV0_CONVS + (E + 1) * CONV0_MAPS + (CONV0_FEAT * Z + Z),
    ("conv0", "avb_ac"): CONV0_TRUNK + (CONV0_FEAT * Z + Z) + (CONV0_FEAT * M * Z + M * Z) + V_NETS,
    # FC z -> 300 -> 4*4*32, deconvs 32 -> 32 -> 16 -> 1
    ("conv1", "decoder"): (Z * 300 + 300) + (300 * 512 + 512) + (K * 32 * 32 + 32) + (K * 32 * 16 + 16)
    + (K * 16 * 1 + 1),
    ("conv1", "vae"): CONV1_CONVS + CONV1_FC + 2 * (800 * Z + Z),
    ("conv1", "avb"): CONV1_CONVS + (E + 1) * CONV1_MAPS + CONV1_FC + (800 * Z + Z),
    ("conv1", "avb_ac"): CONV1_CONVS + CONV1_FC + (800 * Z + Z) + (800 * M * Z + M * Z) + V_NETS,
}
ENCODER_METHODS = ("vae", "avb", "avb_ac")  # one encoder each; IAF and the auxiliary VAE: BASELINE_PARAMS below
# IAF (avb/iaf/models/<arch>.py): the VAE's body (conv0: no batch norm, every conv biased) + mean, log-std and context
# heads (A = iaf_a_dim 32), and 8 layers of H = 128 MADE units: masked z->H, Linear(a)->H, 2 x (masked H->z, z->z).
A, H, NL, AA = 32, 128, 8, 100   # iaf_a_dim, iaf_h_dim, iaf_layers, aux_a_dim (the schema's defaults = official)
IAF_LAYER = (Z * H + H) + (A * H + H) + 2 * ((H * Z + Z) + (Z * Z + Z))
BASELINE_PARAMS = {
    ("mlp", "iaf"): MLP_BODY + 2 * (300 * Z + Z) + (300 * A + A),
    ("conv0", "iaf"): CONV0_CONVS + 2 * (CONV0_FEAT * Z + Z) + (CONV0_FEAT * A + A),
    ("conv1", "iaf"): CONV1_CONVS + CONV1_FC + 2 * (800 * Z + Z) + (800 * A + A),
    # auxiliary VAE (avb/auxvae/models/<arch>.py): q(z|x, a), q(a|x), r(a|x~, z); the condition is concatenated to
    # the input (full0), to the conv features (conv0: then the heads; conv1: then FC800)
    ("mlp", "auxvae"): ((784 + AA) * 300 + 300) + (300 * 300 + 300) + 2 * (300 * Z + Z)
    + MLP_BODY + 2 * (300 * AA + AA) + ((784 + Z) * 300 + 300) + (300 * 300 + 300) + 2 * (300 * AA + AA),
    ("conv0", "auxvae"): 3 * CONV0_TRUNK + 2 * ((CONV0_FEAT + AA) * Z + Z) + 2 * (CONV0_FEAT * AA + AA)
    + 2 * ((CONV0_FEAT + Z) * AA + AA),
    ("conv1", "auxvae"): 3 * CONV1_CONVS + ((512 + AA) * 800 + 800) + 2 * (800 * Z + Z) + CONV1_FC
    + 2 * (800 * AA + AA) + ((512 + Z) * 800 + 800) + 2 * (800 * AA + AA),
}
ADV_PARAMS = {
    # theta, s, T_x, T_z: each input -> AL x FC AH lrelu -> FC AEMB (theta, s) or FC 1 (T_x, T_z)
    "conv0": 2 * (784 * AH + AH) + 2 * (Z * AH + AH) + 4 * (AL - 1) * (AH * AH + AH) + 2 * (AH * AEMB + AEMB)
    + 2 * (AH + 1),
    # conv0-shaped convs on x, add_linear(z) at every layer, bn on the first three, FC 7*7*512 -> 1
    "conv1": CONV0_CONVS + (Z + 1) * CONV0_MAPS + 2 * (64 + 128 + 256) + (CONV0_FEAT + 1),
}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def binary_x(n: int = B) -> torch.Tensor:
    return (torch.rand(n, X_DIM) < 0.3).float()


@functools.lru_cache(maxsize=None)
def model(arch: str, method: str, **kw: str) -> ob.Method:
    """Built once per configuration (tests remove every hook they add)."""
    return ex.build({"method": method, "z_dim": Z, "model": {"arch": arch, "eps_dim": E, "eps_nbasis": M,
                                                             **SMALL_ADV, **kw}})


@pytest.mark.parametrize("arch", ex.ARCHS)
def test_decoder_shapes_and_parameter_count(arch):
    dec = model(arch, "vae").decoder
    assert n_params(dec) == PARAMS[arch, "decoder"]
    x, z = binary_x(), torch.randn(B, Z)
    assert dec(z).shape == (B, X_DIM)
    assert dec.log_likelihood(x, z).shape == (B,)


@pytest.mark.parametrize("arch", ex.ARCHS)
@pytest.mark.parametrize("method", ENCODER_METHODS)
def test_encoder_shapes_and_parameter_count(arch, method):
    enc = model(arch, method).encoder
    assert n_params(enc) == PARAMS[arch, method]
    x = binary_x()
    out = enc(x)
    if method == "avb":
        eps = torch.randn(B, E)
        assert out.shape == (B, Z) and torch.equal(enc(x, eps), enc(x, eps))
    else:
        assert [o.shape for o in out] == [(B, Z)] * (2 if method == "vae" else 3)


@pytest.mark.parametrize("arch", ex.ARCHS)
@pytest.mark.parametrize("method", ["iaf", "auxvae"])
def test_baseline_networks_shapes_and_parameter_counts(arch, method):
    """IAF: encoder (with its context head) and flow; the auxiliary VAE: its three Gaussian networks; the decoder is
    the VAE's; no adversary, no noise input."""
    m = model(arch, method)
    enc = m.encoder
    if method == "iaf":
        assert n_params(enc) == BASELINE_PARAMS[arch, method]
        assert len(m.flow.layers) == NL and n_params(m.flow) == NL * IAF_LAYER
        assert [o.shape for o in enc(binary_x())] == [(B, Z), (B, Z), (B, A)]
    else:
        assert n_params(enc) + n_params(m.encoder_aux) + n_params(m.decoder_aux) == BASELINE_PARAMS[arch, method]
        x = binary_x()
        assert [o.shape for o in m.encoder_aux(x)] == [(B, AA)] * 2
        assert [o.shape for o in m.encoder(x, torch.randn(B, AA))] == [(B, Z)] * 2
        assert [o.shape for o in m.decoder_aux(x, torch.randn(B, Z))] == [(B, AA)] * 2
    assert n_params(m.decoder) == PARAMS[arch, "decoder"] and not m.adversary_parameters()
    bn = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    # batch norm as coded: none in the IAF conv0 encoder (normalizer_fn=None), 3 per conv0 auxiliary-VAE network
    assert len(bn) == (9 if (arch, method) == ("conv0", "auxvae") else 0)


@pytest.mark.parametrize("arch", ex.ARCHS)
def test_auxvae_networks_centre_x_and_scale_heads_as_coded(arch):
    """Each of the three networks sees 2x - 1 first; conv1's q(a|x) and r heads are 0.1 x Linear (as coded)."""
    m = model(arch, "auxvae")
    x = binary_x()
    for net, c in ((m.encoder, torch.randn(B, AA)), (m.encoder_aux, None), (m.decoder_aux, torch.randn(B, Z))):
        seen: list[torch.Tensor] = []
        first = net.post[0] if arch == "mlp" else next(mod for mod in net.modules() if isinstance(mod, Conv2dSame))
        hook = first.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            net(x, c)
        finally:
            hook.remove()
        expected = (2 * x - 1) if c is None or arch != "mlp" else torch.cat([2 * x - 1, c], -1)
        assert torch.allclose(seen[0], expected.view_as(seen[0]))
    assert (m.encoder.head_scale, m.encoder_aux.head_scale, m.decoder_aux.head_scale) \
        == ((1.0, 0.1, 0.1) if arch == "conv1" else (1.0, 1.0, 1.0))
    assert model(arch, "auxvae", aux_head_scale=0.5).encoder_aux.head_scale == 0.5


@pytest.mark.parametrize("adv_arch", ex.ADV_ARCHS)
def test_adversary_shapes_and_parameter_count(adv_arch):
    adv = model("mlp", "avb", adv_arch=adv_arch).adversary
    assert n_params(adv) == ADV_PARAMS[adv_arch]
    x, z1, z2 = binary_x(), torch.randn(B, Z), torch.randn(B, Z)
    assert adv(x, z1).shape == (B,)
    t1, t2 = adv(x, z1, z2)
    assert t1.shape == t2.shape == (B,)


def test_conv1_adversary_adds_half_squared_norm_and_centres_x():
    adv = model("mlp", "avb", adv_arch="conv1").adversary
    x, z = binary_x(), torch.randn(B, Z)
    xc = (2 * x - 1).view(B, 1, 28, 28)
    h = xc
    for layer in adv.convs.layers:  # manual pass: ELU(BN(conv(h) + Linear(z))), no BN on the last layer
        h = layer.conv(h)
        h = h + layer.cond(z).view_as(h)
        h = F.elu(layer.bn(h) if layer.bn is not None else h)
    expected = adv.out(h.flatten(1)).squeeze(-1) + 0.5 * (z * z).sum(-1)
    assert torch.allclose(adv(x, z), expected, atol=1e-5)


def _geometry(net: torch.nn.Module, layer_type: type, x: torch.Tensor, *args) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
             for m in net.modules() if isinstance(m, layer_type)]
    try:
        net(x, *args)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def test_conv_geometry_matches_official():
    z, x = torch.randn(B, Z), binary_x()
    assert _geometry(model("conv0", "vae").decoder, ConvTranspose2dSame, z) == \
        [(256, 14, 14), (128, 28, 28), (64, 28, 28), (1, 28, 28)]
    assert _geometry(model("conv1", "vae").decoder, ConvTranspose2dSame, z) == [(32, 7, 7), (16, 14, 14), (1, 28, 28)]
    assert _geometry(model("conv0", "vae").encoder, Conv2dSame, x) == \
        [(64, 28, 28), (128, 28, 28), (256, 14, 14), (512, 7, 7)]
    assert _geometry(model("conv1", "vae").encoder, Conv2dSame, x) == [(16, 14, 14), (32, 7, 7), (32, 4, 4)]


@pytest.mark.parametrize("n, expected_rows", [(28, range(1, 28, 2)), (14, range(1, 14, 2)), (7, range(0, 7, 2))])
def test_conv_same_samples_like_tensorflow(n, expected_rows):
    """TF 'SAME', 5x5, stride 2: even sizes pad 1 before and 2 after, so a centre-tap kernel reads odd pixels."""
    conv = Conv2dSame(1, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 2, 2] = 1.0
    img = torch.randn(1, 1, n, n)
    rows = list(expected_rows)
    assert torch.equal(conv(img), img[:, :, rows][:, :, :, rows])


@pytest.mark.parametrize("small, big, stride", [(14, 28, 2), (7, 14, 2), (4, 7, 2), (28, 28, 1)])
def test_conv_transpose_is_adjoint_of_same_conv(small, big, stride):
    """tf.nn.conv2d_transpose is the gradient (adjoint) of the 'SAME' conv: <conv(y), x> = <y, conv_t(x)>."""
    conv, conv_t = Conv2dSame(3, 2, stride, bias=False), ConvTranspose2dSame(2, 3, big, stride)
    with torch.no_grad():
        conv_t.weight.copy_(conv.weight)  # [c_out of conv, c_in of conv, 5, 5] in both layouts
    x, y = torch.randn(1, 2, small, small), torch.randn(1, 3, big, big)
    assert conv(y).shape == x.shape and conv_t(x).shape == y.shape
    assert torch.allclose((conv(y) * x).sum(), (y * conv_t(x)).sum(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act", ["relu", "elu"])
def test_conv0_decoder_hidden_activation(act):
    """As coded the hidden deconvs are ReLU (ops.conv2d_transpose's default); ``conv0_decoder_act='elu'`` -> ELU."""
    net = model("conv0", "vae", conv0_decoder_act=act).decoder.net
    layers = list(net)
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    deconvs = [i for i, m in enumerate(layers) if isinstance(m, ConvTranspose2dSame)][:-1]
    assert len(deconvs) == 3
    hooks = []
    for i in deconvs:
        pre: list[torch.Tensor] = []
        hooks.append(layers[i].register_forward_hook(lambda _m, _i, out, pre=pre: pre.append(out)))
        hooks.append(layers[i + 1].register_forward_hook(lambda _m, _i, out, pre=pre: pairs.append((pre[0], out))))
    try:
        net(3 * torch.randn(B, Z))
    finally:
        for h in hooks:
            h.remove()
    for pre, post in pairs:
        assert torch.allclose(post, F.relu(pre) if act == "relu" else F.elu(pre))
        assert (post.min() >= 0) == (act == "relu")


def test_conv0_decoder_rejects_unknown_activation():
    with pytest.raises(ValueError):
        model("conv0", "vae", conv0_decoder_act="tanh")


@pytest.mark.parametrize("arch", ex.ARCHS)
@pytest.mark.parametrize("method", ENCODER_METHODS)
def test_encoders_centre_x(arch, method):
    """The first layer that sees x gets 2x - 1 (for the full0 AVB encoder: 2x - 1 + Linear(eps))."""
    enc = model(arch, method).encoder
    if arch == "mlp":
        first = enc.net.fc[0] if method == "avb" else enc.body[0]
    else:
        first = next(m for m in enc.modules() if isinstance(m, Conv2dSame))
    seen: list[torch.Tensor] = []
    hook = first.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = binary_x()
    eps = torch.randn(B, E)
    try:
        enc(x, eps) if method == "avb" else enc(x)
    finally:
        hook.remove()
    expected = 2 * x - 1
    if arch == "mlp" and method == "avb":
        expected = expected + enc.net.add[0](eps)
    assert torch.allclose(seen[0], expected.view_as(seen[0]), atol=1e-6)


@pytest.mark.parametrize("arch", ["conv0", "conv1"])
def test_avb_conv_encoder_noise_enters_as_coded(arch):
    """conv0: h <- ELU(conv(h) + Linear(eps)); conv1: h <- ELU(conv(h)) + Linear(eps) (add_linear has no activation)."""
    enc = model(arch, "avb").encoder
    x, eps = binary_x(), torch.randn(B, E)
    h = (2 * x - 1).view(B, 1, 28, 28)
    for layer in enc.net.convs.layers:
        c = layer.conv(h)
        noise = layer.cond(eps).view_as(c)
        h = F.elu(c + noise) if arch == "conv0" else F.elu(c) + noise
    assert torch.allclose(enc(x, eps), enc.net.head(h.flatten(1)), atol=1e-5)


def test_init_helper_modes():
    torch.manual_seed(0)
    xavier, trunc = linear(300, 40), linear(300, 40, init=1e-5)
    bound = (6 / (300 + 40)) ** 0.5  # Xavier-uniform
    assert 0.9 * bound < xavier.weight.abs().max() <= bound and not xavier.bias.any()
    assert trunc.weight.abs().max() <= 2e-5 and trunc.weight.std() < 1e-5 and not trunc.bias.any()
    for init in ("zero", "zero_after_xavier"):
        layer = linear(5, 3, init)
        assert not layer.weight.any() and not layer.bias.any()
    # "zero_after_xavier" draws as "xavier" does (the toy adversary's random stream), "zero" draws nothing more
    streams = []
    for init in ("xavier", "zero_after_xavier", "zero"):
        torch.manual_seed(1)
        linear(7, 7, init)
        streams.append(torch.rand(3))
    assert torch.equal(streams[0], streams[1]) and not torch.equal(streams[0], streams[2])
    assert init_(torch.nn.Conv2d(1, 2, 3, bias=False)).bias is None
    with pytest.raises(ValueError, match="unknown init"):
        linear(2, 2, "orthogonal")


def _old_names(state: dict, renames: list[tuple[str, str]]) -> dict:
    """A state dict with the names the networks had before the blocks were shared (issue 14)."""
    out = {}
    for k, v in state.items():
        for new, old in renames:
            k = k.replace(new, old)
        out[k] = v
    return out


@pytest.mark.parametrize("arch", ex.ARCHS)
def test_avb_encoders_load_checkpoints_with_their_earlier_names(arch, tmp_path):
    """The full0 encoder's add/fc/out and the conv encoders' convs/head now sit under ``encoder.net``: weights saved
    under the earlier names load into the same values, also through ``load_model`` (weights_only)."""
    from avb import io
    torch.manual_seed(0)
    a = model(arch, "avb")
    torch.manual_seed(1)
    b = ex.build({"method": "avb", "z_dim": Z, "model": {"arch": arch, "eps_dim": E, "eps_nbasis": M, **SMALL_ADV}})
    old = _old_names(a.state_dict(), [("encoder.net.", "encoder.")])
    assert any(k.startswith(("encoder.add.", "encoder.convs.")) for k in old)
    b.load_state_dict(old)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    run = {"method": "avb", "z_dim": Z, "model": {"arch": arch, "eps_dim": E, "eps_nbasis": M, **SMALL_ADV}}
    io.save_torch({"run": run, "step": 0, "model": old}, tmp_path / "model.pt")
    loaded, _ = ex.load_model(tmp_path / "model.pt")
    x, eps = binary_x(), torch.randn(B, E)
    a.eval()
    assert torch.equal(loaded.encoder(x, eps), a.encoder(x, eps))


def test_schools_adversary_loads_checkpoints_with_its_earlier_names():
    from avb import schools
    run = schools.run_config({"seed": 0, "device": "cpu", "n_samples": 100,
                              "avb": {"steps": 1, "batch_size": 8, "lr": 1e-4, "adam_beta1": 0.5, "hidden": 8,
                                      "noise_dim": 4, "adv_hidden": 8, "adv_blocks": 2, "ac_floor": 1e-6,
                                      "ac_floor_mode": "std", "checkpoint_every": 1, "log_every": 1}}, "avb")
    torch.manual_seed(0)
    a = ex.build(run)
    with torch.no_grad():
        for p in a.parameters():
            p.normal_()
    old = _old_names(a.state_dict(), [("adversary.res0.", "adversary.r0."), ("adversary.res1.", "adversary.r1.")])
    assert "adversary.r1.0.weight" in old and "adversary.res1.0.weight" not in old
    b = ex.build(run)
    b.load_state_dict(old)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
