"""Fine-tuning an exported encoder plus a linear head on labeled images (LP-FT).

LP-FT (Kumar et al., "Fine-tuning can distort pretrained features and underperform
out-of-distribution", ICLR 2022): the head starts as a logistic regression on the
frozen features of the training items (the linear probe, LP), then encoder and head
train together (FT) with cross-entropy and AdamW, the head at ``head_lr_factor * lr``.
The encoder is a folder written by ``udl-med export --format encoder``, loaded with its
weights or, as the baseline of a pretraining comparison, the same architecture from
random initialisation. :func:`udl_med.evaluation.probe.finetune_accuracy` runs it on
in-memory items through the engine (``data.kind: memory``).

Code names: ``encoder`` is f, ``head`` the linear map W, b, ``loss`` the mean
cross-entropy of ``W f(x) + b`` against the label y.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.methods.base import Capability, DataSpec, Method, MethodConfig, Optimization, register
from udl_med.nets.exported import encode_items, load_encoder
from udl_med.nets.linear_head import fit_linear_head


class FinetuneClassifierConfig(MethodConfig):
    """The ``model:`` section of a ``finetune_classifier`` run.

    Attributes:
        encoder: a folder written by ``udl-med export --format encoder``.
        pretrained: load the exported weights; false: the same architecture from random init.
        init_seed: seed of the random initialisation (``pretrained: false``); None: the run's RNG.
        lr: AdamW learning rate of the encoder.
        head_lr_factor: the head's learning rate is ``head_lr_factor * lr``.
        weight_decay: AdamW weight decay.
        head_init_items: training items whose frozen features fit the initial head (the LP
            step, at the start of training); 0: a randomly initialised head.
        c: inverse L2 strength of that logistic regression.
    """

    encoder: str
    pretrained: bool = True
    init_seed: int | None = None
    lr: float = Field(1e-3, gt=0)
    head_lr_factor: float = Field(10.0, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    head_init_items: int = Field(0, ge=0)
    c: float = Field(0.1, gt=0)


@register("finetune_classifier")
class FinetuneClassifier(Method):
    """An exported encoder with a linear head, fine-tuned end to end; see the module docstring."""

    Config = FinetuneClassifierConfig
    batch_keys = (keys.IMAGE, keys.LABEL)
    capabilities = frozenset({Capability.CLASSIFY})

    def __init__(self, config: FinetuneClassifierConfig, data: DataSpec) -> None:
        super().__init__(config, data)
        if data.num_classes < 2:
            raise ConfigError("<config>", "data.labeled", f"finetune_classifier needs at least 2 classes, got {data.num_classes}")
        self.encoder = load_encoder(config.encoder, pretrained=config.pretrained, seed=None if config.pretrained else config.init_seed).net
        with torch.no_grad():
            n_features = self.encoder(torch.zeros(1, data.in_channels, *data.image_size)).flatten(1).shape[1]
        self.head = nn.Linear(n_features, data.num_classes)
        self.register_buffer("head_fitted", torch.tensor(False))  # the LP step ran (not again on resume)

    def reference_batch_size(self) -> int:
        return self.config.head_init_items

    @torch.no_grad()
    def on_train_start(self, reference: dict[str, Any] | None, generator: torch.Generator) -> None:
        """LP: the head becomes a logistic regression on the frozen features of the reference items."""
        if reference is None or bool(self.head_fitted):
            return
        self.encoder.eval()
        x = encode_items(self.encoder, reference[keys.IMAGE].to(self.head.weight.device), 64).numpy()
        head = fit_linear_head(x, reference[keys.LABEL].cpu().numpy(), self.data.num_classes, self.config.c)
        self.head.load_state_dict(head.state_dict())
        self.head_fitted.fill_(True)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        groups = [{"params": self.encoder.parameters(), "lr": c.lr}, {"params": self.head.parameters(), "lr": c.head_lr_factor * c.lr}]
        return {"model": torch.optim.AdamW(groups, weight_decay=c.weight_decay)}

    def classify(self, x: Tensor) -> Tensor:
        """Images ``(B, C, *spatial)`` -> class logits ``(B, num_classes)``."""
        return self.head(self.encoder(x).flatten(1))

    def train_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor | float]:
        with opt.autocast():
            logits = self.classify(batch[keys.IMAGE])
            loss = nn.functional.cross_entropy(logits.float(), batch[keys.LABEL])
        opt.step("model", loss)
        accuracy = (logits.detach().argmax(1) == batch[keys.LABEL]).float().mean()
        return {keys.LOSS: loss.detach(), keys.ACCURACY: accuracy}

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any]) -> dict[str, float]:
        logits = self.classify(batch[keys.IMAGE])
        return {
            keys.LOSS: float(nn.functional.cross_entropy(logits.float(), batch[keys.LABEL])),
            keys.ACCURACY: float((logits.argmax(1) == batch[keys.LABEL]).float().mean()),
        }
