"""MLP generator and discriminator for point data ``(B, D)`` (2D Gaussian mixtures) and flattened images.

The multilayer perceptrons of the mode-collapse benchmarks (Metz et al. 2017's unrolled
GAN: 128-unit layers) and of Salimans et al. 2016's MNIST K+1 classifier (dense layers
with Gaussian noise on their inputs). Same options as the DCGAN networks
(:mod:`udl_med.nets.dcgan`): norm by name (virtual batch norm with ``spatial_dims=0``),
conditioning, minibatch discrimination, input / hidden noise, ``forward_features``.
ReLU in G, LeakyReLU 0.2 in D; no norm on D's first layer (as in DCGAN). Weights keep
PyTorch's default initialisation (DCGAN's N(0, 0.02) is a convolutional-net recipe and
slows small MLPs down).

Conditioning: the one-hot label is concatenated to z (G) and to the input (D).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from udl_med.nets.gan_blocks import MLP_NORMS, GaussianNoise, check_non_negative, check_norm, check_positive, norm_layer, one_hot_labels
from udl_med.nets.minibatch_discrimination import MinibatchDiscrimination
from udl_med.nets.vbn import ReferenceBatchMixin

OUTPUTS = ("linear", "tanh")


def _check_hidden(hidden: Sequence[int]) -> tuple[int, ...]:
    if len(hidden) < 1 or any(int(h) < 1 for h in hidden):
        raise ValueError(f"hidden must be a non-empty sequence of positive ints, got {tuple(hidden)}")
    return tuple(int(h) for h in hidden)


class MLPGenerator(ReferenceBatchMixin, nn.Module):
    """``z (B, latent_dim)`` [+ labels] -> ``(B, out_features)``: Linear -> norm -> ReLU per hidden layer, then Linear.

    Args:
        latent_dim: size of z.
        out_features: output size (2 for planar points, ``C * prod(spatial)`` for flattened images).
        hidden: hidden layer widths.
        num_classes: > 0 makes G conditional: ``forward`` then needs ``labels (B,)``.
        norm: ``none``, ``batch``, ``virtual_batch`` (needs :meth:`set_reference` with a fixed
            z), ``layer``, or ``instance`` (per-example normalisation over the features, no affine).
        output: ``linear`` (points) or ``tanh`` (images in ``[-1, 1]``).

    Raises:
        ValueError: a bad argument, naming it.
    """

    def __init__(
        self,
        latent_dim: int,
        out_features: int,
        hidden: Sequence[int] = (128, 128),
        num_classes: int = 0,
        norm: str = "none",
        output: str = "linear",
    ) -> None:
        super().__init__()
        self.init_reference()
        check_positive(latent_dim=latent_dim, out_features=out_features)
        check_non_negative(num_classes=num_classes)
        self.hidden = _check_hidden(hidden)
        self.norm = check_norm(norm, MLP_NORMS)
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; valid: {', '.join(OUTPUTS)}")
        self.latent_dim = latent_dim
        self.out_features = out_features
        self.num_classes = num_classes
        self.output = output
        layers: list[nn.Module] = []
        width = latent_dim + num_classes
        for h in self.hidden:
            layers += [nn.Linear(width, h, bias=norm in ("none", "instance")), norm_layer(norm, 0, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, out_features))
        if output == "tanh":
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """``(B, out_features)`` from ``z (B, latent_dim)`` and, if conditional, ``labels (B,)``."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        one_hot_labels(labels, self.num_classes, z.shape[0], z.device, z.dtype)  # validates
        z, labels, n = self.prepend_reference(z, labels)
        onehot = one_hot_labels(labels, self.num_classes, z.shape[0], z.device, z.dtype)
        h = z if onehot is None else torch.cat([z, onehot], 1)
        return self.drop_reference(self.net(h), n)


class MLPDiscriminator(ReferenceBatchMixin, nn.Module):
    """``(B, in_features)`` or ``(B, C, *spatial)`` (flattened) [+ labels] -> raw scores ``(B, out_features)``.

    ``noise -> [label] -> Linear -> LeakyReLU`` then, per further hidden layer,
    ``noise -> Linear -> norm -> LeakyReLU``; the last hidden activation is the feature
    vector; then ``noise -> [minibatch discrimination] -> Linear`` scores.

    Args:
        in_features: input size (``prod`` of a flattened image's shape).
        hidden: hidden layer widths.
        out_features: scores per example (1, or K for a K+1 classifier).
        num_classes: > 0 makes D conditional: the one-hot label is concatenated to the input.
        norm: as :class:`MLPGenerator` (``virtual_batch`` needs :meth:`set_reference` with real data).
        minibatch_kernels: > 0 inserts :class:`MinibatchDiscrimination` before the score layer.
        minibatch_kernel_dims: dimension of each minibatch-discrimination kernel.
        input_noise_std: Gaussian noise on the input in training mode (0.3 in the K+1 GAN).
        hidden_noise_std: Gaussian noise on the input of every later layer in training mode (0.5).

    Raises:
        ValueError: a bad argument, naming it.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (128, 128),
        out_features: int = 1,
        num_classes: int = 0,
        norm: str = "none",
        minibatch_kernels: int = 0,
        input_noise_std: float = 0.0,
        hidden_noise_std: float = 0.0,
        minibatch_kernel_dims: int = 5,
    ) -> None:
        super().__init__()
        self.init_reference()
        check_positive(in_features=in_features, out_features=out_features)
        check_non_negative(
            num_classes=num_classes,
            minibatch_kernels=minibatch_kernels,
            input_noise_std=input_noise_std,
            hidden_noise_std=hidden_noise_std,
        )
        self.hidden = _check_hidden(hidden)
        self.norm = check_norm(norm, MLP_NORMS)
        self.in_features = in_features
        self.out_features = out_features
        self.num_classes = num_classes
        self.features_dim = self.hidden[-1]
        layers: list[nn.Module] = [nn.Linear(in_features + num_classes, self.hidden[0]), nn.LeakyReLU(0.2)]
        for cin, cout in zip(self.hidden[:-1], self.hidden[1:]):
            layers += [
                GaussianNoise(hidden_noise_std),
                nn.Linear(cin, cout, bias=norm in ("none", "instance")),
                norm_layer(norm, 0, cout),
                nn.LeakyReLU(0.2),
            ]
        self.input_noise = GaussianNoise(input_noise_std)
        self.body = nn.Sequential(*layers)
        self.hidden_noise = GaussianNoise(hidden_noise_std)
        self.minibatch = (
            MinibatchDiscrimination(self.features_dim, minibatch_kernels, minibatch_kernel_dims)
            if minibatch_kernels > 0
            else None
        )
        self.score = nn.Linear(self.features_dim + minibatch_kernels, out_features)

    def set_reference(self, x_ref: Tensor, labels_ref: Tensor | None = None) -> None:
        """Store the reference batch (``(R, in_features)``, or images flattened to it) for virtual batch norm."""
        super().set_reference(x_ref.flatten(1) if x_ref.ndim > 2 else x_ref, labels_ref)

    def forward_features(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(scores (B, out_features), features (B, hidden[-1]))``; features = the last hidden layer."""
        x = x.flatten(1) if x.ndim > 2 else x
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"x must have shape (B, {self.in_features}) or flatten to it, got {tuple(x.shape)} "
                f"({math.prod(x.shape[1:])} values per example)"
            )
        one_hot_labels(labels, self.num_classes, x.shape[0], x.device, x.dtype)  # validates
        x, labels, n = self.prepend_reference(x, labels)
        h = self.input_noise(x)
        onehot = one_hot_labels(labels, self.num_classes, x.shape[0], x.device, x.dtype)
        if onehot is not None:
            h = torch.cat([h, onehot], 1)
        features = self.drop_reference(self.body(h), n)  # (B, hidden[-1])
        h = self.hidden_noise(features)
        if self.minibatch is not None:
            h = self.minibatch(h)
        return self.score(h), features

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Raw scores ``(B, out_features)``."""
        return self.forward_features(x, labels)[0]
