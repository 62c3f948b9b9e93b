"""The GAN family in one method: every loss and stabilising trick chosen in the ``model:`` section.

Goodfellow et al. 2014, "Generative Adversarial Nets" (https://arxiv.org/abs/1406.2661);
DCGAN, Radford et al. 2016 (https://arxiv.org/abs/1511.06434); LSGAN, Mao et al. 2017
(https://arxiv.org/abs/1611.04076); WGAN, Arjovsky et al. 2017
(https://arxiv.org/abs/1701.07875); WGAN-GP, Gulrajani et al. 2017
(https://arxiv.org/abs/1704.00028); feature matching, minibatch discrimination, virtual
batch norm, historical averaging and one-sided label smoothing, Salimans et al. 2016,
"Improved Techniques for Training GANs" (https://arxiv.org/abs/1606.03498); unrolled
GAN, Metz et al. 2017 (https://arxiv.org/abs/1611.02163); experience replay,
Shrivastava et al. 2017 (https://arxiv.org/abs/1612.07828); conditional GAN, Mirza and
Osindero 2014 (https://arxiv.org/abs/1411.1784); PacGAN, Lin et al. 2018
(https://arxiv.org/abs/1712.04086); DeLiGAN's mixture latent, Gurumurthy et al. 2017
(https://arxiv.org/abs/1706.02071). The facts and defaults collected from
the papers are in ``shared/research/gans.md``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from monai.utils import StrEnum
from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from torch import Tensor, nn
from torch.func import functional_call

from udl_med import keys
from udl_med.errors import ConfigError
from udl_med.losses.gan import GANLoss, clip_weights, feature_matching_loss, gradient_penalty, set_requires_grad
from udl_med.losses.historical_averaging import HistoricalAverage
from udl_med.losses.image_pool import ImagePool
from udl_med.losses.info import info_loss
from udl_med.methods.base import Capability, DataSpec, Method, MethodConfig, Optimization, register
from udl_med.methods.info_codes import InfoCodesConfig, info_refusal, sample_codes, with_codes

# d(x, labels) -> scores (B, 1): the discriminator, or a functional copy of it with other parameters
Critic = Callable[[Tensor, Tensor | None], Tensor]

PREVIEW_IMAGES = 64  # samples in the preview grid
PREVIEW_POINTS = 1024  # samples in the preview scatter plot
_FIXED_SEED = 0  # the fixed preview and evaluation z


class GANObjective(StrEnum):
    """``model.loss``: the adversarial game."""

    MINIMAX = "minimax"
    NON_SATURATING = "non-saturating"
    LSGAN = "lsgan"
    WGAN = "wgan"
    WGAN_GP = "wgan-gp"


WASSERSTEIN = (GANObjective.WGAN, GANObjective.WGAN_GP)
# model.loss -> GANLoss mode (udl_med.losses.gan): the same names
_GANLOSS_MODE = {o: o.value for o in GANObjective}

# Per-loss defaults filled in for keys the config leaves out (gans.md):
_LOSS_DEFAULTS: dict[str, dict[str, Any]] = {
    # DCGAN: Adam 2e-4, beta1 0.5 (Radford et al. 2016, section 4)
    "minimax": {"optimizer": "adam", "lr": 2e-4, "d_steps": 1},
    "non-saturating": {"optimizer": "adam", "lr": 2e-4, "d_steps": 1},
    "lsgan": {"optimizer": "adam", "lr": 2e-4, "d_steps": 1},
    # WGAN: RMSprop 5e-5, n_critic 5, c = 0.01 (Arjovsky et al. 2017, algorithm 1)
    "wgan": {"optimizer": "rmsprop", "lr": 5e-5, "d_steps": 5, "clip_value": 0.01},
    # WGAN-GP: Adam 1e-4, betas (0, 0.9), n_critic 5, lambda 10 (Gulrajani et al. 2017, algorithm 1)
    "wgan-gp": {"optimizer": "adam", "lr": 1e-4, "d_steps": 5, "gp_weight": 10.0},
}
# Adam's betas when the config leaves them out (only when the optimizer is Adam)
_ADAM_BETAS = {"wgan-gp": (0.0, 0.9)}
_DCGAN_BETAS = (0.5, 0.999)


class CheckpointSwapConfig(MethodConfig):
    """``model.checkpoint_swap``: every ``every`` steps snapshot G and D; swap an old one in for ``duration`` steps."""

    every: int = Field(..., ge=2, description="steps between snapshots (and swaps)")
    duration: int = Field(..., ge=1, description="steps the old snapshot stays swapped in")
    player: Literal["d", "g"] = Field("d", description="which network is swapped: the old D trains G, or the old G trains D")
    keep: int = Field(5, ge=1, description="snapshots kept besides the newest; the swapped-in one is drawn among them")


class UnrolledConfig(MethodConfig):
    """``model.unrolled``: G's loss through ``steps`` simulated D updates (Metz et al. 2017)."""

    steps: int = Field(..., ge=1, description="K, simulated D updates")
    first_order: bool = Field(False, description="train G against D updated K times with G detached (no second derivatives)")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="inner steps: SGD, or Adam continuing from the D optimizer's moments")
    lr: float | None = Field(
        None, gt=0.0, description="inner step size (null: D's learning rate); SGD moves D by lr * grad, much less than Adam at the same lr"
    )


class LatentMixtureConfig(MethodConfig):
    """``model.latent_mixture``: z from N learned Gaussian components instead of N(0, I) (DeLiGAN, Gurumurthy et al. 2017)."""

    components: int = Field(50, ge=2, description="N, components drawn with equal probability (DeLiGAN: 50)")
    init_std: float = Field(0.2, gt=0.0, description="every component's sigma at the start (DeLiGAN: 0.2)")
    std_penalty: float = Field(0.0, ge=0.0, description="lambda of DeLiGAN's (1/N) sum ||1 - sigma_i||^2 in G's loss (0: off)")


def _refuse(key: str, problem: str, value: Any) -> ValidationError:
    """A validation error located at ``key`` (so the engine reports ``FILE: model.KEY: problem``)."""
    error = PydanticCustomError("refused_combination", problem)
    return ValidationError.from_exception_data("GANConfig", [InitErrorDetails(type=error, loc=tuple(key.split(".")), input=value)])


class GANConfig(MethodConfig):
    """``model:`` section of a ``gan`` run; keys left out get the chosen loss's published defaults.

    ``null`` (or a missing key) for ``d_steps``, ``optimizer``, ``lr``, ``beta1``,
    ``beta2``, ``clip_value``, ``gp_weight``, ``g_norm``, ``d_norm`` means "the default
    of this loss and architecture" (see :class:`GAN`); the saved run config holds the
    resolved values.
    """

    architecture: Literal["dcgan", "mlp"] = Field("dcgan", description="convolutional DCGAN nets, or MLPs (points, flattened images)")
    latent_dim: int = Field(100, ge=1, description="dimension of z ~ N(0, I)")
    latent_mixture: LatentMixtureConfig | None = Field(None, description="z from a learned Gaussian mixture (DeLiGAN); null: N(0, I)")
    g_channels: tuple[int, ...] | None = Field(None, min_length=1, description="DCGAN generator channels (null: the net's default)")
    d_channels: tuple[int, ...] | None = Field(None, min_length=1, description="DCGAN discriminator channels (null: the net's default)")
    g_hidden: tuple[int, ...] = Field((128, 128), min_length=1, description="MLP generator hidden sizes")
    d_hidden: tuple[int, ...] = Field((128, 128), min_length=1, description="MLP discriminator hidden sizes")
    loss: GANObjective = GANObjective.NON_SATURATING
    d_steps: int | None = Field(None, ge=1, description="k, discriminator steps per generator step, each on a fresh batch")
    g_norm: Literal["batch", "virtual_batch", "instance", "layer", "none"] | None = None
    d_norm: Literal["batch", "virtual_batch", "instance", "layer", "none"] | None = None
    batch_norm_batches: Literal["joint", "separate"] = Field(
        "separate", description="D sees real and fake in one batch (joint) or in two (separate, DCGAN's code)"
    )
    vbn_reference: int = Field(64, ge=1, description="|R|, size of the virtual batch norm reference batch")
    label_smoothing: float = Field(1.0, gt=0.0, le=1.0, description="D's target for real data; 0.9 is one-sided label smoothing")
    feature_matching: bool = Field(False, description="G minimises ||E f(x) - E f(G(z))||^2 on a separate real batch")
    feature_matching_distance: Literal["l2", "l1"] = "l2"
    minibatch_kernels: int = Field(0, ge=0, description="B, minibatch discrimination kernels in D (0: off)")
    pack: int = Field(1, ge=1, description="m, PacGAN packing: D scores m real or m fake items at once (1: off)")
    d_input_noise: float = Field(0.0, ge=0.0, description="std of Gaussian noise added to D's input")
    d_hidden_noise: float = Field(0.0, ge=0.0, description="std of Gaussian noise added to D's hidden layers")
    historical_averaging: float = Field(0.0, ge=0.0, description="weight of ||theta - mean theta||^2 for G and D (0: off)")
    replay: int = Field(0, ge=0, description="experience replay: fakes shown to D come from a pool of this size (0: off)")
    checkpoint_swap: CheckpointSwapConfig | None = None
    unrolled: UnrolledConfig | None = None
    conditional: bool = Field(False, description="G and D see the manifest's label (needs data.labeled: true)")
    info_codes: InfoCodesConfig | None = Field(None, description="InfoGAN: categorical/continuous codes next to z, a Q head on D's body, weight lambda (null: off)")
    clip_value: float | None = Field(None, gt=0.0, description="c, weight clipping of the critic (loss wgan)")
    gp_weight: float | None = Field(None, ge=0.0, description="lambda, gradient-penalty weight (loss wgan-gp)")
    optimizer: Literal["adam", "rmsprop"] | None = None
    lr: float | None = Field(None, gt=0.0, description="learning rate of both G and D")
    g_lr: float | None = Field(None, gt=0.0, description="generator learning rate (null: lr)")
    d_lr: float | None = Field(None, gt=0.0, description="discriminator learning rate (null: lr); also the unrolled inner step")
    beta1: float | None = Field(None, ge=0.0, lt=1.0)
    beta2: float | None = Field(None, ge=0.0, lt=1.0)

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        loss = data.get("loss") or GANObjective.NON_SATURATING.value
        defaults = _LOSS_DEFAULTS.get(str(getattr(loss, "value", loss)))
        if defaults is None:  # an unknown loss: let field validation name it
            return data
        out = dict(data)
        for key, value in defaults.items():
            if out.get(key) is None:
                out[key] = value
        if out.get("optimizer") == "adam":
            for key, value in zip(("beta1", "beta2"), _ADAM_BETAS.get(str(getattr(loss, "value", loss)), _DCGAN_BETAS)):
                if out.get(key) is None:
                    out[key] = value
        architecture = out.get("architecture") or "dcgan"
        if out.get("g_norm") is None:
            out["g_norm"] = "batch" if architecture == "dcgan" else "none"
        if out.get("d_norm") is None:
            # DCGAN: batch norm in both; WGAN-GP: no batch norm in the critic (Gulrajani et al., section 4)
            out["d_norm"] = "batch" if architecture == "dcgan" and loss != "wgan-gp" else "none"
        return out

    @model_validator(mode="after")
    def _refuse_nonsense(self) -> GANConfig:
        loss = self.loss
        if loss in WASSERSTEIN and self.label_smoothing != 1.0:
            raise _refuse("label_smoothing", f"a Wasserstein critic (loss {loss.value}) has no target to smooth; use it with minimax, non-saturating or lsgan", self.label_smoothing)
        if loss == GANObjective.WGAN and self.gp_weight:
            raise _refuse("gp_weight", "weight clipping (loss wgan) and a gradient penalty exclude each other; use loss wgan-gp for the penalty", self.gp_weight)
        if loss != GANObjective.WGAN and self.clip_value is not None:
            raise _refuse("clip_value", f"weight clipping belongs to loss wgan, not {loss.value}" + (" (it has the gradient penalty instead)" if loss == GANObjective.WGAN_GP else ""), self.clip_value)
        if loss not in WASSERSTEIN and self.gp_weight:
            raise _refuse("gp_weight", f"the gradient penalty belongs to loss wgan-gp, not {loss.value}", self.gp_weight)
        for key in ("g_norm", "d_norm"):
            if self.architecture == "dcgan" and getattr(self, key) == "layer":
                raise _refuse(key, "layer norm is for architecture mlp; the DCGAN nets take batch, virtual_batch, instance or none", "layer")
        if loss == GANObjective.WGAN_GP and self.d_norm in ("batch", "virtual_batch"):
            raise _refuse("d_norm", f"{self.d_norm} norm makes a critic's output depend on the rest of the batch, which breaks the per-sample gradient penalty (loss wgan-gp); use instance or none", self.d_norm)
        if loss == GANObjective.WGAN_GP and self.minibatch_kernels:
            raise _refuse("minibatch_kernels", "minibatch discrimination makes a critic's output depend on the rest of the batch, which breaks the per-sample gradient penalty (loss wgan-gp)", self.minibatch_kernels)
        if self.optimizer == "rmsprop":
            for key in ("beta1", "beta2"):
                if getattr(self, key) is not None:
                    raise _refuse(key, "optimizer rmsprop has no betas (they are Adam's); leave them out or use optimizer adam", getattr(self, key))
        if loss in WASSERSTEIN and self.feature_matching:
            raise _refuse("feature_matching", f"feature matching replaces the generator's adversarial loss; with loss {loss.value} the critic's features are unconstrained, use minimax, non-saturating or lsgan", True)
        if self.unrolled is not None and self.feature_matching:
            raise _refuse("unrolled", "unrolling differentiates D's adversarial loss; it cannot be combined with feature_matching", self.unrolled.model_dump())
        if self.unrolled is not None and loss == GANObjective.WGAN_GP and not self.unrolled.first_order:
            raise _refuse("unrolled.first_order", "second-order unrolling through a gradient penalty needs third derivatives; set first_order: true", False)
        if self.unrolled is not None and self.unrolled.optimizer == "adam" and self.optimizer != "adam":
            raise _refuse("unrolled.optimizer", f"Adam inner steps continue D's Adam moments; D's optimizer is {self.optimizer}", "adam")
        if self.pack > 1:
            if loss == GANObjective.WGAN_GP:
                raise _refuse("pack", "the gradient penalty is per item, a packed critic scores groups of items; use pack with minimax, non-saturating, lsgan or wgan", self.pack)
            if self.conditional:
                raise _refuse("pack", "a packed D scores several items at once and has no single label to condition on; use pack: 1 with conditional", self.pack)
            if self.d_norm == "virtual_batch":
                raise _refuse("pack", "virtual batch norm's reference batch is of single items; use d_norm batch, instance or none with pack", self.pack)
        if self.latent_mixture is not None and self.g_norm == "virtual_batch":
            raise _refuse("latent_mixture", "virtual batch norm in G fixes its reference z once, but a learned mixture latent moves; use g_norm batch, instance, layer or none", self.latent_mixture.model_dump())
        refusal = info_refusal(self)
        if refusal is not None:
            raise _refuse(refusal[0], refusal[1], self.info_codes.model_dump())
        if self.checkpoint_swap is not None and self.checkpoint_swap.duration >= self.checkpoint_swap.every:
            raise _refuse("checkpoint_swap.duration", f"must be shorter than checkpoint_swap.every ({self.checkpoint_swap.every})", self.checkpoint_swap.duration)
        return self


class _Flat(nn.Module):
    """An MLP generator or discriminator on flattened items: images ``(B, C, *spatial)`` or points ``(B, D)``.

    The generator's output is reshaped to ``shape``; the discriminator's input is flattened.
    """

    def __init__(self, net: nn.Module, shape: tuple[int, ...], role: Literal["generator", "discriminator"]) -> None:
        super().__init__()
        self.net = net
        self.shape = shape
        self.role = role

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.role == "generator":
            return self.net(x, labels).reshape(x.shape[0], *self.shape)
        return self.net(x.flatten(1), labels)

    def forward_features(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.net.forward_features(x.flatten(1), labels)

    def set_reference(self, x: Tensor, labels: Tensor | None = None) -> None:
        self.net.set_reference(x if self.role == "generator" else x.flatten(1), labels)


class _Packed(nn.Module):
    """PacGAN's packed discriminator (Lin et al. 2018): ``m`` consecutive items stacked as one input.

    ``(B, C, *spatial)`` becomes ``(B / m, m * C, *spatial)`` (points ``(B, D)``: ``(B / m, m * D)``),
    so D scores a group of ``m`` real or ``m`` fake items and can see that a group of fakes
    lacks the variety of a group of real items. The inner D is built with ``m`` times the
    input channels or features.
    """

    def __init__(self, net: nn.Module, pack: int) -> None:
        super().__init__()
        self.net = net
        self.pack = pack

    def _packed(self, x: Tensor) -> Tensor:
        if x.shape[0] % self.pack:
            raise ValueError(f"model.pack {self.pack} needs batches of a multiple of {self.pack} items (train.batch_size), got {x.shape[0]}")
        return x.reshape(x.shape[0] // self.pack, self.pack * x.shape[1], *x.shape[2:])

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.net(self._packed(x), labels)

    def forward_features(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.net.forward_features(self._packed(x), labels)


class _SwapHistory(nn.Module):
    """Snapshots for checkpoint swapping, kept in the state dict (extra state) so resume is exact.

    ``snapshots``: ``[{"step", "weights", "optimizer"}]`` oldest first; ``live``: the
    current network's weights and optimizer state while an old one is swapped in, with
    ``until`` the global step at which it is restored.
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


def adam_moments(disc: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, tuple[Tensor, Tensor, int]]:
    """``{name: (exp_avg, exp_avg_sq, step)}`` of ``disc``'s parameters in an Adam ``optimizer`` (zeros before its first step)."""
    state = optimizer.state if optimizer is not None else {}
    out = {}
    for name, p in disc.named_parameters():
        s = state.get(p, {})
        if "exp_avg" in s:
            out[name] = (s["exp_avg"].detach(), s["exp_avg_sq"].detach(), int(float(s["step"])))
        else:
            out[name] = (torch.zeros_like(p), torch.zeros_like(p), 0)
    return out


def unroll_discriminator(
    disc: nn.Module,
    d_loss: Callable[[Critic], Tensor],
    steps: int,
    lr: float,
    create_graph: bool,
    clip_value: float | None = None,
    adam: tuple[tuple[float, float], float, dict[str, tuple[Tensor, Tensor, int]]] | None = None,
) -> dict[str, Tensor]:
    """Parameters (and buffers) of ``disc`` after ``steps`` simulated updates on ``d_loss``.

    Metz et al. 2017, eq. 5-6: ``theta_D^{k+1} = theta_D^k - lr * d L_D(theta_G, theta_D^k) / d theta_D^k``
    (SGD), starting from copies of ``disc``'s current parameters (``disc`` itself is not
    changed, its buffers are cloned). With ``adam = ((beta1, beta2), eps, moments)`` the
    inner steps are Adam's instead, continuing from ``moments`` (:func:`adam_moments` of
    the real D optimizer) with the moment updates inside the graph, as the authors'
    code unrolls its optimizer. With ``create_graph`` the updates stay in the autograd
    graph, so a loss evaluated at the result is differentiated through them (when
    ``d_loss`` uses the generator's output without detaching it); without it every step
    is detached (the first-order surrogate).

    Args:
        disc: the discriminator (a module ``(x, labels) -> scores``).
        d_loss: maps a critic ``d(x, labels)`` to D's scalar loss.
        steps: K, the number of simulated updates.
        lr: the inner learning rate.
        create_graph: differentiate through the updates (second order).
        clip_value: clamp the parameters to ``[-c, c]`` after each update (WGAN).
        adam: Adam's betas, eps and starting moments; None: SGD.

    Returns:
        ``{name: tensor}`` for :func:`torch.func.functional_call`.
    """
    params = {k: p.detach().clone().requires_grad_(True) for k, p in disc.named_parameters()}
    buffers = {k: b.detach().clone() for k, b in disc.named_buffers()}
    moments = None if adam is None else {k: (m.clone(), v.clone(), t) for k, (m, v, t) in adam[2].items()}
    for _ in range(steps):
        state = {**params, **buffers}

        def critic(x: Tensor, labels: Tensor | None = None, state: dict[str, Tensor] = state) -> Tensor:
            return functional_call(disc, state, (x, labels))

        loss = d_loss(critic)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
        updated = {}
        for (name, p), g in zip(params.items(), grads):
            if g is None:
                new = p
            elif moments is None:
                new = p - lr * g
            else:
                (beta1, beta2), eps = adam[0], adam[1]
                m, v, t = moments[name]
                t += 1
                m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
                # clamp_min: no infinite derivative of sqrt at v = 0 (where g = 0 anyway)
                new = p - lr * (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).clamp_min(1e-30).sqrt() + eps)
                moments[name] = (m, v, t) if create_graph else (m.detach(), v.detach(), t)
            if clip_value is not None:
                new = new.clamp(-clip_value, clip_value)
            updated[name] = new if create_graph else new.detach().requires_grad_(True)
        params = updated
    return {**params, **buffers}


@register("gan")
class GAN(Method):
    """A generator G and a discriminator (critic) D trained adversarially; every trick a config key.

    Code names and the papers' symbols::

        z                     z ~ N(0, I) of dimension latent_dim; with latent_mixture
                              z = mu_c + sigma_c * eps, c uniform over N learned components,
                              eps ~ N(0, I), std_penalty lambda of (1/N) sum ||1 - sigma_i||^2
                              (DeLiGAN, Gurumurthy et al. 2017, section 3)
        generator             G(z[, y]); DCGANGenerator or MLPGenerator
        discriminator         D(x[, y]) -> raw scores (logits; the critic f_w for WGAN)
        loss                  minimax: G minimises E log(1 - D(G(z))) (Goodfellow eq. 1)
                              non-saturating: G minimises -E log D(G(z)) (Goodfellow, section 3)
                              lsgan: a=0, b=c=1 least squares (Mao eq. 2)
                              wgan: E f_w(G(z)) - E f_w(x), w clipped to [-c, c] (Arjovsky alg. 1)
                              wgan-gp: same plus lambda E (||grad f(x_hat)||_2 - 1)^2 (Gulrajani eq. 3)
        d_steps               k (Goodfellow alg. 1) / n_critic (Arjovsky, Gulrajani)
        clip_value            c (Arjovsky, 0.01)
        gp_weight             lambda (Gulrajani, 10)
        label_smoothing       D's real target alpha (Salimans section 3.4, 0.9); fake target 0
        feature_matching      ||E_x f(x) - E_z f(G(z))||_2^2, f = D's last hidden layer (Salimans 3.1)
        minibatch_kernels     B of T in R^(A x B x C), C = 5 (Salimans 3.2)
        pack                  m, PacGAN: D(x_1, ..., x_m) scores m stacked items (Lin et al. 2018)
        g_norm / d_norm       batch | virtual_batch (reference batch R, |R| = vbn_reference;
                              Salimans 3.5) | instance | none
        historical_averaging  weight of ||theta - (1/t) sum_i theta_i||^2 (Salimans 3.3)
        replay                size of the pool of past fakes D sees (Shrivastava 2.3)
        checkpoint_swap       every N steps snapshot G and D; from the second snapshot on swap
                              an older one of checkpoint_swap.player in for `duration` steps
        unrolled.steps        K; G's loss f_K(theta_G, theta_D) = f(theta_G, theta_D^K(theta_G, theta_D))
                              with SGD inner steps of size eta = unrolled.lr (default D's
                              learning rate) (Metz eq. 5-6); unrolled.optimizer: adam continues
                              D's Adam moments inside the graph, as the authors' code
        conditional           G(z, y), D(x, y) with y the manifest's label (Mirza and Osindero)

    Defaults per loss (keys left out): minimax / non-saturating / lsgan: Adam(2e-4,
    betas (0.5, 0.999)), k = 1 (DCGAN); wgan: RMSprop(5e-5), k = 5, c = 0.01; wgan-gp:
    Adam(1e-4, betas (0, 0.9)), k = 5, lambda = 10. Norms: DCGAN batch norm in G and D
    (none in a wgan-gp critic), MLPs none. Latent dim 100; the nets' default channels.

    One step (:meth:`train_step`), top to bottom:

    1. checkpoint swap (if configured): snapshot / swap in / restore at this step;
    2. k D steps, each on a fresh batch (the step's batch, then ``opt.next_batch()``):
       D's loss on real x and detached fakes G(z) (through the replay pool), plus the
       gradient penalty, plus historical averaging; weights clipped after the step (wgan);
    3. one G step with D frozen: the adversarial loss (or feature matching on one more
       fresh real batch, or the unrolled loss), plus historical averaging.

    Conditional fakes take the labels of the real batch they are compared with, so D
    cannot tell fakes by their class frequencies. Batches carry ``keys.IMAGE``: images
    ``(B, C, *spatial)`` in [-1, 1], or points ``(B, D)`` (``spatial_dims`` 0, MLPs only);
    and ``keys.LABEL`` ``(B,)`` when conditional.
    """

    Config = GANConfig
    batch_keys = (keys.IMAGE,)
    capabilities = frozenset({Capability.SAMPLE})
    ema_modules = ("generator",)
    inference_modules = ("generator",)

    def __init__(self, config: GANConfig, data: DataSpec) -> None:
        super().__init__(config, data)
        self.points = data.spatial_dims == 0
        self.item_shape = (data.in_channels, *data.image_size)
        if self.points and config.architecture != "mlp":
            raise ConfigError("<config>", "model.architecture", "point data (spatial_dims 0) needs architecture: mlp")
        self.num_classes = data.num_classes if config.conditional else 0
        if config.conditional and data.num_classes < 2:
            raise ConfigError(
                "<config>", "model.conditional", f"needs labeled data with at least 2 classes (set data.labeled: true); the data has {data.num_classes}"
            )
        self.g_input_dim = config.latent_dim + (config.info_codes.width if config.info_codes else 0)
        self.generator, self.discriminator = self._build_nets(config, data)
        self.gan_loss = GANLoss(_GANLOSS_MODE[config.loss], real_label=config.label_smoothing)
        self.pool = ImagePool(config.replay)  # draws from the engine-seeded global RNG
        if config.historical_averaging > 0:
            self.g_average = HistoricalAverage(self.generator)
            self.d_average = HistoricalAverage(self.discriminator)
        if config.checkpoint_swap is not None:
            self.swap_history = _SwapHistory()
        # Placeholder VBN references of the final shapes, so that a fresh method's state dict
        # has their keys (a model file with the real ones loads strictly); on_train_start sets them.
        r = config.vbn_reference
        placeholder_labels = torch.zeros(r, dtype=torch.long) if self.num_classes else None
        if config.g_norm == "virtual_batch":
            self.generator.set_reference(torch.zeros(r, config.latent_dim), placeholder_labels)
        if config.d_norm == "virtual_batch":
            self.discriminator.set_reference(torch.zeros(r, *self.item_shape), placeholder_labels)
        fixed = torch.Generator().manual_seed(_FIXED_SEED)
        n_fixed = PREVIEW_POINTS if self.points else PREVIEW_IMAGES
        # the fixed noise of previews and evaluation; with a mixture latent, eps and the components (z = mu_c + sigma_c eps)
        self.register_buffer("fixed_z", torch.randn(n_fixed, config.latent_dim, generator=fixed), persistent=False)
        components = torch.randint(config.latent_mixture.components, (n_fixed,), generator=fixed) if config.latent_mixture else torch.zeros(0, dtype=torch.long)
        self.register_buffer("fixed_components", components, persistent=False)
        labels = torch.arange(n_fixed) % self.num_classes if self.num_classes else torch.zeros(0, dtype=torch.long)
        self.register_buffer("fixed_labels", labels, persistent=False)
        codes = torch.zeros(n_fixed, 0)
        if config.info_codes is not None:  # the categorical code in turn along a row of the preview grid
            drawn = sample_codes(config.info_codes, n_fixed, fixed)
            if config.info_codes.categorical:
                drawn = type(drawn)(torch.arange(n_fixed) % config.info_codes.categorical, drawn.continuous)
            codes = drawn.as_input(config.info_codes.categorical)
        self.register_buffer("fixed_codes", codes, persistent=False)

    def _build_nets(self, config: GANConfig, data: DataSpec) -> tuple[nn.Module, nn.Module]:
        d_kwargs: dict[str, Any] = dict(
            num_classes=self.num_classes,
            norm=config.d_norm,
            minibatch_kernels=config.minibatch_kernels,
            input_noise_std=config.d_input_noise,
            hidden_noise_std=config.d_hidden_noise,
        )
        if config.architecture == "mlp":
            from udl_med.nets.mlp_gan import MLPDiscriminator, MLPGenerator

            features = math.prod(self.item_shape)
            g = MLPGenerator(
                self.g_input_dim,
                features,
                hidden=config.g_hidden,
                num_classes=self.num_classes,
                norm=config.g_norm,
                output="linear" if self.points else "tanh",
            )
            d = MLPDiscriminator(features * config.pack, hidden=config.d_hidden, out_features=1, **d_kwargs)
            d_flat = _Flat(d, (config.pack * self.item_shape[0], *self.item_shape[1:]), "discriminator")
            return self._with_latent(_Flat(g, self.item_shape, "generator")), self._with_info(_Packed(d_flat, config.pack) if config.pack > 1 else d_flat)
        from udl_med.nets.dcgan import DCGANDiscriminator, DCGANGenerator

        dims, c, size = data.spatial_dims, data.in_channels, tuple(data.image_size)
        try:
            g = DCGANGenerator(
                dims,
                self.g_input_dim,
                c,
                size,
                **({} if config.g_channels is None else {"channels": config.g_channels}),
                num_classes=self.num_classes,
                norm=config.g_norm,
            )
        except ValueError as err:
            raise ConfigError("<config>", "model.g_channels", f"does not fit data.size {list(size)}: {err}") from None
        try:
            d = DCGANDiscriminator(
                dims, c * config.pack, size, **({} if config.d_channels is None else {"channels": config.d_channels}), out_features=1, **d_kwargs
            )
        except ValueError as err:
            raise ConfigError("<config>", "model.d_channels", f"does not fit data.size {list(size)}: {err}") from None
        return self._with_latent(g), self._with_info(_Packed(d, config.pack) if config.pack > 1 else d)

    def _with_info(self, d: nn.Module) -> nn.Module:
        """D, or D with InfoGAN's Q head on its body features (``model.info_codes``)."""
        info = self.config.info_codes
        if info is None:
            return d
        from udl_med.nets.info_head import InfoDiscriminator, InfoHead

        was_training = d.training
        d.eval()
        with torch.no_grad():  # the width of D's body features, from one dry pass
            probe_labels = torch.zeros(2, dtype=torch.long) if self.num_classes else None
            width = d.forward_features(torch.zeros(2, *self.item_shape), probe_labels)[1].flatten(1).shape[1]
        d.train(was_training)
        return InfoDiscriminator(d, InfoHead(width, info.categorical, info.continuous, hidden=info.q_hidden))

    def _with_latent(self, g: nn.Module) -> nn.Module:
        """G, or G together with its learned mixture latent (``model.latent_mixture``): one module to train, average and save."""
        mixture = self.config.latent_mixture
        if mixture is None:
            return g
        from udl_med.nets.mixture_latent import MixtureLatent, MixtureLatentGenerator

        return MixtureLatentGenerator(g, MixtureLatent(self.config.latent_dim, mixture.components, init_std=mixture.init_std))

    # -- engine hooks ------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        g_lr, d_lr = cfg.g_lr or cfg.lr, cfg.d_lr or cfg.lr

        def build(params, lr: float) -> torch.optim.Optimizer:
            if cfg.optimizer == "rmsprop":
                return torch.optim.RMSprop(params, lr=lr)
            return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2))

        return {"g": build(self.generator.parameters(), g_lr), "d": build(self.discriminator.parameters(), d_lr)}

    def batches_per_step(self) -> int:
        """k batches for the D steps, plus one real batch for feature matching."""
        return self.config.d_steps + int(self.config.feature_matching)

    def reference_batch_size(self) -> int:
        """|R| real items for D's virtual batch norm (G's reference is a fixed z)."""
        return self.config.vbn_reference if self.config.d_norm == "virtual_batch" else 0

    def on_train_start(self, reference: dict[str, Any] | None, generator: torch.Generator) -> None:
        """Fix the virtual-batch-norm references: real items for D, z (and labels) from ``generator`` for G."""
        cfg = self.config
        if cfg.d_norm == "virtual_batch" and reference is not None:
            labels = reference[keys.LABEL].long() if self.num_classes else None
            self.discriminator.set_reference(reference[keys.IMAGE].float(), labels)
        if cfg.g_norm == "virtual_batch":
            device = self.fixed_z.device
            z = torch.randn(cfg.vbn_reference, cfg.latent_dim, generator=generator).to(device)
            labels = torch.randint(self.num_classes, (cfg.vbn_reference,), generator=generator).to(device) if self.num_classes else None
            self.generator.set_reference(z, labels)

    def num_sample_classes(self) -> int:
        return self.num_classes

    # -- the step ------------------------------------------------------------------

    def _real(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        x = batch[keys.IMAGE].float()
        labels = batch[keys.LABEL].long().to(x.device) if self.num_classes else None
        return x, labels

    def _z(self, n: int, device: torch.device) -> tuple[Tensor, Any]:
        """``n`` latents from the global RNG: N(0, I), or the learned mixture (differentiable in its parameters).

        With InfoGAN codes, G's input is ``[z, c]`` and the codes ``c`` come back too (else None).
        """
        if self.config.latent_mixture is not None:
            return self.generator.latent.draw(n), None
        z = torch.randn(n, self.config.latent_dim, device=device)
        if self.config.info_codes is None:
            return z, None
        codes = sample_codes(self.config.info_codes, n, device=device)
        return with_codes(z, codes, self.config.info_codes), codes

    def info_terms(self, fake: Tensor, codes: Any, labels: Tensor | None) -> Any:
        """InfoGAN's :class:`~udl_med.losses.info.InfoTerms` of Q's prediction of ``codes`` from ``fake``."""
        return info_loss(self.discriminator.predict_codes(fake, labels), codes, self.config.info_codes.categorical)

    def _fixed_latent(self, n: int) -> Tensor:
        """The first ``n`` fixed latents of previews and evaluation (through the current mixture, if any)."""
        if self.config.latent_mixture is not None:
            return self.generator.latent(self.fixed_z[:n], self.fixed_components[:n])
        return torch.cat([self.fixed_z[:n], self.fixed_codes[:n]], 1)

    def _scores(self, d: Critic, real: Tensor, fake: Tensor, real_labels: Tensor | None, fake_labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """D's scores of real and fake: one joint batch or two separate ones (``batch_norm_batches``)."""
        if self.config.batch_norm_batches == "joint":
            labels = None if real_labels is None else torch.cat([real_labels, fake_labels])
            scores = d(torch.cat([real, fake]), labels)
            return scores[: real.shape[0]], scores[real.shape[0] :]
        return d(real, real_labels), d(fake, fake_labels)

    def discriminator_loss(self, d: Critic, real: Tensor, fake: Tensor, real_labels: Tensor | None, fake_labels: Tensor | None) -> dict[str, Tensor]:
        """D's loss (``"loss"``) and its parts for critic ``d``: the adversarial term and the gradient penalty.

        A conditional critic scores the penalty's interpolates with the real labels (the
        fakes share them, except those the replay pool swapped in).
        """
        real_scores, fake_scores = self._scores(d, real, fake, real_labels, fake_labels)
        adversarial = self.gan_loss.discriminator_loss(real_scores, fake_scores)
        out = {"adversarial": adversarial, "real_scores": real_scores.detach(), "fake_scores": fake_scores.detach()}
        if self.config.loss == GANObjective.WGAN_GP and self.config.gp_weight:
            penalty = gradient_penalty(lambda x: d(x, real_labels), real, fake)
            out["gradient_penalty"] = penalty
            adversarial = adversarial + self.config.gp_weight * penalty
        out["loss"] = adversarial
        return out

    def _replay(self, fake: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Fakes (and their labels) from the experience-replay pool; a label rides along as one extra channel."""
        if self.config.replay == 0:
            return fake, labels
        if labels is None:
            return self.pool.query(fake), None
        tag = labels.to(fake.dtype).reshape(-1, *([1] * (fake.ndim - 1))).expand(-1, 1, *fake.shape[2:])
        mixed = self.pool.query(torch.cat([fake, tag], 1))
        tags = mixed[:, -1]
        return mixed[:, :-1], tags.reshape(tags.shape[0], -1)[:, 0].round().long()

    def _d_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor]:
        cfg = self.config
        real, labels = self._real(batch)
        with torch.no_grad(), opt.autocast():
            z, codes = self._z(real.shape[0], real.device)
            fresh = self.generator(z, labels)
        fake, fake_labels = self._replay(fresh.float(), labels)
        with opt.autocast():
            parts = self.discriminator_loss(self.discriminator, real, fake, labels, fake_labels)
            loss = parts["loss"]
            if codes is not None:  # Q (and D's body) learn to read the codes of fresh fakes
                info = self.info_terms(fresh.float(), codes, labels)
                parts["info"] = info.loss.detach()
                loss = loss + cfg.info_codes.weight * info.loss
            if cfg.historical_averaging > 0:
                loss = loss + cfg.historical_averaging * self.d_average.penalty(self.discriminator)
        opt.step("d", loss)
        if cfg.loss == GANObjective.WGAN:
            clip_weights(self.discriminator, cfg.clip_value)
        if cfg.historical_averaging > 0:
            self.d_average.update(self.discriminator)
        parts["loss"] = loss
        return parts

    def generator_loss(
        self, real: Tensor, labels: Tensor | None, fm_batch: dict[str, Any] | None = None, d_optimizer: torch.optim.Optimizer | None = None
    ) -> Tensor:
        """G's loss on fresh fakes ``G(z, labels)`` (D frozen): adversarial, feature matching or unrolled.

        ``real`` and ``labels`` are the last D step's real batch (the unrolled inner steps
        use it, conditional fakes take its labels); ``fm_batch`` the separate real batch
        of feature matching; ``d_optimizer`` the real D optimizer, whose moments Adam inner
        steps continue (zeros when None). Unrolling starts from D as the step's k real D
        updates left it, so it combines with ``d_steps`` > 1.
        """
        cfg = self.config
        z, codes = self._z(real.shape[0], real.device)
        fake = self.generator(z, labels)
        if codes is not None:  # InfoGAN: G also makes its codes readable by Q (D and Q frozen)
            loss = self._adversarial_generator_loss(fake, real, labels, fm_batch, d_optimizer)
            return loss + cfg.info_codes.weight * self.info_terms(fake, codes, labels).loss
        return self._adversarial_generator_loss(fake, real, labels, fm_batch, d_optimizer)

    def _adversarial_generator_loss(
        self, fake: Tensor, real: Tensor, labels: Tensor | None, fm_batch: dict[str, Any] | None, d_optimizer: torch.optim.Optimizer | None
    ) -> Tensor:
        """G's adversarial (feature matching, unrolled) loss of ``fake``."""
        cfg = self.config
        if cfg.feature_matching:
            fm_real, fm_labels = self._real(fm_batch)
            with torch.no_grad():
                _, real_features = self.discriminator.forward_features(fm_real, fm_labels)
            _, fake_features = self.discriminator.forward_features(fake, labels)
            return feature_matching_loss(real_features.float(), fake_features.float(), distance=cfg.feature_matching_distance)
        if cfg.unrolled is None:
            return self.gan_loss.generator_loss(self.discriminator(fake, labels))
        second_order = not cfg.unrolled.first_order
        inner_fake = fake if second_order else fake.detach()
        state = unroll_discriminator(
            self.discriminator,
            lambda d: self.discriminator_loss(d, real, inner_fake, labels, labels)["loss"],
            cfg.unrolled.steps,
            cfg.unrolled.lr or cfg.d_lr or cfg.lr,
            create_graph=second_order,
            clip_value=cfg.clip_value if cfg.loss == GANObjective.WGAN else None,
            adam=None if cfg.unrolled.optimizer == "sgd" else ((cfg.beta1, cfg.beta2), _adam_eps(d_optimizer), adam_moments(self.discriminator, d_optimizer)),
        )
        return self.gan_loss.generator_loss(functional_call(self.discriminator, state, (fake, labels)))

    def train_step(self, batch: dict[str, Any], opt: Optimization) -> dict[str, Tensor]:
        cfg = self.config
        if cfg.checkpoint_swap is not None:
            self._checkpoint_swap(opt)

        # k discriminator steps, each on a fresh batch
        d_parts = []
        for i in range(cfg.d_steps):
            d_batch = batch if i == 0 else opt.next_batch()
            d_parts.append(self._d_step(d_batch, opt))
        last_real, last_labels = self._real(d_batch)

        # one generator step, D frozen
        fm_batch = opt.next_batch() if cfg.feature_matching else None
        set_requires_grad([self.discriminator], False)
        with opt.autocast():
            loss_g = self.generator_loss(last_real, last_labels, fm_batch, opt.optimizer("d"))
            if cfg.historical_averaging > 0:
                loss_g = loss_g + cfg.historical_averaging * self.g_average.penalty(self.generator)
            if cfg.latent_mixture is not None and cfg.latent_mixture.std_penalty > 0:
                loss_g = loss_g + cfg.latent_mixture.std_penalty * self.generator.latent.std_penalty()
        opt.step("g", loss_g)
        set_requires_grad([self.discriminator], True)
        if cfg.historical_averaging > 0:
            self.g_average.update(self.generator)

        out = {
            keys.LOSS_G: loss_g.detach(),
            keys.LOSS_D: torch.stack([p["loss"].detach() for p in d_parts]).mean(),
            keys.D_REAL: torch.stack([p["real_scores"].float().mean() for p in d_parts]).mean(),
            keys.D_FAKE: torch.stack([p["fake_scores"].float().mean() for p in d_parts]).mean(),
        }
        if "info" in d_parts[0]:
            out[keys.INFO] = torch.stack([p["info"] for p in d_parts]).mean()
        if "gradient_penalty" in d_parts[0]:
            out[keys.GRADIENT_PENALTY] = torch.stack([p["gradient_penalty"].detach() for p in d_parts]).mean()
        return out

    # -- checkpoint swapping ------------------------------------------------------------

    def _player(self) -> tuple[nn.Module, str]:
        player = self.config.checkpoint_swap.player
        return (self.discriminator, "d") if player == "d" else (self.generator, "g")

    def _checkpoint_swap(self, opt: Optimization) -> None:
        """At this step: restore the live network after a swap; every ``every`` steps snapshot it and swap an old one in.

        Snapshots are taken at steps ``every, 2 every, ...``; from the second one on, each
        of them swaps in a snapshot drawn among the ``keep`` older ones (weights and the
        player's optimizer state) for ``duration`` steps, during which the opponent trains
        against it and it trains too; then the current weights and optimizer state come
        back and those ``duration`` updates of the player are discarded. A run that ends
        inside a swap keeps the swapped-in network: end runs on a multiple of ``every``
        or after ``duration`` more steps.
        """
        swap, history = self.config.checkpoint_swap, self.swap_history
        net, name = self._player()
        step = opt.global_step
        if history.live is not None and step >= history.until:
            net.load_state_dict(history.live["weights"])
            opt.restore(history.live["optimizer"])
            history.live, history.until = None, -1
        if step == 0 or step % swap.every or history.live is not None:
            return
        current = {"step": step, "weights": _copy_state(net), "optimizer": opt.snapshot(name)}
        older = history.snapshots[-swap.keep :]
        if older:
            # drawn from the step alone: every rank of a distributed run swaps in the same snapshot
            pick = torch.Generator().manual_seed(step)
            chosen = older[int(torch.randint(len(older), (), generator=pick).item())]
            history.live = current
            history.until = step + swap.duration
            net.load_state_dict(chosen["weights"])
            opt.restore(chosen["optimizer"])
        history.snapshots = (history.snapshots + [current])[-(swap.keep + 1) :]

    # -- what a trained model does ------------------------------------------------------

    def _generate(self, z: Tensor, labels: Tensor | None) -> Tensor:
        """G(z, labels) in eval mode, clamped to [-1, 1] for images."""
        was_training = self.generator.training
        self.generator.eval()
        try:
            out = self.generator(z, labels).float()
        finally:
            self.generator.train(was_training)
        return out if self.points else out.clamp(-1, 1)

    @property
    def latent_dim(self) -> int:
        """Width of G's input: z, then the InfoGAN codes (if any)."""
        return self.g_input_dim

    def draw_latent(self, n: int, generator: torch.Generator | None = None, code: str | None = None) -> Tensor:
        """``n`` inputs of G from the prior (z, and InfoGAN codes with the values ``code`` fixes): ``(n, latent_dim)``."""
        device = self.fixed_z.device
        if self.config.latent_mixture is not None:
            z = self.generator.latent.draw(n, generator)
        else:
            z = torch.randn(n, self.config.latent_dim, generator=generator).to(device)
        if self.config.info_codes is None:
            if code is not None:
                raise ValueError("the model has no InfoGAN codes (model.info_codes); --code needs a model trained with them")
            return z
        return with_codes(z, sample_codes(self.config.info_codes, n, generator, code, device=device), self.config.info_codes)

    def decode_latent(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """``G(z[, labels])`` in eval mode, clamped to [-1, 1]; differentiable in ``z``."""
        return self._generate(z.to(self.fixed_z.device, torch.float32), None if labels is None else labels.to(self.fixed_z.device))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, label: int | None = None, code: str | None = None) -> Tensor:
        """``n`` samples ``G(z[, label])``, z ~ N(0, I) (or the learned mixture) from ``generator``: ``(n, C, *spatial)`` in [-1, 1] or points ``(n, D)``.

        A conditional model draws class ``label`` (uniform random classes when None); an
        InfoGAN model fixes the codes ``code`` names (:func:`udl_med.methods.info_codes.parse_code`).

        Raises:
            ValueError: ``label`` given to an unconditional model, or out of range; ``code``
                for a model without codes, or not fitting them.
        """
        device = self.fixed_z.device
        z = self.draw_latent(n, generator, code)
        labels = None
        if self.num_classes:
            if label is None:
                labels = torch.randint(self.num_classes, (n,), generator=generator).to(device)
            elif not 0 <= int(label) < self.num_classes:
                raise ValueError(f"label {label} is out of range: the model has classes 0..{self.num_classes - 1}")
            else:
                labels = torch.full((n,), int(label), dtype=torch.long, device=device)
        elif label is not None:
            raise ValueError(f"method {self.name!r} was trained unconditionally (model.conditional: false): it cannot sample a given label")
        return self._generate(z, labels)

    @torch.no_grad()
    def preview(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Samples from the fixed z (and labels 0, 1, ... in turn): an image grid, or a point cloud ``(N, 2)``."""
        out = {"samples": self._generate(self._fixed_latent(self.fixed_z.shape[0]), self.fixed_labels if self.num_classes else None)}
        if self.points:
            out["real"] = batch[keys.IMAGE].float()
        return out

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any]) -> dict[str, float]:
        """D's mean raw score on held-out real items and on fakes from the fixed z (eval mode)."""
        real, labels = self._real(batch)
        keep = real.shape[0] - real.shape[0] % self.config.pack  # a packed D scores whole groups
        real, labels = real[:keep], (labels[:keep] if labels is not None else None)
        if keep == 0:
            return {}
        n = min(real.shape[0], self.fixed_z.shape[0] - self.fixed_z.shape[0] % self.config.pack)
        fake_labels = labels[:n] if labels is not None else None
        fake = self._generate(self._fixed_latent(n), fake_labels)
        real_scores = self.discriminator(real, labels).float()
        fake_scores = self.discriminator(fake, fake_labels).float()
        out = {keys.D_REAL: float(real_scores.mean()), keys.D_FAKE: float(fake_scores.mean())}
        if self.config.loss in WASSERSTEIN:
            out[keys.WASSERSTEIN] = out[keys.D_REAL] - out[keys.D_FAKE]  # the critic's estimate of W(p_data, p_g)
        else:
            out[keys.D_ACCURACY] = float(((real_scores > 0).float().mean() + (fake_scores < 0).float().mean()) / 2)
        return out


def _adam_eps(optimizer: torch.optim.Optimizer | None) -> float:
    return float(optimizer.param_groups[0]["eps"]) if optimizer is not None else 1e-8  # torch's Adam default


def _copy_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


__all__ = ["GAN", "GANConfig", "GANObjective", "adam_moments", "unroll_discriminator"]
