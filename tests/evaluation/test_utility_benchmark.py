"""The benchmarks' utility cases (synthesis, small data): liver crops that show their class, one held-out set, an honest goal."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _benchmark("synthesis")


@pytest.fixture(scope="module")
def small_data():
    return _benchmark("small_data")


@pytest.fixture(scope="module")
def ceiling():
    return _benchmark("mask_conditioned_ceiling")


def test_liver_crops_are_centred_32x32_and_the_subjects_are_disjoint(bench, tmp_path: Path) -> None:
    real, held = bench.liver_crops(tmp_path, n=3)
    assert real.images.shape[1:] == (1, 32, 32) == held.images.shape[1:]
    assert not set(real.subjects) & set(held.subjects) and all(s.startswith("heldout-") for s in held.subjects)
    assert set(real.labels) == {0, 1, 2}  # 3 phantoms: one per class
    assert float(real.images.min()) >= -1.0 and float(real.images.max()) <= 1.0
    # the centre of a crop is liver (60 HU in -200..300: about -0.04), not air or bone
    centre = real.images[:, 0, 12:20, 12:20].median(dim=-1).values.median(dim=-1).values
    assert torch.all(centre.abs() < 0.4)


def test_utility_case_runs_every_arm_on_one_heldout_set(bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from udl_med.evaluation import utility

    seen: list[tuple[str, ...]] = []
    real_score = utility.score

    def spy_score(model, items):
        seen.append(tuple(items.subjects.tolist()))
        return real_score(model, items)

    monkeypatch.setattr(utility, "score", spy_score)
    rows = bench.utility_case(2, steps=2, per_class=2, classifier_steps=2, workdir=tmp_path, grids=tmp_path / "grids", generators=["lapgan"], n_phantoms=6)
    # per seed: real, real (3x steps), real+synthetic, synthetic; two seeds: one test set for all eight
    assert len(seen) == 8 and len(set(seen)) == 1 and all(s.startswith("heldout-") for s in seen[0])
    by = {(r["case"], r["metric"]): r for r in rows}
    real = by[("2d_liver_crops/utility/real_only", "balanced_accuracy_real")]
    plus = by[("2d_liver_crops/utility/lapgan", "balanced_accuracy_real_plus_synthetic")]
    assert len(real["per_seed"]) == 2 and plus["per_seed_real"] == real["per_seed"]
    assert plus["per_seed_gain"] == pytest.approx([a - b for a, b in zip(plus["per_seed"], real["per_seed"])])
    assert len(by[("2d_liver_crops/utility/real_only_3x_classifier_steps", "balanced_accuracy_real")]["per_seed"]) == 2
    assert ("2d_liver_crops/lapgan", "memorization_rate") in by and ("2d_liver_crops/lapgan", "fid_random") in by
    assert (tmp_path / "grids" / "utility_lapgan_crops.png").is_file()


def test_utility_goal_needs_the_gain_to_beat_the_larger_spread(bench) -> None:
    real = [0.60, 0.65, 0.70]  # std 0.05
    for plus, met in (([0.70, 0.75, 0.80], True), ([0.62, 0.68, 0.73], False), ([0.55, 0.80, 1.0], False)):
        per = {"real": {"balanced_accuracy": real}, "g": {"real_plus_synthetic": plus, "synthetic": [0.5] * 3, "fid_random": [1.0] * 3, "memorization": [0.0] * 3}}
        rows = {r["metric"]: r for r in bench.utility_rows(per, 3, 10, 5, 10) if r["case"] == "2d_liver_crops/utility/g"}
        row = rows["balanced_accuracy_real_plus_synthetic"]
        assert row["meets_goal"] is met, plus
        assert row["ours"] == pytest.approx(np.mean(plus)) and row["peer_std"] == pytest.approx(0.05)
        assert rows["balanced_accuracy_synthetic"]["meets_goal"] is None


def test_utility_rows_report_synthetic_only_beside_real_only_and_judge_only_the_gain(small_data) -> None:
    util = {"real": [0.50, 0.55, 0.60], "cdcgan/ada": [0.62, 0.58, 0.70]}
    alone = {"cdcgan/ada": [0.40, 0.45, 0.35], "cdcgan/ada/large_draw": [0.5, 0.5, 0.6]}
    rows = {(r["case"], r["metric"]): r for r in small_data.utility_rows(util, [0, 1, 2], {}, alone)}
    synthetic = rows[("12_subjects/utility/cdcgan/ada", "balanced_accuracy_synthetic_only")]
    assert synthetic["ours"] == pytest.approx(0.40) and synthetic["worst"] == pytest.approx(0.35)
    assert synthetic["peer_name"] == "real_only" and synthetic["peer"] == pytest.approx(0.55) and synthetic["meets_goal"] is None
    assert rows[("12_subjects/utility/cdcgan/ada/large_draw", "balanced_accuracy_synthetic_only")]["ours"] == pytest.approx(np.mean([0.5, 0.5, 0.6]))
    gain = rows[("12_subjects/utility/cdcgan/ada", "balanced_accuracy_real_plus_synthetic")]
    assert gain["per_seed_gain"] == pytest.approx([0.12, 0.03, 0.10]) and gain["worst_gain"] == pytest.approx(0.03)
    # without synthetic-only values the rows are those of before
    assert not [r for r in small_data.utility_rows(util, [0, 1, 2], {}) if r["metric"] == "balanced_accuracy_synthetic_only"]


def test_the_headroom_row_is_what_more_real_subjects_add_beside_real_only(small_data) -> None:
    util = {"real": [0.50, 0.55, 0.60], "cdcgan/ada": [0.62, 0.58, 0.70]}
    rows = {r["case"]: r for r in small_data.utility_rows(util, [0, 1, 2], {}, headroom=[0.70, 0.60, 0.65])}
    more = rows[f"12_subjects/utility/real_{small_data.HEADROOM_SUBJECTS}_subjects"]
    assert more["metric"] == "balanced_accuracy" and more["peer_name"] == "real_only" and more["meets_goal"] is None
    assert more["per_seed_gain"] == pytest.approx([0.20, 0.05, 0.05]) and more["worst_gain"] == pytest.approx(0.05) and more["gain"] == pytest.approx(0.10)
    assert not [r for r in small_data.utility_rows(util, [0, 1, 2], {}) if "real_24" in r["case"]]  # asked for only


def test_memorisation_of_both_draws_is_judged_against_one_percent_and_reports_its_worst_seed(small_data) -> None:
    per = {
        (6, "cdcgan", "plain"): {"memorization_rate": [0.0, 0.025], "memorization_rate_large": [0.004, 0.026]},
        (6, "cdcgan", "ada"): {"memorization_rate": [0.016, 0.0], "memorization_rate_large": [0.002, 0.005]},
    }
    rows = {(r["case"], r["metric"]): r for r in small_data.rows(per, [0, 1], {})}
    large = rows[("6_subjects/cdcgan/ada", "memorization_rate_large")]
    assert large["goal"] == "<= 1%" and large["meets_goal"] is True and large["worst"] == pytest.approx(0.005)
    assert large["peer_name"] == "plain" and large["ratio"] == pytest.approx(0.015 / 0.0035)  # lower is better: plain / arm
    assert rows[("6_subjects/cdcgan/plain", "memorization_rate_large")]["meets_goal"] is False
    assert rows[("6_subjects/cdcgan/ada", "memorization_rate")]["worst"] == pytest.approx(0.016)


def test_the_leak_probe_keeps_the_crops_and_adds_transformed_copies_of_them(small_data) -> None:
    from udl_med.evaluation.utility import LabeledItems

    images = torch.linspace(-1, 1, 4 * 32 * 32).reshape(4, 1, 32, 32).flip(-1)
    train = LabeledItems(images, np.array([0, 1, 2, 2]), np.array(["a", "b", "c", "c"]))
    state = torch.random.get_rng_state()
    leaked = small_data.leaked(train, 3, 0.5, ("translation", "rotation", "intensity"), seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the draws leave the run's generator alone
    assert leaked.images.shape == (12, 1, 32, 32) and torch.equal(leaked.images[:4], images)
    assert leaked.labels.tolist() == [0, 1, 2, 2] * 3 and leaked.subjects.tolist() == ["a", "b", "c", "c"] * 3
    assert not torch.equal(leaked.images[4:8], images) and not torch.equal(leaked.images[4:8], leaked.images[8:])
    assert float(leaked.images.min()) >= -1.0 and float(leaked.images.max()) <= 1.0
    assert torch.equal(small_data.leaked(train, 3, 0.5, ("translation", "rotation", "intensity"), seed=0).images, leaked.images)
    # every probe arm leaks only anatomy-keeping transforms (no flips, noise or cutout) and samples like its base arm
    for arm, (copies, p, transforms) in small_data.ARM_LEAK.items():
        assert copies > 1 and 0 < p <= 1 and set(transforms) <= {"translation", "scaling", "rotation", "intensity"}
        assert arm in small_data.ARMS and (arm in small_data.ARM_TRAIN) == arm.startswith("ada_ema")


def test_the_shipped_liver_crop_gan_is_the_benchmarks_mode_seeking_arm(small_data) -> None:
    from udl_med import keys
    from udl_med.engine.config import load_config
    from udl_med.methods.base import DataSpec
    from udl_med.methods.gan import GAN
    from tests.methods.test_d_side import HandOpt  # the test kit's, with optimizer(name) for gan

    run = load_config(ROOT / "configs" / "cdcgan2d-liver-crops.yaml")
    arm = {**small_data.GENERATORS["cdcgan"]["model"], **small_data.ARMS["ada_ema_mode_seeking"]}
    for key, value in arm.items():
        assert getattr(run.model, key) == (tuple(value) if isinstance(value, list) else value), key
    assert "ada_ema_mode_seeking" in small_data.DEFAULT_ARMS and run.train.ema_decay == small_data.EMA_DECAY
    assert (run.train.steps, run.train.batch_size, tuple(run.data.size), tuple(run.data.ct_window)) == (1500, 16, (32, 32), (-200.0, 300.0))
    torch.manual_seed(0)
    method = GAN(run.model, DataSpec(spatial_dims=2, in_channels=1, image_size=(32, 32), num_classes=3))
    method.train()
    batch = {keys.IMAGE: torch.rand(4, 1, 32, 32) * 2 - 1, keys.LABEL: torch.tensor([0, 1, 2, 0])}

    logs = method.train_step(batch, HandOpt(method.configure_optimizers()))
    assert all(np.isfinite(float(v)) for v in logs.values()) and keys.ADA_P in logs


@pytest.fixture(scope="module")
def validation_rule():
    return _benchmark("small_data_validation_rule")


def test_validation_rules_decide_on_one_half_and_are_scored_on_the_other(validation_rule) -> None:
    # (half a, half b) balanced accuracies of one seed: real + synthetic beats real on half a only, the crops alone match it on half b only
    seed = {"real": (0.50, 0.60), "plus": (0.55, 0.58), "alone": (0.40, 0.60)}
    gains = validation_rule.split_gains([seed])
    # split 1: validate on a, test on b (gain -0.02); split 2: validate on b, test on a (gain +0.05)
    assert gains["always"] == pytest.approx([-0.02, 0.05])
    assert gains["plus"] == pytest.approx([-0.02, 0.0])  # added after a's +0.05, not after b's -0.02
    assert gains["alone"] == pytest.approx([0.0, 0.05])  # added after b's tie, not after a's 0.40
    rows = {r["case"]: r for r in validation_rule.rule_rows("g/arm", gains, [0])}
    assert rows["12_subjects/utility/g/arm/plus"]["losing_splits"] == 1 and rows["12_subjects/utility/g/arm/plus"]["added"] == 1
    assert rows["12_subjects/utility/g/arm/alone"]["peer"] == pytest.approx(0.015) and rows["12_subjects/utility/g/arm/alone"]["worst"] == 0.0


def test_the_held_out_halves_split_every_class_by_subject(validation_rule) -> None:
    from udl_med.evaluation.utility import LabeledItems

    subjects = np.repeat([f"s{i}" for i in range(12)], 2)
    labels = np.repeat(np.arange(12) % 3, 2)
    items = LabeledItems(torch.zeros(24, 1, 4, 4), labels, subjects)
    a, b = validation_rule.halves(items)
    assert not set(a.subjects) & set(b.subjects) and len(a.labels) == len(b.labels) == 12
    assert np.bincount(a.labels).tolist() == np.bincount(b.labels).tolist() == [4, 4, 4]


def test_the_label_maps_are_cut_where_the_ct_crops_are(bench, ceiling, tmp_path: Path) -> None:
    real, _ = bench.liver_crops(tmp_path, n=3)
    maps = ceiling.tissue_crops(tmp_path)
    ct, labels = real.images, real.labels
    assert maps.shape == ct.shape and maps.dtype == torch.int64
    # each map is its crop's: the CT is at the window's floor where the map says air, about the liver's 60 HU where it says liver
    assert float(ct[maps == 0].max()) < -0.9 and abs(float(ct[maps == ceiling.LIVER].mean()) - 0.04) < 0.1
    lesion = maps == ceiling.LESION
    assert all(bool(lesion[i].any()) == bool(labels[i]) for i in range(len(labels)))  # a lesion crop shows its lesion, a healthy one none
    # the map says what the CT shows: the hyper-dense lesion is brighter than the liver around it
    hyper = int(np.flatnonzero(labels == 2)[0])
    assert ct[hyper][lesion[hyper]].mean() > ct[hyper][maps[hyper] == ceiling.LIVER].mean() + 0.3


def _disc_maps(ceiling) -> tuple[torch.Tensor, np.ndarray]:
    """Three 32 x 32 maps: soft tissue, a liver disc (radius 10), a lesion disc in the second (radius 3) and third (radius 4)."""
    y, x = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    maps = torch.full((3, 1, 32, 32), 2, dtype=torch.int64)  # soft tissue
    maps[:, 0][:, (x - 16) ** 2 + (y - 16) ** 2 <= 100] = ceiling.LIVER
    for i, (r, cx) in ((1, (3, 14)), (2, (4, 18))):
        maps[i, 0][(x - cx) ** 2 + (y - 16) ** 2 <= r * r] = ceiling.LESION
    return maps, np.array([0, 1, 2])


def test_a_transplanted_lesion_lies_wholly_in_the_liver_and_carries_its_sources_class(ceiling) -> None:
    maps, labels = _disc_maps(ceiling)
    edited, edited_labels, targets, sources = ceiling.transplant(maps, labels, 30, np.random.default_rng(0))
    assert edited_labels.tolist() == [0, 1, 2] * 10 and edited.shape == (30, 1, 32, 32)
    liver = (maps == ceiling.LIVER) | (maps == ceiling.LESION)
    for m, label, target, source in zip(edited, edited_labels, targets, sources):
        lesion = m == ceiling.LESION
        assert torch.equal(lesion | (m == ceiling.LIVER), liver[target])  # only the liver changes
        if label == 0:
            assert not lesion.any() and source == -1
        else:
            assert labels[source] == label and int(lesion.sum()) == int((maps[source] == ceiling.LESION).sum())  # the whole lesion, moved
    moved = [bool(torch.equal(m == ceiling.LESION, maps[s] == ceiling.LESION)) for m, s in zip(edited, sources) if s >= 0]
    assert not all(moved)  # lesions land somewhere new
    with pytest.raises(ValueError, match="every lesion class"):
        ceiling.transplant(maps[:2], labels[:2], 3, np.random.default_rng(0))


def test_the_rendered_crop_gives_each_tissue_its_targets_mean_and_the_lesion_its_sources(ceiling) -> None:
    maps, labels = _disc_maps(ceiling)
    ct = torch.where(maps == ceiling.LIVER, 0.1, -0.2).float()
    ct[2][maps[2] == ceiling.LESION] = 0.8  # the hyper-dense source lesion
    edited, _, targets, sources = ceiling.transplant(maps, labels, 3, np.random.default_rng(1))
    rendered = ceiling.render(edited, maps, ct, targets, sources, np.random.default_rng(1))
    assert rendered.shape == (3, 1, 32, 32) and float(rendered.abs().max()) <= 1.0
    inner = -torch.nn.functional.max_pool2d(-(edited == ceiling.LIVER).float(), 3, 1, 1) == 1  # liver pixels whose neighbours are liver (no blur across an edge)
    assert abs(float(rendered[inner].mean()) - 0.1) < 0.02
    lesion = edited[2] == ceiling.LESION
    assert float(rendered[2][lesion].mean()) > 0.5  # the source's value, blurred at the rim


@pytest.fixture(scope="module")
def utility_runs():
    return _benchmark("small_data_utility_runs")


def test_classifier_runs_start_at_the_seed_itself(utility_runs) -> None:
    assert utility_runs.classifier_seeds(7, 1) == (7,)  # one run: the other benchmarks' single-run reading
    assert utility_runs.classifier_seeds(7, 3) == (7, 1007, 2007)
    with pytest.raises(ValueError, match="runs"):
        utility_runs.classifier_seeds(7, 0)


def test_each_seeds_utility_is_the_mean_of_its_classifier_runs(utility_runs, tmp_path: Path) -> None:
    from udl_med.evaluation.utility import utility_tensors

    rows = {r["case"]: r for r in utility_runs.run([3], runs=2, classifier_steps=3, arms=["ada_ema", "ada_ema_mode_seeking"], gan_crops=6, rendered=6, workdir=tmp_path, steps=2)}
    assert set(rows) == {"12_subjects/utility/real_only", "12_subjects/utility/real_24_subjects",
                         "12_subjects/utility/cdcgan/ada_ema/large_draw", "12_subjects/utility/cdcgan/ada_ema_mode_seeking/large_draw",
                         "12_subjects/utility/mask_conditioned_ceiling/6_crops"}
    for row in rows.values():
        (runs,) = row["per_seed_runs"]
        assert len(runs) == 2 and row["per_seed"] == pytest.approx([np.mean(runs)]) and row["classifier_runs"] == 2
    # the real arm's runs are the single-run readings of classifier seeds 3 and 1003
    real, _, held = utility_runs.training_crops_and_maps(tmp_path / "crops")
    budget = utility_runs.utility_classifier(3, utility_runs.CLASSIFIER_AUGMENT)
    single = [utility_tensors(real, real, held, seeds=(s,), per_class_subjects=None, budget=budget, arms=("real",))["real/balanced_accuracy"] for s in (3, 1003)]
    assert rows["12_subjects/utility/real_only"]["per_seed_runs"] == [pytest.approx(single)]
    plus = rows["12_subjects/utility/mask_conditioned_ceiling/6_crops"]
    assert plus["per_seed_gain"] == pytest.approx([plus["per_seed"][0] - rows["12_subjects/utility/real_only"]["per_seed"][0]])


def test_merged_rows_are_the_rows_of_all_their_seeds(utility_runs, tmp_path: Path) -> None:
    setting = {"classifier_runs": 2, "classifier_steps": 9, "classifier_augment": ["flip"], "gan_crops": 6, "rendered_crops": 6}
    per_run = {"real": [[0.5, 0.6], [0.7, 0.7], [0.6, 0.5]], "cdcgan/ada_ema/large_draw": [[0.6, 0.8], [0.6, 0.7], [0.9, 0.8]], "headroom": [[0.8, 0.8], [0.9, 0.7], [0.7, 0.8]]}
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path, seeds, part in ((first, [0, 1], slice(0, 2)), (second, [2], slice(2, 3))):
        path.write_text("".join(json.dumps(row) + "\n" for row in utility_runs.rows_of({k: v[part] for k, v in per_run.items()}, seeds, setting)))
    rows = {r["case"]: r for r in utility_runs.merged([first, second])}
    assert rows == {r["case"]: r for r in utility_runs.rows_of(per_run, [0, 1, 2], setting)}
    gan = rows["12_subjects/utility/cdcgan/ada_ema/large_draw"]
    assert gan["per_seed_gain"] == pytest.approx([0.15, -0.05, 0.3]) and gan["worst_gain"] == pytest.approx(-0.05) and gan["seeds"] == [0, 1, 2]
    assert rows[f"12_subjects/utility/real_{utility_runs.HEADROOM_SUBJECTS}_subjects"]["per_seed_runs"] == per_run["headroom"]
    second.write_text("".join(json.dumps({**row, "classifier_steps": 10}) + "\n" for row in utility_runs.rows_of({k: v[2:] for k, v in per_run.items()}, [2], setting)))
    with pytest.raises(ValueError, match="another setting"):
        utility_runs.merged([first, second])
