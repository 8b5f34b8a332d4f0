"""Gaussian kernel density estimates and the held-out KDE estimate of KL(q || p) for samples of an implicit q.

* ``kde_log_density``: the exact isotropic Gaussian KDE, O(n_query x n);
* ``BinnedKDE``: the same on a grid for 2-D samples (Wand 1994's binned KDE), O(n + m^3) per bandwidth;
* ``kl_estimate``: KL(q || p) from samples of q and log p at them, with a ``BinnedKDE`` of held-out samples as log q
  (bandwidth by held-out likelihood); biased downwards by KL(q || q_hat).
"""
from __future__ import annotations

import math

import torch


def kde_log_density(points: torch.Tensor, centres: torch.Tensor, bandwidth: float, chunk: int = 2048) -> torch.Tensor:
    """log of the isotropic Gaussian KDE with the given centres and bandwidth at ``points`` (float64)."""
    points, centres = points.to(torch.float64), centres.to(torch.float64)
    norm = math.log(centres.shape[0]) + centres.shape[1] * math.log(bandwidth * math.sqrt(2 * math.pi))
    out = [torch.logsumexp(-0.5 * torch.cdist(p, centres).square() / bandwidth ** 2, -1) - norm
           for p in points.split(chunk)]
    return torch.cat(out)


class BinnedKDE:
    """Isotropic Gaussian KDE of 2-D samples, computed on a grid (the binned KDE of Wand 1994).

    The samples are linearly binned onto an m x m grid of cell centres covering every point it will be asked about
    (plus 4 bandwidths); the density at the cell centres is the separable Gaussian convolution K1 H K2^T of the
    binned masses H, and is read off at query points by bilinear interpolation. Both approximations are
    O((cell / bandwidth)^2), and the leading term is removed by narrowing the kernel (see ``log_density``): against
    the exact KDE (``kde_log_density``) the mean log density then agrees to ~1e-4 at 3 cells per bandwidth and
    better above (checked on trained toy encoders; ``tests/test_toy.py`` checks 3e-4). Bandwidths below 3 cells are
    not tried. Cost: O(n + m^3) per bandwidth, so large
    sample sizes are cheap (the exact KDE, ``kde_log_density``, costs O(n_query x n)).
    """

    def __init__(self, centres: torch.Tensor, cover: torch.Tensor, max_bandwidth: float, m: int = 512):
        c = centres.to(torch.float64)
        pts = torch.cat([c, cover.to(torch.float64)])
        self.lo = pts.min(0).values - 4 * max_bandwidth
        hi = pts.max(0).values + 4 * max_bandwidth
        self.m = m
        self.cell = (hi - self.lo) / m                                            # [2]
        self.g = [self.lo[d] + self.cell[d] * (torch.arange(m, dtype=torch.float64) + 0.5) for d in range(2)]
        i0, f = self._locate(c)
        h = torch.zeros(m * m, dtype=torch.float64)
        for d1 in (0, 1):
            for d2 in (0, 1):
                w = (f[:, 0] if d1 else 1 - f[:, 0]) * (f[:, 1] if d2 else 1 - f[:, 1])
                h.index_add_(0, (i0[:, 0] + d1) * m + i0[:, 1] + d2, w)
        self.h = h.view(m, m) / c.shape[0]                                        # binned probability masses

    def _locate(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = (p - self.lo) / self.cell - 0.5
        i0 = u.floor().clamp(0, self.m - 2)
        return i0.long(), (u - i0).clamp(0.0, 1.0)

    def min_bandwidth(self) -> float:
        return 3.0 * float(self.cell.max())

    def log_density(self, points: torch.Tensor, bandwidth: float) -> torch.Tensor:
        # linear binning and linear interpolation each add a variance of about cell^2 / 6 per axis (averaged over
        # positions); the kernel's variance is reduced by that much, which removes the leading binning bias
        k = []
        for d, g in enumerate(self.g):
            b = math.sqrt(bandwidth ** 2 - float(self.cell[d]) ** 2 / 3.0)
            k.append(torch.exp(-0.5 * ((g[:, None] - g[None]) / b) ** 2) / (math.sqrt(2 * math.pi) * b))
        dens = k[0] @ self.h @ k[1].T                                             # density at the cell centres
        i0, f = self._locate(points.to(torch.float64))
        out = 0.0
        for d1 in (0, 1):
            for d2 in (0, 1):
                w = (f[:, 0] if d1 else 1 - f[:, 0]) * (f[:, 1] if d2 else 1 - f[:, 1])
                out = out + w * dens[i0[:, 0] + d1, i0[:, 1] + d2]
        return torch.log(out.clamp_min(1e-300))


def kl_estimate(fit_samples: torch.Tensor, select_samples: torch.Tensor, eval_samples: torch.Tensor,
                log_target: torch.Tensor) -> tuple[float, float]:
    """KL(q || p) ~ mean over eval samples z ~ q of log q_hat(z) - log p(z), q_hat a held-out Gaussian KDE.

    q_hat is a ``BinnedKDE`` of ``fit_samples``; its bandwidth maximises the mean log q_hat of ``select_samples``
    over Scott's bandwidth times 2^(k/2), k = -12..2. ``log_target`` is log p at ``eval_samples``. All three sample
    sets are independent draws from q, and q_hat is a normalised density, so the estimate's expectation is
    KL(q || p) - KL(q || q_hat) <= KL(q || p): it is biased **downwards** by KL(q || q_hat) (plus Monte-Carlo noise
    and the binning error), and choosing the bandwidth by held-out likelihood minimises that bias.
    Returns (estimate, bandwidth).
    """
    fit = fit_samples.to(torch.float64)
    n, d = fit.shape
    scott = max(float(fit.std(0).mean()) * n ** (-1.0 / (d + 4)), 1e-6)
    cands = [scott * 2 ** (k / 2) for k in range(-12, 3)]
    kde = BinnedKDE(fit, torch.cat([select_samples, eval_samples]), max(cands))
    cands = [b for b in cands if b >= kde.min_bandwidth()] or [kde.min_bandwidth()]
    bw = max(cands, key=lambda b: float(kde.log_density(select_samples, b).mean()))
    return float((kde.log_density(eval_samples, bw) - log_target.to(torch.float64)).mean()), bw
