"""DCGAN generator and discriminator for 2D slices and 3D volumes.

Radford, Metz, Chintala 2016, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks" (https://arxiv.org/abs/1511.06434),
section 3 ("architecture guidelines for stable deep convolutional GANs"):

- strided convolutions in D and transposed (fractionally strided) convolutions in G,
  kernel 4, stride 2, padding 1: each stage halves (D) or doubles (G) every spatial axis;
  no pooling;
- no hidden fully connected layers. The two usual exceptions are kept: G's input is a
  single linear projection of z to the first ``channels[0] x (image_size / 2^L)`` feature
  map (the paper's "project and reshape"), and D's score layer is a single linear layer
  on the flattened last feature map (equivalent to the final conv of the reference code);
- batch norm in both networks except G's output layer and D's input layer;
- ReLU in G with tanh at the output, LeakyReLU (slope 0.2) in D;
- weights from N(0, 0.02) (MONAI's ``normal_init``; batch norm weights N(1, 0.02)).

Built from MONAI's :class:`~monai.networks.blocks.Convolution` (``is_transposed`` for G,
norm and activation by name). MONAI's ``nets.Generator`` / ``nets.Discriminator`` are not
used: they are stacks of residual units with PReLU and instance norm by default, strided
in a way fixed by their ``strides`` list, with a fully connected layer in the
discriminator, which is not the DCGAN architecture these experiments reproduce.

Options beyond the paper (``norm``, conditioning, minibatch discrimination, noise, a
K-logit output) serve the improved-GAN tricks (Salimans et al. 2016) and the K+1
semi-supervised classifier: see :mod:`udl_med.nets.vbn` and
:mod:`udl_med.nets.minibatch_discrimination`.

Conditioning: G gets a one-hot label concatenated to z; D gets one-hot label maps as
extra input channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.utils import get_act_layer
from monai.networks.utils import normal_init
from torch import Tensor, nn

from udl_med.nets.gan_blocks import CONV_NORMS, GaussianNoise, check_non_negative, check_norm, check_positive, norm_layer, one_hot_labels
from udl_med.nets.minibatch_discrimination import MinibatchDiscrimination
from udl_med.nets.vbn import ReferenceBatchMixin

_G_ACT = "relu"
_D_ACT = ("leakyrelu", {"negative_slope": 0.2})


def _image_size(spatial_dims: int, image_size: int | Sequence[int], channels: Sequence[int]) -> tuple[int, ...]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if len(channels) < 1 or any(int(c) < 1 for c in channels):
        raise ValueError(f"channels must be a non-empty sequence of positive ints, got {tuple(channels)}")
    size = (int(image_size),) * spatial_dims if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != spatial_dims:
        raise ValueError(f"image_size {size} must have {spatial_dims} entries (spatial_dims={spatial_dims})")
    factor = 2 ** len(channels)
    if any(s < factor or s % factor for s in size):
        raise ValueError(
            f"image_size {size} must be divisible by 2^len(channels) = {factor} on every axis "
            f"(channels={tuple(channels)}); use fewer channels entries or another size"
        )
    return size


def _stage(
    spatial_dims: int, cin: int, cout: int, transposed: bool, norm: str, act: str | tuple | None
) -> nn.Module:
    """A stride-2, kernel-4 (transposed) convolution, then ``norm`` and ``act``."""
    kwargs = dict(strides=2, kernel_size=4, padding=1, is_transposed=transposed)
    if transposed:
        kwargs["output_padding"] = 0  # (s - 1) * 2 - 2 + 4 = 2 s exactly
    if norm == "none" and act is None:
        return Convolution(spatial_dims, cin, cout, conv_only=True, bias=True, **kwargs)
    if norm == "virtual_batch" or act is None:
        layers: list[nn.Module] = [Convolution(spatial_dims, cin, cout, conv_only=True, bias=norm == "none", **kwargs)]
        layers.append(norm_layer(norm, spatial_dims, cout))
        if act is not None:
            layers.append(get_act_layer(act))
        return nn.Sequential(*layers)
    return Convolution(
        spatial_dims, cin, cout, norm=None if norm == "none" else norm, act=act, bias=norm == "none", **kwargs
    )


def _check_instance(norm: str, size: Sequence[int], what: str) -> None:
    if norm == "instance" and math.prod(size) < 2:
        raise ValueError(
            f"norm='instance' normalises over the spatial axes, but {what} is {tuple(size)}: "
            "use larger images, fewer channels entries or another norm"
        )


class DCGANGenerator(ReferenceBatchMixin, nn.Module):
    """DCGAN generator: ``z (B, latent_dim)`` [+ labels] -> images ``(B, out_channels, *image_size)`` in ``[-1, 1]``.

    ``z`` (with the one-hot label appended) is projected linearly to a
    ``channels[0] x image_size / 2^L`` map (``L = len(channels)``), normalised and ReLU'd;
    ``L`` transposed convolutions follow, ``channels[0] -> channels[1] -> ... -> out_channels``,
    the last without norm and with tanh.

    Args:
        spatial_dims: 2 or 3.
        latent_dim: size of z.
        out_channels: image channels.
        image_size: output size, an int or one per axis, each divisible by ``2^len(channels)``.
        channels: feature channels from the coarsest map up; one entry per upsampling stage.
        num_classes: > 0 makes G conditional: ``forward`` then needs ``labels (B,)``.
        norm: ``batch``, ``virtual_batch`` (needs :meth:`set_reference` with a fixed z),
            ``instance`` or ``none``.

    Raises:
        ValueError: a bad argument, naming it.
    """

    def __init__(
        self,
        spatial_dims: int,
        latent_dim: int,
        out_channels: int,
        image_size: int | Sequence[int],
        channels: Sequence[int] = (256, 128, 64),
        num_classes: int = 0,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.init_reference()
        self.image_size = _image_size(spatial_dims, image_size, channels)
        check_positive(latent_dim=latent_dim, out_channels=out_channels)
        check_non_negative(num_classes=num_classes)
        self.norm = check_norm(norm, CONV_NORMS)
        self.spatial_dims = spatial_dims
        self.latent_dim = latent_dim
        self.out_channels = out_channels
        self.num_classes = num_classes
        self.channels = tuple(int(c) for c in channels)
        self.start_size = tuple(s // 2 ** len(self.channels) for s in self.image_size)
        _check_instance(norm, self.start_size, "the first feature map (image_size / 2^len(channels))")

        projected = self.channels[0] * math.prod(self.start_size)
        self.project = nn.Linear(latent_dim + num_classes, projected, bias=norm == "none")  # z -> first map
        self.project_norm = norm_layer(norm, spatial_dims, self.channels[0])
        self.project_act = get_act_layer(_G_ACT)
        outs = self.channels[1:] + (out_channels,)
        stages = [
            _stage(spatial_dims, cin, cout, True, norm, _G_ACT) for cin, cout in zip(self.channels[:-1], outs[:-1])
        ]
        stages.append(_stage(spatial_dims, self.channels[-1], out_channels, True, "none", None))
        self.stages = nn.Sequential(*stages)
        self.output_act = nn.Tanh()
        self.apply(normal_init)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images ``(B, out_channels, *image_size)`` in ``[-1, 1]`` from ``z (B, latent_dim)`` and ``labels (B,)``."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        one_hot_labels(labels, self.num_classes, z.shape[0], z.device, z.dtype)  # validates
        z, labels, n = self.prepend_reference(z, labels)
        onehot = one_hot_labels(labels, self.num_classes, z.shape[0], z.device, z.dtype)
        h = z if onehot is None else torch.cat([z, onehot], 1)  # (B, latent_dim + K)
        h = self.project(h).view(z.shape[0], self.channels[0], *self.start_size)
        h = self.project_act(self.project_norm(h))
        out = self.output_act(self.stages(h))  # (B, out_channels, *image_size)
        return self.drop_reference(out, n)


D_CONDITIONINGS = ("concat", "projection", "auxiliary")  # how a conditional DCGAN discriminator sees the class


class DCGANDiscriminator(ReferenceBatchMixin, nn.Module):
    """DCGAN discriminator: images ``(B, in_channels, *image_size)`` [+ labels] -> raw scores ``(B, out_features)``.

    ``L = len(channels)`` strided convolutions ``in_channels [+ K] -> channels[0] -> ... ->
    channels[-1]`` (the first without norm), LeakyReLU 0.2; the last map flattened is the
    feature vector (``features_dim`` values); then optional minibatch discrimination and a
    linear score layer. Scores are logits for the BCE losses, critic values for WGAN, or
    K class logits of a K+1 classifier (``out_features=K``).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        image_size: input size, an int or one per axis, each divisible by ``2^len(channels)``.
        channels: feature channels of the strided stages, finest first.
        out_features: scores per image (1, or K for a K+1 classifier).
        num_classes: > 0 makes D conditional, as ``conditioning`` says.
        conditioning: ``concat``: one-hot label maps become extra input channels (Mirza &
            Osindero 2014); ``projection``: the score gains the inner product of a learned
            class embedding with the last hidden layer (Miyato & Koyama 2018), so the class
            acts on what D has made of the image rather than on its pixels (one score only);
            ``auxiliary``: D scores the image alone and a linear class head on the same last
            hidden layer predicts its class (AC-GAN, Odena et al. 2017), read by
            :meth:`forward_with_classes` (one score only).
        norm: ``batch``, ``virtual_batch`` (needs :meth:`set_reference` with real images),
            ``instance`` or ``none`` (use ``none`` or ``instance`` for a WGAN-GP critic).
        minibatch_kernels: > 0 inserts :class:`MinibatchDiscrimination` with that many
            kernels before the score layer.
        minibatch_kernel_dims: dimension of each minibatch-discrimination kernel.
        input_noise_std: Gaussian noise added to the images in training mode (0.3 in the K+1 GAN).
        hidden_noise_std: Gaussian noise added to the input of every later layer in training
            mode (0.5 in the K+1 GAN).

    Raises:
        ValueError: a bad argument, naming it.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        image_size: int | Sequence[int],
        channels: Sequence[int] = (64, 128, 256),
        out_features: int = 1,
        num_classes: int = 0,
        norm: str = "batch",
        minibatch_kernels: int = 0,
        input_noise_std: float = 0.0,
        hidden_noise_std: float = 0.0,
        minibatch_kernel_dims: int = 5,
        conditioning: str = "concat",
    ) -> None:
        super().__init__()
        self.init_reference()
        if conditioning not in D_CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {', '.join(D_CONDITIONINGS)}, got {conditioning!r}")
        if conditioning != "concat" and out_features != 1:
            raise ValueError(f"conditioning {conditioning!r} scores one output, got out_features {out_features}")
        self.conditioning = conditioning
        self.image_size = _image_size(spatial_dims, image_size, channels)
        check_positive(in_channels=in_channels, out_features=out_features)
        check_non_negative(
            num_classes=num_classes,
            minibatch_kernels=minibatch_kernels,
            input_noise_std=input_noise_std,
            hidden_noise_std=hidden_noise_std,
        )
        self.norm = check_norm(norm, CONV_NORMS)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_features = out_features
        self.num_classes = num_classes
        self.channels = tuple(int(c) for c in channels)
        self.final_size = tuple(s // 2 ** len(self.channels) for s in self.image_size)
        if len(self.channels) > 1:
            _check_instance(norm, self.final_size, "the last feature map (image_size / 2^len(channels))")
        self.features_dim = self.channels[-1] * math.prod(self.final_size)

        self.input_noise = GaussianNoise(input_noise_std)
        label_maps = num_classes if conditioning == "concat" else 0
        first = _stage(spatial_dims, in_channels + label_maps, self.channels[0], False, "none", _D_ACT)  # no norm
        layers: list[nn.Module] = [first]
        for cin, cout in zip(self.channels[:-1], self.channels[1:]):
            layers.append(GaussianNoise(hidden_noise_std))
            layers.append(_stage(spatial_dims, cin, cout, False, norm, _D_ACT))
        self.body = nn.Sequential(*layers)
        self.hidden_noise = GaussianNoise(hidden_noise_std)
        self.minibatch = (
            MinibatchDiscrimination(self.features_dim, minibatch_kernels, minibatch_kernel_dims)
            if minibatch_kernels > 0
            else None
        )
        score_in = self.features_dim + minibatch_kernels
        self.score = nn.Linear(score_in, out_features)
        self.embed = nn.Embedding(num_classes, score_in) if conditioning == "projection" and num_classes > 0 else None
        self.classes = nn.Linear(score_in, num_classes) if conditioning == "auxiliary" and num_classes > 0 else None
        self.apply(normal_init)
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)  # DCGAN's init scale (normal_init leaves embeddings at N(0, 1))

    def _hidden(self, x: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(features (B, features_dim), h)``: the last hidden layer flattened, and what the heads read (after noise and minibatch discrimination)."""
        expected = (self.in_channels, *self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        one_hot_labels(labels, self.num_classes, x.shape[0], x.device, x.dtype)  # validates
        x, labels, n = self.prepend_reference(x, labels)
        h = self.input_noise(x)
        onehot = one_hot_labels(labels, self.num_classes, x.shape[0], x.device, x.dtype) if self.conditioning == "concat" else None
        if onehot is not None:  # label maps (B, K, *image_size) as extra channels
            maps = onehot.view(*onehot.shape, *(1,) * self.spatial_dims).expand(-1, -1, *self.image_size)
            h = torch.cat([h, maps], 1)
        features = self.drop_reference(self.body(h).flatten(1), n)  # (B, features_dim)
        h = self.hidden_noise(features)
        if self.minibatch is not None:
            h = self.minibatch(h)  # (B, features_dim + minibatch_kernels)
        return features, h

    def _scores(self, h: Tensor, labels: Tensor | None) -> Tensor:
        scores = self.score(h)
        if self.embed is not None:  # projection: + <embed(y), phi(x)>
            scores = scores + (self.embed(labels.long()) * h).sum(1, keepdim=True)
        return scores

    def forward_features(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(scores (B, out_features), features (B, features_dim))``; features = the last hidden layer flattened."""
        features, h = self._hidden(x, labels)
        return self._scores(h, labels), features

    def forward_with_classes(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(scores (B, 1), class logits (B, K))`` of an auxiliary-classifier D, both from one pass (``labels`` are only validated).

        Raises:
            ValueError: D was not built with ``conditioning="auxiliary"`` and classes.
        """
        if self.classes is None:
            raise ValueError("forward_with_classes needs a discriminator built with conditioning 'auxiliary' and num_classes > 0")
        _, h = self._hidden(x, labels)
        return self._scores(h, labels), self.classes(h)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Raw scores ``(B, out_features)`` of images ``(B, in_channels, *image_size)``."""
        return self.forward_features(x, labels)[0]
