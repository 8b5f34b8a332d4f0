"""The theory AVB rests on, checked numerically (reference: shared/docs/avb-reference.md sections 3 and 6).

(a) Prop. 1: the logistic-loss optimum of an adversary is the log density ratio log q - log p.
(b) Prop. 2: E_q[grad_phi log q_phi] = 0, hence the reparametrised gradient of T* held fixed is grad_phi KL(q||p).
(c) Adaptive contrast: KL(q||p) = KL(q||r) + E_q[log r - log p] for a non-Gaussian q, the invariance of KL under
    z_bar = (z - mu) / sigma, and the project's AVB+AC estimate with the optimal adversary.
(d) AVB itself (the project's objective and training step) on a linear-Gaussian model whose posterior is known.

Every Monte-Carlo comparison uses a tolerance of K standard errors of the estimate, with fixed seeds. Each test also
runs a negative control: the same check applied to a plausible *broken* version of the math (a missing normaliser,
a dropped Jacobian, a wrong gradient term) and asserts that the check rejects it, so that a test cannot pass
vacuously because its tolerance is too wide.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from avb import objectives as ob
from linear_gaussian import LinearGaussianDecoder
from avb.nets import mlp

K = 4.0  # standard errors; |N(0,1)| > 4 has probability 6e-5, and every seed is fixed anyway


pytestmark = pytest.mark.usefixtures("one_thread")  # small networks: one thread is faster and steadier


def mc(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo mean over dim 0 and its standard error."""
    return values.mean(0), values.std(0) / math.sqrt(values.shape[0])


# ----------------------------------------------------------------------------------------------------------------
# (a) Proposition 1
# ----------------------------------------------------------------------------------------------------------------

Q_MEAN, Q_STD = torch.tensor([0.6, -0.4]), torch.tensor([0.5, 1.3])  # q = N(Q_MEAN, diag Q_STD^2), p = N(0, I)


def true_log_ratio(z: torch.Tensor) -> torch.Tensor:
    return ob.log_normal(z, Q_MEAN, Q_STD) - ob.log_normal(z)


def overlap_region(mass: float = 0.95, n: int = 301, lim: float = 5.0) -> torch.Tensor:
    """Grid points carrying ``mass`` of the normalised overlap density h(z) = p(z) q(z) / (p(z) + q(z)).

    h is the curvature of the logistic loss in T(z) at the optimum: the population loss
    L(T) = int q softplus(-T) + p softplus(T) has d2L/dT(z)2 = (p + q) sig(T*)(1 - sig(T*)) = p q / (p + q). Where h
    is negligible the loss does not pin T down (the classifier is already certain), so Prop. 1 can only be checked
    empirically on the region where h has its mass.
    """
    g = torch.linspace(-lim, lim, n)
    z = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    lp, lq = ob.log_normal(z), ob.log_normal(z, Q_MEAN, Q_STD)
    h = torch.exp(lp + lq - torch.logaddexp(lp, lq))
    order = torch.argsort(h, descending=True)
    keep = torch.cumsum(h[order], 0) / h.sum() <= mass
    return z[order[keep]]


def test_prop1_logistic_adversary_recovers_log_density_ratio():
    """A small MLP trained with the adversary's logistic loss (z~q labelled 1, z~p labelled 0) converges to
    T*(z) = log q(z) - log p(z).

    Setting: q = N((0.6, -0.4), diag(0.5, 1.3)^2), p = N(0, I), 2-D; MLP 2-32-32-1 (ELU); 1000 Adam steps (lr 1e-2,
    cosine decay to 0) on fresh batches of 1024 + 1024 samples; seed 0.

    Tolerance, on the 95%-mass region of the overlap density h (see ``overlap_region``; 10439 grid points), where T*
    ranges over [-3.1, 2.5] nats: max |T - T*| < 0.25 and h-weighted mean |T - T*| < 0.06. Measured over seeds 0-4:
    max 0.09-0.16 (0.16 for seed 0, the one used), mean 0.020-0.028. The remaining error is the SGD noise of a
    finite-sample fit plus approximating a quadratic with ELUs, largest at the edge of the region, where h is
    smallest. The bounds are ~1.6x and ~2x the worst measured error and well below what a broken ratio gives
    (asserted at the end): dropping the normaliser of q (a constant offset of -sum log std_q = 0.43) has max/mean
    error 0.43/0.43, the sign flip of swapped labels 6.2/1.3, and log(q / (p + q)) (the log of the classifier's
    probability instead of its logit) 2.6/0.91.
    """
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 32), nn.ELU(), nn.Linear(32, 32), nn.ELU(), nn.Linear(32, 1))
    steps, n = 1000, 1024
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        t_q = net(Q_MEAN + Q_STD * torch.randn(n, 2)).squeeze(-1)
        t_p = net(torch.randn(n, 2)).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(t_q, torch.ones_like(t_q)) \
            + F.binary_cross_entropy_with_logits(t_p, torch.zeros_like(t_p))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    z = overlap_region()
    lp, lq = ob.log_normal(z), ob.log_normal(z, Q_MEAN, Q_STD)
    weight = torch.exp(lp + lq - torch.logaddexp(lp, lq))
    weight = weight / weight.sum()
    t_star = true_log_ratio(z)
    with torch.no_grad():
        t_fit = net(z).squeeze(-1)

    def errors(t: torch.Tensor) -> tuple[float, float]:
        e = (t - t_star).abs()
        return e.max().item(), (weight * e).sum().item()

    max_err, mean_err = errors(t_fit)
    assert t_star.max() - t_star.min() > 5.0  # the region is not trivial: T* varies by > 5 nats over it
    assert max_err < 0.25 and mean_err < 0.06, (max_err, mean_err)
    # negative controls: candidates a broken derivation would produce are rejected by the same bounds
    unnormalised = t_star - torch.log(Q_STD).sum()                      # log q without its normaliser
    classifier_log_prob = lq - torch.logaddexp(lp, lq)                 # log D(z), not logit D(z)
    for wrong in (unnormalised, -t_star, classifier_log_prob):
        m, w = errors(wrong)
        assert m > 0.25 and w > 0.06, (m, w)


# ----------------------------------------------------------------------------------------------------------------
# (b) Proposition 2
# ----------------------------------------------------------------------------------------------------------------

MU = torch.tensor([0.5, -1.0, 0.2])
LOG_STD = torch.tensor([-0.7, 0.3, 0.15])


def per_sample_leaves(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """phi = (mu, log sigma) copied once per sample, so that autograd gives one gradient row per sample."""
    return (MU.expand(n, -1).clone().requires_grad_(True), LOG_STD.expand(n, -1).clone().requires_grad_(True))


def test_prop2_expected_score_is_zero():
    """E_{q_phi}[grad_phi log q_phi(z)] = grad_phi int q_phi = 0 for q_phi = N(mu, diag sigma^2), phi = (mu, log sigma).

    The score is taken by autograd through ``avb.objectives.log_normal``; n = 200k samples, each of the 6 components
    of the MC mean must lie within K = 4 standard errors of 0 (measured: 0.4-1.3 SE; SE <= 0.0045). Negative
    control: the score of the unnormalised density exp(-(z - mu)^2 / 2 sigma^2) (log_normal without its -log sigma)
    has mean +1 per log-sigma component, ~316 standard errors away, and is rejected.
    """
    g = torch.Generator().manual_seed(0)
    n = 200_000
    mu, log_std = per_sample_leaves(n)
    z = (MU + torch.exp(LOG_STD) * torch.randn(n, 3, generator=g)).detach()  # samples; no gradient through z
    score = torch.autograd.grad(ob.log_normal(z, mu, torch.exp(log_std)).sum(), (mu, log_std))
    score = torch.cat(score, -1)
    mean, se = mc(score)
    assert torch.all(mean.abs() < K * se), (mean, se)
    assert se.max() < 0.01  # a meaningful test: 4 SE is a small fraction of the per-sample spread (std ~ 1)

    unnormalised = -0.5 * (((z - mu) / torch.exp(log_std)) ** 2).sum(-1)
    bad = torch.cat(torch.autograd.grad(unnormalised.sum(), (mu, log_std)), -1)
    bad_mean, bad_se = mc(bad)
    assert not torch.all(bad_mean.abs() < K * bad_se)


def test_prop2_reparametrised_gradient_of_fixed_t_star_is_kl_gradient():
    """With T*(z) = log q_phi0(z) - log p(z) held fixed as a function (phi0 = current phi, no gradient), the
    reparametrised gradient E_eps[grad_phi T*(mu + sigma eps)] equals grad_phi KL(q_phi || p).

    (So the AVB update -grad_phi T*(z_phi) follows -grad_phi KL, the ELBO's KL term: Prop. 2 removes the
    E_q[grad_phi log q_phi] term that differentiating T* itself would add.) The analytic gradient is autograd of
    ``avb.objectives.gaussian_kl`` and is also checked against the closed form (mu, sigma^2 - 1). MC over 200k
    samples, K = 4 standard errors per component (measured: within 1.0 SE). Also: differentiating
    log q_phi(z_phi) - log p(z_phi) through phi as well (T not held fixed) has the same expectation, by Prop. 2
    (within 1.3 SE). Negative control: dropping log q from T* (the gradient of -log p(z) alone, (mu, sigma^2))
    misses by 1 per log-sigma component (150-1000 SE) and is rejected.
    """
    g = torch.Generator().manual_seed(1)
    n = 200_000
    eps = torch.randn(n, 3, generator=g)

    def mc_grad(fn):
        mu, log_std = per_sample_leaves(n)
        z = mu + torch.exp(log_std) * eps
        return mc(torch.cat(torch.autograd.grad(fn(z, mu, log_std).sum(), (mu, log_std)), -1))

    fixed = mc_grad(lambda z, mu, ls: ob.log_normal(z, MU, torch.exp(LOG_STD)) - ob.log_normal(z))
    full = mc_grad(lambda z, mu, ls: ob.log_normal(z, mu, torch.exp(ls)) - ob.log_normal(z))
    prior_only = mc_grad(lambda z, mu, ls: -ob.log_normal(z))

    mu, log_std = MU.clone().requires_grad_(True), LOG_STD.clone().requires_grad_(True)
    analytic = torch.cat(torch.autograd.grad(ob.gaussian_kl(mu, log_std), (mu, log_std)))
    assert torch.allclose(analytic, torch.cat([MU, torch.exp(2 * LOG_STD) - 1]), atol=1e-6)

    for mean, se in (fixed, full):
        assert torch.all((mean - analytic).abs() < K * se + 1e-5), (mean, analytic, se)  # + float32 round-off
    mean, se = prior_only
    assert not torch.all((mean - analytic).abs() < K * se)


# ----------------------------------------------------------------------------------------------------------------
# (c) Adaptive contrast
# ----------------------------------------------------------------------------------------------------------------

MIX_W = torch.tensor([0.3, 0.7])
MIX_MEAN = torch.tensor([[-1.5, 0.5], [1.0, -0.5]])
MIX_STD = torch.tensor([[0.4, 0.6], [0.7, 0.3]])


def mix_log_q(z: torch.Tensor) -> torch.Tensor:
    """log density of the 2-component Gaussian mixture q (non-Gaussian), via ``log_normal``."""
    comps = torch.stack([ob.log_normal(z, MIX_MEAN[k], MIX_STD[k]) for k in range(2)], -1)
    return torch.logsumexp(comps + torch.log(MIX_W), -1)


def mix_sample(n: int, g: torch.Generator) -> torch.Tensor:
    k = torch.multinomial(MIX_W, n, replacement=True, generator=g)
    return MIX_MEAN[k] + MIX_STD[k] * torch.randn(n, 2, generator=g)


def mix_moments() -> tuple[torch.Tensor, torch.Tensor]:
    mean = (MIX_W[:, None] * MIX_MEAN).sum(0)
    var = (MIX_W[:, None] * (MIX_STD ** 2 + MIX_MEAN ** 2)).sum(0) - mean ** 2
    return mean, var


def expected_log_normal_under_q(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """E_q[log N(z; mean, diag std^2)] in closed form, from q's first two moments."""
    q_mean, q_var = mix_moments()
    return (-0.5 * ((q_var + (q_mean - mean) ** 2) / std ** 2 + 2 * torch.log(std) + ob.LOG_2PI)).sum()


def r_candidates() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    q_mean, q_var = mix_moments()
    return {"moments of q (AC)": (q_mean, torch.sqrt(q_var + ob.AC_VAR_FLOOR)),
            "arbitrary": (torch.tensor([0.7, 0.9]), torch.tensor([0.5, 2.5]))}


@pytest.mark.parametrize("r_name", list(r_candidates()))
def test_ac_kl_decomposition_and_affine_invariance(r_name):
    """For the non-Gaussian mixture q, p = N(0, I) and a Gaussian r = N(mu, diag sigma^2):

    * KL(q||p) = KL(q||r) + E_q[log r - log p]: KL(q||p) by MC on one sample set, KL(q||r) by MC on an independent
      set, E_q[log r - log p] in closed form; the two sides must agree within K sqrt(SE_1^2 + SE_2^2).
    * KL(q||N(mu, sigma^2)) = KL(q~||N(0, I)) for z_bar = (z - mu)/sigma, with log q~(z_bar) = log q(mu + sigma z_bar)
      + sum log sigma: the right side by MC over z_bar on a third independent set.
    Holds for any r (two are tried: q's moments, as AC uses, and an arbitrary one). n = 400k per set; the SEs are
    0.002-0.007 nats. Measured: KL(q||p) = 1.019 vs 0.711 + 0.310 = 1.021 (r = moments) and 4.091 - 3.069 = 1.022
    (arbitrary r); KL(q~||N(0,I)) = 0.710 vs KL(q||r) = 0.711, and 4.090 vs 4.091.
    Negative control: dropping the Jacobian sum log sigma from log q~ shifts KL(q~||N(0,I)) by -sum log sigma
    (+0.22 and -0.22 nats here, > 20 SEs) and is rejected.
    """
    g = torch.Generator().manual_seed(2)
    n = 400_000
    mu, sigma = r_candidates()[r_name]

    z1 = mix_sample(n, g)
    kl_qp = mc(mix_log_q(z1) - ob.log_normal(z1))
    z2 = mix_sample(n, g)
    kl_qr = mc(mix_log_q(z2) - ob.log_normal(z2, mu, sigma))
    e_log_r_minus_log_p = expected_log_normal_under_q(mu, sigma) - expected_log_normal_under_q(
        torch.zeros(2), torch.ones(2))
    tol = K * math.hypot(kl_qp[1].item(), kl_qr[1].item())
    assert abs(kl_qp[0] - (kl_qr[0] + e_log_r_minus_log_p)) < tol, (kl_qp, kl_qr, e_log_r_minus_log_p)

    z_bar = (mix_sample(n, g) - mu) / sigma
    log_jac = torch.log(sigma).sum()
    kl_bar = mc(mix_log_q(mu + sigma * z_bar) + log_jac - ob.log_normal(z_bar))
    tol = K * math.hypot(kl_qr[1].item(), kl_bar[1].item())
    assert abs(kl_bar[0] - kl_qr[0]) < tol, (kl_bar, kl_qr)
    no_jacobian = mc(mix_log_q(mu + sigma * z_bar) - ob.log_normal(z_bar))
    assert abs(no_jacobian[0] - kl_qr[0]) > tol + K * no_jacobian[1]


class MixtureEncoder(nn.Module):
    """q(z|x) = the mixture for every x; returns (z, E[z|x], Var[z|x]) with the exact moments, as AC expects."""

    def __init__(self, g: torch.Generator):
        super().__init__()
        self.g = g

    def forward(self, x):
        z = mix_sample(x.shape[0], self.g)
        mean, var = mix_moments()
        return z, mean.expand_as(z), var.expand_as(z)


class OptimalACAdversary(nn.Module):
    """T*(x, z_bar) = log q~(z_bar) - log N(z_bar; 0, I), q~ the law of z_bar = (z - mu)/sigma, with the (mu, sigma) of
    r that ``AVB.encode`` uses (sigma = sqrt(Var + AC_VAR_FLOOR))."""

    def forward(self, x, *zs):
        mean, var = mix_moments()
        sigma = torch.sqrt(var + ob.AC_VAR_FLOOR)
        out = tuple(mix_log_q(mean + sigma * z) + torch.log(sigma).sum() - ob.log_normal(z) for z in zs)
        return out[0] if len(out) == 1 else out


class NullDecoder(nn.Module):
    def forward(self, z):  # pragma: no cover - unused
        return z

    def log_likelihood(self, x, z):
        return torch.zeros(z.shape[0])


def test_project_ac_estimate_with_optimal_adversary_is_unbiased_for_non_gaussian_q():
    """The project's AVB+AC forward (``avb.objectives.AVB``, adaptive_contrast=True) with T = T* computes
    kl = T*(x, z_bar) + log r(z|x) - log p(z), which must equal log q(z) - log p(z) sample by sample, so its batch mean
    is an unbiased estimate of KL(q||p) even though q (a mixture) is not Gaussian. Checked pointwise (float32
    round-off, 1e-3) and against an independent MC estimate of KL(q||p) within K combined SEs (n = 400k each).
    """
    g = torch.Generator().manual_seed(3)
    n = 400_000
    model = ob.AVB(2, NullDecoder(), MixtureEncoder(g), OptimalACAdversary(), adaptive_contrast=True)
    state = g.get_state()
    with torch.no_grad():
        step = model(torch.zeros(n, 1))
    g.set_state(state)
    z = mix_sample(n, g)  # the z the model drew
    assert torch.allclose(step.kl, mix_log_q(z) - ob.log_normal(z), atol=1e-3)
    est = mc(step.kl)
    z_ref = mix_sample(n, g)
    ref = mc(mix_log_q(z_ref) - ob.log_normal(z_ref))
    assert abs(est[0] - ref[0]) < K * math.hypot(est[1].item(), ref[1].item()), (est, ref)


# ----------------------------------------------------------------------------------------------------------------
# (d) AVB on a linear-Gaussian model with a tractable posterior
# ----------------------------------------------------------------------------------------------------------------



class NoiseEncoder(nn.Module):
    """z = A x + c + L eps, eps ~ N(0, I): AVB only ever sees its samples (it is implicit to the objective), but its
    law is N(A x + c, L L^T), so the true KL(q||p) and the gap KL(q||p(z|x)) can be computed exactly. Starts at
    q = N(0, I) = p(z). With ``moments`` it also returns (E[z|x], diag Var[z|x]) exactly, for adaptive contrast."""

    def __init__(self, x_dim: int, z_dim: int, moments: bool):
        super().__init__()
        self.mean = nn.Linear(x_dim, z_dim)
        nn.init.zeros_(self.mean.weight)
        nn.init.zeros_(self.mean.bias)
        self.L = nn.Parameter(torch.eye(z_dim))
        self.moments = moments

    def forward(self, x):
        mu = self.mean(x)
        z = mu + torch.randn_like(mu) @ self.L.T
        return (z, mu, (self.L ** 2).sum(1).expand_as(mu)) if self.moments else z

    def gaussian(self, x):
        return self.mean(x), self.L @ self.L.T


class SmallAdversary(nn.Module):
    """The project's adversary form, T(x, z) = <theta(x), s(z)> + T_x(x) + T_z(z) + 0.5 |z|^2 (as
    ``avb.nets.InnerProductAdversary``), with small ``avb.nets.mlp`` branches (Xavier heads, no ELU on theta) and the
    same ``forward(x, *zs)`` interface."""

    def __init__(self, x_dim: int, z_dim: int, hidden: int = 32, embed: int = 16):
        super().__init__()
        act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        self.theta, self.s = mlp([x_dim, hidden, hidden, embed], act), mlp([z_dim, hidden, hidden, embed], act)
        self.t_x, self.t_z = mlp([x_dim, hidden, hidden, 1], act), mlp([z_dim, hidden, hidden, 1], act)

    def forward(self, x, *zs):
        theta, t_x = self.theta(x), self.t_x(x).squeeze(-1)
        out = tuple((theta * self.s(z)).sum(-1) + t_x + self.t_z(z).squeeze(-1) + 0.5 * (z * z).sum(-1) for z in zs)
        return out[0] if len(out) == 1 else out


def gaussian_kl_full(m0, S0, m1, P1, logdet_S1):
    """E over rows of KL(N(m0, S0) || N(m1, P1^-1)); S0 shared by all rows."""
    d = m0 - m1
    return 0.5 * (torch.trace(P1 @ S0) + ((d @ P1) * d).sum(-1) - m0.shape[-1] + logdet_S1 - torch.logdet(S0)).mean()


class LinearGaussianProblem:
    """p(z) = N(0, I_2), p(x|z) = N(W z + b, s^2 I_4) with a fixed random W, b; posterior N(m(x), S) with
    S = (I + W^T W / s^2)^-1, m(x) = S W^T (x - b) / s^2; data x ~ p(x), fresh every step."""

    X_DIM, Z_DIM = 4, 2

    def __init__(self, s: float):
        g = torch.Generator().manual_seed(1234)
        self.W = torch.randn(self.X_DIM, self.Z_DIM, generator=g)
        self.b, self.s = torch.randn(self.X_DIM, generator=g), s
        self.prec = torch.eye(self.Z_DIM) + self.W.T @ self.W / s ** 2
        self.S = torch.linalg.inv(self.prec)
        self.x_eval = self.sample_x(4096, torch.Generator().manual_seed(99))
        self.m_eval = self.posterior_mean(self.x_eval)
        # analytic E_x KL(p(z|x) || p(z)) over the evaluation set (its sampling error is irrelevant: both the target and
        # the estimates below are computed on the same x)
        self.kl_post = gaussian_kl_full(self.m_eval, self.S, torch.zeros(2), torch.eye(2), 0.0).item()

    def sample_x(self, n, g=None):
        z = torch.randn(n, self.Z_DIM, generator=g)
        return z @ self.W.T + self.b + self.s * torch.randn(n, self.X_DIM, generator=g)

    def posterior_mean(self, x):
        return (x - self.b) @ self.W @ self.S / self.s ** 2

    def model(self, ac: bool) -> ob.AVB:
        return ob.AVB(self.Z_DIM, LinearGaussianDecoder(self.W, self.b, self.s),
                      NoiseEncoder(self.X_DIM, self.Z_DIM, moments=ac), SmallAdversary(self.X_DIM, self.Z_DIM),
                      adaptive_contrast=ac)

    @torch.no_grad()
    def evaluate(self, model: ob.AVB) -> dict[str, float]:
        """gap = E_x KL(q(z|x) || p(z|x)) and kl_q = E_x KL(q(z|x) || p(z)), both exact; est = the adversary's KL
        estimate (the mean of ``Step.kl``, one z per x) on the evaluation set."""
        mu, cov = model.encoder.gaussian(self.x_eval)
        rng = torch.get_rng_state()
        est = model(self.x_eval).kl.mean().item()
        torch.set_rng_state(rng)  # evaluating does not change the training's random stream
        return {"gap": gaussian_kl_full(mu, cov, self.m_eval, self.prec, torch.logdet(self.S)).item(),
                "kl_q": gaussian_kl_full(mu, cov, torch.zeros(2), torch.eye(2), 0.0).item(), "est": est}


def train_avb(problem: LinearGaussianProblem, ac: bool, steps: int, lr: float, lr_adversary: float, seed: int = 0,
              batch: int = 128, eval_every: int = 50, cosine: bool = False, stop=None) -> list[dict[str, float]]:
    """Train with the project's objective and its training step (``avb.step.train_step``: one forward, adversary
    and primal gradients from it, both Adam steps at once; Adam beta1 = 0.5 as in the configs)."""
    from avb.step import train_step
    torch.manual_seed(seed)
    model = problem.model(ac)
    pp, pa = model.primal_parameters(), model.adversary_parameters()
    assert {id(p) for p in pp} == {id(p) for p in model.encoder.parameters()}  # the decoder is fixed
    opt_p = torch.optim.Adam(pp, lr=lr, betas=(0.5, 0.999))
    opt_a = torch.optim.Adam(pa, lr=lr_adversary, betas=(0.5, 0.999))
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, steps) for o in (opt_p, opt_a)] if cosine else []
    history = []
    for i in range(1, steps + 1):
        train_step(model, problem.sample_x(batch), opt_p, opt_a, pp, pa, 1, None, step=i)
        for sc in scheds:
            sc.step()
        if i % eval_every == 0:
            history.append({"step": i, **problem.evaluate(model)})
            if stop is not None and stop(history[-1]):
                break
    return history


@pytest.mark.slow
def test_avb_kl_estimate_reaches_analytic_posterior_kl():
    """Plain AVB (the project's objective and step) on p(x|z) = N(W z + b, 0.5^2 I), z in R^2, x in R^4: the
    encoder reaches the exact posterior and the adversary's KL estimate reaches the analytic
    E_x KL(p(z|x) || p(z)) = 1.711 nats.

    1500 steps, batch 128, Adam lr 3e-3 for both players (cosine decay to 0, so that the end point is not dominated
    by SGD noise), seed 0; ~5 s.

    Tolerances (all on the same 4096 evaluation x's, so the target has no sampling error):
    * gap E_x KL(q(z|x) || p(z|x)) < 0.1 nats (exact, since the encoder is Gaussian). At the start it is 4.3.
    * |mean KL estimate - 1.711| < 0.15 nats (9%). The estimate's error has three parts: q is not exactly the
      posterior (measured: the true E_x KL(q || p) of the trained q is 1.78-1.81, seeds 0-3), the adversary is not
      exactly optimal for that q (its estimate trails the true KL of q by 0.06-0.09: the usual slight adversarial
      bias, which also keeps q a little narrower than the posterior), and Monte Carlo (one z per x, SE ~ 0.02 with
      4096 x's). Measured |estimate - 1.711| over seeds 0-3: 0.002-0.010 (the first two parts largely cancel); the
      bound allows for each part at its observed size. At the start the estimate is ~0.1.
    * |mean KL estimate - true E_x KL(q || p)| < 0.2 nats: the adversary estimates the KL of the q it is trained
      against (measured 0.06-0.09).
    """
    problem = LinearGaussianProblem(s=0.5)
    assert abs(problem.kl_post - 1.711) < 1e-3
    history = train_avb(problem, ac=False, steps=1500, lr=3e-3, lr_adversary=3e-3, cosine=True)
    assert history[0]["gap"] > 3.0 and history[0]["est"] < 0.5  # far from the target at the start
    end = history[-3:]  # steps 1400-1500
    est = sum(h["est"] for h in end) / len(end)
    kl_q = sum(h["kl_q"] for h in end) / len(end)
    gap = history[-1]["gap"]
    assert gap < 0.1, history[-1]
    assert abs(est - problem.kl_post) < 0.15, (est, problem.kl_post)
    assert abs(est - kl_q) < 0.2, (est, kl_q)


@pytest.mark.slow
def test_adaptive_contrast_reaches_the_posterior_in_fewer_steps_when_it_is_far_from_the_prior():
    """With s = 0.1 the posterior is narrow (std ~0.03-0.1, E_x KL(p(z|x)||p(z)) = 4.72 nats) and far from the prior.
    AVB and AVB+AC are trained on it with the same encoder (q = N(A x + c, L L^T), which also reports its exact
    moments for AC), adversary, learning rates (3e-3 both, constant), batch 128 and seed. Accuracy = the exact gap
    E_x KL(q(z|x) || p(z|x)) <= 0.5 nats (it is ~150 at the start), checked every 50 steps for up to 1500 steps.

    Measured (seeds 0 and 1): AC reaches it at step 700 / 750 (0.25 nats at 1300 / 1550) and its KL estimate at
    step 1500 is within 2% of 4.72. Plain AVB does not reach it within 3000 steps: its gap comes down to ~1 nat
    around step 650, then grows again to 6-12 nats, as the encoder over-concentrates q (true KL(q||p) 12-18 nats)
    while the adversary, which has to model the sharp log q(z|x) - log p(z) directly, estimates only 3-4.5 nats.
    (The same holds at s = 0.2: AC 500 steps, AVB not within 3000.) The test asserts that AC reaches the accuracy
    within 1000 steps and strictly before plain AVB (which counts as never if it does not within the budget), and
    that AC's final KL estimate is within 5% of the analytic value. ~12 s.
    """
    problem = LinearGaussianProblem(s=0.1)
    assert abs(problem.kl_post - 4.722) < 1e-3

    def first_accurate(history):
        return next((h["step"] for h in history if h["gap"] <= 0.5), math.inf)

    ac = train_avb(problem, ac=True, steps=1500, lr=3e-3, lr_adversary=3e-3)
    plain = train_avb(problem, ac=False, steps=1500, lr=3e-3, lr_adversary=3e-3)
    assert ac[0]["gap"] > 50 and plain[0]["gap"] > 50
    steps_ac, steps_plain = first_accurate(ac), first_accurate(plain)
    assert steps_ac <= 1000, [(h["step"], round(h["gap"], 2)) for h in ac]
    assert steps_ac < steps_plain, (steps_ac, steps_plain)
    assert abs(ac[-1]["est"] - problem.kl_post) < 0.05 * problem.kl_post, ac[-1]
