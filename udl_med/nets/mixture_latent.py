"""Latent priors of GAN generators: N(0, I), or a learned Gaussian mixture (DeLiGAN, Gurumurthy et al. 2017).

Both priors draw z the same way (:meth:`draw`: training noise from the global RNG on the
prior's device, or reproducible noise from a CPU ``torch.Generator``) and map fixed noise
to z (``prior(eps, component)``), so a method draws z in one place whichever prior it has.

DeLiGAN: "Generative Adversarial Networks for Diverse and Limited Data", CVPR 2017
(https://arxiv.org/abs/1706.02071). The latent is ``z = mu_c + sigma_c * eps`` with ``c``
drawn uniformly among ``N`` components and ``eps ~ N(0, I)``; the means and standard
deviations are trained with the generator through this reparameterisation.

Why: a continuous G fed one connected Gaussian z must map it onto separate modes, and puts
mass on the bridges between them until it has trained long enough to make steep
transitions. With a mixture, the transitions can fall in the gaps between components,
where z has almost no mass. DeLiGAN keeps the standard deviations from collapsing with
the penalty ``lambda / N * sum_i ||1 - sigma_i||^2`` (:meth:`MixtureLatent.std_penalty`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class MixtureLatent(nn.Module):
    """``N`` learned Gaussian components in ``latent_dim`` dimensions, drawn with equal probability.

    Args:
        latent_dim: size of z.
        components: N.
        init_std: every sigma at the start (DeLiGAN: 0.2).
        init_range: means start uniform in ``[-init_range, init_range]`` (DeLiGAN: 1).

    Raises:
        ValueError: a bad argument, naming it.
    """

    def __init__(self, latent_dim: int, components: int, init_std: float = 0.2, init_range: float = 1.0) -> None:
        super().__init__()
        if latent_dim < 1 or components < 1:
            raise ValueError(f"latent_dim and components must be >= 1, got {latent_dim} and {components}")
        if init_std <= 0 or init_range <= 0:
            raise ValueError(f"init_std and init_range must be > 0, got {init_std} and {init_range}")
        self.means = nn.Parameter(torch.empty(components, latent_dim).uniform_(-init_range, init_range))
        self.log_std = nn.Parameter(torch.full((components, latent_dim), math.log(init_std)))

    @property
    def components(self) -> int:
        return self.means.shape[0]

    def forward(self, eps: Tensor, component: Tensor) -> Tensor:
        """``mu_c + sigma_c * eps`` for noise ``eps (B, latent_dim)`` and component indices ``component (B,)``."""
        return self.means[component] + self.log_std.exp()[component] * eps

    def draw(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` latents ``(n, latent_dim)`` on the parameters' device, differentiable in the means and sigmas.

        Without ``generator`` the noise is drawn on that device from its global RNG
        (the training path: no host-device copy per step).
        """
        device = self.means.device
        where = {"device": device} if generator is None else {"generator": generator}  # a torch.Generator draws on the CPU
        component = torch.randint(self.components, (n,), **where).to(device)
        eps = torch.randn(n, self.means.shape[1], **where).to(device)
        return self(eps, component)

    def std_penalty(self) -> Tensor:
        """DeLiGAN's ``1/N * sum_i ||1 - sigma_i||^2``: keeps the components from shrinking to points."""
        return ((1.0 - self.log_std.exp()) ** 2).sum(dim=1).mean()


class StandardNormalLatent(nn.Module):
    """``z ~ N(0, I)`` in ``latent_dim`` dimensions, with the interface of :class:`MixtureLatent`.

    It has no parameters; an empty buffer follows the owner's ``.to(device)`` so that
    :meth:`draw` knows where z goes (it is not saved in the state dict).

    Args:
        latent_dim: size of z.

    Raises:
        ValueError: ``latent_dim`` below 1.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim = int(latent_dim)
        self.register_buffer("anchor", torch.empty(0), persistent=False)

    def forward(self, eps: Tensor, component: Tensor | None = None) -> Tensor:
        """z for fixed noise ``eps (B, latent_dim)``: ``eps`` itself (``component`` is ignored)."""
        return eps

    def draw(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` latents ``(n, latent_dim)`` on the buffer's device.

        Without ``generator`` they are drawn on that device from its global RNG (the
        training path); with one, on the CPU and then moved.
        """
        device = self.anchor.device
        if generator is None:
            return torch.randn(n, self.latent_dim, device=device)
        return torch.randn(n, self.latent_dim, generator=generator).to(device)


class MixtureLatentGenerator(nn.Module):
    """A generator together with its learned latent, so that both train, average and save as one module.

    ``forward(z, labels)`` is the wrapped generator's; :attr:`latent` draws the z it takes.
    """

    def __init__(self, net: nn.Module, latent: MixtureLatent) -> None:
        super().__init__()
        self.net = net
        self.latent = latent

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.net(z, labels)


__all__ = ["MixtureLatent", "MixtureLatentGenerator", "StandardNormalLatent"]
