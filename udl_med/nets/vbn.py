"""Virtual batch normalisation and the reference batch a network carries for it.

Salimans et al. 2016, "Improved Techniques for Training GANs"
(https://arxiv.org/abs/1606.03498), section 3.4. Batch norm makes an example's output
depend on the other examples of its batch. Virtual batch norm instead normalises each
example ``x`` with the statistics of a *reference batch* ``R``, drawn once at the start
of training and kept fixed, plus ``x`` itself:

- every forward pass runs ``R`` through the current network (the reference rows are
  prepended to the batch), so each layer sees ``R``'s current activations;
- the reference rows are normalised with ``R``'s own statistics;
- an example's mean is ``1/(|R|+1) * mean(x) + |R|/(|R|+1) * mean(R)``, likewise its mean
  of squares, and ``std = sqrt(eps + E[x^2] - E[x]^2)``.

Statistics are per channel: for conv features ``(B, C, *spatial)`` an example's own
statistic is over its spatial axes and the reference's over its rows and spatial axes;
for vectors ``(B, C)`` (``spatial_dims=0``) an example's own statistic is the value itself.
The output does not depend on the rest of the batch, and is the same in train and eval mode.

The reference mechanism: a network mixes in :class:`ReferenceBatchMixin`, calls
:meth:`~ReferenceBatchMixin.set_reference` once (the method's ``on_train_start``), and in
its forward wraps the body with :meth:`~ReferenceBatchMixin.prepend_reference` /
:meth:`~ReferenceBatchMixin.drop_reference`. The reference is a buffer: it is saved in
checkpoints and model files, so a loaded generator samples exactly as it trained.

(torchgan's VirtualBatchNorm alternates stored and fresh statistics without the
``1/(|R|+1)`` mixing; this one follows the paper and openai/improved-gan.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class VirtualBatchNorm(nn.Module):
    """Virtual batch norm over ``num_features`` channels; the first ``reference_size`` rows are the reference batch.

    The owning network sets :attr:`reference_size` before each forward (see
    :class:`ReferenceBatchMixin`); standalone, set it yourself. The class name contains
    "BatchNorm" and it has ``.weight``/``.bias``, so MONAI's ``normal_init`` treats it like
    batch norm (weight ~ N(1, std), bias 0).

    Args:
        num_features: channels ``C``.
        spatial_dims: 0 for vectors ``(B, C)``, else 1, 2 or 3 for ``(B, C, *spatial)``.
        eps: added to the variance.

    Shapes:
        input and output ``(B, C[, *spatial])``, ``B >= reference_size`` (the reference rows first).
    """

    def __init__(self, num_features: int, spatial_dims: int, eps: float = 1e-5) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if spatial_dims not in (0, 1, 2, 3):
            raise ValueError(f"spatial_dims must be 0, 1, 2 or 3, got {spatial_dims}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.num_features = num_features
        self.spatial_dims = spatial_dims
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.reference_size: int | None = None

    def extra_repr(self) -> str:
        return f"{self.num_features}, spatial_dims={self.spatial_dims}, eps={self.eps}"

    def _normalise(self, x: Tensor, mean: Tensor, mean_sq: Tensor) -> Tensor:
        var = (mean_sq - mean * mean).clamp_min(0.0)
        return (x - mean) / torch.sqrt(self.eps + var)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` ``(B, C[, *spatial])`` whose first :attr:`reference_size` rows are the reference."""
        n = self.reference_size
        if n is None or n < 1:
            raise RuntimeError(
                "VirtualBatchNorm has no reference batch: call set_reference(x_ref) on the network "
                "(or set reference_size on the layer)"
            )
        if x.ndim != 2 + self.spatial_dims or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected (B, {self.num_features}{', *spatial' * (self.spatial_dims > 0)}) with "
                f"{self.spatial_dims} spatial axes, got {tuple(x.shape)}"
            )
        if x.shape[0] < n:
            raise ValueError(f"batch of {x.shape[0]} rows is smaller than the reference ({n} rows)")
        dtype = x.dtype
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        spatial = tuple(range(2, x.ndim))
        ref, ex = x[:n], x[n:]
        mean_r = ref.mean(dim=(0,) + spatial, keepdim=True)  # (1, C, 1...)
        mean_sq_r = (ref * ref).mean(dim=(0,) + spatial, keepdim=True)
        out_r = self._normalise(ref, mean_r, mean_sq_r)
        if ex.shape[0] > 0:
            if spatial:
                mean_x = ex.mean(dim=spatial, keepdim=True)  # (B - n, C, 1...)
                mean_sq_x = (ex * ex).mean(dim=spatial, keepdim=True)
            else:
                mean_x, mean_sq_x = ex, ex * ex
            w_new, w_ref = 1.0 / (n + 1), n / (n + 1)
            mean = w_new * mean_x + w_ref * mean_r
            mean_sq = w_new * mean_sq_x + w_ref * mean_sq_r
            out = torch.cat([out_r, self._normalise(ex, mean, mean_sq)], 0)
        else:
            out = out_r
        shape = (1, self.num_features) + (1,) * self.spatial_dims
        out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(dtype)


class ReferenceBatchMixin:
    """The reference batch of a network with :class:`VirtualBatchNorm` layers (mix into an ``nn.Module``).

    Call :meth:`init_reference` in ``__init__`` (after ``nn.Module.__init__``). The buffers
    ``reference_x`` (the network's input for the reference, e.g. real images for a
    discriminator, a fixed z for a generator) and ``reference_labels`` are ``None`` until
    :meth:`set_reference`; once set they are part of the state dict, and loading a state
    dict that holds them restores them into a freshly built network.

    A forward pass of a network with VBN layers::

        x, labels, n = self.prepend_reference(x, labels)   # reference rows first
        out = self.body(x)
        return self.drop_reference(out, n)
    """

    reference_x: Tensor | None
    reference_labels: Tensor | None

    def init_reference(self) -> None:
        """Register the (empty) reference buffers."""
        assert isinstance(self, nn.Module)
        self.register_buffer("reference_x", None)
        self.register_buffer("reference_labels", None)

    def vbn_layers(self) -> list[VirtualBatchNorm]:
        """The virtual batch norm layers of this network."""
        assert isinstance(self, nn.Module)
        return [m for m in self.modules() if isinstance(m, VirtualBatchNorm)]

    @property
    def needs_reference(self) -> bool:
        """Whether the network has VBN layers (and so a forward pass needs :meth:`set_reference`)."""
        return len(self.vbn_layers()) > 0

    @property
    def has_reference(self) -> bool:
        return self.reference_x is not None

    @torch.no_grad()
    def set_reference(self, x_ref: Tensor, labels_ref: Tensor | None = None) -> None:
        """Store the fixed reference batch: network inputs ``(R, ...)`` and, for a conditional network, labels ``(R,)``.

        Raises:
            ValueError: an empty reference, or labels missing / not ``(R,)``.
        """
        assert isinstance(self, nn.Module)
        if x_ref.ndim < 2 or x_ref.shape[0] < 1:
            raise ValueError(f"x_ref must be a non-empty batch (R, ...), got {tuple(x_ref.shape)}")
        if labels_ref is not None and tuple(labels_ref.shape) != (x_ref.shape[0],):
            raise ValueError(f"labels_ref must have shape ({x_ref.shape[0]},), got {tuple(labels_ref.shape)}")
        if getattr(self, "num_classes", 0) > 0 and labels_ref is None:
            raise ValueError("labels_ref is required: this network is conditional (num_classes > 0)")
        device = next((p.device for p in self.parameters()), x_ref.device)
        self.reference_x = x_ref.detach().clone().to(device)
        self.reference_labels = None if labels_ref is None else labels_ref.detach().clone().long().to(device)

    def prepend_reference(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None, int]:
        """``(cat([reference, x]), cat([reference labels, labels]), |R|)``; unchanged with ``0`` when there are no VBN layers.

        Also tells every VBN layer how many leading rows are the reference.

        Raises:
            RuntimeError: the network has VBN layers and no reference batch.
        """
        layers = self.vbn_layers()
        if not layers:
            return x, labels, 0
        if self.reference_x is None:
            raise RuntimeError(
                f"{type(self).__name__} uses virtual batch norm: call set_reference(x_ref[, labels_ref]) first"
            )
        ref = self.reference_x
        if ref.shape[1:] != x.shape[1:]:
            raise ValueError(f"input {tuple(x.shape)} does not match the reference batch {tuple(ref.shape)}")
        n = ref.shape[0]
        x = torch.cat([ref.to(device=x.device, dtype=x.dtype), x], 0)
        if labels is not None:
            if self.reference_labels is None:
                raise RuntimeError("labels given but the reference batch has none: set_reference(x_ref, labels_ref)")
            labels = torch.cat([self.reference_labels.to(labels.device), labels], 0)
        for layer in layers:
            layer.reference_size = n
        return x, labels, n

    @staticmethod
    def drop_reference(out: Tensor, n: int) -> Tensor:
        """``out`` without its first ``n`` (reference) rows."""
        return out[n:] if n else out

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # a freshly built network has no reference buffers yet: make room for the saved ones
        for name in ("reference_x", "reference_labels"):
            key = prefix + name
            current = getattr(self, name)
            if key in state_dict and (current is None or current.shape != state_dict[key].shape):
                saved = state_dict[key]
                device = next((p.device for p in self.parameters()), torch.device("cpu"))  # type: ignore[attr-defined]
                self._buffers[name] = torch.empty(saved.shape, dtype=saved.dtype, device=device)  # type: ignore[attr-defined]
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
