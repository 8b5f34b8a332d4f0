"""The linear-Gaussian decoder of the theory tests (tests/test_theory.py, tests/test_baselines.py): a model whose
posterior and marginal log p(x) are known in closed form."""
import torch
from torch import nn

from avb.objectives import log_normal


class LinearGaussianDecoder(nn.Module):
    """p(x|z) = N(W z + b, s^2 I), fixed (buffers, not parameters: only the encoder, adversary or auxiliary networks
    learn); draws x~ = W z + b + s Phi^-1(u) from uniforms u (the auxiliary VAE's decoder draw)."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor, s: float):
        super().__init__()
        self.register_buffer("W", W)
        self.register_buffer("b", b)
        self.s = s

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W.T + self.b

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return log_normal(x, self(z), self.s)

    def log_likelihood_and_draw(self, x: torch.Tensor, z: torch.Tensor, u: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self(z)
        return log_normal(x, mean, self.s), mean.detach() + self.s * torch.special.ndtri(u)
