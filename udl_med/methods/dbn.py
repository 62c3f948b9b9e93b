"""Deep belief network: greedy layer-wise RBM training, then discriminative fine-tuning.

Hinton, Osindero & Teh (2006) train a DBN one RBM at a time: layer ``l`` learns, by
contrastive divergence, the distribution of the hidden probabilities ``h_{l-1} = up(v)``
of the layers below, which stay frozen. Within the engine's one loop the method's step
counter tells which layer trains:

- steps ``[l * layer_steps, (l + 1) * layer_steps)``: RBM ``l`` with its own optimizer
  ``rbm<l>`` (the update of :mod:`udl_med.methods.rbm`);
- afterwards, with labels (``data.labeled: true``, so the data spec has classes): the
  feed-forward network with sigmoid units that the RBM weights initialise (a MONAI
  ``FullyConnectedNet`` plus a random output layer) is fine-tuned with cross-entropy,
  optimizer ``finetune`` (Adam); ``layer_steps: 0`` trains the same network from its
  random initialisation, the baseline pretraining should beat with few labels;
- afterwards, without labels: the top RBM keeps training.

``encode`` gives the top layer's hidden probabilities of the (unsupervised) stack;
``sample`` runs Gibbs chains in the top RBM, then a down pass; ``classify`` gives the
fine-tuned network's class logits; the exported encoder is that ``FullyConnectedNet``
(classes as outputs), or without classes the feature stack whose outputs are the top
layer's logits. Either way the image-to-visible mapping is folded into the first layer,
so the exported network takes images in [-1, 1].
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import FullyConnectedNet
from pydantic import Field, field_validator
from torch import Tensor, nn

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.methods.base import Capability, DataSpec, Method, Optimization, register
from udl_med.methods.rbm import (
    FULLY_CONNECTED_CLASS,
    RBMTrainingConfig,
    VisibleCodec,
    cd_step,
    filter_images,
    fold_input,
    rbm_optimizer,
    set_momentum,
)
from udl_med.nets.dbn import DBN, copy_dbn_weights, fully_connected_from_dbn, fully_connected_kwargs
from udl_med.nets.rbm import BernoulliRBM, PersistentChains

log = logging.getLogger(__name__)

FINETUNE = "finetune"  # optimizer name of the discriminative phase
CE = "ce"  # cross-entropy of the fine-tuning phase


def layer_key(name: str, layer: int) -> str:
    """Log key of a per-layer quantity, e.g. ``recon_layer1``."""
    return f"{name}_layer{layer}"


def optimizer_name(layer: int) -> str:
    return f"rbm{layer}"


class DBNConfig(RBMTrainingConfig):
    """The ``model:`` section of a ``dbn`` run: :class:`RBMTrainingConfig` for every layer, plus:

    Attributes:
        hidden: hidden units of each layer, bottom to top.
        layer_steps: training steps of each RBM in the greedy phase (0: no pretraining).
        finetune_lr: Adam learning rate of the fine-tuning phase.
        finetune_weight_decay: its L2 weight decay.
        dropout: dropout of the fine-tuned network's hidden layers (None: none).
    """

    hidden: tuple[int, ...] = (256, 64)
    layer_steps: int = Field(500, ge=0)
    finetune_lr: float = Field(1e-3, gt=0)
    finetune_weight_decay: float = Field(0.0, ge=0)
    dropout: float | None = Field(None, ge=0.0, lt=1.0)

    @field_validator("hidden")
    @classmethod
    def _check_hidden(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or min(value) < 1:
            raise ValueError(f"hidden must be one or more positive layer sizes, got {list(value)}")
        return value


@register("dbn")
class DBNMethod(Method):
    """Greedy layer-wise DBN with optional fine-tuning; see the module docstring."""

    Config = DBNConfig
    batch_keys = (keys.IMAGE,)
    capabilities = frozenset({Capability.SAMPLE, Capability.ENCODE, Capability.CLASSIFY})

    def __init__(self, config: DBNConfig, data: DataSpec) -> None:
        super().__init__(config, data)
        self.codec = VisibleCodec(config.visible, (data.in_channels, *data.image_size), config.min_std)
        self.dbn = DBN(self.codec.n_visible, config.hidden, config.visible, config.init_std, config.learn_sigma)
        self.chains = (
            nn.ModuleList(PersistentChains(config.n_chains, rbm.n_hidden) for rbm in self.dbn.rbms) if config.persistent else None
        )
        # PyTorch's initialisation until the greedy phase ends (then the RBM weights, if pretrained).
        kwargs = fully_connected_kwargs(self.dbn, data.num_classes, config.dropout)
        self.classifier = FullyConnectedNet(**kwargs) if data.num_classes > 0 else None
        self.register_buffer("finetune_started", torch.zeros((), dtype=torch.bool))

    def _device(self) -> torch.device:
        return self.dbn.rbms[0].weight.device

    def phase(self, step: int) -> int:
        """The layer trained at ``step``, or ``n_layers`` for the phase after the greedy one."""
        if self.config.layer_steps == 0:
            return self.dbn.n_layers
        return min(step // self.config.layer_steps, self.dbn.n_layers)

    # --- training -------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        opts: dict[str, torch.optim.Optimizer] = {optimizer_name(i): rbm_optimizer(rbm, c) for i, rbm in enumerate(self.dbn.rbms)}
        if self.classifier is not None:
            opts[FINETUNE] = torch.optim.Adam(self.classifier.parameters(), lr=c.finetune_lr, weight_decay=c.finetune_weight_decay)
        return opts

    def train_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor | float]:
        step = opt.global_step
        phase = self.phase(step)
        x = batch[keys.IMAGE].to(self._device())
        if phase < self.dbn.n_layers or self.classifier is None:
            if phase == self.dbn.n_layers and step == self.config.layer_steps * phase:
                log.info("dbn: greedy phase done; no classes to fine-tune on, the top RBM keeps training")
            return self._greedy_step(x, min(phase, self.dbn.n_layers - 1), step, opt)
        if keys.LABEL not in batch:
            raise ConfigError(
                "<config>", "data.labeled", "dbn fine-tuning needs labeled batches: set data.labeled: true, or stop after the greedy phase"
            )
        return self._finetune_step(x, batch[keys.LABEL].to(self._device()), opt)

    def _greedy_step(self, x: Tensor, layer: int, step: int, opt: Optimization) -> dict[str, Tensor]:
        """CD-k / PCD on RBM ``layer``, fed the frozen lower layers' hidden probabilities."""
        c = self.config
        if layer == 0:
            self.codec.update(x)
        with torch.no_grad():
            v = self.dbn.up(self.codec.encode(x), layer)  # (B, sizes[layer])
        name = optimizer_name(layer)
        local = step - layer * c.layer_steps
        set_momentum(opt.optimizer(name), c.initial_momentum if local < c.momentum_switch_step else c.momentum)
        chains = self.chains[layer] if self.chains is not None else None
        out = cd_step(self.dbn.layer(layer), v, opt, name, c, chains)
        return {keys.LOSS: out[keys.LOSS], layer_key(keys.RECON, layer): out[keys.RECON]}

    def _finetune_step(self, x: Tensor, labels: Tensor, opt: Optimization) -> dict[str, Tensor]:
        """One cross-entropy step of the feed-forward network the RBMs initialised."""
        if not bool(self.finetune_started):
            if self.config.layer_steps > 0:
                copy_dbn_weights(self.dbn, self.classifier)
                log.info("dbn: greedy phase done; fine-tuning the feed-forward network from the RBM weights")
            self.finetune_started.fill_(True)
        with opt.autocast():
            logits = self.classifier(self.codec.encode(x))  # (B, num_classes)
        loss = F.cross_entropy(logits.float(), labels.long())
        opt.step(FINETUNE, loss)
        accuracy = (logits.argmax(1) == labels).float().mean()
        return {keys.LOSS: loss.detach(), CE: loss.detach(), keys.ACCURACY: accuracy.detach()}

    # --- evaluation and previews ----------------------------------------------------

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any]) -> dict[str, float]:
        """Each layer's reconstruction error on the propagated data; accuracy and CE with labels."""
        x = batch[keys.IMAGE].to(self._device())
        v = self.codec.encode(x)
        first = self.dbn.layer(0)
        out = {keys.RECON_MSE: float((self.codec.decode(first.reconstruct(v)) - x.clamp(-1, 1)).pow(2).mean())}
        h = v
        for i, rbm in enumerate(self.dbn.rbms):
            out[layer_key(keys.RECON, i)] = float(rbm.reconstruction_error(h).mean())
            h = rbm.hidden_probs(h)
        if isinstance(first, BernoulliRBM):
            out[keys.PSEUDO_LL] = float(first.pseudo_log_likelihood(v).mean())
        if self.classifier is not None and keys.LABEL in batch:
            labels = batch[keys.LABEL].to(self._device()).long()
            logits = self.classifier(v)
            out[CE] = float(F.cross_entropy(logits, labels))
            out[keys.ACCURACY] = float((logits.argmax(1) == labels).float().mean())
        return out

    @torch.no_grad()
    def preview(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x = batch[keys.IMAGE].to(self._device())
        generator = torch.Generator(self._device()).manual_seed(0)
        return {
            "filters": filter_images(self.dbn.layer(0), self.codec, self.config.n_filters),
            "samples": self.sample(min(16, max(4, x.shape[0])), generator),
            "reconstructions": self.codec.decode(self.dbn.layer(0).reconstruct(self.codec.encode(x))),
        }

    # --- use of the trained model ---------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, label: int | None = None) -> Tensor:
        """``n`` images: ``sample_steps`` Gibbs steps in the top RBM, then a down pass."""
        return self.codec.decode(self.dbn.sample(n, self.config.sample_steps, generator))

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images ``(B, C, *spatial)`` in [-1, 1] -> top-layer hidden probabilities ``(B, hidden[-1])``."""
        return self.dbn.up(self.codec.encode(x.to(self._device())))

    @torch.no_grad()
    def classify(self, x: Tensor) -> Tensor:
        """Images ``(B, C, *spatial)`` -> class logits ``(B, num_classes)`` of the fine-tuned network."""
        if self.classifier is None:
            raise NotImplementedError("this dbn was built without classes (data.labeled: false)")
        return self.classifier(self.codec.encode(x.to(self._device())))

    def export_encoder(self) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
        """The ``FullyConnectedNet`` classifier (or feature stack without classes), taking images in [-1, 1]."""
        kwargs = fully_connected_kwargs(self.dbn, self.data.num_classes, self.config.dropout)
        if self.classifier is not None:
            net = fully_connected_from_dbn(self.dbn, self.data.num_classes, self.config.dropout)
            state = self.classifier.state_dict()
            if not bool(self.finetune_started) and self.config.layer_steps > 0:  # not fine-tuned yet: the RBM weights
                state = {**state, **{k: v for k, v in net.state_dict().items() if k.startswith("hidden_")}}
        else:
            state = fully_connected_from_dbn(self.dbn).state_dict()
        state = {k: v.detach().cpu().clone() for k, v in state.items()}
        first = "hidden_0.0" if kwargs["hidden_channels"] else "output"
        scale, shift = self.codec.input_affine()
        state[f"{first}.weight"], state[f"{first}.bias"] = fold_input(state[f"{first}.weight"], state[f"{first}.bias"], scale, shift)
        return FULLY_CONNECTED_CLASS, kwargs, state


__all__ = ["DBNConfig", "DBNMethod"]
