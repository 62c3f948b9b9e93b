"""Memorisation: planted near-copies among new scans of unseen subjects, and PRDC against ``prdc``.

Phantom subjects (``udl_med.data.phantoms.make_phantom``, CT, normalised to [-1, 1]) in
three disjoint groups per draw: 24 training subjects, 149 calibration subjects (1% needs
at least 99) and 100 new subjects. 2D: 4 slices through the liver per subject (64 x 64);
3D: one 32 x 32 x 16 patch per subject. The planted copies are training scans changed the
way a memorising generator or a leaked augmentation changes them, 8 per kind per draw:
exact; a flip along each axis and along all axes; translations of 1-4 pixels (2D) or 1-2
voxels (3D) in a random direction (the background fills in); rotations of 2-10 degrees
(3D: about a random axis; scipy.ndimage.rotate in voxel space, not the detector's own
rotation code); an intensity affine change (x 1.03 + 10 HU); Gaussian noise of
1% of the range. The check: the near-copy distance (``udl_med.metrics.nearcopy``) to
the training scans, thresholded by the per-subject split-conformal calibration
(``udl_med.metrics.calibration``) at the default rate of 1%. 5 draws of subjects (0-4;
the detector's settings were chosen on draws 100 and 101, the 3D blur on 100-104 and checked on
100-109; tuning draws are never reported).

Rows:

- ``detection/<kind>``: share of planted copies flagged (goal: 1.0 for exact, flips,
  noise, affine; 0.95 for shifts and rotations).
- ``false_alarm``: share of new subjects with a flagged scan, pooled over the draws, with
  its Clopper-Pearson interval, against the stated (calibrated) rate and its Beta
  interval (goal: measured rate inside the stated rate's interval and at most 2%); the
  per-scan rate beside it.
- ``mifid``: torchmetrics' MiFID on the same scans (features of the ``random`` extractor):
  the training set against the new scans alone, and against the new scans with the
  planted copies. A set-level score: it cannot name a copy.
- ``prdc``: our precision/recall/density/coverage against ``prdc.compute_prdc`` on the same
  float32 features at N = M = 5,000, d = 2,048 (goal: max difference under 1e-6, at least 5x
  faster), in the main process with its default threads once the draws are done; ours is
  timed once before and once after the reference and the mean is compared.
- ``whole run``: wall and CPU seconds (this process and its workers: ``resource.getrusage``)
  and the load average at the end.

The draws run in ``--workers`` (default 2) single-threaded processes, one (case, draw) at a
time each: the near-copy search is many small FFTs and grid samples, which gain little from
a second thread, and idle OpenMP threads spin and burn the other core on a loaded machine.
Tuning draws: ``--first-draw 100``.

Run: ``.venv/bin/python benchmarks/memorization.py`` (``--quick`` for 1 draw and a smaller PRDC case).
Needs the ``bench`` extra (torchmetrics) and ``prdc`` (the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import time
from collections import defaultdict

import numpy as np
import torch

from udl_med.data.phantoms import make_phantom
from udl_med.metrics.calibration import DEFAULT_RATE, calibrate, clopper_pearson, subject_scores
from udl_med.metrics.nearcopy import near_copy_distance

N_TRAIN, N_CALIB, N_NEW, PER_KIND = 24, 149, 100, 8
SLICES = (6, 7, 8, 9)
EXACT_KINDS = ("exact", "flip", "noise", "affine")


def _subject(draw: int, subject: int, dims: int) -> torch.Tensor:
    """2D: (4, 64, 64) slices; 3D: (1, 32, 32, 16) patch, CT in [-1, 1]."""
    rng = np.random.default_rng((draw, subject, 21))
    shape = (64, 64, 16) if dims == 2 else (48, 48, 16)
    ct = torch.from_numpy(make_phantom(shape, int(rng.integers(0, 3)), rng).ct) / 1000.0
    if dims == 2:
        return ct[:, :, list(SLICES)].permute(2, 0, 1).contiguous()
    return ct[8:40, 8:40, :][None].contiguous()


def _group(draw: int, first: int, n: int, dims: int) -> tuple[torch.Tensor, list[int]]:
    scans = [_subject(draw, s, dims) for s in range(first, first + n)]
    return torch.cat(scans), [s for s, x in zip(range(first, first + n), scans) for _ in range(len(x))]


def _rotate(x: torch.Tensor, degrees: float, axis: int) -> torch.Tensor:
    """Rotate in voxel space about the centre (scipy, linear, edge values fill in): not the detector's own code."""
    from scipy.ndimage import rotate

    axes = (0, 1) if x.ndim == 2 else tuple(a for a in range(3) if a != axis)
    return torch.from_numpy(rotate(x.numpy(), degrees, axes=axes, reshape=False, order=1, mode="nearest")).to(x.dtype)


def _translate(x: torch.Tensor, shift: list[int]) -> torch.Tensor:
    out = torch.full_like(x, float(x.min()))
    src = tuple(slice(max(0, -s), x.shape[a] - max(0, s)) for a, s in enumerate(shift))
    dst = tuple(slice(max(0, s), x.shape[a] - max(0, -s)) for a, s in enumerate(shift))
    out[dst] = x[src]
    return out


def plant(train: torch.Tensor, dims: int, rng: np.random.Generator) -> tuple[torch.Tensor, list[str], list[int]]:
    """Near-copies of random training scans: (images, kind per image, source index per image)."""
    max_shift = 4 if dims == 2 else 2
    makers = {"exact": lambda x: x, "affine": lambda x: 1.03 * x + 0.01}
    makers["noise"] = lambda x: x + torch.from_numpy(rng.normal(0.0, 0.02, x.shape)).float()
    for a in range(dims):
        makers[f"flip axis {a}"] = lambda x, a=a: x.flip(a)
    makers["flip all axes"] = lambda x: x.flip(list(range(dims)))
    for s in range(1, max_shift + 1):
        makers[f"shift {s}"] = lambda x, s=s: _translate(x, [int(v) for v in rng.choice([-s, s], dims)])
    for deg in (2, 4, 6, 8, 10):
        makers[f"rotate {deg}"] = lambda x, deg=deg: _rotate(x, float(deg * rng.choice([-1, 1])), int(rng.integers(0, 3)))
    images, kinds, sources = [], [], []
    for kind, make in makers.items():
        for i in rng.choice(len(train), PER_KIND, replace=False):
            images.append(make(train[int(i)]))
            kinds.append(kind)
            sources.append(int(i))
    return torch.stack(images), kinds, sources


def _torchmetrics_mifid() -> type:
    """torchmetrics' MiFID class. torch-fidelity is installed without torchvision (pyproject: the
    ``bench`` extra with ``--no-deps`` on a CPU torch), and torchmetrics imports its Inception
    loader when it loads; with a feature network of our own that loader is never used, so when
    torch-fidelity cannot import, those three names are stubbed (the MiFID code is torchmetrics')."""
    import sys
    import types

    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        names = {"feature_extractor_inceptionv3": {"FeatureExtractorInceptionV3": torch.nn.Module},
                 "helpers": {"vassert": None}, "interpolate_compat_tensorflow": {"interpolate_bilinear_2d_like_tensorflow1x": None}}
        sys.modules["torch_fidelity"] = types.ModuleType("torch_fidelity")
        for sub, attrs in names.items():
            module = types.ModuleType(f"torch_fidelity.{sub}")
            module.__dict__.update(attrs)
            sys.modules[module.__name__] = module
    from torchmetrics.image.mifid import MemorizationInformedFrechetInceptionDistance

    return MemorizationInformedFrechetInceptionDistance


def _mifid(train: torch.Tensor, new: torch.Tensor, copies: torch.Tensor, dims: int) -> tuple[float, float]:
    """MiFID of the training scans against the new scans alone, then against the new scans and the copies.

    One metric object: the training and new scans go through the extractor once, the
    copies are added to the generated side after the first ``compute``.
    """
    MemorizationInformedFrechetInceptionDistance = _torchmetrics_mifid()

    from udl_med.metrics.extractors import build_extractor

    net = build_extractor("random", dims)
    metric = MemorizationInformedFrechetInceptionDistance(feature=net)
    with torch.no_grad():
        for x, real in ((train, True), (new, False)):
            for b in x[:, None].split(64):
                metric.update(b, real=real)
        clean = float(metric.compute())
        for b in copies[:, None].split(64):
            metric.update(b, real=False)
        with_copies = float(metric.compute())
    return clean, with_copies


def _single_thread() -> None:
    """Worker start: one intra-op thread each, so that the workers, not OpenMP threads, share the cores
    (small FFTs and grid samples scale badly across threads, and idle OpenMP threads spin on a loaded machine)."""
    torch.set_num_threads(1)


def one_draw(dims: int, draw: int, mifid: bool) -> dict:
    """Calibrate on one draw's calibration subjects, then score its new subjects and its planted copies."""
    c0 = time.process_time()
    train, _ = _group(draw, 0, N_TRAIN, dims)
    calib, calib_ids = _group(draw, 1000, N_CALIB, dims)
    new, new_ids = _group(draw, 2000, N_NEW, dims)
    copies, kinds, _ = plant(train, dims, np.random.default_rng((draw, dims)))
    cal = calibrate(subject_scores(near_copy_distance(calib, train).distance, calib_ids)[1], DEFAULT_RATE)
    d_new = near_copy_distance(new, train).distance.numpy()
    _, subject_min = subject_scores(d_new, new_ids)
    hits = cal.flag(near_copy_distance(copies, train).distance.numpy())
    out = {"dims": dims, "draw": draw, "kinds": kinds, "hits": [bool(h) for h in hits],
           "stated": cal.calibrated_rate, "interval": list(cal.interval),
           "subject_alarms": int(cal.flag(subject_min).sum()), "subjects": len(subject_min),
           "scan_alarms": int(cal.flag(d_new).sum()), "scans": len(d_new), "mifid": None}
    if mifid:
        out["mifid"] = (*_mifid(train, new, copies, dims), float(hits.mean()))
    out["cpu_seconds"] = time.process_time() - c0
    return out


def run_draws(jobs: list[tuple[int, int, bool]], workers: int) -> list[dict]:
    """``one_draw`` for every ``(dims, draw, mifid)``: in ``workers`` single-threaded processes (1: here)."""
    if workers <= 1:
        return [one_draw(*job) for job in jobs]
    from concurrent.futures import ProcessPoolExecutor  # lazy: only with workers
    from multiprocessing import get_context  # lazy: only with workers

    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_single_thread) as pool:
        return list(pool.map(one_draw, *zip(*jobs)))


def memorisation_rows(dims: int, results: list[dict], seconds: float) -> list[dict]:
    """Rows of one case (2D or 3D) from its draws' results, in draw order."""
    results = sorted((r for r in results if r["dims"] == dims), key=lambda r: r["draw"])
    detected: dict[str, list[bool]] = defaultdict(list)
    per_draw: dict[str, list[float]] = defaultdict(list)  # detection rate of every draw: the worst is reported
    for r in results:
        for kind, flagged in zip(r["kinds"], r["hits"]):
            detected[kind].append(flagged)
        for kind in dict.fromkeys(r["kinds"]):
            per_draw[kind].append(float(np.mean([h for k, h in zip(r["kinds"], r["hits"]) if k == kind])))
    new_subject_alarms = sum(r["subject_alarms"] for r in results)
    new_subjects = sum(r["subjects"] for r in results)
    alarm_rates = [r["subject_alarms"] / r["subjects"] for r in results]
    case = f"{dims}D"
    rows = []
    for kind, hits in detected.items():
        rate = float(np.mean(hits))
        goal = 1.0 if kind.split()[0] in EXACT_KINDS else 0.95
        rows.append({"benchmark": "memorization", "case": case, "metric": f"detection/{kind}", "ours": rate, "n": len(hits), "worst_draw": min(per_draw[kind]),
                     "peer_name": None, "peer": None, "ratio": None, "goal": goal, "meets_goal": rate >= goal})
    measured = new_subject_alarms / new_subjects
    low, high = clopper_pearson(new_subject_alarms, new_subjects)
    stated_rate = float(np.mean([r["stated"] for r in results]))
    stated_low, stated_high = float(np.mean([r["interval"][0] for r in results])), float(np.mean([r["interval"][1] for r in results]))
    rows.append({"benchmark": "memorization", "case": case, "metric": "false_alarm/new_subjects", "ours": measured,
                 "interval": [low, high], "worst_draw": max(alarm_rates), "per_draw": alarm_rates,
                 "per_scan": sum(r["scan_alarms"] for r in results) / sum(r["scans"] for r in results), "n_subjects": new_subjects,
                 "stated_rate": stated_rate, "stated_interval": [stated_low, stated_high], "requested_rate": DEFAULT_RATE,
                 "n_calibration_subjects": N_CALIB, "peer_name": None, "peer": None, "ratio": None,
                 "goal": "inside the stated interval and <= 0.02",
                 "meets_goal": bool(stated_low <= measured <= stated_high and measured <= 0.02)})
    clean, with_copies, share = results[0]["mifid"] or (None, None, None)
    rows.append({"benchmark": "memorization", "case": case, "metric": "mifid", "ours": share,
                 "ours_is": f"share of the planted copies flagged (draw {results[0]['draw']})", "peer_name": "torchmetrics MiFID (random extractor)",
                 "peer": with_copies, "peer_new_scans_only": clean, "ratio": None, "goal": None, "meets_goal": None})
    rows.append({"benchmark": "memorization", "case": case, "metric": "seconds", "ours": None, "wall_seconds_all_cases": seconds,
                 "cpu_seconds": sum(r["cpu_seconds"] for r in results), "draws": [r["draw"] for r in results], "threads_per_worker": 1,
                 "peer_name": None, "peer": None, "ratio": None, "goal": None, "meets_goal": None})
    return rows


def prdc_row(n: int, d: int) -> dict:
    from prdc import compute_prdc

    from udl_med.metrics.prdc import prdc

    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((256, d)) / 16.0
    x = np.maximum(rng.standard_normal((n, 256)) @ mixing + 0.3 * rng.standard_normal((n, d)), 0).astype(np.float32)
    y = np.maximum(rng.standard_normal((n, 256)) @ mixing + 0.3 * rng.standard_normal((n, d)) + 0.05, 0).astype(np.float32)

    def ours_timed() -> tuple[float, object]:
        t0 = time.perf_counter()
        value = prdc(x, y, 5, 5)
        return time.perf_counter() - t0, value

    t_before, ours = ours_timed()  # ours once before and once after the reference, same process: the mean
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        ref = compute_prdc(x, y, 5)
    t_peer = time.perf_counter() - t0
    t_after, _ = ours_timed()
    t_ours = (t_before + t_after) / 2
    diff = max(abs(getattr(ours, k) - float(ref[k])) for k in ref)
    return {"benchmark": "memorization", "case": f"prdc N=M={n},d={d},k=5", "metric": "seconds", "ours": t_ours, "ours_runs": [t_before, t_after],
            "peer_name": "prdc.compute_prdc", "peer": t_peer, "ratio": t_peer / t_ours, "max_abs_diff": diff,
            "values": {"ours": ours.__dict__, "peer": {k: float(v) for k, v in ref.items()}},
            "goal": 5.0, "meets_goal": bool(t_peer / t_ours >= 5.0 and diff < 1e-6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 draw, PRDC at N = 1,000")
    parser.add_argument("--draws", type=int, default=None, help="draws of subjects (default 5; 1 with --quick)")
    parser.add_argument("--first-draw", type=int, default=0, help="first draw (tuning: 100 and up; reported: 0)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    parser.add_argument("--skip-prdc", action="store_true")
    parser.add_argument("--skip-mifid", action="store_true")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="single-threaded processes for the draws (default: 2, or the cores if fewer)")
    args = parser.parse_args()
    draws = args.draws or (1 if args.quick else 5)
    if draws < 1:
        parser.exit(2, "memorization.py: --draws must be at least 1\n")
    t0, c0 = time.perf_counter(), time.process_time()
    if not args.skip_mifid:
        _torchmetrics_mifid()  # the peer must import before the minutes of work
    jobs = [(dims, draw, draw == args.first_draw and not args.skip_mifid)
            for dims in sorted(args.dims, reverse=True) for draw in range(args.first_draw, args.first_draw + draws)]  # 3D (longest) first
    t1 = time.perf_counter()
    results = run_draws(jobs, args.workers)
    seconds = time.perf_counter() - t1
    for dims in args.dims:
        for row in memorisation_rows(dims, results, seconds):
            print(json.dumps(row), flush=True)
    if not args.skip_prdc:
        print(json.dumps(prdc_row(1000 if args.quick else 5000, 2048)), flush=True)
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"benchmark": "memorization", "case": "whole run", "metric": "seconds", "ours": time.perf_counter() - t0,
                      "cpu_seconds": own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime,
                      "cpu_seconds_main": time.process_time() - c0, "cpu_seconds_workers": workers.ru_utime + workers.ru_stime,
                      "load_average": list(os.getloadavg()), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
                      "peer_name": None, "peer": None, "ratio": None, "goal": "< 600 s on 2 cores", "meets_goal": None}), flush=True)


if __name__ == "__main__":
    main()
