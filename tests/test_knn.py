"""The k-nearest-neighbour KL estimator (avb/knn.py): its exact formula on hand-computable points, and its mean
against closed-form KL divergences between 10-dimensional Gaussians, with tolerances from its spread over repeats."""
import math

import numpy as np
import pytest

from avb import knn

D = 10
N = 1000
K = 3
REPEATS = 12   # seeds 0..11; the bias constants below were measured with seeds 10000..10399


def _cov():
    g = np.random.default_rng(42)
    a = g.standard_normal((D, D))
    return a @ a.T / (2 * D) + 0.5 * np.eye(D)


# name -> (mean and covariance of P, of Q, the estimator's bias at n = m = 1000, k = 3 in 10 dimensions). The bias is
# E[D_hat] - KL, measured as the mean over 400 independent repeats minus the closed form (standard error of each
# measured bias: 0.002-0.0035). It is large: the kNN balls are not small at this n in 10-D (bias ~ n^(-2/10)).
CASES = {
    "mean shift": (np.full(D, 0.3), np.eye(D), np.zeros(D), np.eye(D), -0.1279),
    "narrower": (np.zeros(D), 0.64 * np.eye(D), np.zeros(D), np.eye(D), +0.4063),
    "wider": (np.zeros(D), 1.44 * np.eye(D), np.zeros(D), np.eye(D), -0.7357),
    "correlated": (np.full(D, 0.1), _cov(), np.zeros(D), np.eye(D), +0.1855),
}
BIAS_SE = 0.0035


def _draw(mean, cov, n, g):
    return mean + g.standard_normal((n, len(mean))) @ np.linalg.cholesky(cov).T


def _repeats(m0, c0, m1, c1, m=N):
    vals = []
    for r in range(REPEATS):
        g = np.random.default_rng(r)
        vals.append(knn.kl_divergence(_draw(m0, c0, N, g), _draw(m1, c1, m, g), K))
    return float(np.mean(vals)), float(np.std(vals, ddof=1) / math.sqrt(REPEATS))


def test_formula_on_hand_computed_neighbours():
    # points on a line, embedded in 2-D (so the factor d = 2 is exercised): P = {0, 1, 3}, Q = {0.5, 10}
    p = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    q = np.array([[0.5, 0.0], [10.0, 0.0]])
    # k = 1: rho = (1, 1, 2), nu = (0.5, 0.5, 2.5); log(m / (n - 1)) = log(2 / 2) = 0
    want1 = 2 * (math.log(0.5) + math.log(0.5) + math.log(2.5 / 2)) / 3
    assert knn.kl_divergence(p, q, k=1) == pytest.approx(want1, abs=1e-12)
    # k = 2: rho = (3, 2, 3), nu = (10, 9, 7)
    want2 = 2 * (math.log(10 / 3) + math.log(9 / 2) + math.log(7 / 3)) / 3
    assert knn.kl_divergence(p, q, k=2) == pytest.approx(want2, abs=1e-12)
    # the sample-size term: a third point of Q far away changes nu for none of P but adds log(3 / 2)
    q3 = np.vstack([q, [[100.0, 0.0]]])
    assert knn.kl_divergence(p, q3, k=1) == pytest.approx(want1 + math.log(3 / 2), abs=1e-12)
    with pytest.raises(ValueError, match="coincident"):
        knn.kl_divergence(np.vstack([p, p[:1]]), q, k=1)
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        knn.kl_divergence(p, q[:, :1])


def test_closed_form_gaussian_kl_and_entropy():
    c = _cov()
    assert knn.gaussian_kl(np.zeros(D), c, np.zeros(D), c) == pytest.approx(0.0, abs=1e-12)
    # N(0, s^2 I) against N(0, I): d / 2 (s^2 - 1 - log s^2)
    assert knn.gaussian_kl(np.zeros(D), 0.64 * np.eye(D), np.zeros(D), np.eye(D)) == pytest.approx(
        D / 2 * (0.64 - 1 - math.log(0.64)), rel=1e-12)
    assert knn.gaussian_kl(np.full(D, 0.3), np.eye(D), np.zeros(D), np.eye(D)) == pytest.approx(0.45, rel=1e-12)
    assert knn.gaussian_entropy(np.eye(D)) == pytest.approx(D / 2 * math.log(2 * math.pi * math.e), rel=1e-12)


def test_zero_for_two_samples_of_one_distribution():
    # P = Q and m = n - 1: rho and nu are identically distributed, so the estimator is exactly unbiased
    mean, se = _repeats(np.zeros(D), _cov(), np.zeros(D), _cov(), m=N - 1)
    assert abs(mean) < 4 * se, (mean, se)
    # m = 4 n: the log(m / (n - 1)) term (+1.39 nats) is needed; measured bias -0.0864 (SE 0.0019)
    mean, se = _repeats(np.zeros(D), np.eye(D), np.zeros(D), np.eye(D), m=4 * N)
    assert abs(mean - (-0.0864)) < 4 * math.hypot(se, BIAS_SE), (mean, se)


@pytest.mark.parametrize("name", CASES)
def test_mean_matches_the_closed_form_plus_the_stated_bias(name):
    m0, c0, m1, c1, bias = CASES[name]
    true = knn.gaussian_kl(m0, c0, m1, c1)
    mean, se = _repeats(m0, c0, m1, c1)
    assert abs(mean - (true + bias)) < 4 * math.hypot(se, BIAS_SE), (name, true, mean, se)


def test_repeated_and_noise_floor_helpers():
    g = np.random.default_rng(0)
    p, q = g.standard_normal((3000, D)), g.standard_normal((5000, D)) + 0.3
    mean, se, n = knn.kl_repeated(p, q, 3, np.random.default_rng(1))
    assert n == 1000 and se > 0
    # the same as the estimator on the three disjoint thirds of p (in the permuted order) against fresh q subsets
    rng = np.random.default_rng(1)
    order = rng.permutation(3000)
    vals = [knn.kl_divergence(p[order[i * 1000:(i + 1) * 1000]], q[rng.choice(5000, 1000, replace=False)])
            for i in range(3)]
    assert mean == pytest.approx(np.mean(vals), abs=1e-12)
    assert abs(mean - (0.45 + CASES["mean shift"][4])) < 0.15   # it estimates the shifted pair (3 repeats: loose)
    # two halves of one sample (here rescaled, which leaves the true value 0): about 0
    floor, floor_se = knn.kl_noise_floor(q, 1000, 4, np.random.default_rng(2), scale=np.full(D, 2.0))
    assert abs(floor) < 0.1 and floor_se > 0
    with pytest.raises(ValueError, match="at least"):
        knn.kl_repeated(p, q[:500], 3, np.random.default_rng(0))
