"""Fréchet distance at d = 2048: udl-med against its compute bound, MONAI, torchmetrics, torch-fidelity and pytorch-fid's formula.

The bound (``bound_fid``, ten lines) is the least an exact FID needs: float64 moments,
then for N > d two centred covariance GEMMs, one Cholesky, ``L^T S2 L`` and one symmetric
eigenvalue solve; for N <= d (singular covariances) the N x N Gram of the centred rows and
one eigenvalue solve. It has no checks and no fallback. It is timed interleaved with ours
(ABBA rounds, the fastest of each side kept: on a shared machine load only adds time);
each peer is timed right after ours, as a pair (at N = 500 the fastest of three pairs);
goal: ours at most 1.2x the bound at every N (500, 5,000, 50,000). At N = 50,000 ours is
the streamed computation (``StreamingStats`` in chunks of 2,048 rows, moments only, then
``frechet_stats``), which never holds the features; the bound holds them all. Peak memory
rows: each side in a fresh process fed the same feature chunks as they are generated,
peak resident memory above the process's memory before the first chunk.

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

Goals against the peers: at least 100x faster than each peer at N = 500 and 3x at
N = 5000, with a relative difference under 1e-6. Prints one JSON object per line; ``ratio`` is
peer time / our time (higher is better for us) and ``rel_diff`` is |ours - peer| / |peer|.

Run: ``.venv/bin/python benchmarks/fid_speed.py`` (about 20 minutes on 2 cores; ``--peers``
picks peers, ``--peer-sizes`` the N they run at: MONAI and pytorch-fid's formula take
minutes each at d = 2048 and run at N = 500 only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from udl_med.metrics.frechet import frechet_distance_features
from udl_med.metrics.statistics import FeatureStats, StreamingStats, frechet_stats

D = 2048
GOALS = {500: 100.0, 5000: 3.0}
MAX_REL_DIFF = 1e-6
MAX_OVER_BOUND = 1.2  # ours at most this many times the bound's time (and memory)
CHUNK = 2048  # feature rows per chunk, as an extractor would hand them over
STREAM_FROM = 50_000  # from this N on, ours streams (moments only)
SLOW_PEERS = ("monai.metrics.FIDMetric", "pytorch-fid formula (reproduced)")  # minutes at d = 2048: N = 500 only


def bound_fid(x1: np.ndarray, x2: np.ndarray) -> float:
    """The least work an exact FID needs (no checks, no fallback): the compute bound."""
    x1, x2 = (torch.from_numpy(x).double() for x in (x1, x2))
    m1, m2 = x1.mean(0), x2.mean(0)
    c1, c2 = (x1 - m1) / (len(x1) - 1) ** 0.5, (x2 - m2) / (len(x2) - 1) ** 0.5  # S_i = c_i^T c_i
    if len(x1) <= x1.shape[1]:  # N <= d: the N x N Gram of the centred rows
        m = c1 @ c2.T
        lam = torch.linalg.eigvalsh(m @ m.T)
    else:  # S1 = L L^T; eig(S1 S2) = eig(L^T S2 L)
        chol = torch.linalg.cholesky(c1.T @ c1)
        lam = torch.linalg.eigvalsh(chol.T @ (c2.T @ c2) @ chol)
    return float((m1 - m2).square().sum() + c1.square().sum() + c2.square().sum() - 2 * lam.clamp(min=0).sqrt().sum())


def ours_fid(x1: np.ndarray, x2: np.ndarray) -> float:
    """udl-med: in memory below STREAM_FROM samples, streamed in chunks (moments only) from there."""
    if len(x1) < STREAM_FROM:
        return frechet_distance_features(x1, x2)
    chunked = ((x[start : start + CHUNK] for start in range(0, len(x), CHUNK)) for x in (x1, x2))
    return frechet_stats(*(streamed_stats(chunks) for chunks in chunked)).distance


def streamed_stats(chunks) -> FeatureStats:
    """Moments of a set handed over in chunks (no features kept)."""
    stream = StreamingStats(max_features=0)
    for chunk in chunks:
        stream.update(chunk)
    return stream.compute()


def feature_chunks(n: int, seed: int, shift: float):
    """The features of one set in chunks of CHUNK rows, each chunk generated when asked for."""
    for i, start in enumerate(range(0, n, CHUNK)):
        yield make_features(min(CHUNK, n - start), D, seed=seed * 1000 + i, shift=shift)


def features(n: int, seed: int, shift: float) -> np.ndarray:
    return np.concatenate(list(feature_chunks(n, seed, shift)))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM). Not ``ru_maxrss``: Linux keeps that across
    ``execve``, so a child started by a parent holding the features would report the parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def memory_child(side: str, n: int) -> None:
    """Run one side on freshly generated chunks; print its peak memory above the start (MB).

    Both computations run once on tiny features first, so that the start includes the
    linear-algebra libraries and thread pools (the same for both sides), not only the data.
    """
    small = make_features(40, 64, 0, 0.0), make_features(40, 64, 1, 0.05)
    bound_fid(*small), frechet_distance_features(*small), frechet_stats(*(streamed_stats([x]) for x in small))
    start = _rss_bytes()
    sets = [feature_chunks(n, 10, 0.0), feature_chunks(n, 20, 0.05)]
    if side == "bound" or n < STREAM_FROM:  # in memory: every feature is held
        x1, x2 = (np.concatenate(list(chunks)) for chunks in sets)
        value = bound_fid(x1, x2) if side == "bound" else frechet_distance_features(x1, x2)
    else:  # streamed: one chunk at a time
        value = frechet_stats(*(streamed_stats(chunks) for chunks in sets)).distance
    peak = _peak_rss_bytes()
    print(json.dumps({"peak_mb": (peak - start) / 2**20, "fid": value}))


def peak_memory(side: str, n: int) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", side, "--sizes", str(n)], check=True, capture_output=True, text=True
    ).stdout.strip().splitlines()[-1]
    row = json.loads(out)
    return row["peak_mb"], row["fid"]


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


def _row(n: int, metric: str, ours: float, peer_name: str, peer: float, ratio: float, goal: str, meets: bool, **extra) -> dict:
    row = {
        "benchmark": "fid_speed",
        "case": f"d={D},N={n}" + (" (ours streamed, moments only)" if n >= STREAM_FROM else ""),
        "metric": metric,
        "ours": round(ours, 4),
        "peer_name": peer_name,
        "peer": round(peer, 4),
        "ratio": round(ratio, 3),
        "goal": goal,
        "meets_goal": bool(meets),
        **extra,
    }
    print(json.dumps(row), flush=True)
    return row


def against_bound(n: int, real: np.ndarray, fake: np.ndarray, rounds: int) -> list[dict]:
    """Ours and the bound in ABBA rounds; the fastest time of each side."""
    times: dict[str, list[float]] = {"ours": [], "bound": []}
    values = {}
    for r in range(rounds):
        for side in ("bound", "ours") if r % 2 == 0 else ("ours", "bound"):
            values[side], t = timed(lambda: (bound_fid if side == "bound" else ours_fid)(real, fake))
            times[side].append(t)
    t_ours, t_bound = min(times["ours"]), min(times["bound"])
    rel = abs(values["ours"] - values["bound"]) / abs(values["bound"])
    goal = f"ours <= {MAX_OVER_BOUND:g}x bound (ratio >= {1 / MAX_OVER_BOUND:.3g})"
    rows = [
        _row(n, "seconds (features to distance), fastest of interleaved rounds", t_ours, "bound (minimal exact computation)", t_bound,
             t_bound / t_ours, goal, t_ours <= MAX_OVER_BOUND * t_bound, fid_ours=values["ours"], fid_bound=values["bound"],
             rel_diff=rel, rounds=rounds, times_ours=[round(t, 3) for t in times["ours"]], times_bound=[round(t, 3) for t in times["bound"]])
    ]
    m_ours, _ = peak_memory("ours", n)
    m_bound, _ = peak_memory("bound", n)
    rows.append(_row(n, "peak memory above start, MB (fresh process, features generated in chunks)", m_ours, "bound (minimal exact computation)",
                     m_bound, m_bound / m_ours, goal, m_ours <= MAX_OVER_BOUND * m_bound))
    return rows


def run(sizes: list[int], peers: list[str], peer_sizes: list[int]) -> list[dict]:
    warnings.filterwarnings("ignore")
    small = make_features(40, 64, 0, 0.0), make_features(40, 64, 1, 0.05)  # warm up BLAS/LAPACK threads for all
    frechet_distance_features(*small)
    bound_fid(*small)
    available = {}
    for name, (fn, how) in PEERS.items():
        if name not in peers:
            continue
        try:
            fn(*small)
            available[name] = (fn, how())
        except ImportError as err:
            print(json.dumps({"benchmark": "fid_speed", "peer_name": name, "error": str(err)}), flush=True)
    rows = []
    for n in sizes:
        real, fake = features(n, seed=10, shift=0.0), features(n, seed=20, shift=0.05)
        rows += against_bound(n, real, fake, rounds=15 if n <= 500 else 5 if n <= 5000 else 2)
        for peer_name, (peer_fn, how) in available.items():
            if n not in peer_sizes or (peer_name in SLOW_PEERS and n > 500):
                continue
            repeats = 3 if n <= 500 else 1  # fastest of 3 pairs where one run is short enough for load spikes to dominate
            t_ours = t_peer = float("inf")
            try:
                for _ in range(repeats):
                    ours, t = timed(lambda: ours_fid(real, fake))  # ours right before the peer: a pair
                    t_ours = min(t_ours, t)
                    peer, t = timed(lambda: peer_fn(real, fake))
                    t_peer = min(t_peer, t)
            except ValueError as err:  # a peer that fails on this case (e.g. an imaginary sqrtm)
                peer, t_peer = float("nan"), float("nan")
                print(json.dumps({"benchmark": "fid_speed", "case": f"d={D},N={n}", "peer_name": peer_name, "error": str(err)}))
            rel_diff = abs(ours - peer) / abs(peer)
            ratio = t_peer / t_ours
            goal = GOALS.get(n, 1.0)
            rows.append(_row(n, "seconds (features to distance)", t_ours, peer_name, t_peer, ratio,
                             f">= {goal:g}x faster, rel_diff < {MAX_REL_DIFF:g}", ratio >= goal and rel_diff < MAX_REL_DIFF,
                             fid_ours=ours, fid_peer=peer, rel_diff=rel_diff, peer_loaded=how))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,5000,50000", help="comma-separated sample counts N")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated peer names (empty: the bound only)")
    parser.add_argument("--peer-sizes", default="500,5000", help="the N the peers run at")
    parser.add_argument("--memory-child", choices=["ours", "bound"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.memory_child:
        memory_child(args.memory_child, sizes[0])
        return
    run(sizes, [p for p in args.peers.split(",") if p], [int(s) for s in args.peer_sizes.split(",")])


if __name__ == "__main__":
    main()
