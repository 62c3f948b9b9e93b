"""In-memory data: CT/MR items paired and unpaired, their data spec, and fit_in_memory's engine run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from udl_med import keys
from udl_med.data.memory import TensorItems, TranslationItems, memory_data_spec
from udl_med.engine.fit import fit_in_memory


def _sides(n: int, spatial: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    ct = torch.arange(n, dtype=torch.float32).view(n, 1, *[1] * len(spatial)).expand(n, 1, *spatial).clone()
    return ct, -ct - 1  # MR item j holds -(j + 1): which item a batch drew is readable


@pytest.mark.parametrize("spatial", [(4, 4), (2, 2, 2)])
def test_paired_items_keep_the_pairs(spatial: tuple[int, ...]) -> None:
    ct, mr = _sides(5, spatial)
    data = TranslationItems(ct, mr, paired=True)
    assert len(data) == 5
    batch = data.batch([3, 0])
    assert batch[keys.CT][:, 0].flatten(1)[:, 0].tolist() == [3.0, 0.0]
    assert batch[keys.MR][:, 0].flatten(1)[:, 0].tolist() == [-4.0, -1.0]
    assert torch.equal(data[3][keys.MR], batch[keys.MR][0])
    spec = memory_data_spec(data)
    assert (spec.spatial_dims, spec.in_channels, spec.image_size) == (len(spatial), 1, spatial)


def test_unpaired_items_are_every_combination_once() -> None:
    ct, mr = _sides(3, (4, 4))
    data = TranslationItems(ct, mr[:2], paired=False)
    assert len(data) == 6
    batch = data.batch(list(range(6)))
    pairs = {(int(c), int(m)) for c, m in zip(batch[keys.CT][:, 0, 0, 0], batch[keys.MR][:, 0, 0, 0])}
    assert pairs == {(i, -(j + 1)) for i in range(3) for j in range(2)}
    assert torch.equal(data[5][keys.CT], batch[keys.CT][5]) and torch.equal(data[5][keys.MR], batch[keys.MR][5])


def test_translation_items_check_their_sides() -> None:
    ct, mr = _sides(3, (4, 4))
    with pytest.raises(ValueError, match="paired"):
        TranslationItems(ct, mr[:2], paired=True)
    with pytest.raises(ValueError, match="one shape"):
        TranslationItems(ct, torch.zeros(3, 1, 4, 5))


def test_fit_in_memory_trains_without_mlflow_and_resumes(tmp_path: Path) -> None:
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    model = {"architecture": "linear", "latent_dim": 2, "lr": 1e-2}
    straight = fit_in_memory("autoencoder", model, TensorItems(images), steps=4, batch_size=4, seed=3)
    assert len(straight.history) == 4 and keys.LOSS in straight.history[0] and not straight.method.training
    assert straight.report["steps"] == 4 and not Path(straight.report["run_dir"]).exists()  # a temporary run folder
    fit_in_memory("autoencoder", model, TensorItems(images), steps=2, batch_size=4, seed=3, output_dir=tmp_path / "run")
    resumed = fit_in_memory("autoencoder", model, TensorItems(images), steps=4, batch_size=4, seed=3, output_dir=tmp_path / "run", resume=True)
    assert resumed.losses() == straight.losses()[2:]
    for k, v in straight.method.state_dict().items():
        torch.testing.assert_close(resumed.method.state_dict()[k], v, rtol=0, atol=0)
    assert not (tmp_path / "mlruns").exists()
    with pytest.raises(ValueError, match="output_dir"):
        fit_in_memory("autoencoder", model, TensorItems(images), steps=4, batch_size=4, resume=True)
