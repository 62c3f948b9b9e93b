"""Judging a generative method while it trains: FID, KID, precision, recall, density and coverage of its samples.

The real statistics are computed once, from the first ``n`` evaluation items; every
evaluation then draws ``n`` samples from the same fixed seed, so two evaluations differ
only by what the method learnt. Images go through the configured feature extractor
(``random`` by default); point data ``(N, D)`` is compared on its raw coordinates.
Precision and recall (k = 3) tell fidelity from diversity where FID mixes them; density
and coverage (k = 5) are their outlier-robust forms (:mod:`udl_med.metrics.prdc`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from udl_med import keys
from udl_med.engine.config import SampleEvalConfig
from udl_med.engine.data_order import fixed_batches
from udl_med.methods.base import Method
from udl_med.metrics.compare import compare_stats, tensor_statistics
from udl_med.metrics.extractors import build_extractor
from udl_med.metrics.prdc import prdc_report
from udl_med.metrics.statistics import FeatureStats

SAMPLE_SEED = 20_231  # the fixed seed of evaluation samples
SAMPLE_BATCH = 64


def draw_samples(method: Method, n: int, seed: int = SAMPLE_SEED) -> Tensor:
    """``n`` samples of ``method`` (classes in turn for a conditional model), on the CPU, float32."""
    generator = torch.Generator().manual_seed(seed)
    classes = method.num_sample_classes()
    out = []
    for start in range(0, n, SAMPLE_BATCH):
        count = min(SAMPLE_BATCH, n - start)
        if classes:
            # one call per class keeps sample(label=int) the one interface
            for label in range(classes):
                share = count // classes + (1 if label < count % classes else 0)
                if share:
                    out.append(method.sample(share, generator=generator, label=label).detach().float().cpu())
        else:
            out.append(method.sample(count, generator=generator).detach().float().cpu())
    return torch.cat(out)[:n]


class SampleEvaluator:
    """FID and KID of ``method.sample`` against the first ``config.n`` items of ``eval_set``."""

    def __init__(self, config: SampleEvalConfig, eval_set: Dataset, spatial_dims: int) -> None:
        self.config = config
        self.spatial_dims = spatial_dims
        real = torch.cat([b[keys.IMAGE] for b in fixed_batches(eval_set, config.n, 256)]).float()
        if real.shape[0] < 2:
            raise ValueError(f"sample_eval needs at least 2 evaluation items, got {real.shape[0]}")
        self.extractor = None
        if spatial_dims == 0:
            self.real = FeatureStats.from_features(real.flatten(1).numpy())
        else:
            self.extractor = build_extractor(config.extractor, spatial_dims)
            self.real = tensor_statistics(real, self.extractor, layout=f"{spatial_dims}d")

    def _stats(self, samples: Tensor):
        if self.extractor is None:
            return FeatureStats.from_features(samples.flatten(1).numpy())
        return tensor_statistics(samples.clamp(-1, 1), self.extractor, layout=f"{self.spatial_dims}d")

    @torch.no_grad()
    def __call__(self, method: Method) -> dict[str, float]:
        """``fid``, ``kid``, ``precision``, ``recall``, ``density``, ``coverage`` of ``config.n`` fresh samples (the method in eval mode)."""
        fake = self._stats(draw_samples(method, self.config.n))
        result: dict[str, Any] = compare_stats(self.real, fake, bootstrap=0)
        out = {keys.FID: float(result["fid"]), keys.KID: float(result["kid"])}
        shares = prdc_report(self.real.features, fake.features)  # None where n is below k + 1
        out.update({key: float(shares[key]) for key in keys.PRDC if shares[key] is not None})
        return out
