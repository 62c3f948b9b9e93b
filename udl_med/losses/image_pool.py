"""A history of generated images for the discriminator.

Shrivastava et al. 2017, "Learning from Simulated and Unsupervised Images through
Adversarial Training" (https://arxiv.org/abs/1612.07828), section 2.3, as used by
CycleGAN (Zhu et al. 2017, section 4): updating the discriminator on a buffer of
earlier fakes, not only the latest ones, reduces model oscillation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ImagePool(nn.Module):
    """Buffer of up to ``pool_size`` generated images.

    :meth:`query` returns a batch of the same size: while the pool fills, the new
    images themselves; then each image is, with probability 1/2, swapped with a
    random stored one (which is returned instead), or returned as is. A pool of size 0
    returns its input unchanged.

    The stored images are part of the module's ``state_dict`` (one extra-state tensor
    ``(n, C, *spatial)``), and the draws come from ``generator`` or else from torch's
    global RNG, which the engine seeds and checkpoints; so a resumed run draws exactly
    what the uninterrupted one would have. The cost: a model file carries the pool.

    Args:
        pool_size: number of images kept; 50 in CycleGAN.
        generator: random source of the draws (a CPU generator); ``None``: the global RNG.
    """

    def __init__(self, pool_size: int = 50, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if pool_size < 0:
            raise ValueError(f"pool_size must be >= 0, got {pool_size}")
        self.pool_size = int(pool_size)
        self.generator = generator
        self.images: list[Tensor] = []

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, images: Tensor) -> Tensor:
        """Return a batch ``(B, C, *spatial)`` drawn from the history and ``images``."""
        if self.pool_size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0).clone()
            if len(self.images) < self.pool_size:
                self.images.append(image)
                out.append(image)
            elif torch.rand((), generator=self.generator).item() < 0.5:
                i = int(torch.randint(len(self.images), (), generator=self.generator).item())
                out.append(self.images[i])
                self.images[i] = image
            else:
                out.append(image)
        return torch.cat(out, 0)

    def reset(self) -> None:
        """Forget every stored image."""
        self.images = []

    def get_extra_state(self) -> Tensor:
        """The stored images ``(n, C, *spatial)`` (``(0,)`` when empty)."""
        return torch.cat(self.images, 0) if self.images else torch.empty(0)

    def set_extra_state(self, state: Tensor) -> None:
        self.images = [state[i : i + 1].clone() for i in range(state.shape[0])] if state.numel() else []

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - nn.Module signature
        """Move stored images along with ``.to(device)`` / ``.half()`` of the owner."""
        self.images = [fn(x) for x in self.images]
        return super()._apply(fn, recurse)
