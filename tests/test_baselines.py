"""The two baselines of the official repository, VAE + IAF and the auxiliary VAE (issue 16), checked against exact
answers (the conventions of tests/test_theory.py and tests/test_ais.py: fixed seeds, tolerances of K standard errors
of the estimate, and a negative control for each check, so that a tolerance cannot be vacuously wide).

(a) IAF: the flow's log-determinant (the official sum of softplus(-s)) against autograd's Jacobian, in float64; its
    Jacobian is triangular up to the order reversal (the MADE masks).
(b) IAF with zero flow layers is the VAE bit for bit (with ``iaf_kl = "analytic"``: same initial weights, same random
    stream, same losses, gradients and training trajectory); with the coded ``"sample"`` KL it draws the VAE's z and
    its KL is the VAE's analytic one in expectation; with flow layers the two estimators agree in expectation; the
    flow is untrained as coded.
(c) The auxiliary VAE's ELBO (``Step.elbo``, Monte Carlo) against its closed form on a linear-Gaussian model, where
    q(a|x), q(z|x, a), r(a|x~, z) and p(x|z) are linear-Gaussian so every expectation is a Gaussian integral; the
    closed form is below the exact log p(x).
(d) AIS from each method's start (``Method.proposal``) and the IWAE bound with each method's own q
    (``Method.iwae``) against the exact log p(x) of that model.
(e) The sweep and the schema (unknown method, unsupported arch, the keys each run tracks, the presets), and both
    methods trained by the one loop (deterministic, continued bit-identically), scored by the one evaluation and
    run end to end through the workflow into the Table 2 replica (slow).
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from avb import experiments as ex
from avb import objectives as ob
from linear_gaussian import LinearGaussianDecoder
from avb.ais import estimate_log_likelihood
from avb.auxvae import AuxVAE
from avb.iaf import IAF, IAFFlow
from avb.nets import X_DIM

K = 4.0  # standard errors


pytestmark = pytest.mark.usefixtures("one_thread")  # small networks: one thread is faster and steadier


def mc(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), values.std().item() / math.sqrt(values.numel())


# ----------------------------------------------------------------------------------------------------------------
# (a) the IAF log-determinant
# ----------------------------------------------------------------------------------------------------------------

def strong_flow(z_dim: int = 5, layers: int = 3, h_dim: int = 16, a_dim: int = 4, seed: int = 0) -> IAFFlow:
    """A float64 flow with N(0, 0.5^2) weights: far from the official near-identity initialisation (m = 0.1 (...),
    s = 1 + 0.01 (...)), so that every allowed dependency of the Jacobian is large."""
    torch.manual_seed(seed)
    flow = IAFFlow(z_dim, layers, h_dim, a_dim).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, 0.5)
    return flow


def jacobian_logdet(flow: IAFFlow, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log |det dz_T/dz_0| by autograd, the flow's own -sum softplus(-s)) for each row."""
    auto, coded = [], []
    for zi, ai in zip(z, a):
        J = torch.autograd.functional.jacobian(lambda v: flow(v[None], ai[None])[0][0], zi)
        auto.append(torch.linalg.slogdet(J).logabsdet)
        coded.append(-flow(zi[None], ai[None])[1][0])
    return torch.stack(auto), torch.stack(coded)


def test_iaf_log_det_equals_autograd_jacobian():
    """log |det J| of the whole flow (3 layers, z_dim 5) equals -sum_t sum softplus(-s_t) to 1e-10 on 8 points; a
    single layer's Jacobian, order reversal undone, is lower triangular with diagonal sigmoid(s)."""
    flow = strong_flow()
    g = torch.Generator().manual_seed(1)
    z, a = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, 4, generator=g, dtype=torch.float64)
    auto, coded = jacobian_logdet(flow, z, a)
    assert torch.allclose(auto, coded, rtol=0, atol=1e-10), (auto, coded)
    layer = flow.layers[0]
    J = torch.autograd.functional.jacobian(lambda v: layer(v[None], a[:1])[0][0].flip(-1), z[0])
    _, s = layer.shift_and_gate(z[:1], a[:1])
    assert torch.equal(torch.triu(J, 1), torch.zeros_like(J))                  # autoregressive: z_j sees z_<j only
    assert torch.allclose(torch.diagonal(J), torch.sigmoid(s[0]), atol=1e-12)
    assert torch.tril(J, -1).abs().max() > 0.01                                  # ... and does see them: not vacuous
    # negative control: a direct z -> z mask that lets output j see input j (>= instead of >) breaks the triangular
    # structure; the same comparison rejects it
    broken = strong_flow()
    d = torch.arange(1, 6)
    for lay in broken.layers:
        lay.m_z.mask.copy_((d[None, :] >= d[:, None]).double())
        lay.s_z.mask.copy_((d[None, :] >= d[:, None]).double())
    auto_b, coded_b = jacobian_logdet(broken, z, a)
    assert (auto_b - coded_b).abs().max() > 1e-3


def test_iaf_masks_are_the_official_degrees():
    """M1[d, k] = m_k >= d, M2[k, d] = m_k < d, M3[i, j] = j > i, with degrees m_k in 1..z_dim-1; z_dim 1 refused."""
    from avb.iaf import made_masks
    m1, m2, m3 = made_masks(6, 50, torch.Generator().manual_seed(0))
    deg = m1.sum(0)                      # unit k sees inputs 1..m_k: its degree
    assert deg.min() >= 1 and deg.max() <= 5
    assert torch.equal(m2, (deg[:, None] < torch.arange(1, 7)[None, :]).float())
    assert torch.equal(m3, torch.triu(torch.ones(6, 6), 1))
    paths = (m1 @ m2 + m3 > 0).float()  # [i, j]: output j reaches input i through a unit or directly
    assert torch.equal(torch.tril(paths), torch.zeros(6, 6)) and paths.triu(1).sum() > 0  # only inputs i < j
    with pytest.raises(ValueError, match="z_dim >= 2"):
        made_masks(1, 4)


# ----------------------------------------------------------------------------------------------------------------
# (b) IAF with zero flow layers is the VAE
# ----------------------------------------------------------------------------------------------------------------

def small_run(method: str, **model) -> dict:
    return {"method": method, "z_dim": 4, "model": {"hidden": 16, **model}}


def built(run: dict, seed: int = 0) -> tuple[ob.Method, torch.Tensor]:
    """The model of ``run`` built from ``seed``, and the next draw of the global stream (what training would see)."""
    torch.manual_seed(seed)
    model = ex.build(run)
    return model, torch.rand(3)


def test_iaf_with_zero_layers_is_the_vae_bit_for_bit():
    """Same initial weights (names and values), same random stream after building, and 15 training steps
    (``avb.step.train_step``, Adam beta1 0.5) with identical losses and parameters, compared with torch.equal."""
    from avb.step import make_optimizers, train_step
    vae, after_vae = built(small_run("vae"))
    iaf, after_iaf = built(small_run("iaf", iaf_layers=0, iaf_kl="analytic"))
    assert torch.equal(after_vae, after_iaf)
    sv, si = vae.state_dict(), iaf.state_dict()
    assert sv.keys() == si.keys() and all(torch.equal(sv[k], si[k]) for k in sv)
    tr = {"lr": 1e-3, "lr_adversary": 1e-3, "adam_beta1": 0.5}
    (opt_v, _), (opt_i, _) = make_optimizers(vae, tr), make_optimizers(iaf, tr)
    g = torch.Generator().manual_seed(5)
    for step in range(1, 16):
        x = (torch.rand(16, X_DIM, generator=g) < 0.3).float()
        torch.manual_seed(100 + step)
        s_v = train_step(vae, x, opt_v, None, vae.primal_parameters(), [], step=step)
        torch.manual_seed(100 + step)
        s_i = train_step(iaf, x, opt_i, None, iaf.primal_parameters(), [], step=step)
        for a, b in ((s_v.primal, s_i.primal), (s_v.recon, s_i.recon), (s_v.kl, s_i.kl)):
            assert torch.equal(a, b), step
    assert all(torch.equal(p, q) for p, q in zip(vae.parameters(), iaf.parameters()))
    # negative control: one flow layer changes the objective (the comparison is not blind)
    one, _ = built(small_run("iaf", iaf_layers=1, iaf_kl="analytic"))
    x = (torch.rand(16, X_DIM, generator=g) < 0.3).float()
    torch.manual_seed(0)
    a = vae(x).kl
    torch.manual_seed(0)
    assert not torch.equal(a, one(x).kl)


def test_iaf_sample_kl_with_zero_layers_is_the_vae_kl_in_expectation():
    """The coded estimator: z and recon are the VAE's bit for bit; KL = log N(z; mu, sigma) - log N(z; 0, I) at the
    sample, whose mean over 20000 draws per image matches the VAE's analytic KL within K standard errors, and a
    0.2-nat error would be rejected."""
    vae, _ = built(small_run("vae"))
    iaf, _ = built(small_run("iaf", iaf_layers=0))
    assert iaf.kl_estimator == "sample"
    with torch.no_grad():  # narrower heads than at initialisation (KL ~ 1 nat rather than ~ 100): a smaller se
        for m in (vae, iaf):
            m.encoder.mean.weight.mul_(0.1)
            m.encoder.log_std.weight.mul_(0.1)
    x = (torch.rand(2, X_DIM, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    with torch.no_grad():
        torch.manual_seed(3)
        s_v = vae(x)
        torch.manual_seed(3)
        s_i = iaf(x)
        assert torch.equal(s_v.recon, s_i.recon) and not torch.equal(s_v.kl, s_i.kl)
        rows = x.repeat_interleave(20_000, 0)
        kl = iaf(rows).kl.view(2, -1)
    for i in range(2):
        mean, se = mc(kl[i])
        assert abs(mean - s_v.kl[i].item()) < K * se, (i, mean, se, s_v.kl[i].item())
        assert abs(mean - (s_v.kl[i].item() + 0.2)) > K * se   # control: a 0.2-nat error would be seen


def test_iaf_kl_estimators_agree_in_expectation_with_flow_layers():
    """With 3 layers (weights N(0, 0.5^2), so the flow matters), the coded sample KL and the analytic-base one have the
    same mean over 40000 draws of one image (within K se of their difference); dropping the log-determinant term
    from the analytic one (the control) is rejected."""
    torch.manual_seed(0)
    model = ex.build(small_run("iaf", iaf_layers=3, iaf_a_dim=4, iaf_h_dim=8))
    with torch.no_grad():
        for p in model.flow.parameters():
            p.normal_(0.0, 0.5)
        model.encoder.mean.weight.mul_(0.1)
        model.encoder.log_std.weight.mul_(0.1)
        x = (torch.rand(1, X_DIM, generator=torch.Generator().manual_seed(3)) < 0.3).float().expand(40_000, X_DIM)
        z, log_q, z0, mean, log_std, nld = model.flow_sample(x)
        sample = log_q - ob.log_normal(z)
        analytic = ob.gaussian_kl(mean, log_std) + (ob.log_normal(z0) - ob.log_normal(z) + nld)
        model.kl_estimator = "analytic"
        torch.manual_seed(1)
        via_forward = model(x[:8]).kl
        torch.manual_seed(1)
        z8, _, z08, m8, l8, n8 = model.flow_sample(x[:8])
    assert torch.allclose(via_forward, ob.gaussian_kl(m8, l8) + (ob.log_normal(z08) - ob.log_normal(z8) + n8))
    d, se = mc(sample - analytic)
    assert abs(d) < K * se, (d, se)
    assert nld.mean().abs() > 0.1
    d_bad, se_bad = mc(sample - (analytic - nld))
    assert abs(d_bad) > K * se_bad


def test_iaf_flow_is_untrained_as_coded_unless_asked():
    """The official train op takes the encoder and decoder scopes only: the flow's weights are no primal parameter
    (``iaf_train_flow: false``, the default); with true they are."""
    iaf, _ = built(small_run("iaf", iaf_layers=2))
    names = {id(p) for p in iaf.primal_parameters()}
    assert not any(id(p) in names for p in iaf.flow.parameters())
    assert all(id(p) in names for p in iaf.encoder.parameters()) and iaf.encoder.context is not None
    trained, _ = built(small_run("iaf", iaf_layers=2, iaf_train_flow=True))
    assert {id(p) for p in trained.primal_parameters()} == {id(p) for p in trained.parameters()}


# ----------------------------------------------------------------------------------------------------------------
# (c), (d): a linear-Gaussian model
# ----------------------------------------------------------------------------------------------------------------

D, Z, A = 4, 2, 3   # x, z and auxiliary a dimensions




class LinearGaussian(nn.Module):
    """(mean, log std) = (P x + Q c + m0, l): the ``ConditionalGaussian`` interface, linear, fixed log std."""

    def __init__(self, P: torch.Tensor, m0: torch.Tensor, log_std: torch.Tensor, Q: torch.Tensor | None = None):
        super().__init__()
        self.P, self.m0, self.l = nn.Parameter(P), nn.Parameter(m0), nn.Parameter(log_std)
        self.Q = None if Q is None else nn.Parameter(Q)

    def forward(self, x, c=None):
        mean = x @ self.P.T + self.m0 + (0 if self.Q is None else c @ self.Q.T)
        return mean, self.l.expand_as(mean)


class LinearIAFEncoder(nn.Module):
    """IAF's encoder interface: (mean, log std, context a), all linear in x."""

    def __init__(self, base: LinearGaussian, Pa: torch.Tensor):
        super().__init__()
        self.base, self.Pa = base, nn.Parameter(Pa)

    def forward(self, x):
        mean, log_std = self.base(x)
        return mean, log_std, x @ self.Pa.T


class Problem:
    """p(z) = N(0, I_2), p(x|z) = N(W z + b, s^2 I_4); exact p(x) = N(b, W W^T + s^2 I) and posterior N(m(x), S)."""

    def __init__(self, seed: int = 0, s: float = 1.0, w_scale: float = 0.6):
        g = torch.Generator().manual_seed(seed)
        self.g = g
        self.W, self.b, self.s = w_scale * torch.randn(D, Z, generator=g), 0.5 * torch.randn(D, generator=g), s
        self.S = torch.linalg.inv(torch.eye(Z) + self.W.T @ self.W / s ** 2)
        self.M = self.S @ self.W.T / s ** 2          # m(x) = M (x - b)
        self.decoder = LinearGaussianDecoder(self.W, self.b, s)

    def data(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, Z, generator=g) @ self.W.T + self.b + self.s * torch.randn(n, D, generator=g)

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.s ** 2 * torch.eye(D)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def rand(self, *shape, scale=1.0):
        return scale * torch.randn(*shape, generator=self.g)

    def auxvae(self) -> AuxVAE:
        """q(a|x), r(a|x~, z) arbitrary linear-Gaussian; q(z|x, a) = N(m(x) + Q a, (1.3 sqrt diag S)^2): a
        deliberately imperfect encoder whose mean moves with a."""
        enc_aux = LinearGaussian(self.rand(A, D, scale=0.5), self.rand(A, scale=0.3), self.rand(A, scale=0.3))
        Q = self.rand(Z, A, scale=0.15)
        enc = LinearGaussian(self.M.clone(), -(self.M @ self.b), torch.log(1.3 * torch.diag(self.S).sqrt()), Q)
        dec_aux = LinearGaussian(self.rand(A, D, scale=0.5), self.rand(A, scale=0.3), self.rand(A, scale=0.3),
                                 self.rand(A, Z, scale=0.5))
        return AuxVAE(Z, A, self.decoder, enc, enc_aux, dec_aux, loss_scale=1.0)

    def iaf(self, layers: int = 2) -> IAF:
        """Base N(m(x) + 0.2, (1.3 sqrt diag S)^2), a linear context, ``layers`` IAF layers at their initial weights."""
        base = LinearGaussian(self.M.clone(), -(self.M @ self.b) + 0.2, torch.log(1.3 * torch.diag(self.S).sqrt()))
        torch.manual_seed(0)
        flow = IAFFlow(Z, layers, 8, 3)
        return IAF(Z, self.decoder, LinearIAFEncoder(base, self.rand(3, D, scale=0.5)), flow, loss_scale=1.0)


def expected_log_normal(G, g, log_std, mu, Sigma) -> torch.Tensor:
    """E[log N(y; mean, diag exp(log_std)^2)] where y - mean = G v + g and v ~ N(mu, Sigma)."""
    r_mean = G @ mu + g
    second = r_mean ** 2 + torch.diagonal(G @ Sigma @ G.T)
    return (-0.5 * second * torch.exp(-2 * log_std) - log_std - 0.5 * math.log(2 * math.pi)).sum()


def auxvae_elbo_closed_form(p: Problem, model: AuxVAE, x: torch.Tensor, r_sees_data: bool = False) -> float:
    """E over q(a|x) q(z|x, a) p(x~|z) of log p(x|z) + log p(z) + log r(a|x~, z) - log q(a|x) - log q(z|x, a), by
    Gaussian integrals over v = (a, z, x~). ``r_sees_data``: the tempting misreading r(a|x, z) (the control)."""
    qa, qz, r = model.encoder_aux, model.encoder, model.decoder_aux
    with torch.no_grad():
        Da, Dz = torch.diag(torch.exp(qa.l)), torch.diag(torch.exp(qz.l))
        mu_a = qa.P @ x + qa.m0
        mu_z = qz.P @ x + qz.m0 + qz.Q @ mu_a
        mu_x = p.W @ mu_z + p.b
        O = torch.zeros
        T = torch.cat([torch.cat([Da, O(A, Z), O(A, D)], 1),
                       torch.cat([qz.Q @ Da, Dz, O(Z, D)], 1),
                       torch.cat([p.W @ qz.Q @ Da, p.W @ Dz, p.s * torch.eye(D)], 1)])
        mu, Sigma = torch.cat([mu_a, mu_z, mu_x]), T @ T.T
        Sa = torch.cat([torch.eye(A), O(A, Z), O(A, D)], 1)
        Sz = torch.cat([O(Z, A), torch.eye(Z), O(Z, D)], 1)
        Sx = torch.cat([O(D, A), O(D, Z), torch.eye(D)], 1)
        log_s = torch.full((D,), math.log(p.s))
        lik = expected_log_normal(-p.W @ Sz, x - p.b, log_s, mu, Sigma)
        prior = expected_log_normal(Sz, torch.zeros(Z), torch.zeros(Z), mu, Sigma)
        if r_sees_data:
            log_r = expected_log_normal(Sa - r.Q @ Sz, -(r.P @ x + r.m0), r.l, mu, Sigma)
        else:
            log_r = expected_log_normal(Sa - r.P @ Sx - r.Q @ Sz, -r.m0, r.l, mu, Sigma)
        log_qa = expected_log_normal(Sa, -mu_a, qa.l, mu, Sigma)
        log_qz = expected_log_normal(Sz - qz.Q @ Sa, -(qz.P @ x + qz.m0), qz.l, mu, Sigma)
    return (lik + prior + log_r - log_qa - log_qz).item()


def test_auxvae_elbo_matches_its_closed_form_on_a_linear_gaussian_model():
    """For 4 data points, the mean of ``Step.elbo`` over 100000 draws of (a, z, x~) equals the closed form within K
    standard errors (measured: |error| < 1.5 se); the closed form is below the exact log p(x) (a bound). Control:
    the closed form of r(a|x, z) with the data x in place of the decoder's draw x~ is rejected (> 10 se away)."""
    p = Problem()
    model = p.auxvae()
    xs = p.data(4)
    exact = p.log_px(xs)
    for i, x in enumerate(xs):
        torch.manual_seed(10 + i)
        with torch.no_grad():
            mean, se = mc(model(x.expand(100_000, D)).elbo)
        closed = auxvae_elbo_closed_form(p, model, x)
        assert abs(mean - closed) < K * se, (i, mean, closed, se)
        assert closed < exact[i].item()
        assert abs(mean - auxvae_elbo_closed_form(p, model, x, r_sees_data=True)) > 10 * se


def test_auxvae_training_step_moves_all_three_networks_and_not_the_draw():
    """The official train op trains q(z|x, a), q(a|x) and r (its scopes start with 'encoder' / 'decoder'); the
    decoder's draw x~ carries no gradient (tf.cast of a comparison)."""
    model = ex.build({"method": "auxvae", "z_dim": 4, "model": {"hidden": 16, "aux_a_dim": 3,
                                                               "aux_head_scale": 0.1}})
    x = (torch.rand(8, X_DIM, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    torch.manual_seed(0)
    model(x).primal.backward()
    for name in ("encoder", "encoder_aux", "decoder_aux", "decoder"):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name
    z = torch.randn(8, 4, requires_grad=True)
    _, draw = model.decoder.log_likelihood_and_draw(x, z, torch.rand(8, X_DIM))
    assert not draw.requires_grad and set(draw.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("method,start", [("iaf", "prior"), ("iaf", "base"), ("auxvae", None)])
def test_ais_from_the_methods_start_reaches_the_exact_log_px(method, start):
    """AIS (official leapfrog and step adaptation, 400 steps x 8 chains; 1000 x 16 from the prior, as
    tests/test_ais.py) from ``proposal`` -- IAF: the prior (as its official test) or its Gaussian base (``eval.iaf_ais_start: base``); the auxiliary VAE: q(z|x, a) at one draw
    of a -- on 50 images: mean absolute error <= 0.05 nat, as tests/test_ais.py asks of the VAE's start (measured
    over seeds 1-4: IAF from its base 0.022-0.028, auxiliary VAE 0.028-0.038). The ELBO on the same images is
    rejected by the same tolerance (its gap exceeds 0.05), so the check is not blind."""
    from avb.evaluate import configure
    p = Problem()
    model = p.iaf() if method == "iaf" else p.auxvae()
    if start is not None:
        configure(model, {"iaf_ais_start": start})
        assert model.ais_start == start and model.has_proposal == (start == "base")
    x = p.data(50, seed=3)
    exact = p.log_px(x)
    torch.manual_seed(4)
    with torch.no_grad():
        init = model.proposal(x)
        assert (init is None) == (start == "prior")
        elbo = torch.stack([model(x).elbo for _ in range(200)]).mean(0)
    steps, chains = (1000, 16) if init is None else (400, 8)   # from the prior: test_ais.py's prior budget
    res = estimate_log_likelihood(p.decoder.log_likelihood, x, Z, n_steps=steps, n_chains=chains, init=init,
                                  generator=torch.Generator().manual_seed(1))
    err = res.log_px - exact
    print(f"\n{method} ({start}): AIS MAE {err.abs().mean():.4f}, mean error {err.mean():+.4f}; ELBO gap "
          f"{(exact - elbo).mean():.3f}")
    assert err.abs().mean() <= 0.05
    assert (exact - elbo).mean() > 0.05


@pytest.mark.parametrize("method", ["iaf", "auxvae"])
def test_iwae_with_the_methods_own_q_is_a_bound_that_tightens(method):
    """``Method.iwae`` (IAF: the flow's density; the auxiliary VAE: the joint q(a, z|x) with r) on 50 images:
    E[IWAE_k] <= log p(x) (mean error below 3 se above zero for k = 1 and k = 500), IWAE_500 above IWAE_1 by more
    than 3 se, and chunking the rows (``max_rows``) changes no number."""
    p = Problem()
    model = p.iaf() if method == "iaf" else p.auxvae()
    x = p.data(50, seed=5)
    exact = p.log_px(x)
    with torch.no_grad():
        w1 = model.iwae(x, 1, torch.Generator().manual_seed(0))
        w500 = model.iwae(x, 500, torch.Generator().manual_seed(0))
        chunked = model.iwae(x, 500, torch.Generator().manual_seed(0), max_rows=777)
    assert torch.allclose(w500, chunked, atol=1e-5)
    for w in (w1, w500):
        err = w - exact
        assert err.mean() <= 3 * err.std() / math.sqrt(len(err)), (method, err.mean())
    diff = w500 - w1
    assert diff.mean() > 3 * diff.std() / math.sqrt(len(diff))
    print(f"\n{method}: IWAE_1 {(w1 - exact).mean():+.3f}, IWAE_500 {(w500 - exact).mean():+.3f} nat from exact")


# ----------------------------------------------------------------------------------------------------------------
# the sweep and the schema
# ----------------------------------------------------------------------------------------------------------------

def test_unknown_method_and_unsupported_arch_are_schema_errors_naming_them(monkeypatch):
    """An unknown method is an error naming it; an arch outside the method's ``$defs.method_archs`` (shown with a
    schema in which the IAF supports mlp only: every shipped method supports all three) names the method, the arch
    and the run, also when an override sets it."""
    from avb import config as C
    with pytest.raises(C.ConfigError, match=r"methods\[1\].*'iafx'"):
        C.validate({"preset": "x", "methods": ["vae", "iafx"]})
    assert C.method_archs()["iaf"] == C.method_archs()["auxvae"] == ["mlp", "conv0", "conv1"]
    C.validate({"preset": "x", "methods": ["iaf", "auxvae"], "model": {"arch": "conv1"}})
    schema = copy.deepcopy(C._schema())   # the cached schema itself stays as it is
    schema["$defs"]["method_archs"]["x-method-archs"]["iaf"] = ["mlp"]
    monkeypatch.setattr(C, "_schema", lambda: schema)
    with pytest.raises(C.ConfigError, match=r"model.arch: 'conv0' is not an architecture of method 'iaf' \(it "
                                            r"supports mlp; run mnist/iaf/z8\)"):
        C.validate({"preset": "x", "methods": ["vae", "iaf"], "overrides": [{"match": {"method": "iaf"},
                                                                             "model": {"arch": "conv0"}}]})
    C.validate({"preset": "x", "methods": ["vae", "iaf"], "overrides": [{"match": {"method": "vae"},
                                                                         "model": {"arch": "conv0"}}]})


def test_each_run_tracks_only_the_keys_its_method_reads():
    """The new model keys reach only their method's config.json (so adding them reran none of the earlier runs),
    and the baselines track no adversary setting."""
    from avb import config as C
    from avb import jobs as J
    cfg = C.validate({"preset": "x", "methods": ["vae", "avb", "avb_ac", "iaf", "auxvae"]})
    tracked = {m: J.train_config(cfg, "mnist", m, 8, 0) for m in cfg["methods"]}
    for m, t in tracked.items():
        assert any(k.startswith("iaf_") for k in t["model"]) == (m == "iaf"), m
        assert any(k.startswith("aux_") for k in t["model"]) == (m == "auxvae"), m
    for m in ("iaf", "auxvae"):
        assert not any(k.startswith("adv_") or k.startswith("eps_") for k in tracked[m]["model"])
        assert "lr_adversary" not in tracked[m]["train"] and "adversary_steps" not in tracked[m]["train"]
    assert set(tracked["vae"]["model"]) == {"arch", "hidden"}


def test_quick_and_paper_presets_run_the_baselines():
    from avb import config as C
    root = Path(__file__).resolve().parent.parent
    for preset in ("quick", "paper"):
        assert {"iaf", "auxvae"} <= set(C.load(root / "config" / f"{preset}.yaml")["methods"]), preset
    quick = C.load(root / "config" / "quick.yaml")
    aux = C.run_config(quick, "mnist", "auxvae", 8, 0)
    assert aux["model"]["arch"] == "mlp" and aux["model"]["aux_head_scale"] == 0.1   # finite first losses on full0


# ----------------------------------------------------------------------------------------------------------------
# trained through the one loop, scored by the one evaluation, end to end through the workflow
# ----------------------------------------------------------------------------------------------------------------

def tiny_run(method: str) -> dict:
    return {"method": method, "dataset": "mnist", "z_dim": 2, "seed": 3, "data_dir": None,
            "model": {"arch": "mlp", "hidden": 32, "iaf_layers": 2, "iaf_a_dim": 4, "iaf_h_dim": 8, "aux_a_dim": 3,
                      "aux_head_scale": 0.1},
            "train": {"steps": 60, "batch_size": 32, "lr": 1e-3, "adam_beta1": 0.5, "checkpoint_every": 30,
                      "log_every": 20, "device": "cpu"}}


@pytest.mark.parametrize("method", ["iaf", "auxvae"])
def test_baseline_trains_and_is_scored_with_its_bounds(method, tmp_path):
    """``avb.train.train`` (the one loop; a checkpoint written and read back through ``load_model``), then
    ``avb.evaluate.evaluate``: a bound ELBO <= IWAE <= AIS (3 se), the IWAE from the method's own q, AIS from the
    official tests' starts (IAF: the prior; the auxiliary VAE: q(z|x, a))."""
    from avb import config as C
    from avb import train as tr
    from avb.evaluate import evaluate
    model_pt = tr.train(tiny_run(method), tmp_path / method, progress=False)
    loaded, run = ex.load_model(model_pt)
    assert run["steps_done"] == 60 and loaded.name == method
    settings = C.validate({"preset": "t", "eval": {"n_test": 16, "batch_size": 8, "ais_steps": 50, "ais_chains": 4,
                                                  "elbo_samples": 4, "iwae_samples": 50, "device": "cpu"}})["eval"]
    s = evaluate(model_pt, settings, tmp_path / "e.csv", tmp_path / "e.json", progress=False)
    se = pd_se(tmp_path / "e.csv")
    assert s["elbo_is_bound"] and s["iwae_note"] == loaded.proposal_note
    assert s["ais_init"] == ("prior" if method == "iaf" else "encoder gaussian")   # the official tests' starts
    assert s["elbo"] <= s["iwae"] + 3 * se and s["iwae"] <= s["log_px_ais"] + 3 * se, s
    assert all(math.isfinite(s[k]) for k in ("log_px_ais", "elbo", "iwae"))


@pytest.mark.parametrize("method", ["iaf", "auxvae"])
def test_baseline_runs_are_deterministic_learn_and_continue_bit_identically(method, tmp_path):
    """Two runs of one config give the same weights; 30 steps continued to 60 (``train.steps`` raised) equal 60
    straight, masks included; the training ELBO rises."""
    import pandas as pd
    from avb import train as tr

    def weights(path):
        return torch.load(path, weights_only=True)["model"]

    run = tiny_run(method)
    straight = weights(tr.train(run, tmp_path / "a", progress=False))
    again = weights(tr.train(run, tmp_path / "b", progress=False))
    tr.train({**run, "train": {**run["train"], "steps": 30}}, tmp_path / "c", progress=False)
    continued = weights(tr.train(run, tmp_path / "c", progress=False))
    for other in (again, continued):
        assert straight.keys() == other.keys() and all(torch.equal(straight[k], other[k]) for k in straight)
    assert method != "iaf" or any(k.endswith(".mask") for k in straight)
    m = pd.read_csv(tmp_path / "a" / "train_metrics.csv")
    assert list(m.step) == [20, 40, 60] and m.elbo.iloc[-1] > m.elbo.iloc[0]


def pd_se(csv: Path) -> float:
    import pandas as pd
    per = pd.read_csv(csv)
    return float(per.log_px_ais.std() / math.sqrt(len(per)))


@pytest.mark.slow
def test_workflow_trains_scores_and_tabulates_the_baselines(tmp_path):
    """The Snakemake sweep with methods [iaf, auxvae] (tiny budgets): summary rows for both, and the Table 2
    replica with our rows beside the literature values of the same methods."""
    import pandas as pd
    import yaml
    from snakemake_helpers import snakemake
    cfg = {"preset": "tinybase", "methods": ["iaf", "auxvae"], "z_dims": [2], "seeds": [0],
           "model": {"hidden": 32, "iaf_layers": 2, "iaf_a_dim": 4, "iaf_h_dim": 8, "aux_a_dim": 3,
                     "aux_head_scale": 0.1},
           "train": {"steps": 20, "batch_size": 32, "checkpoint_every": 10, "log_every": 5, "device": "cpu"},
           "eval": {"n_test": 8, "batch_size": 8, "ais_steps": 3, "ais_chains": 2, "elbo_samples": 1,
                    "iwae_samples": 5, "device": "cpu"},
           "report": {"n_samples": 4}, "toy": {"enabled": False}, "schools": {"enabled": False},
           "convergence": {"enabled": False}}
    path = tmp_path / "tinybase.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = snakemake(tmp_path, "--cores", "2", "--configfile", str(path))
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "results" / "tinybase"
    df = pd.read_csv(out / "summary.csv")
    assert sorted(df.method) == ["auxvae", "iaf"] and df.elbo_is_bound.all() and df.iwae.notna().all()
    md = (out / "table2.md").read_text()
    assert "VAE + IAF (2-dim)" in md and "[literature, quoted by the paper (Kingma et al., 2016" in md
    assert "Auxiliary VAE (2-dim)" in md and "our run of Auxiliary VAE: its rows above" in md


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["iaf", "auxvae"])
def test_baselines_on_cuda_give_the_cpu_numbers(method):
    """Built on the CPU and moved (masks are buffers, so they travel), the CUDA model's losses, proposal and IWAE
    (noise drawn on the CPU from one generator) match the CPU model's to float rounding."""
    torch.manual_seed(0)
    model = ex.build(tiny_run(method)).eval()
    x = (torch.rand(16, X_DIM, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    with torch.no_grad():
        cpu = model.iwae(x, 20, torch.Generator().manual_seed(2))
        gpu = model.to("cuda").iwae(x.cuda(), 20, torch.Generator().manual_seed(2), max_rows=64)
        assert torch.allclose(cpu, gpu.cpu(), rtol=1e-4, atol=1e-3)
        s = model(x.cuda())
        assert s.elbo.is_cuda and torch.isfinite(s.elbo).all()
        model.set_ais_start("base") if method == "iaf" else None
        mean, std = model.proposal(x.cuda())
        assert mean.is_cuda and (std > 0).all()
