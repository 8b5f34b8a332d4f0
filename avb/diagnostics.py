"""MCMC diagnostics and a sample divergence, in float64 numpy / torch.

* ``split_rhat``: the classic split-R-hat (Gelman et al., BDA3), not rank-normalised;
* ``rank_split_rhat``: the rank-normalised folded split-R-hat (Vehtari et al. 2021);
* ``ess``: the multi-chain effective sample size on split chains, Geyer's initial monotone sequence (Stan's formula,
  not rank-normalised);
* ``energy_distance``: the energy distance between two samples (V-statistic, Euclidean norm).

Draws are [chains, n, dim] (or [chains, n] for one parameter).
"""
from __future__ import annotations

import numpy as np
import torch


def _split(draws: np.ndarray) -> np.ndarray:
    """[chains, n, ...] -> [2 chains, n // 2, ...] (the middle draw dropped for odd n)."""
    n = draws.shape[1] // 2
    return np.concatenate([draws[:, :n], draws[:, -n:]], axis=0)


def split_rhat(draws: np.ndarray) -> np.ndarray:
    """Classic split-R-hat (BDA3) per parameter of draws [chains, n, dim] (or [chains, n]); not rank-normalised."""
    x = _split(np.asarray(draws, dtype=np.float64))
    n = x.shape[1]
    w = x.var(axis=1, ddof=1).mean(0)
    b = n * x.mean(axis=1).var(axis=0, ddof=1)
    return np.sqrt(((n - 1) / n * w + b / n) / w)


def _rank_normal(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtri
    from scipy.stats import rankdata

    r = rankdata(x.reshape(-1, *x.shape[2:]), axis=0).reshape(x.shape)
    return ndtri((r - 0.375) / (x.shape[0] * x.shape[1] + 0.25))


def rank_split_rhat(draws: np.ndarray) -> np.ndarray:
    """Rank-normalised folded split-R-hat (Vehtari et al. 2021): max of the bulk and the tail (folded) R-hat."""
    x = np.asarray(draws, dtype=np.float64)
    folded = np.abs(x - np.median(x.reshape(-1, *x.shape[2:]), axis=0))
    return np.maximum(split_rhat(_rank_normal(x)), split_rhat(_rank_normal(folded)))


def ess(draws: np.ndarray) -> np.ndarray:
    """Effective sample size per parameter of draws [chains, n, dim] (or [chains, n]): Stan's multi-chain estimate
    on split chains with Geyer's initial monotone sequence (autocovariances by FFT); not rank-normalised."""
    x = _split(np.asarray(draws, dtype=np.float64))
    m, n = x.shape[:2]
    xc = x - x.mean(axis=1, keepdims=True)
    size = 2 ** int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(xc, n=size, axis=1)
    acov = np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n                   # biased, [m, n, ...]
    chain_var = acov[:, 0] * n / (n - 1)
    w = chain_var.mean(0)
    var_plus = w * (n - 1) / n + (x.mean(axis=1).var(axis=0, ddof=1) if m > 1 else 0.0)
    rho = 1.0 - (w - acov.mean(0)) / var_plus                                         # [n, ...]
    rho = rho.reshape(n, -1)
    out = np.empty(rho.shape[1])
    for k in range(rho.shape[1]):
        r = rho[:, k]
        pairs = r[: 2 * (n // 2)].reshape(-1, 2).sum(1)
        stop = np.argmax(pairs < 0) if (pairs < 0).any() else len(pairs)
        p = np.minimum.accumulate(pairs[:stop]) if stop else np.zeros(1)
        tau = max(-1.0 + 2.0 * p.sum(), 1.0 / np.log10(m * n))
        out[k] = m * n / tau
    return out.reshape(x.shape[2:]) if x.ndim > 2 else out[0]


def energy_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, chunk: int = 2048) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (V-statistic, Euclidean norm), in float64."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)

    def mean_dist(u, v):
        return sum(torch.cdist(u[i:i + chunk], v).sum().item() for i in range(0, len(u), chunk)) / (len(u) * len(v))

    return 2 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b)
