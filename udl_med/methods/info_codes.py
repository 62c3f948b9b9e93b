"""InfoGAN in the ``gan`` method: ``model.info_codes`` (Chen et al. 2016, https://arxiv.org/abs/1606.03657).

Next to the noise ``z`` (``model.latent_dim``) G reads codes ``c``: a categorical code of
``categorical`` values (K, uniform, one-hot) and ``continuous`` codes (N, uniform on
[-1, 1]); G's input is ``[z, onehot(c_cat), c_cont]``, drawn in one place by the GAN's prior
(:class:`udl_med.nets.info_head.InfoCodesLatent`). A head Q on D's body
(:class:`udl_med.nets.info_head.InfoDiscriminator`) predicts ``c`` from ``G(z, c)``. The
variational lower bound of ``I(c; G(z, c))`` (:func:`udl_med.losses.info.info_loss`),
weighted by ``weight`` (lambda; 1 for a categorical code in the paper), is G's extra
loss in G's step and Q's (and D's body's) extra loss in D's step, on the same kind of
fakes: ``min_{G,Q} max_D V(D, G) - lambda L_I(G, Q)``.

``q_augment`` (not in the paper) passes every fake through DiffAugment's transforms
(:class:`udl_med.nets.diffaugment.DiffAugment`: a shift, a cutout, brightness and
contrast) before Q reads it, in both players' ``L_I``. Q reads a small change almost
perfectly, which saturates the bound; with the transforms a code carried by a small shift
of the outline or a global intensity change is no longer readable, while a local feature
that survives them (a lesion's presence and brightness against its surroundings) is.

``udl-med sample MODEL --code SPEC`` fixes codes: ``SPEC`` lists the categorical value
(when K > 0) then continuous values, comma-separated; ``_`` or a missing tail leaves a
code random (e.g. ``--code 1`` or ``--code 1,0.5,_``).
"""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from udl_med.methods.base import MethodConfig
from udl_med.nets.diffaugment import DIFFAUGMENT_POLICIES, check_policy


class InfoCodesConfig(MethodConfig):
    """``model.info_codes``: InfoGAN's latent codes and the weight of their mutual-information term."""

    categorical: int = Field(0, ge=0, description="K, values of the categorical code (0: none, else >= 2)")
    continuous: int = Field(0, ge=0, description="N, continuous codes uniform on [-1, 1]")
    weight: float = Field(1.0, gt=0.0, description="lambda, weight of the mutual-information lower bound (Chen et al.: 1)")
    q_hidden: int = Field(128, ge=1, description="width of Q's hidden layer on D's body features")
    q_augment: tuple[str, ...] = Field(
        (),
        description="DiffAugment transforms (translation, cutout, intensity) every fake goes through before Q reads its codes, in both players' L_I: "
        "the code must then change what survives them (empty: Q reads the fakes as they are)",
    )

    @model_validator(mode="after")
    def _some_code(self) -> InfoCodesConfig:
        if self.categorical == 1:
            raise ValueError("categorical must be 0 (none) or at least 2 values")
        if self.categorical + self.continuous == 0:
            raise ValueError("give categorical and/or continuous codes")
        check_policy(self.q_augment, DIFFAUGMENT_POLICIES)
        return self

    @property
    def width(self) -> int:
        """K + N: the values G reads after z."""
        return self.categorical + self.continuous


def info_refusal(model: object) -> tuple[str, str] | None:
    """``(key, problem)`` when the rest of a GAN config cannot carry InfoGAN codes, else None."""
    if getattr(model, "info_codes", None) is None:
        return None
    if getattr(model, "pack", 1) > 1:
        return "info_codes", "Q predicts the codes of one item, but a packed D (model.pack > 1) sees groups of items; use pack: 1 with info_codes"
    if getattr(model, "d_norm", None) == "virtual_batch":
        return "info_codes", "Q reads D's body, whose virtual batch norm (model.d_norm: virtual_batch) mixes in a reference batch without codes; use d_norm batch, instance or none"
    if getattr(model, "g_norm", None) == "virtual_batch":
        return "info_codes", "G's virtual batch norm (model.g_norm: virtual_batch) fixes its reference z without codes; use g_norm batch, instance or none"
    if getattr(model, "latent_mixture", None) is not None:
        return "info_codes", "codes next to a learned mixture latent (model.latent_mixture) are not supported; use one of the two"
    if model.info_codes.q_augment and getattr(model, "architecture", "dcgan") != "dcgan":
        return "info_codes.q_augment", "DiffAugment's transforms act on images; architecture mlp works on points or flattened items, use q_augment: [] or architecture dcgan"
    if getattr(model, "unrolled", None) is not None:
        return "info_codes", "the unrolled generator loss (model.unrolled) does not carry the codes' term; use one of the two"
    return None


def parse_code(text: str, config: InfoCodesConfig | None) -> tuple[int | None, list[float | None]]:
    """``--code`` text -> (categorical value or None, continuous values with None for random).

    Raises:
        ValueError: a model without codes, or text that does not fit its codes.
    """
    if config is None:
        raise ValueError("the model has no InfoGAN codes (model.info_codes); --code needs a model trained with them")
    parts = [p.strip() for p in text.split(",")]
    k, n = config.categorical, config.continuous
    if len(parts) > int(k > 0) + n:
        raise ValueError(f"--code {text!r} gives {len(parts)} values; the model has {k} categorical values and {n} continuous codes")
    cat: int | None = None
    if k:
        head = parts.pop(0)
        if head not in ("", "_"):
            try:
                cat = int(head)
            except ValueError:
                raise ValueError(f"--code: the categorical value must be an integer in 0..{k - 1}, got {head!r}") from None
            if not 0 <= cat < k:
                raise ValueError(f"--code: the categorical value must lie in 0..{k - 1}, got {cat}")
    cont: list[float | None] = [None] * n
    for i, p in enumerate(parts):
        if p in ("", "_"):
            continue
        try:
            cont[i] = float(p)
        except ValueError:
            raise ValueError(f"--code: continuous code {i} must be a number, got {p!r}") from None
        if not math.isfinite(cont[i]):
            raise ValueError(f"--code: continuous code {i} must be finite, got {p!r}")
    return cat, cont


__all__ = ["InfoCodesConfig", "info_refusal", "parse_code"]
