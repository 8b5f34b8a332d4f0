"""Sample-based Kullback-Leibler divergence by k-nearest-neighbour distances (Wang, Kulkarni & Verdú 2009).

For samples x_1..x_n ~ P and y_1..y_m ~ Q in R^d,

    D_hat(P || Q) = d / n * sum_i log(nu_k(i) / rho_k(i)) + log(m / (n - 1)),

rho_k(i) the Euclidean distance from x_i to its k-th nearest neighbour among the other x's, nu_k(i) to its k-th
nearest neighbour among the y's. It is consistent (n, m -> inf with k fixed); for k = 1 it is the estimator of
Pérez-Cruz (2008). It is ``BDKL_KnnK`` of Szabó's ITE toolbox, the package the paper's code lists (ITE's default
k = 3, exact search: ``DEFAULT_K``). Neighbours are found exactly by ``scipy.spatial.cKDTree``.

Bias: for P = Q and m = n - 1 the estimator is unbiased (rho_k and nu_k are then identically distributed). Otherwise
it is biased at finite n, and in 10 dimensions badly so, because the k-NN balls are not small against the scale on
which the densities change; the bias falls only like n^(-2/d). ``tests/test_knn.py`` states it for several pairs of
10-D Gaussians at n = 1000 (from -0.7 to +0.4 nats, either sign, for true values of about 0.4). Estimates at
different n are therefore not comparable, and an estimate near 0 can be negative.
"""
from __future__ import annotations

import math

import numpy as np

DEFAULT_K = 3  # ITE's BDKL_KnnK default


def kl_divergence(p: np.ndarray, q: np.ndarray, k: int = DEFAULT_K) -> float:
    """D_hat(P || Q) from samples ``p`` [n, d] of P and ``q`` [m, d] of Q (the estimator above)."""
    from scipy.spatial import cKDTree

    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(f"kl_divergence needs two sample arrays [n, d] and [m, d]; got {p.shape} and {q.shape}")
    n, d = p.shape
    m = q.shape[0]
    if k < 1 or n <= k or m < k:
        raise ValueError(f"kl_divergence with k = {k} needs more than k samples of P and at least k of Q; "
                         f"got n = {n}, m = {m}")
    rho = cKDTree(p).query(p, k=[k + 1])[0][:, 0]          # neighbour 1 of x_i among the x's is x_i itself
    nu = cKDTree(q).query(p, k=[k])[0][:, 0]
    if not (rho > 0).all() or not (nu > 0).all():
        raise ValueError("kl_divergence: coincident sample points (a zero nearest-neighbour distance); the kNN "
                         "estimator needs samples of continuous distributions, without duplicates")
    return float(d * np.mean(np.log(nu) - np.log(rho)) + math.log(m / (n - 1)))


def _mean_se(values: list[float]) -> tuple[float, float]:
    se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return float(np.mean(values)), se


def kl_repeated(p: np.ndarray, q: np.ndarray, repeats: int, rng: np.random.Generator, k: int = DEFAULT_K,
                scale: np.ndarray | None = None) -> tuple[float, float, int]:
    """``kl_divergence`` over ``repeats`` disjoint sets of n = len(p) // repeats points of ``p``, each against a
    fresh random set of n points of ``q`` (without replacement; needs len(q) >= n): (mean, standard error of the
    mean, n). The standard error covers the sampling noise of both sides, not the estimator's bias at this n.
    ``scale`` divides every coordinate of both (KL is invariant under it; the estimator is least biased for roughly
    isotropic samples)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if scale is not None:
        p, q = p / scale, q / scale
    n = len(p) // repeats
    if n > len(q):
        raise ValueError(f"kl_repeated: {repeats} sets of {n} points need at least {n} points of q; got {len(q)}")
    order = rng.permutation(len(p))
    vals = [kl_divergence(p[order[i * n:(i + 1) * n]], q[rng.choice(len(q), n, replace=False)], k)
            for i in range(repeats)]
    return (*_mean_se(vals), n)


def kl_noise_floor(q: np.ndarray, n: int, repeats: int, rng: np.random.Generator, k: int = DEFAULT_K,
                   scale: np.ndarray | None = None) -> tuple[float, float]:
    """Mean and standard error of ``kl_divergence`` between two disjoint random sets of ``n`` points of the same
    sample ``q`` (n capped at half its size), over ``repeats`` pairs: the estimator's value where the truth is 0."""
    q = np.asarray(q, dtype=np.float64)
    if scale is not None:
        q = q / scale
    n = min(n, len(q) // 2)
    vals = []
    for _ in range(repeats):
        idx = rng.permutation(len(q))[: 2 * n]
        vals.append(kl_divergence(q[idx[:n]], q[idx[n:]], k))
    return _mean_se(vals)


def gaussian_kl(m0: np.ndarray, c0: np.ndarray, m1: np.ndarray, c1: np.ndarray) -> float:
    """Closed-form KL(N(m0, c0) || N(m1, c1)) of two multivariate Gaussians with covariance matrices c0, c1."""
    m0, m1, c0, c1 = (np.asarray(a, dtype=np.float64) for a in (m0, m1, c0, c1))
    c1_inv = np.linalg.inv(c1)
    diff = m1 - m0
    return float(0.5 * (np.trace(c1_inv @ c0) + diff @ c1_inv @ diff - len(m0)
                        + np.linalg.slogdet(c1)[1] - np.linalg.slogdet(c0)[1]))


def gaussian_entropy(cov: np.ndarray) -> float:
    """Differential entropy of N(., cov) in nats."""
    cov = np.asarray(cov, dtype=np.float64)
    return float(0.5 * (len(cov) * (1.0 + math.log(2 * math.pi)) + np.linalg.slogdet(cov)[1]))
