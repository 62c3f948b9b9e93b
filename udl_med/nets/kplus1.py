"""The K+1 discriminator: a stock MONAI classifier with Gaussian noise layers and an optional minibatch head.

Salimans et al. 2016, "Improved Techniques for Training GANs"
(https://arxiv.org/abs/1606.03498): the semi-supervised discriminator is a K-class
classifier whose logits also say real versus generated (``D(x) = Z / (Z + 1)``, see
:mod:`udl_med.losses.kplus1`), with Gaussian noise on the input and on every hidden
layer while training.

**Why MONAI networks rather than** :class:`udl_med.nets.dcgan.DCGANDiscriminator`: the
trained classifier is exported as a ``monai.networks.nets`` class that loads with
``strict=True`` and gives exactly the probabilities of ``udl-med classify``. So the
weights live in a plain ``monai.networks.nets.Classifier`` (strided convolutions, no
residual units, LeakyReLU 0.2: DCGAN's discriminator design) for images, or a
``monai.networks.nets.FullyConnectedNet`` for vectors and flattened images, and this
module only runs their layers one by one to add what training needs:

- Gaussian noise (``input_noise_std``, ``hidden_noise_std``) in training mode only; it
  has no parameters, so the exported network is the network evaluated without it;
- the features of the last hidden layer (before its noise), for feature matching;
- minibatch discrimination (``minibatch_kernels > 0``): the layer of
  :class:`udl_med.nets.minibatch_discrimination.MinibatchDiscrimination` on the features,
  followed by a linear map to ONE scalar that is added to all K logits. Adding the same
  number to every logit leaves the class softmax unchanged and moves only
  ``lse = log Z``, so the minibatch statistics act on real-versus-generated alone and the
  classifier stays a function of one image (Salimans' layer feeds the class logits
  too, which makes classification depend on the rest of the batch). The head is not
  part of the export.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import Classifier, FullyConnectedNet
from torch import Tensor, nn

from udl_med.nets.minibatch_discrimination import MinibatchDiscrimination

ARCHITECTURES = ("conv", "mlp")
NORMS = {"none": None, "batch": "BATCH", "instance": "INSTANCE"}
LEAKY_RELU = ["leakyrelu", {"negative_slope": 0.2}]
CLASSIFIER_CLASS = "monai.networks.nets.Classifier"
FULLY_CONNECTED_CLASS = "monai.networks.nets.FullyConnectedNet"

__all__ = ["KPlusOneDiscriminator", "ARCHITECTURES", "NORMS"]


class KPlusOneDiscriminator(nn.Module):
    """K class logits from images or vectors, with training-time noise (see the module docstring).

    Args:
        spatial_dims: 2 or 3 for images ``(B, C, *image_size)``; 0 for vectors ``(B, C)``.
        in_channels: image channels, or the vector length when ``spatial_dims == 0``.
        image_size: spatial size of an image (``()`` for vectors).
        num_classes: K, at least 2.
        architecture: ``conv`` (MONAI ``Classifier``; images only) or ``mlp`` (MONAI
            ``FullyConnectedNet`` on the flattened input).
        channels: output channels of each strided convolution (``conv``).
        strides: stride of each convolution (default 2 for every layer).
        kernel_size: convolution kernel size (odd).
        hidden: hidden layer sizes (``mlp``).
        norm: ``none``, ``batch`` or ``instance`` (``conv``; the MLP has none).
        dropout: dropout probability of the hidden layers (None: none).
        input_noise_std: std of the Gaussian noise added to the input while training.
        hidden_noise_std: std of the Gaussian noise added to every hidden layer's output while training.
        minibatch_kernels: kernels of the minibatch-discrimination head (0: none).
        minibatch_kernel_dims: dimensions per kernel.

    Raises:
        ValueError: a bad argument, named.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        image_size: Sequence[int],
        num_classes: int,
        architecture: str = "conv",
        channels: Sequence[int] = (32, 64, 128),
        strides: Sequence[int] | None = None,
        kernel_size: int = 3,
        hidden: Sequence[int] = (500, 250, 250),
        norm: str = "none",
        dropout: float | None = None,
        input_noise_std: float = 0.3,
        hidden_noise_std: float = 0.5,
        minibatch_kernels: int = 0,
        minibatch_kernel_dims: int = 5,
    ) -> None:
        super().__init__()
        if spatial_dims not in (0, 2, 3):
            raise ValueError(f"spatial_dims must be 0 (vectors), 2 or 3, got {spatial_dims}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        if len(image_size) != spatial_dims:
            raise ValueError(f"image_size must have {spatial_dims} values, got {list(image_size)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; valid: {', '.join(ARCHITECTURES)}")
        if architecture == "conv" and spatial_dims == 0:
            raise ValueError("architecture 'conv' needs images (spatial_dims 2 or 3); use 'mlp' for vectors")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if input_noise_std < 0 or hidden_noise_std < 0:
            raise ValueError(f"noise stds must be >= 0, got input_noise_std={input_noise_std}, hidden_noise_std={hidden_noise_std}")
        if minibatch_kernels < 0 or minibatch_kernel_dims < 1:
            raise ValueError(f"minibatch_kernels must be >= 0 and minibatch_kernel_dims >= 1, got {minibatch_kernels}, {minibatch_kernel_dims}")
        self.spatial_dims = spatial_dims
        self.architecture = architecture
        self.num_classes = num_classes
        self.input_noise_std = float(input_noise_std)
        self.hidden_noise_std = float(hidden_noise_std)
        if architecture == "conv":
            if not channels or min(channels) < 1:
                raise ValueError(f"channels must be one or more positive sizes, got {list(channels)}")
            strides = tuple(strides) if strides is not None else (2,) * len(channels)
            if len(strides) != len(channels):
                raise ValueError(f"strides must have one value per layer ({len(channels)}), got {list(strides)}")
            self.export_class = CLASSIFIER_CLASS
            self.export_kwargs: dict[str, Any] = {
                "in_shape": [int(in_channels), *(int(s) for s in image_size)],
                "classes": int(num_classes),
                "channels": [int(c) for c in channels],
                "strides": [int(s) for s in strides],
                "kernel_size": int(kernel_size),
                "num_res_units": 0,
                "act": LEAKY_RELU,
                "norm": NORMS[norm],
                "dropout": dropout,
            }
            self.net: nn.Module = Classifier(**self.export_kwargs)
            with torch.no_grad():
                probe = torch.zeros(1, in_channels, *image_size)
                for layer in self.net.net:
                    probe = layer(probe)
            self.n_features = int(probe[0].numel())
        else:
            if not hidden or min(hidden) < 1:
                raise ValueError(f"hidden must be one or more positive sizes, got {list(hidden)}")
            self.export_class = FULLY_CONNECTED_CLASS
            self.export_kwargs = {
                "in_channels": int(in_channels * math.prod(image_size)),
                "out_channels": int(num_classes),
                "hidden_channels": [int(h) for h in hidden],
                "dropout": dropout,
                "act": LEAKY_RELU,
            }
            self.net = FullyConnectedNet(**self.export_kwargs)
            self.n_features = int(hidden[-1])
        self.minibatch: nn.Module | None = None
        self.minibatch_out: nn.Linear | None = None
        if minibatch_kernels > 0:
            self.minibatch = MinibatchDiscrimination(self.n_features, num_kernels=minibatch_kernels, kernel_dims=minibatch_kernel_dims)
            self.minibatch_out = nn.Linear(minibatch_kernels, 1)

    def _noise(self, x: Tensor, std: float) -> Tensor:
        if self.training and std > 0:
            return x + std * torch.randn_like(x)
        return x

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits (B, K), features (B, F))``: class logits and the last hidden layer (before its noise)."""
        x = self._noise(x, self.input_noise_std)
        if self.architecture == "conv":
            layers = list(self.net.net)
            for layer in layers:
                x = self._noise(layer(x), self.hidden_noise_std) if layer is not layers[-1] else layer(x)
            features = x.flatten(1)
            logits = self.net.reshape(self.net.final(self._noise(features, self.hidden_noise_std)))
            return logits, features
        h = self.net.flatten(x)
        for i in range(len(self.net.hidden_channels)):
            h = getattr(self.net, f"hidden_{i}")(h)
            if i < len(self.net.hidden_channels) - 1:
                h = self._noise(h, self.hidden_noise_std)
        features = h
        return self.net.output(self._noise(features, self.hidden_noise_std)), features

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, K)`` (the fake class's logit is the implicit 0)."""
        return self.forward_features(x)[0]

    def realness_shift(self, features: Tensor) -> Tensor:
        """The minibatch head's scalar ``(B, 1)`` added to every logit (zeros without a head)."""
        if self.minibatch is None:
            return features.new_zeros(features.shape[0], 1)
        n = features.shape[1]
        return self.minibatch_out(self.minibatch(features)[:, n:])

    def gan_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits + realness shift (B, K), features (B, F))``: what the unsupervised loss sees."""
        logits, features = self.forward_features(x)
        return logits + self.realness_shift(features), features

    def exported(self) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
        """``(monai class path, kwargs, state dict)`` of the classifier (without the minibatch head)."""
        return self.export_class, dict(self.export_kwargs), {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
