"""Bernoulli RBM: udl-med against scikit-learn's ``BernoulliRBM`` on scikit-learn's digits.

Both sides learn features from the 8x8 digits scaled to [0, 1] (the training split,
75%, stratified) with the same number of hidden units, learning rate, batch size and
epochs, and the same update: persistent CD-1 with one chain per batch row, a step of
``learning_rate`` on the batch-mean gradient, no momentum or weight cost, batches in
data order (scikit-learn does not shuffle). Ours is :func:`udl_med.methods.rbm.fit_rbm`
on a :class:`udl_med.nets.rbm.BernoulliRBM`; its chains start from the first batch,
scikit-learn's at zero hidden states (the one difference). Each side is fitted once per
seed, alternating sides, after one warm-up fit each; times are medians.

Rows: training time (ratio = peer / ours, goal > 1: faster), and the test accuracy of
``LogisticRegression`` on each side's hidden probabilities (ratio = ours / peer, goal
>= 0.99: equal within noise), plus ours against logistic regression on raw pixels.
Both libraries run with the same thread count (``--threads``, default 1: the models are
small, and on a shared 2-core machine extra threads only add contention), set for
torch and, through threadpoolctl, for NumPy's BLAS.

    .venv/bin/python benchmarks/rbm_vs_sklearn.py [--threads N] [--seeds N] [--device cuda]

Measured on 2 shared CPU cores, one thread each: ours is faster at every batch size,
and the accuracies agree within noise. At batch 10 a mini-batch is a few tiny matrix
products, so PyTorch's per-operator dispatch (microseconds) is what it costs: ``fit_rbm``
keeps ``W``, ``b`` and ``c`` in one augmented matrix so that a CD-1 batch is a dozen
operators (:class:`udl_med.methods.rbm.AugmentedBernoulliRBM`).
One scikit-learn quirk is avoided, not copied: when the batch size does not divide the
training set, its last, short batch still subtracts the statistics of all
``batch_size`` chains divided by the short batch's size, a negative phase up to
``batch_size`` times too strong that can silence the hidden units (we divide by the
number of chains). The training split has 1200 digits, so every batch size here
divides it and both sides make the same update.

**scikit-learn's own example setting** (``plot_rbm_logistic_classification``, the case
where RBM features are known to help): the digits nudged by one pixel in each of four
directions (5x the data), min-max scaled per feature to [0, 1], an 80/20 split with
``random_state=0``, 100 hidden units, learning rate 0.06, batch 10, 10 epochs; a
logistic regression with C = 6000 on the hidden probabilities against one with C = 100
on the raw pixels (no standardisation, as in the example). Its training split (7188
rows) is not a multiple of 10: both sides end each epoch with a short batch, which
scikit-learn scales as described above and ours does not, so the two RBMs differ a
little there; the rows say how far.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import BernoulliRBM as SklearnRBM
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, minmax_scale
from threadpoolctl import threadpool_limits

from udl_med.methods.rbm import fit_rbm
from udl_med.nets.rbm import BernoulliRBM

PEER = "sklearn.neural_network.BernoulliRBM"
# (case name, n_components, learning_rate, batch_size, n_iter)
CASES = [
    ("h100 lr0.06 b10 e20 (sklearn's example)", 100, 0.06, 10, 20),
    ("h256 lr0.05 b50 e50", 256, 0.05, 50, 50),
    ("h256 lr0.1 b100 e100", 256, 0.1, 100, 100),
]
N_TRAIN = 1200  # every batch size divides it: see the module docstring
EXAMPLE_CASE = "sklearn example: nudged digits (5x), min-max scaled, h100 lr0.06 b10 e10, logreg C=6000 vs raw C=100"


def nudge_dataset(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's example: each 8x8 digit plus its copies shifted by one pixel left, right, down and up."""
    from scipy.ndimage import convolve

    direction_vectors = [
        [[0, 1, 0], [0, 0, 0], [0, 0, 0]],
        [[0, 0, 0], [1, 0, 0], [0, 0, 0]],
        [[0, 0, 0], [0, 0, 1], [0, 0, 0]],
        [[0, 0, 0], [0, 0, 0], [0, 1, 0]],
    ]

    def shift(image: np.ndarray, w: list[list[int]]) -> np.ndarray:
        return convolve(image.reshape((8, 8)), mode="constant", weights=w).ravel()

    x = np.concatenate([x] + [np.apply_along_axis(shift, 1, x, vector) for vector in direction_vectors])
    return x, np.concatenate([y for _ in range(5)], axis=0)


def logreg(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, c: float) -> float:
    """The example's classifier: ``LogisticRegression(C=c, max_iter=1000)`` on the features as they are."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(LogisticRegression(C=c, max_iter=1000).fit(train_x, train_y).score(test_x, test_y))


def sklearn_example(seeds: int, threads: int, device: str) -> None:
    """The three rows of scikit-learn's own example setting (see the module docstring)."""
    x, y = load_digits(return_X_y=True)
    x, y = nudge_dataset(np.asarray(x, "float32"), y)
    x = minmax_scale(x, feature_range=(0, 1)).astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=0.2, random_state=0)
    raw = logreg(train_x, train_y, test_x, test_y, c=100.0)
    fit_ours(train_x, 100, 0.06, 10, 1, 0, device)  # warm-up
    fit_peer(train_x, 100, 0.06, 10, 1, 0)
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    accs: dict[str, list[float]] = {"ours": [], "peer": []}
    for seed in range(seeds):
        sides = ("ours", "peer") if seed % 2 == 0 else ("peer", "ours")  # alternate which side goes first
        for side in sides:
            if side == "ours":
                t, rbm = fit_ours(train_x, 100, 0.06, 10, 10, seed, device)
                with torch.no_grad():
                    f_train = rbm.hidden_probs(torch.from_numpy(train_x)).numpy()
                    f_test = rbm.hidden_probs(torch.from_numpy(test_x)).numpy()
            else:
                t, peer = fit_peer(train_x, 100, 0.06, 10, 10, seed)
                f_train, f_test = peer.transform(train_x), peer.transform(test_x)
            times[side].append(t)
            accs[side].append(logreg(f_train, train_y, f_test, test_y, c=6000.0))
    t_ours, t_peer = statistics.median(times["ours"]), statistics.median(times["peer"])
    a_ours, a_peer = statistics.mean(accs["ours"]), statistics.mean(accs["peer"])
    print(row(EXAMPLE_CASE, "train_time_s", t_ours, PEER, t_peer, t_peer / t_ours, "ratio > 1 (faster)", t_peer > t_ours, threads, device), flush=True)
    print(row(EXAMPLE_CASE, "logreg_accuracy", a_ours, PEER, a_peer, a_ours / a_peer, "ratio >= 0.99 (equal or better)", a_ours / a_peer >= 0.99, threads, device), flush=True)
    print(row(EXAMPLE_CASE, "logreg_accuracy", a_ours, "raw pixels, logreg C=100", raw, a_ours / raw, "ratio > 1 (RBM features help)", a_ours > raw, threads, device), flush=True)


def fit_ours(x: np.ndarray, n_hidden: int, lr: float, batch: int, epochs: int, seed: int, device: str) -> tuple[float, BernoulliRBM]:
    torch.manual_seed(seed)
    rbm = BernoulliRBM(x.shape[1], n_hidden, init_std=0.01).to(device)
    data = torch.from_numpy(x).to(device)
    start = time.perf_counter()
    fit_rbm(rbm, data, epochs=epochs, batch_size=batch, lr=lr, k=1, persistent=True, shuffle=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, rbm.cpu()


def fit_peer(x: np.ndarray, n_hidden: int, lr: float, batch: int, epochs: int, seed: int) -> tuple[float, SklearnRBM]:
    rbm = SklearnRBM(n_components=n_hidden, learning_rate=lr, batch_size=batch, n_iter=epochs, random_state=seed)
    start = time.perf_counter()
    rbm.fit(x)
    return time.perf_counter() - start, rbm


def probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Test accuracy of standardisation + L2 logistic regression (C = 1) on the given features."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000)).fit(train_x, train_y)
    return float(clf.score(test_x, test_y))


def row(case: str, metric: str, ours: float, peer_name: str, peer: float, ratio: float, goal: str, meets: bool, threads: int, device: str) -> str:
    return json.dumps(
        {
            "benchmark": "rbm_vs_sklearn",
            "case": case,
            "metric": metric,
            "ours": round(ours, 5),
            "peer_name": peer_name,
            "peer": round(peer, 5),
            "ratio": round(ratio, 4),
            "goal": goal,
            "meets_goal": bool(meets),
            "threads": threads,
            "device": device,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="where ours trains (scikit-learn always runs on the CPU)")
    parser.add_argument("--only-example", action="store_true", help="only scikit-learn's example setting")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(x, digits.target, train_size=N_TRAIN, stratify=digits.target, random_state=0)
    with threadpool_limits(limits=args.threads):
        sklearn_example(args.seeds, args.threads, args.device)
        if args.only_example:
            return
        raw = probe(train_x, train_y, test_x, test_y)
        for case, n_hidden, lr, batch, epochs in CASES:
            fit_ours(train_x, n_hidden, lr, batch, 1, 0, args.device)  # warm-up
            fit_peer(train_x, n_hidden, lr, batch, 1, 0)
            times: dict[str, list[float]] = {"ours": [], "peer": []}
            accs: dict[str, list[float]] = {"ours": [], "peer": []}
            for seed in range(args.seeds):
                t, ours = fit_ours(train_x, n_hidden, lr, batch, epochs, seed, args.device)
                times["ours"].append(t)
                with torch.no_grad():
                    f_train = ours.hidden_probs(torch.from_numpy(train_x)).numpy()
                    f_test = ours.hidden_probs(torch.from_numpy(test_x)).numpy()
                accs["ours"].append(probe(f_train, train_y, f_test, test_y))
                t, peer = fit_peer(train_x, n_hidden, lr, batch, epochs, seed)
                times["peer"].append(t)
                accs["peer"].append(probe(peer.transform(train_x), train_y, peer.transform(test_x), test_y))
            t_ours, t_peer = statistics.median(times["ours"]), statistics.median(times["peer"])
            a_ours, a_peer = statistics.mean(accs["ours"]), statistics.mean(accs["peer"])
            print(row(case, "train_time_s", t_ours, PEER, t_peer, t_peer / t_ours, "ratio > 1 (faster)", t_peer > t_ours, args.threads, args.device), flush=True)
            print(row(case, "logreg_accuracy", a_ours, PEER, a_peer, a_ours / a_peer, "ratio >= 0.99 (equal or better)", a_ours / a_peer >= 0.99, args.threads, args.device), flush=True)
            print(row(case, "logreg_accuracy", a_ours, "raw pixels", raw, a_ours / raw, "ratio >= 1 (features help)", a_ours >= raw, args.threads, args.device), flush=True)


if __name__ == "__main__":
    main()
