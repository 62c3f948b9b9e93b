"""Stacked (convolutional) autoencoder: greedy layer-wise pretraining, then end-to-end fine-tuning.

Bengio et al., "Greedy layer-wise training of deep networks", NIPS 2007, and, for
convolutional stacks, Masci et al., "Stacked convolutional auto-encoders for
hierarchical feature extraction", ICANN 2011. The encoder has ``L`` blocks and a linear
code layer, ``h_0 = x``, ``h_{k+1} = f_k(h_k)``, ``z = f_L(h_L)``; decoder block ``g_k``
inverts ``f_k``. With ``schedule: greedy``:

- stage ``k = 0 .. L`` (``layer_steps`` steps each) trains only ``f_k`` and ``g_k`` as a
  shallow autoencoder of ``h_k``, the output of the already trained (frozen) blocks
  below: minimise ``L_k(h_k, g_k(f_k(h_k)))`` (stage 0 uses the configured image loss,
  higher stages the squared error);
- then the whole stack ``x -> f_L ... f_0 -> g_0 ... g_L`` is fine-tuned end to end on
  the image loss with its own optimizer.

``schedule: end_to_end`` trains the same network end to end from the first step, so the
two can be compared at equal architecture and steps. The stage is a function of the
engine's step counter (``opt.global_step``), so a resumed run continues in the right stage.
Code names: ``f_k`` = ``net.encoder.net.layer_k`` (``f_L`` = ``net.encoder.final``),
``g_k`` = ``net.decoder.layers[k]`` (``g_L`` = ``net.decoder.linear``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from udl_med import keys
from udl_med.methods.autoencoder import AutoencoderConfig, ReconstructionMethod
from udl_med.methods.base import DataSpec, Optimization, register
from udl_med.nets.autoencoder import encoder_feature_maps

FINETUNE = "finetune"  # name of the end-to-end optimizer


class StackedAutoencoderConfig(AutoencoderConfig):
    """An :class:`AutoencoderConfig` plus the training schedule.

    Attributes:
        schedule: ``greedy`` (layer-wise pretraining, then fine-tuning) or ``end_to_end``.
        layer_steps: training steps of each greedy stage (there are ``len(channels) + 1``).
    """

    schedule: Literal["greedy", "end_to_end"] = "greedy"
    layer_steps: int = Field(200, ge=1)


@register("stacked_autoencoder")
class StackedAutoencoderMethod(ReconstructionMethod):
    """Stacked autoencoder (see the module docstring)."""

    Config = StackedAutoencoderConfig

    def __init__(self, config: StackedAutoencoderConfig, data: DataSpec) -> None:
        super().__init__(config, data)
        self.num_blocks = len(self.net.encoder.net)  # L

    def stage_modules(self, k: int) -> list[nn.Module]:
        """The modules greedy stage ``k`` trains: ``f_k`` and ``g_k``."""
        if k == self.num_blocks:
            return [self.net.encoder.final, self.net.decoder.linear]
        modules = [self.net.encoder.net[k], self.net.decoder.layers[k]]
        if k == self.num_blocks - 1:
            modules.append(self.net.decoder.act)  # the decoder's activation after g_L feeds g_{L-1}
        return modules

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config

        def adam(modules: list[nn.Module]) -> torch.optim.Optimizer:
            params = [p for m in modules for p in m.parameters()]
            return torch.optim.AdamW(params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)

        optimizers = {FINETUNE: adam([self.net])}
        if c.schedule == "greedy":
            optimizers.update({f"stage_{k}": adam(self.stage_modules(k)) for k in range(self.num_blocks + 1)})
        return optimizers

    def stage_at(self, step: int) -> int:
        """Greedy stage ``0 .. L`` of training step ``step``, or ``L + 1`` for end-to-end training."""
        if self.config.schedule == "end_to_end":
            return self.num_blocks + 1
        return min(step // self.config.layer_steps, self.num_blocks + 1)

    def stage_reconstruction(self, k: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(target h_k, reconstruction g_k(f_k(h_k)))`` for greedy stage ``k``; ``h_k`` is not differentiated."""
        with torch.no_grad():
            h = encoder_feature_maps(self.net.encoder, x)[k]  # frozen blocks below stage k
        if k == self.num_blocks:
            z = self.net.encoder.final(h)
            return h, self.net.decoder.linear(z).view_as(h)
        h_next = self.net.encoder.net[k](h)
        if k == self.num_blocks - 1:
            h_next = self.net.decoder.act(h_next)  # as in the full decoder
        return h, self.net.decoder.layers[k](h_next)

    def train_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor | float]:
        x = self.images(batch)
        k = self.stage_at(opt.global_step)
        with opt.autocast():
            if k <= self.num_blocks:
                target, output = self.stage_reconstruction(k, x)
            else:
                target, output = x, self.net(x)
        if k == 0 or k > self.num_blocks:
            loss = self.recon_loss(output, target)  # the image loss
        else:
            loss = torch.mean((output.float() - target.float()) ** 2)  # feature maps: squared error
        opt.step(f"stage_{k}" if k <= self.num_blocks else FINETUNE, loss)
        return {keys.LOSS: loss.detach(), keys.STAGE: float(k)}
