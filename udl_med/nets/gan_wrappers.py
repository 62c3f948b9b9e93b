"""Wrappers around GAN networks: flattened MLPs, PacGAN's packed discriminator, checkpoint-swap snapshots.

- :class:`Flat` lets an MLP generator or discriminator work on items of any shape:
  images ``(B, C, *spatial)`` or points ``(B, D)``.
- :class:`Packed` is PacGAN's discriminator (Lin et al. 2018, "PacGAN: The power of two
  samples in generative adversarial networks", https://arxiv.org/abs/1712.04086): it
  scores ``m`` items stacked along the channels as one input.
- :class:`SwapHistory` keeps the snapshots of checkpoint swapping in the state dict, so
  that a resumed run swaps in exactly what the uninterrupted one would have.
- :class:`ClassLogitRecorder` is an AC-GAN discriminator as the adversary calls it
  (scores only), keeping the class logits of each call for the class loss.
"""

from __future__ import annotations

import io
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Flat(nn.Module):
    """An MLP generator or discriminator on flattened items: images ``(B, C, *spatial)`` or points ``(B, D)``.

    The generator's output ``(B, prod(shape))`` is reshaped to ``(B, *shape)``; the
    discriminator's input is flattened to ``(B, prod(shape))``.

    Args:
        net: an MLP ``(x, labels) -> y`` (:class:`udl_med.nets.mlp_gan.MLPGenerator` or
            ``MLPDiscriminator``); ``forward_features`` and ``set_reference`` are passed on.
        shape: the shape of one item, ``(C, *spatial)`` or ``(D,)``.
        role: ``generator`` (reshape the output) or ``discriminator`` (flatten the input).

    Raises:
        ValueError: an unknown role.
    """

    def __init__(self, net: nn.Module, shape: tuple[int, ...], role: Literal["generator", "discriminator"]) -> None:
        super().__init__()
        if role not in ("generator", "discriminator"):
            raise ValueError(f"unknown role {role!r}; valid: generator, discriminator")
        self.net = net
        self.shape = tuple(shape)
        self.role = role

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.role == "generator":
            return self.net(x, labels).reshape(x.shape[0], *self.shape)
        return self.net(x.flatten(1), labels)

    def forward_features(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The discriminator's ``(scores, last hidden features)`` of flattened items."""
        return self.net.forward_features(x.flatten(1), labels)

    def set_reference(self, x: Tensor, labels: Tensor | None = None) -> None:
        """Virtual batch norm's reference: z for a generator, items (flattened) for a discriminator."""
        self.net.set_reference(x if self.role == "generator" else x.flatten(1), labels)


class Packed(nn.Module):
    """PacGAN's packed discriminator: ``m`` consecutive items stacked as one input.

    ``(B, C, *spatial)`` becomes ``(B / m, m * C, *spatial)`` (points ``(B, D)``:
    ``(B / m, m * D)``), so D scores a group of ``m`` real or ``m`` fake items and can see
    that a group of fakes lacks the variety of a group of real items. Build the inner D
    with ``m`` times the input channels or features.

    Args:
        net: the inner discriminator ``(x, labels) -> scores``.
        pack: m, items per group (>= 1).

    Raises:
        ValueError: ``pack`` below 1; at call time, a batch that is not a multiple of ``pack``.
    """

    def __init__(self, net: nn.Module, pack: int) -> None:
        super().__init__()
        if pack < 1:
            raise ValueError(f"pack must be >= 1, got {pack}")
        self.net = net
        self.pack = int(pack)

    def _packed(self, x: Tensor) -> Tensor:
        if x.shape[0] % self.pack:
            raise ValueError(f"model.pack {self.pack} needs batches of a multiple of {self.pack} items (train.batch_size), got {x.shape[0]}")
        return x.reshape(x.shape[0] // self.pack, self.pack * x.shape[1], *x.shape[2:])

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.net(self._packed(x), labels)

    def forward_features(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.net.forward_features(self._packed(x), labels)


class SwapHistory(nn.Module):
    """Snapshots for checkpoint swapping, kept in the state dict (extra state) so resume is exact.

    Attributes:
        snapshots: ``[{"step", "weights", "optimizer"}]``, oldest first.
        live: the current network's weights and optimizer state while an old snapshot is
            swapped in (None otherwise).
        until: the global step at which ``live`` is restored (-1: none).
    """

    def __init__(self) -> None:
        super().__init__()
        self.snapshots: list[dict[str, Any]] = []
        self.live: dict[str, Any] | None = None
        self.until = -1

    def get_extra_state(self) -> Tensor:
        """The history serialised into one uint8 tensor (state dicts stay tensor-valued, e.g. for EMA swaps)."""
        buffer = io.BytesIO()
        torch.save({"snapshots": self.snapshots, "live": self.live or {}, "until": self.until}, buffer)
        return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)

    def set_extra_state(self, state: Tensor) -> None:
        content = torch.load(io.BytesIO(state.cpu().numpy().tobytes()), map_location="cpu", weights_only=True)
        self.snapshots = list(content["snapshots"])
        self.live = content["live"] or None
        self.until = int(content["until"])


class ClassLogitRecorder:
    """An auxiliary-classifier D called as ``critic(x, labels) -> scores``, keeping each call's class logits.

    The shared adversary (:class:`~udl_med.methods.adversarial.Adversary`) makes every
    critic call of a step, augmentation included; recording the logits of those calls
    gives AC-GAN's class loss on exactly the items D scored, without a second pass.
    """

    def __init__(self, discriminator: nn.Module) -> None:
        self.discriminator = discriminator
        self.logits: list[Tensor] = []

    def __call__(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        scores, logits = self.discriminator.forward_with_classes(x, labels)
        self.logits.append(logits)
        return scores

    def class_loss(self, labels: Tensor) -> Tensor:
        """Cross-entropy of the first ``len(labels)`` recorded logits, in call order, against ``labels (N,)``.

        The adversary scores real before fake (in two calls or one joint batch) and any
        gradient-penalty interpolates after them, so real labels then fake labels select
        the real and fake items and leave the interpolates out.

        Raises:
            ValueError: fewer items recorded than labels.
        """
        logits = torch.cat(self.logits) if self.logits else torch.empty(0)
        if logits.shape[0] < labels.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels but only {logits.shape[0]} items were scored")
        return F.cross_entropy(logits[: labels.shape[0]].float(), labels.long())


__all__ = ["ClassLogitRecorder", "Flat", "Packed", "SwapHistory"]

