"""Restricted Boltzmann machine trained by contrastive divergence (CD-k) or persistent CD.

Each image ``x`` in [-1, 1] becomes a visible vector ``v`` (:class:`VisibleCodec`):
grey levels ``(x + 1) / 2`` read as probabilities for Bernoulli visibles, or per-voxel
standardised values for Gaussian visibles (Hinton, "A practical guide to training
restricted Boltzmann machines", 2010, sections 3.2 and 13.2). One step is:

1. positive phase: the data ``v`` (code ``v``);
2. negative phase: ``v~`` after ``k`` Gibbs steps from the data (CD-k, Hinton 2002) or
   from the persistent chains (PCD, Tieleman 2008) (code ``v_model``);
3. the update ``dW ~ <v h>_data - <v h>_model`` as the gradient of
   ``mean F(v) - mean F(v~)`` (:func:`udl_med.nets.rbm.contrastive_divergence_loss`),
   applied by the engine's optimizer step: SGD with momentum (0.5, then 0.9) and an L2
   weight cost on the weights only, the guide's sections 9 and 10. Going through
   ``opt.step`` keeps the engine's gradient all-reduce, clipping, schedules and
   checkpointed momentum; the mixed-precision context is not used, because free
   energies are sums over all voxels and need float32.

:func:`fit_rbm` trains the same model on an in-memory array without the engine (the
scikit-learn use case: a feature learner inside a script), with the same update, in
closed form: through the engine it would be 3.5-14x slower per step (its docstring has
the measurements).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import torch
import torch.distributed as dist
from pydantic import Field
from torch import Tensor, nn

from udl_med import keys
from udl_med.methods.base import Capability, DataSpec, Method, MethodConfig, Optimization, register
from udl_med.nets.rbm import (
    RBM,
    AISEstimate,
    BernoulliRBM,
    PersistentChains,
    bernoulli,
    contrastive_divergence_loss,
    make_rbm,
)

log = logging.getLogger(__name__)

FULLY_CONNECTED_CLASS = "monai.networks.nets.FullyConnectedNet"


class RBMTrainingConfig(MethodConfig):
    """Contrastive-divergence settings shared by the ``rbm`` and ``dbn`` methods.

    Attributes:
        visible: ``bernoulli`` (grey levels as probabilities) or ``gaussian`` (standardised voxels).
        cd_k: Gibbs steps of the negative phase.
        persistent: persistent CD (chains kept between steps) instead of CD-k from the data.
        n_chains: number of persistent chains.
        lr: SGD learning rate (the guide: about 0.1 for binary, 0.001 for Gaussian visibles).
        initial_momentum, momentum: SGD momentum before and after ``momentum_switch_step``.
        momentum_switch_step: steps (of each layer) at ``initial_momentum``.
        weight_decay: L2 weight cost on the weights (not the biases).
        init_std: standard deviation of the initial weights.
        learn_sigma: learn the Gaussian visibles' standard deviations (Cho et al. 2011).
        min_std: floor of the per-voxel standard deviation used to standardise Gaussian
            visibles (constant background voxels would otherwise divide by zero).
        sample_steps: Gibbs steps of ``udl-med sample`` and of the preview samples.
        n_filters: filters shown in the preview grid.
        exact_max_units: use the exact log-likelihood when the enumeration has at most
            ``2**exact_max_units`` terms.
        ais_chains, ais_betas: annealed importance sampling of the log-likelihood at
            evaluation when it is not exact (``ais_chains: 0`` turns it off).
    """

    visible: Literal["bernoulli", "gaussian"] = "bernoulli"
    cd_k: int = Field(1, ge=1)
    persistent: bool = False
    n_chains: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    initial_momentum: float = Field(0.5, ge=0, lt=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    momentum_switch_step: int = Field(100, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    init_std: float = Field(0.01, gt=0)
    learn_sigma: bool = False
    min_std: float = Field(0.1, gt=0)
    sample_steps: int = Field(200, ge=1)
    n_filters: int = Field(64, ge=1)
    exact_max_units: int = Field(16, ge=0, le=24)
    ais_chains: int = Field(0, ge=0)
    ais_betas: int = Field(500, ge=2)


class RBMConfig(RBMTrainingConfig):
    """The ``model:`` section of an ``rbm`` run: :class:`RBMTrainingConfig` plus the size."""

    n_hidden: int = Field(256, ge=1)


class VisibleCodec(nn.Module):
    """Maps images ``(B, C, *spatial)`` in [-1, 1] to visible vectors ``(B, C * prod(spatial))`` and back.

    Bernoulli visibles: ``v = (x + 1) / 2``. Gaussian visibles: ``v = (x - mean) / std``
    per voxel, with the running mean and standard deviation of all training batches seen
    so far (float64 sums kept as buffers, so checkpoints and resume keep them; summed over
    processes under torchrun).

    Args:
        visible: ``bernoulli`` or ``gaussian``.
        shape: ``(C, *spatial)`` of one image.
        min_std: floor of the per-voxel standard deviation.
    """

    def __init__(self, visible: str, shape: tuple[int, ...], min_std: float = 0.1) -> None:
        super().__init__()
        self.visible = visible
        self.shape = tuple(shape)
        self.n_visible = math.prod(shape)
        self.min_std = min_std
        if visible == "gaussian":
            self.register_buffer("count", torch.zeros((), dtype=torch.float64))
            self.register_buffer("sum", torch.zeros(self.n_visible, dtype=torch.float64))
            self.register_buffer("sum_sq", torch.zeros(self.n_visible, dtype=torch.float64))

    def _stats(self) -> tuple[Tensor, Tensor]:
        n = self.count.clamp_min(1.0)
        mean = self.sum / n
        std = (self.sum_sq / n - mean.pow(2)).clamp_min(0.0).sqrt().clamp_min(self.min_std)
        return mean.float(), std.float()

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Add a training batch to the running per-voxel statistics (Gaussian visibles only)."""
        if self.visible != "gaussian":
            return
        flat = x.reshape(x.shape[0], -1).double()
        stats = torch.cat([flat.new_tensor([flat.shape[0]]), flat.sum(0), flat.pow(2).sum(0)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        self.count += stats[0]
        self.sum += stats[1 : 1 + self.n_visible]
        self.sum_sq += stats[1 + self.n_visible :]

    def encode(self, x: Tensor) -> Tensor:
        """Images ``(B, C, *spatial)`` -> visible vectors ``(B, n_visible)``."""
        flat = x.reshape(x.shape[0], -1).float()
        if self.visible == "bernoulli":
            return ((flat + 1.0) * 0.5).clamp(0.0, 1.0)
        mean, std = self._stats()
        return (flat - mean) / std

    def decode(self, v: Tensor) -> Tensor:
        """Visible vectors (means) ``(B, n_visible)`` -> images ``(B, C, *spatial)`` in [-1, 1]."""
        if self.visible == "bernoulli":
            x = v * 2.0 - 1.0
        else:
            mean, std = self._stats()
            x = v * std + mean
        return x.clamp(-1.0, 1.0).reshape(v.shape[0], *self.shape)

    def input_affine(self) -> tuple[Tensor, Tensor]:
        """``(scale, shift)`` with ``v = x * scale + shift`` per visible unit (CPU), to fold into an exported linear layer."""
        if self.visible == "bernoulli":
            scale = torch.full((self.n_visible,), 0.5)
            return scale, scale.clone()
        mean, std = self._stats()
        return (1.0 / std).cpu(), (-mean / std).cpu()

    def random_visible(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Chain starting points: fair coins (Bernoulli) or standard normal values (Gaussian)."""
        if self.visible == "bernoulli":
            return torch.bernoulli(torch.full((n, self.n_visible), 0.5, device=device), generator=generator)
        return torch.randn((n, self.n_visible), generator=generator, device=device)


def rbm_optimizer(rbm: RBM, config: RBMTrainingConfig) -> torch.optim.SGD:
    """SGD with momentum; the weight cost applies to ``W`` only (the guide, section 10)."""
    decay = [rbm.weight]
    plain = [p for n, p in rbm.named_parameters() if n != "weight"]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": plain, "weight_decay": 0.0}],
        lr=config.lr,
        momentum=config.initial_momentum,
    )


def set_momentum(optimizer: torch.optim.Optimizer, momentum: float) -> None:
    for group in optimizer.param_groups:
        group["momentum"] = momentum


def negative_samples(rbm: RBM, v: Tensor, k: int, chains: PersistentChains | None) -> Tensor:
    """The negative phase: ``k`` Gibbs steps from the data (CD) or from the persistent chains (PCD).

    CD with Bernoulli visibles uses the reconstruction's probabilities (the guide, 3.2:
    less sampling noise); Gaussian visibles use samples, so that a learned ``sigma`` is
    not driven to zero by noise-free reconstructions.
    """
    if chains is not None:
        return chains.advance(rbm, v, k)
    v_mean, v_sample = rbm.gibbs(v, k)
    return v_mean if isinstance(rbm, BernoulliRBM) else v_sample


def cd_step(
    rbm: RBM,
    v: Tensor,
    opt: Optimization,
    name: str,
    config: RBMTrainingConfig,
    chains: PersistentChains | None = None,
) -> dict[str, Tensor]:
    """One CD-k / PCD update of ``rbm`` on visible data ``v`` ``(B, n_visible)`` through ``opt.step(name, .)``.

    Returns the detached free-energy gap (the surrogate loss) and the mean-field
    reconstruction error of the batch before the update.
    """
    v_model = negative_samples(rbm, v, config.cd_k, chains)  # v~
    loss = contrastive_divergence_loss(rbm, v, v_model)  # mean F(v) - mean F(v~)
    with torch.no_grad():
        recon = rbm.reconstruction_error(v).mean()
    opt.step(name, loss)
    return {keys.LOSS: loss.detach(), keys.RECON: recon}


def filter_images(rbm: RBM, codec: VisibleCodec, n: int) -> Tensor:
    """The first ``n`` hidden units' weights as images ``(n, C, *spatial)``, each scaled to [-1, 1]."""
    w = rbm.weight[:n].detach()  # (n, n_visible)
    lo = w.min(1, keepdim=True).values
    hi = w.max(1, keepdim=True).values
    w = (w - lo) / (hi - lo).clamp_min(1e-12) * 2.0 - 1.0
    return w.reshape(w.shape[0], *codec.shape)


def exact_likelihood_is_cheap(rbm: RBM, config: RBMTrainingConfig) -> bool:
    """Whether ``log Z`` can be enumerated: at most ``2**exact_max_units`` terms."""
    units = min(rbm.n_visible, rbm.n_hidden) if isinstance(rbm, BernoulliRBM) else rbm.n_hidden
    return units <= config.exact_max_units


def log_likelihood_metrics(rbm: RBM, v: Tensor, config: RBMTrainingConfig, ais: AISEstimate | None = None) -> dict[str, float]:
    """Mean free energy and mean ``log p(v)`` per image: exact when cheap, else from an AIS estimate of ``log Z``.

    For Bernoulli visibles with grey levels this is the RBM's log-probability formula
    evaluated at probabilities (exact for binary data); for Gaussian visibles it is the
    density of the standardised vector.
    """
    out = {keys.FREE_ENERGY: float(rbm.free_energy(v).mean())}
    if exact_likelihood_is_cheap(rbm, config):
        out[keys.LOG_LIKELIHOOD] = float(rbm.log_likelihood_exact(v, config.exact_max_units).mean())
    elif ais is not None:
        out[keys.LOG_LIKELIHOOD] = float((-rbm.double_free_energy(v)).mean() - ais.log_z)
        out[keys.LOG_Z_STD] = ais.log_z_std
    return out


def base_rate_bias(v: Tensor) -> Tensor:
    """Log-odds of the data's mean per unit: the AIS base model for Bernoulli visibles."""
    p = v.mean(0).clamp(0.02, 0.98)
    return torch.log(p) - torch.log1p(-p)


def fold_input(weight: Tensor, bias: Tensor, scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """Fold ``v = x * scale + shift`` into a linear layer: ``W v + c == W' x + c'``."""
    return weight * scale, bias + weight @ shift


@register("rbm")
class RBMMethod(Method):
    """One RBM on flattened slices or patches; see the module docstring for the update.

    ``encode`` gives the hidden units' probabilities ``p(h = 1 | v)``; ``sample`` runs
    Gibbs chains; ``preview`` shows the learned filters, Gibbs samples and mean-field
    reconstructions; the exported encoder is a MONAI ``FullyConnectedNet`` without
    hidden layers whose output is the hidden logits (apply a sigmoid for ``encode``'s
    probabilities; the image-to-visible mapping is folded into its weights).
    """

    Config = RBMConfig
    batch_keys = (keys.IMAGE,)
    capabilities = frozenset({Capability.SAMPLE, Capability.ENCODE})

    def __init__(self, config: RBMConfig, data: DataSpec) -> None:
        super().__init__(config, data)
        self.codec = VisibleCodec(config.visible, (data.in_channels, *data.image_size), config.min_std)
        self.rbm = make_rbm(config.visible, self.codec.n_visible, config.n_hidden, config.init_std, config.learn_sigma)
        self.chains = PersistentChains(config.n_chains, config.n_hidden) if config.persistent else None
        self._steps_seen = 0  # training steps run so far (the engine's clock): AIS is cached per step
        self._ais: tuple[int, AISEstimate] | None = None  # (step, estimate) of the last evaluation

    def _device(self) -> torch.device:
        return self.rbm.weight.device

    def visible(self, x: Tensor) -> Tensor:
        return self.codec.encode(x.to(self._device()))

    # --- training -------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"rbm": rbm_optimizer(self.rbm, self.config)}

    def train_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor | float]:
        c = self.config
        x = batch[keys.IMAGE].to(self._device())
        self.codec.update(x)
        v = self.codec.encode(x)  # (B, n_visible)
        set_momentum(opt.optimizer("rbm"), c.initial_momentum if opt.global_step < c.momentum_switch_step else c.momentum)
        out = cd_step(self.rbm, v, opt, "rbm", c, self.chains)
        self._steps_seen = opt.global_step + 1
        return out

    # --- evaluation and previews ----------------------------------------------------

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any]) -> dict[str, float]:
        """Reconstruction error (visible units and [-1, 1] images), free energy, likelihoods."""
        x = batch[keys.IMAGE].to(self._device())
        v = self.codec.encode(x)
        recon_v = self.rbm.reconstruct(v)
        out = {
            keys.RECON: float((v - recon_v).pow(2).mean()),
            keys.RECON_MSE: float((self.codec.decode(recon_v) - x.clamp(-1, 1)).pow(2).mean()),
            keys.MEAN_IMAGE_MSE: float((x - x.mean(0, keepdim=True)).pow(2).mean()),
        }
        if isinstance(self.rbm, BernoulliRBM):
            out[keys.PSEUDO_LL] = float(self.rbm.pseudo_log_likelihood(v).mean())
        out.update(log_likelihood_metrics(self.rbm, v, self.config, self._ais_estimate(v)))
        return out

    def _ais_estimate(self, v: Tensor) -> AISEstimate | None:
        """AIS estimate of ``log Z`` when enabled and needed, computed once per training step (all eval batches share it)."""
        c = self.config
        if c.ais_chains == 0 or exact_likelihood_is_cheap(self.rbm, c):
            return None
        step = self._steps_seen
        if self._ais is None or self._ais[0] != step:
            base = base_rate_bias(v) if isinstance(self.rbm, BernoulliRBM) else None
            self._ais = (step, self.rbm.ais_log_partition(c.ais_chains, c.ais_betas, base_visible_bias=base))
        return self._ais[1]

    @torch.no_grad()
    def preview(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x = batch[keys.IMAGE].to(self._device())
        generator = torch.Generator(self._device()).manual_seed(0)
        return {
            "filters": filter_images(self.rbm, self.codec, self.config.n_filters),
            "samples": self.sample(min(16, max(4, x.shape[0])), generator),
            "reconstructions": self.codec.decode(self.rbm.reconstruct(self.codec.encode(x))),
        }

    # --- use of the trained model ---------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, label: int | None = None) -> Tensor:
        """``n`` images from ``sample_steps`` Gibbs steps started at random; the last step's means."""
        v = self.codec.random_visible(n, generator, self._device())
        v_mean, _ = self.rbm.gibbs(v, self.config.sample_steps, generator)
        return self.codec.decode(v_mean)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images ``(B, C, *spatial)`` in [-1, 1] -> hidden probabilities ``(B, n_hidden)``."""
        return self.rbm.hidden_probs(self.visible(x))

    def export_encoder(self) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
        """A ``FullyConnectedNet(n_visible, n_hidden, [])``: ``sigmoid(net(x)) == encode(x)``."""
        scale, shift = self.codec.input_affine()
        weight, bias = fold_input(self.rbm.effective_weight().detach().cpu(), self.rbm.hidden_bias.detach().cpu(), scale, shift)
        kwargs = {"in_channels": self.codec.n_visible, "out_channels": self.rbm.n_hidden, "hidden_channels": []}
        return FULLY_CONNECTED_CLASS, kwargs, {"output.weight": weight.clone(), "output.bias": bias.clone()}


class AugmentedBernoulliRBM:
    """A Bernoulli RBM's ``W``, ``b`` and ``c`` as one matrix, for contrastive divergence on small batches.

    ``M = [[W^T, b], [c^T, +inf]]`` has shape ``(n_visible + 1, n_hidden + 1)``. Visible
    and hidden vectors carry a last column of ones: ``v_a @ M`` gives the hidden logits
    with ``c`` added, ``h_a @ M^T`` the visible logits with ``b`` added, and the ``+inf``
    corner makes the last column of either ``inf``, whose sigmoid is exactly 1, so the
    ones column carries itself through. One outer product ``v_a^T p_a`` then holds the
    statistics of ``W``, ``b`` and ``c`` at once. A CD-1 batch is five matrix products, three
    sigmoids and two samplings, with no bias, gradient or temporary tensors: on batches of
    ten digits PyTorch's per-operator cost, not arithmetic, is what a batch costs.

    Args:
        rbm: the model whose parameters are copied in; :meth:`write_back` copies them out.
    """

    def __init__(self, rbm: BernoulliRBM) -> None:
        nv, nh = rbm.n_visible, rbm.n_hidden
        self.n_visible, self.n_hidden = nv, nh
        self.matrix = rbm.weight.new_empty(nv + 1, nh + 1)
        with torch.no_grad():
            self.matrix[:nv, :nh] = rbm.weight.t()
            self.matrix[:nv, nh] = rbm.visible_bias
            self.matrix[nv, :nh] = rbm.hidden_bias
        self.matrix[nv, nh] = math.inf
        self.matrix_t = self.matrix.t()  # views, made once: they follow the in-place updates
        self.weight_block = self.matrix[:nv, :nh]  # W^T: the weight cost's target

    @staticmethod
    def augment(v: Tensor) -> Tensor:
        """Append the column of ones: ``(N, n) -> (N, n + 1)``."""
        return torch.cat([v, v.new_ones(v.shape[0], 1)], 1)

    def hidden_probs(self, v_a: Tensor) -> Tensor:
        """``[p(h = 1 | v), 1]``: ``(B, n_visible + 1) -> (B, n_hidden + 1)``."""
        return torch.mm(v_a, self.matrix).sigmoid_()

    def visible_probs(self, h_a: Tensor) -> Tensor:
        """``[p(v = 1 | h), 1]``: ``(B, n_hidden + 1) -> (B, n_visible + 1)``."""
        return torch.mm(h_a, self.matrix_t).sigmoid_()

    @staticmethod
    def sample_(probs_a: Tensor, out_a: Tensor, generator: torch.Generator | None) -> Tensor:
        """Write a binary sample of ``probs_a`` into ``out_a`` (both augmented), keeping its ones column.

        Draws exactly what :func:`udl_med.nets.rbm.bernoulli` draws for the un-augmented
        probabilities, so the random stream is that of the engine's path.
        """
        units = out_a[:, :-1]
        units.copy_(bernoulli(units if probs_a is out_a else probs_a[:, :-1], generator))
        return out_a

    def write_back(self, rbm: BernoulliRBM) -> None:
        """Copy ``W``, ``b`` and ``c`` into ``rbm``'s parameters."""
        nv, nh = self.n_visible, self.n_hidden
        with torch.no_grad():
            rbm.weight.copy_(self.matrix[:nv, :nh].t())
            rbm.visible_bias.copy_(self.matrix[:nv, nh])
            rbm.hidden_bias.copy_(self.matrix[nv, :nh])


@torch.no_grad()
def fit_rbm(
    rbm: BernoulliRBM,
    data: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    k: int = 1,
    persistent: bool = True,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Train a Bernoulli ``rbm`` on an in-memory array ``data`` ``(N, n_visible)``, scikit-learn style.

    The update is the one :class:`RBMMethod` makes through the engine (``torch.optim.SGD``
    semantics: ``buf = momentum * buf + g + weight_decay * W``, ``p -= lr * buf``, the
    weight cost on ``W`` only) on the CD-k / PCD-k gradient, computed in closed form on
    an :class:`AugmentedBernoulliRBM` and applied in place, since on small models the
    per-batch cost of autograd and of the optimizer object dominates. With
    ``persistent=True`` there is one chain per row of the first batch, kept as hidden
    states like :class:`PersistentChains`, and ``lr`` is the step on the batch-mean
    gradient: scikit-learn's ``BernoulliRBM(learning_rate=lr, batch_size=batch_size,
    n_iter=epochs)`` update. Gaussian visibles train through the ``rbm`` method.

    Why this loop is not an engine run (``data.kind: memory``, the ``rbm`` method): the
    engine path costs several times more per step than this one, and more than
    scikit-learn does, at every batch size. Measured by ``benchmarks/rbm_engine_cost.py``
    on scikit-learn's digits (1200 training rows, PCD-1, no momentum), one thread, on the
    shared 2-core machine (load about 7), microseconds per step:

    - h100, batch 10: ``fit_rbm`` 266, engine path 3651 (13.7x), scikit-learn 454;
    - h256, batch 50: ``fit_rbm`` 931, engine path 4515 (4.8x), scikit-learn 2070;
    - h256, batch 100: ``fit_rbm`` 1895, engine path 6541 (3.5x), scikit-learn 4228.

    Through the engine ``rbm_vs_sklearn`` would be 0.12x, 0.46x and 0.65x instead of
    1.71x, 2.22x and 2.23x (this run's ``fit_rbm``). Most of it is the method's autograd
    step (free energies, backward, ``torch.optim.SGD``: about 3.2 ms at batch 10 in a bare
    ``train_step`` loop), the rest (under 1 ms) the engine's per-step work: data order,
    loss scalars, schedulers, progress.

    Returns:
        the mean-field reconstruction error of the data after each epoch.
    """
    if not isinstance(rbm, BernoulliRBM):
        raise ValueError(f"fit_rbm trains Bernoulli RBMs, got {type(rbm).__name__}; use the rbm method for Gaussian visibles")
    if data.ndim != 2 or data.shape[1] != rbm.n_visible:
        raise ValueError(f"data must be (N, {rbm.n_visible}), got {tuple(data.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    model = AugmentedBernoulliRBM(rbm)
    velocity = torch.zeros_like(model.matrix) if momentum > 0 else None
    velocity_weight = velocity[: rbm.n_visible, : rbm.n_hidden] if velocity is not None else None
    data_a = model.augment(data)
    n = data.shape[0]
    chain: Tensor | None = None
    errors = []
    for _ in range(epochs):
        epoch_data = data_a[torch.randperm(n, generator=generator, device=data.device)] if shuffle else data_a
        for v_a in epoch_data.split(batch_size):
            p_a = model.hidden_probs(v_a)
            if chain is None or not persistent:
                chain = model.sample_(p_a, p_a.clone(), generator)  # h ~ p(h | data)
            for step in range(k):
                last = step == k - 1
                v_model = model.visible_probs(chain)
                if persistent or not last:  # CD's last step keeps the means (the guide, 3.2)
                    model.sample_(v_model, v_model, generator)
                p_model = model.hidden_probs(v_model)
                if persistent or not last:
                    model.sample_(p_model, chain, generator)
            if velocity is None:  # p -= lr * (g + decay * p), without a gradient buffer
                if weight_decay:
                    model.weight_block.mul_(1.0 - lr * weight_decay)
                model.matrix.addmm_(v_a.t(), p_a, alpha=lr / v_a.shape[0]).addmm_(v_model.t(), p_model, alpha=-lr / v_model.shape[0])
            else:
                velocity.addmm_(v_model.t(), p_model, beta=momentum, alpha=1.0 / v_model.shape[0])
                velocity.addmm_(v_a.t(), p_a, alpha=-1.0 / v_a.shape[0])
                if weight_decay:
                    velocity_weight.add_(model.weight_block, alpha=weight_decay)
                model.matrix.sub_(velocity, alpha=lr)
        model.write_back(rbm)
        errors.append(float(rbm.reconstruction_error(data).mean()))
        log.debug("fit_rbm: epoch %d, reconstruction error %.5f", len(errors), errors[-1])
    return errors


__all__ = [
    "AugmentedBernoulliRBM",
    "FULLY_CONNECTED_CLASS",
    "RBMConfig",
    "RBMMethod",
    "RBMTrainingConfig",
    "VisibleCodec",
    "cd_step",
    "filter_images",
    "fit_rbm",
    "fold_input",
]
