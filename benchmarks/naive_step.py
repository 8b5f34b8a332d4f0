"""The naive training step both CPU and GPU benchmarks time the project against: the method's losses written out
inline over the model's own modules (``encoder`` / ``decoder`` / ``adversary``), two default ``torch.optim.Adam``
and the official simultaneous update (adversary backward with ``retain_graph``, primal backward, both steps). The
same arithmetic as ``avb.step.train_step``, as a researcher writes it in an afternoon: eager, no autocast, no
compile, no fused optimiser, no channels-last."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from avb.nets import X_DIM
from avb.objectives import AC_VAR_FLOOR


class NaiveStep:
    """``step(x)`` (also ``self(x)``): one training iteration of ``method`` (vae, avb, avb_ac) on the batch x."""

    def __init__(self, model: torch.nn.Module, method: str, lr: float, lr_adversary: float,
                 betas: tuple[float, float]):
        self.method, self.enc, self.dec = method, model.encoder, model.decoder
        self.adv = getattr(model, "adversary", None)
        self.params_a = list(self.adv.parameters()) if self.adv is not None else []
        self.params_p = list(self.enc.parameters()) + list(self.dec.parameters())
        self.opt_p = torch.optim.Adam(self.params_p, lr=lr, betas=betas)
        self.opt_a = torch.optim.Adam(self.params_a, lr=lr_adversary, betas=betas) if self.adv is not None else None
        model.train()

    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.method == "vae":
            mean, log_std = self.enc(x)
            z = mean + torch.randn_like(mean) * torch.exp(log_std)
            kl = 0.5 * (mean * mean + torch.exp(2 * log_std) - 1.0 - 2 * log_std).sum(-1)
            recon = F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="none").sum(-1)
            return (recon + kl).mean() / X_DIM, None
        if self.method == "avb":
            z = self.enc(x)
            t_q, t_p = self.adv(x, z, torch.randn_like(z))
            kl = t_q
        else:
            z, mean, var = self.enc(x)
            mu, sigma = mean.detach(), torch.sqrt(var.detach() + AC_VAR_FLOOR)
            z_bar = (z - mu) / sigma
            t_q, t_p = self.adv(x, z_bar, torch.randn_like(z))
            kl = t_q - 0.5 * (z_bar * z_bar + 2 * torch.log(sigma) - z * z).sum(-1)  # + log r(z|x) - log p(z)
        recon = F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="none").sum(-1)
        adv = F.binary_cross_entropy_with_logits(t_q, torch.ones_like(t_q)) \
            + F.binary_cross_entropy_with_logits(t_p, torch.zeros_like(t_p))
        return (recon + kl).mean() / X_DIM, adv

    def step(self, x: torch.Tensor) -> None:
        primal, adv = self.losses(x)
        self.opt_p.zero_grad(set_to_none=True)
        if adv is not None:
            self.opt_a.zero_grad(set_to_none=True)
            adv.backward(inputs=self.params_a, retain_graph=True)
        primal.backward(inputs=self.params_p)
        self.opt_p.step()
        if adv is not None:
            self.opt_a.step()

    __call__ = step
