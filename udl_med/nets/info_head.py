"""InfoGAN's Q head: predicts the latent codes of an image from the discriminator's body features.

Chen et al. 2016 (https://arxiv.org/abs/1606.03657), section 6: Q shares every
convolutional layer with D and adds one fully connected layer; its output holds the
categorical code's logits and the continuous codes' means and log-variances (see
:func:`udl_med.losses.info.info_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from udl_med.losses.info import InfoCodes, draw_codes


class InfoHead(nn.Module):
    """``features (B, F) -> (B, K + 2N)``: Linear, LeakyReLU 0.2, Linear.

    Args:
        in_features: F, the width of D's body features.
        categorical: K, values of the categorical code (0: none).
        continuous: N, continuous codes.
        hidden: width of the hidden layer.

    Raises:
        ValueError: non-positive sizes, or no code at all.
    """

    def __init__(self, in_features: int, categorical: int, continuous: int, hidden: int = 128) -> None:
        super().__init__()
        if in_features < 1 or hidden < 1 or categorical < 0 or continuous < 0:
            raise ValueError(f"bad sizes: in_features={in_features}, hidden={hidden}, categorical={categorical}, continuous={continuous}")
        if categorical == 1 or categorical + continuous == 0:
            raise ValueError(f"categorical must be 0 or >= 2 and some code must exist, got categorical={categorical}, continuous={continuous}")
        self.categorical, self.continuous = categorical, continuous
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, categorical + 2 * continuous))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.flatten(1).float())


class InfoCodesLatent(nn.Module):
    """G's input ``[z, onehot(c_cat), c_cont]`` drawn in one place: ``z ~ N(0, I)`` and InfoGAN's codes ``c``.

    The interface of :class:`udl_med.nets.mixture_latent.StandardNormalLatent` (``draw``,
    ``forward`` of fixed noise), plus :meth:`codes`, which reads the codes back from a
    drawn input (what Q must predict). No parameters; an empty buffer follows the owner's
    device.

    Args:
        latent_dim: size of z.
        categorical: K, values of the categorical code (0: none).
        continuous: N, continuous codes, uniform on [-1, 1].

    Raises:
        ValueError: ``latent_dim`` below 1, ``categorical`` 1, or no code at all.
    """

    def __init__(self, latent_dim: int, categorical: int, continuous: int) -> None:
        super().__init__()
        if latent_dim < 1 or categorical < 0 or continuous < 0 or categorical == 1 or categorical + continuous == 0:
            raise ValueError(f"bad sizes: latent_dim={latent_dim} (>= 1), categorical={categorical} (0 or >= 2), continuous={continuous} (some code must exist)")
        self.noise_dim, self.categorical, self.continuous = int(latent_dim), int(categorical), int(continuous)
        self.latent_dim = self.noise_dim + self.categorical + self.continuous  # the width of G's input
        self.register_buffer("anchor", torch.empty(0), persistent=False)

    def forward(self, eps: Tensor, component: Tensor | None = None) -> Tensor:
        """G's input for a fixed, already drawn ``eps (B, latent_dim)``: ``eps`` itself."""
        return eps

    def draw(
        self,
        n: int,
        generator: torch.Generator | None = None,
        categorical: int | Tensor | None = None,
        continuous: Sequence[float | None] | None = None,
    ) -> Tensor:
        """``n`` inputs ``(n, latent_dim)`` on the buffer's device; ``categorical`` and ``continuous`` fix codes (None: random).

        Without ``generator`` they are drawn on that device from its global RNG (the training
        path); with one, on the CPU and then moved.
        """
        device = self.anchor.device
        if generator is None:
            z = torch.randn(n, self.noise_dim, device=device)
        else:
            z = torch.randn(n, self.noise_dim, generator=generator).to(device)
        codes = draw_codes(n, self.categorical, self.continuous, generator=generator, device=device if generator is None else "cpu")
        cat, cont = codes.categorical, codes.continuous
        if categorical is not None:
            cat = torch.as_tensor(categorical, dtype=torch.long).expand(n).clone() if not isinstance(categorical, Tensor) or categorical.ndim == 0 else categorical.long()
        if continuous is not None:
            cont = cont.clone()
            for i, value in enumerate(continuous):
                if value is not None:
                    cont[:, i] = float(value)
        return torch.cat([z, InfoCodes(cat.to(device), cont.to(device)).as_input(self.categorical).to(z.dtype)], 1)

    def codes(self, latent: Tensor) -> InfoCodes:
        """The codes of drawn inputs ``latent (B, latent_dim)``: the one-hot's class and the continuous values."""
        k, start = self.categorical, self.noise_dim
        cat = latent[:, start : start + k].argmax(1) if k else torch.zeros(latent.shape[0], dtype=torch.long, device=latent.device)
        return InfoCodes(cat, latent[:, start + k :])


class InfoDiscriminator(nn.Module):
    """D with InfoGAN's Q head on its body: scores as D, and :meth:`predict_codes` from the same features.

    Args:
        net: the discriminator, with ``forward(x, labels)`` and ``forward_features(x, labels)
            -> (scores, features)``.
        head: the :class:`InfoHead` reading ``features``.
    """

    def __init__(self, net: nn.Module, head: InfoHead) -> None:
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.net(x, labels)

    def forward_features(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.net.forward_features(x, labels)

    def predict_codes(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Q's output ``(B, K + 2N)`` for images ``x``."""
        return self.head(self.net.forward_features(x, labels)[1])

    def scores_and_codes(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """D's scores and Q's output from one pass through D's body."""
        scores, features = self.net.forward_features(x, labels)
        return scores, self.head(features)


__all__ = ["InfoCodesLatent", "InfoDiscriminator", "InfoHead"]
