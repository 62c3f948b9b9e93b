"""InfoGAN's Q head: predicts the latent codes of an image from the discriminator's body features.

Chen et al. 2016 (https://arxiv.org/abs/1606.03657), section 6: Q shares every
convolutional layer with D and adds one fully connected layer; its output holds the
categorical code's logits and the continuous codes' means and log-variances (see
:func:`udl_med.losses.info.info_loss`).
"""

from __future__ import annotations

from torch import Tensor, nn


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
__all__ = ["InfoDiscriminator", "InfoHead"]
