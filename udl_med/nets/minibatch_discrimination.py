"""Minibatch discrimination: features that tell a discriminator how alike the examples of a batch are.

Salimans et al. 2016, "Improved Techniques for Training GANs"
(https://arxiv.org/abs/1606.03498), section 3.2. A collapsed generator produces near
duplicates; a layer that measures closeness to the other examples lets D see that:

- ``M_i = f(x_i) T`` with ``T`` in ``R^(A x B x C)``, so ``M_i`` in ``R^(B x C)``;
- ``c_b(x_i, x_j) = exp(-|| M_i,b - M_j,b ||_L1)``;
- ``o(x_i)_b = sum over j != i of c_b(x_i, x_j)``, concatenated to ``f(x_i)``.

``B`` is ``num_kernels``, ``C`` is ``kernel_dims`` (100 and 5 in openai/improved-gan).
Compute it on the real and the generated batch separately, as the reference code does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MinibatchDiscrimination(nn.Module):
    """``(B, A) -> (B, A + num_kernels)``: features with Salimans' closeness statistics appended.

    Args:
        in_features: ``A``, the size of ``f(x_i)``.
        num_kernels: ``B``, the number of closeness statistics.
        kernel_dims: ``C``, the dimension of each kernel's projection.
        init_std: standard deviation of the normal init of ``T`` (0.05 in openai/improved-gan).
    """

    def __init__(self, in_features: int, num_kernels: int = 100, kernel_dims: int = 5, init_std: float = 0.05) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("num_kernels", num_kernels), ("kernel_dims", kernel_dims)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.in_features = in_features
        self.num_kernels = num_kernels
        self.kernel_dims = kernel_dims
        self.T = nn.Parameter(torch.randn(in_features, num_kernels, kernel_dims) * init_std)

    @property
    def out_features(self) -> int:
        return self.in_features + self.num_kernels

    def closeness(self, x: Tensor) -> Tensor:
        """``o(x_i)`` ``(B, num_kernels)`` of features ``x`` ``(B, A)``; zeros for a batch of one."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"expected features (B, {self.in_features}), got {tuple(x.shape)}")
        m = torch.einsum("ia,abc->bic", x, self.T)  # (num_kernels, B, kernel_dims)
        # cdist keeps B*B*num_kernels distances, not the B*B*num_kernels*kernel_dims differences
        dist = torch.cdist(m, m, p=1)  # (num_kernels, B, B): ||M_i,b - M_j,b||_1
        c = torch.exp(-dist)
        not_self = 1.0 - torch.eye(x.shape[0], dtype=c.dtype, device=c.device)  # (B, B)
        return (c * not_self).sum(2).t()  # (B, num_kernels)

    def forward(self, x: Tensor) -> Tensor:
        """``cat([x, o(x)], 1)``: ``(B, A)`` -> ``(B, A + num_kernels)``."""
        return torch.cat([x, self.closeness(x)], 1)
