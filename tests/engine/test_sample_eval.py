"""Training-time sample evaluation: FID, KID and precision, recall, density, coverage of a method's samples."""

from __future__ import annotations

import math

import torch

from udl_med import keys
from udl_med.data.memory import TensorItems
from udl_med.engine.config import SampleEvalConfig
from udl_med.engine.sample_eval import SampleEvaluator


class _Sampler:
    """A 'method' whose samples are ``data`` moved by ``offset`` (what draw_samples needs)."""

    def __init__(self, data: torch.Tensor, offset: float) -> None:
        self.data, self.offset = data, offset

    def num_sample_classes(self) -> int:
        return 0

    def sample(self, n: int, generator: torch.Generator | None = None, label: int | None = None) -> torch.Tensor:
        idx = torch.randint(0, len(self.data), (n,), generator=generator)
        return self.data[idx] + self.offset + 0.01 * torch.randn(n, self.data.shape[1], generator=generator)


def test_samples_on_the_data_score_high_precision_and_coverage_and_samples_off_it_score_zero() -> None:
    g = torch.Generator().manual_seed(0)
    data = torch.randn(64, 2, generator=g)
    evaluator = SampleEvaluator(SampleEvalConfig(every=1, n=64), TensorItems(data), spatial_dims=0)
    good, bad = evaluator(_Sampler(data, 0.0)), evaluator(_Sampler(data, 20.0))
    assert set(keys.PRDC) <= set(good) and {keys.FID, keys.KID} <= set(good)
    assert good["precision"] > 0.9 and good["coverage"] > 0.5 and good["density"] > 0.5
    assert bad["precision"] == bad["recall"] == bad["density"] == bad["coverage"] == 0.0
    assert bad[keys.FID] > 100 * good[keys.FID]


def test_too_few_samples_for_k_leave_prdc_out() -> None:
    data = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    evaluator = SampleEvaluator(SampleEvalConfig(every=1, n=4), TensorItems(data), spatial_dims=0)
    result = evaluator(_Sampler(data, 0.0))
    assert keys.FID in result and not set(keys.PRDC) & set(result)
    assert math.isfinite(result[keys.FID])
