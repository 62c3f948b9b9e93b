"""ADA's share of a training step, this checkout's ADA and another ``ada.py`` side by side in one process (issue 22).

``small_data.py --cost-only`` measures one ADA per process, so two implementations run
minutes apart, under different load. Here both run in the same process: three methods
built alike (seed 0, the benchmark's batch of 16 crops, ADA at a fixed ``p``), plain and
ADA with each implementation (the other one's module loaded from its file and swapped in
as the augmenter's class), timed in interleaved blocks of 10 steps on the thread's CPU
time; a block's share is ``arm / plain - 1`` within that block, the reported share is the
median over blocks (as ``small_data.step_cost``). Prints one JSON row in the benchmark
format: ``ours`` this checkout's share, ``peer`` the other's, ``ratio`` peer / ours (above 1:
ours is cheaper), goal ours <= 15% of a step. Without ``--other`` the other is this checkout's
own ``ada.py`` (an A/A run: the ratio then shows the noise between blocks).

    .venv/bin/python benchmarks/ada_side_by_side.py --other /path/to/main/udl_med/nets/ada.py --generator lapgan
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from small_data import CLASSES, GENERATORS, _Opt  # noqa: E402

from udl_med.methods.base import DataSpec, get_method  # noqa: E402
from udl_med.nets.ada import AdaptiveAugment  # noqa: E402


def _load_class(path: Path) -> type:
    spec = importlib.util.spec_from_file_location("other_ada", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.AdaptiveAugment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", type=Path, default=None, help="the other implementation's ada.py (e.g. main's); default: this checkout's own (A/A)")
    parser.add_argument("--generator", default="cdcgan", choices=sorted(GENERATORS))
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--blocks", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    spec = GENERATORS[args.generator]
    data = DataSpec(spatial_dims=2, in_channels=1, image_size=(32, 32), num_classes=CLASSES)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(16, 1, 32, 32, generator=g) * 2 - 1, "label": torch.arange(16) % CLASSES}
    other = args.other or Path(sys.modules[AdaptiveAugment.__module__].__file__)
    classes = {"this": AdaptiveAugment, "other": _load_class(other)}
    runs = {}
    for arm in ("plain", "this", "other"):
        torch.manual_seed(0)
        cls = get_method(spec["method"])
        extra = {} if arm == "plain" else {"d_augment": "ada", "ada_p": args.p, "ada_target": None}
        method = cls(cls.Config(**spec["model"], **extra), data)
        for module in method.modules():
            if isinstance(module, AdaptiveAugment):
                module.__class__ = classes[arm]  # same buffers and attributes, the other forward
        opt = _Opt(method.configure_optimizers())
        for step in range(3):
            opt.global_step = step + 1
            method.train_step(batch, opt)
        runs[arm] = (method, opt)
    arms = list(runs)
    shares: dict[str, list[float]] = {"this": [], "other": []}
    for block in range(args.blocks):
        seconds = {}
        for arm in arms[block % 3 :] + arms[: block % 3]:
            method, opt = runs[arm]
            start = time.thread_time()
            for i in range(10):
                opt.global_step = block * 10 + i + 10
                method.train_step(batch, opt)
            seconds[arm] = time.thread_time() - start
        for arm in shares:
            shares[arm].append(seconds[arm] / seconds["plain"] - 1)
    ours, peer = statistics.median(shares["this"]), statistics.median(shares["other"])
    row = {
        "benchmark": "ada_side_by_side", "case": f"{args.generator}, p = {args.p}, {args.blocks} interleaved blocks of 10 steps",
        "metric": "ADA's share of a training step (median over blocks, thread CPU time)",
        "ours": ours, "peer_name": f"ada.py at {other}", "peer": peer, "ratio": peer / ours if ours > 0 else float("inf"),
        "goal": "ours <= 0.15", "meets_goal": ours <= 0.15,
        "ours_mean": statistics.fmean(shares["this"]), "peer_mean": statistics.fmean(shares["other"]),
    }  # fmt: skip
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
