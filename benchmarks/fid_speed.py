"""Fréchet distance at d = 2048: udl-med against MONAI, torchmetrics, torch-fidelity and pytorch-fid's formula.

Same features for everyone, in one process, each peer run once (the peers take tens of
seconds each at d = 2048) right after ours is timed again, so each row is a pair
measured back to back (on a shared machine the load drifts over the minutes the peers
take). Timed: features (float32, as networks give them) to
the distance, covariances included. Peers:

- ``monai.metrics.FIDMetric`` (torch covariances, ``scipy.linalg.sqrtm`` of the product);
- pytorch-fid's ``calculate_frechet_distance`` formula, reproduced here because
  pytorch-fid needs torchvision, which this CPU environment lacks: ``np.cov`` statistics,
  ``scipy.linalg.sqrtm(sigma1 @ sigma2)``, an ``eps * I`` retry when that is not finite,
  and the real part of the result;
- torchmetrics' own ``_compute_fid`` (``torch.linalg.eigvals`` of the product, the
  square roots' real parts summed) on float64 statistics computed the way its
  ``FrechetInceptionDistance.compute`` does (feature sums and outer-product sums);
- torch-fidelity's own ``fid_features_to_statistics`` (``np.mean``/``np.cov``) and
  ``fid_statistics_to_metric`` (``np.linalg.eigvals`` of the product).

torchmetrics and torch-fidelity are the ``bench`` extra (``pip install -e '.[bench]'``;
on a CPU-only torch add ``--no-deps``: torch-fidelity requires torchvision, and the
torchvision wheels on PyPI are built for CUDA torch). Both import torchvision when
their packages are imported, so without it the benchmark runs *their* functions from
the installed files: the function's source is read from the installed package and
executed unchanged (``peer_function``); each row says which (``peer_loaded``).

Goals: at least 100x faster than each peer at N = 500 and 3x at N = 5000, with a
relative difference under 1e-6. Prints one JSON object per line; ``ratio`` is
peer time / our time (higher is better for us) and ``rel_diff`` is |ours - peer| / |peer|.

Run: ``.venv/bin/python benchmarks/fid_speed.py`` (about 5-10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from udl_med.metrics.frechet import frechet_distance_features

D = 2048
GOALS = {500: 100.0, 5000: 3.0}
MAX_REL_DIFF = 1e-6


def make_features(n: int, d: int, seed: int, shift: float) -> np.ndarray:
    """Inception-like features: non-negative, correlated (rank-256 structure plus noise)."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(1234).standard_normal((256, d)) / 16.0
    z = rng.standard_normal((n, 256)) @ mixing + 0.3 * rng.standard_normal((n, d)) + shift
    return np.maximum(z, 0.0).astype(np.float32)


def pytorch_fid_formula(act1: np.ndarray, act2: np.ndarray, eps: float = 1e-6) -> float:
    """pytorch-fid: statistics with np.mean/np.cov, then the sqrtm-based Fréchet distance."""
    mu1, sigma1 = np.mean(act1, axis=0), np.cov(act1, rowvar=False)
    mu2, sigma2 = np.mean(act2, axis=0), np.cov(act2, rowvar=False)
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def monai_fid(act1: np.ndarray, act2: np.ndarray) -> float:
    from monai.metrics import FIDMetric

    return float(FIDMetric()(torch.from_numpy(act2), torch.from_numpy(act1)))


def peer_function(package: str, module: str, names: tuple[str, ...]) -> tuple[dict[str, Callable], str]:
    """The functions ``names`` of ``package.module``: imported, or, when the package cannot be
    imported (torchvision missing), compiled from the installed file's own source.

    Returns the functions by name and how they were loaded (``import`` or ``installed source``).
    """
    import ast
    import importlib
    import importlib.util

    try:
        mod = importlib.import_module(f"{package}.{module}")
        return {n: getattr(mod, n) for n in names}, "import"
    except ImportError:
        pass
    spec = importlib.util.find_spec(package)  # finds the installed package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{package} is not installed (pip install -e '.[bench]')")
    path = Path(list(spec.submodule_search_locations)[0]) / f"{module.replace('.', '/')}.py"
    tree = ast.parse(path.read_text())
    chosen = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    if len(chosen) != len(names):
        raise ImportError(f"{path} has no {names}")
    namespace: dict = {"np": np, "torch": torch, "Tensor": torch.Tensor}
    exec(compile(ast.Module(body=chosen, type_ignores=[]), str(path), "exec"), namespace)  # their code, unchanged
    return {n: namespace[n] for n in names}, "installed source"


def torchmetrics_fid(act1: np.ndarray, act2: np.ndarray) -> float:
    """torchmetrics: float64 sums of features and outer products, then its ``_compute_fid``."""
    (fns, _) = peer_function("torchmetrics", "image.fid", ("_compute_fid",))

    def stats(act: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.from_numpy(act).double()
        n = f.shape[0]
        total, outer = f.sum(dim=0), f.t().mm(f)  # what update() accumulates
        mean = (total / n).unsqueeze(0)
        cov = (outer - n * mean.t().mm(mean)) / (n - 1)  # what compute() does
        return mean.squeeze(0), cov

    mu1, s1 = stats(act1)
    mu2, s2 = stats(act2)
    return float(fns["_compute_fid"](mu1, s1, mu2, s2))


def torch_fidelity_fid(act1: np.ndarray, act2: np.ndarray) -> float:
    """torch-fidelity: its ``fid_features_to_statistics`` and ``fid_statistics_to_metric``."""
    fns, _ = peer_function("torch_fidelity", "metric_fid", ("fid_features_to_statistics", "fid_statistics_to_metric"))
    fns["fid_statistics_to_metric"].__globals__.setdefault("KEY_METRIC_FID", "frechet_inception_distance")
    fns["fid_statistics_to_metric"].__globals__.setdefault("vprint", lambda verbose, *a: None)
    s1 = fns["fid_features_to_statistics"](torch.from_numpy(act1))
    s2 = fns["fid_features_to_statistics"](torch.from_numpy(act2))
    return float(next(iter(fns["fid_statistics_to_metric"](s1, s2, False).values())))


def loaded_how(package: str, module: str, name: str) -> str:
    try:
        return peer_function(package, module, (name,))[1]
    except ImportError as err:
        return f"missing: {err}"


PEERS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], Callable[[], str]]] = {
    "monai.metrics.FIDMetric": (monai_fid, lambda: "import"),
    "pytorch-fid formula (reproduced)": (pytorch_fid_formula, lambda: "reproduced"),
    "torchmetrics _compute_fid": (torchmetrics_fid, lambda: loaded_how("torchmetrics", "image.fid", "_compute_fid")),
    "torch-fidelity fid_statistics_to_metric": (torch_fidelity_fid, lambda: loaded_how("torch_fidelity", "metric_fid", "fid_statistics_to_metric")),
}


def timed(fn: Callable[[], float]) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def run(sizes: list[int]) -> list[dict]:
    warnings.filterwarnings("ignore")
    small = make_features(40, 64, 0, 0.0), make_features(40, 64, 1, 0.05)  # warm up BLAS/LAPACK threads for all
    frechet_distance_features(*small)
    available = {}
    for name, (fn, how) in PEERS.items():
        try:
            fn(*small)
            available[name] = (fn, how())
        except ImportError as err:
            print(json.dumps({"benchmark": "fid_speed", "peer_name": name, "error": str(err)}), flush=True)
    rows = []
    for n in sizes:
        real, fake = make_features(n, D, seed=10 + n, shift=0.0), make_features(n, D, seed=20 + n, shift=0.05)
        for peer_name, (peer_fn, how) in available.items():
            ours, t_ours = timed(lambda: frechet_distance_features(real, fake))  # ours right before each peer: a pair
            try:
                peer, t_peer = timed(lambda: peer_fn(real, fake))
            except ValueError as err:  # a peer that fails on this case (e.g. an imaginary sqrtm)
                peer, t_peer = float("nan"), float("nan")
                print(json.dumps({"benchmark": "fid_speed", "case": f"d={D},N={n}", "peer_name": peer_name, "error": str(err)}))
            rel_diff = abs(ours - peer) / abs(peer)
            ratio = t_peer / t_ours
            goal = GOALS.get(n, 1.0)
            row = {
                "benchmark": "fid_speed",
                "case": f"d={D},N={n}",
                "metric": "seconds (features to distance)",
                "ours": round(t_ours, 4),
                "peer_name": peer_name,
                "peer": round(t_peer, 4),
                "ratio": round(ratio, 2),
                "goal": f">= {goal:g}x faster, rel_diff < {MAX_REL_DIFF:g}",
                "meets_goal": bool(ratio >= goal and rel_diff < MAX_REL_DIFF),
                "fid_ours": ours,
                "fid_peer": peer,
                "rel_diff": rel_diff,
                "peer_loaded": how,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,5000", help="comma-separated sample counts N")
    args = parser.parse_args()
    run([int(s) for s in args.sizes.split(",")])


if __name__ == "__main__":
    main()
