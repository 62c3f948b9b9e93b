"""Translation speed: ``udl-med translate`` against bare MONAI sliding-window inference, same network.

Both sides do the whole job on the same file, in one process, alternating: read the
volume, normalise it (CT window to [-1, 1]), run the generator over it with Gaussian-
blended windows of the training size and 25% overlap, map back to physical units and
write a NIfTI. The peer is plain MONAI (``LoadImage``, ``ScaleIntensityRange``,
``sliding_window_inference`` / ``SliceInferer`` with ``sw_batch_size=4``, ``SaveImage``);
ours is :func:`udl_med.inference.translate.translate_path`. Cases: a 3D CycleGAN
generator on a volume, and a 2D one slice by slice on a 512 x 512 volume. Rows: seconds
(best of three, alternating; ratio = peer / ours, goal >= 1.0), with the largest
difference between the two outputs, and peak resident memory of the job above the level
before it (ratio = peer / ours, goal >= 0.9): the kernel's peak (VmHWM, reset when the job
starts; sampling every 5 ms missed short peaks by up to 10 MB), in a fresh child process
per side, since a process never returns freed memory.

Both sides start from the model folder: the peer's job loads the generator too (with
udl-med's loader, since its weights are in udl-med's format), so time and memory count
the load on both sides, not on ours alone. On the CPU, ours runs the generator with its
one-channel output convolution folded tap by tap (:mod:`udl_med.nets.cpu_inference`):
oneDNN vectorises over output channels, so that layer alone took most of the peer's
forward pass. The outputs agree to
float32 rounding (the ``outputs_max_abs_diff`` field, in MR output units of 0 to 1000).

    .venv/bin/python benchmarks/translation_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPEATS = 3
PAGE = 4096


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _reset_peak() -> bool:
    """Reset this process's peak resident memory (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


class PeakRSS:
    """Peak resident memory above the level at entry: the kernel's exact peak (VmHWM, reset at
    entry) where it can be reset, else sampled by a thread every 5 ms (which misses short peaks)."""

    def __enter__(self) -> PeakRSS:
        self.exact = _reset_peak()
        self.base = _rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss(), _hwm() if self.exact else 0)

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20


def make_model(folder: Path, layout: str, size: list[int], model: dict[str, Any]) -> Any:
    """A seeded, untrained CycleGAN saved as a udl-med model folder (speed does not depend on training)."""
    from udl_med.engine.config import validate_config
    from udl_med.engine.model_io import save_model
    from udl_med.methods.base import DataSpec, get_method

    config = {
        "method": "cyclegan",
        "seed": 0,
        "data": {"source": "unused.csv", "layout": layout, "size": size, "pairing": "unpaired"},
        "model": model,
        "output_dir": str(folder),
    }
    run = validate_config(config, "<benchmark>")
    torch.manual_seed(0)
    cls = get_method("cyclegan")
    method = cls(run.model, DataSpec(spatial_dims=len(size), in_channels=1, image_size=tuple(size))).eval()
    save_model(folder, method, run.to_dict(), method.state_dict(), 0)
    return method


def bare_monai(generator: torch.nn.Module, src: Path, dst: Path, roi: list[int], slice_axis: int | None) -> None:
    """The peer: what a MONAI user writes for the same job (MONAI's default-style sw_batch_size 4)."""
    from monai.inferers import SliceInferer, sliding_window_inference
    from monai.transforms import LoadImage, SaveImage, ScaleIntensityRange

    image = LoadImage(image_only=True, ensure_channel_first=True)(str(src))
    x = ScaleIntensityRange(-1000.0, 1000.0, -1.0, 1.0, clip=True)(image)
    with torch.no_grad():
        if slice_axis is None:
            y = sliding_window_inference(x[None], roi, 4, generator, overlap=0.25, mode="gaussian", cval=-1.0)
        else:
            y = SliceInferer(roi_size=roi, sw_batch_size=4, spatial_dim=slice_axis, overlap=0.25, mode="gaussian", cval=-1.0)(x[None], generator)
    out = ScaleIntensityRange(-1.0, 1.0, 0.0, 1000.0)(y[0])
    SaveImage(output_dir=str(dst.parent), output_postfix="peer", separate_folder=False, resample=False, print_log=False)(out)


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _job(side: str, model_dir: Path, src: Path, dst: Path, roi: list[int], slice_axis: int | None) -> Callable[[], None]:
    from udl_med.inference.translate import translate_path

    if side == "ours":
        return lambda: translate_path(model_dir, src, dst, direction="ct2mr", progress=False)
    from udl_med.engine.model_io import load_model

    # the load is part of the job, as it is in ours (translate_path loads the model folder)
    return lambda: bare_monai(load_model(model_dir).method.g_ct2mr, src, dst, roi, slice_axis)


def child_peak_mb(side: str, model_dir: Path, src: Path, dst: Path, roi: list[int], slice_axis: int | None) -> float:
    """Run one side once in this (fresh) process; return the job's peak RSS above the level before it."""
    import importlib

    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    # both sides' libraries loaded first: measure the job's data, not code pages
    for module in ("SimpleITK", "nibabel", "pydicom", "monai.inferers", "monai.transforms", "udl_med.data.io", "udl_med.inference.translate", "udl_med.engine.model_io"):
        importlib.import_module(module)
    job = _job(side, model_dir, src, dst, roi, slice_axis)
    with PeakRSS() as mem:
        job()
    return mem.mb


def outputs_max_abs_diff(ours: Path, peer: Path) -> float:
    """The largest voxel difference between the two sides' written outputs (read back the same way)."""
    from udl_med.data.io import read_image

    return float((read_image(ours).as_tensor() - read_image(peer).as_tensor()).abs().max())


def run_case(name: str, model_dir: Path, src: Path, work: Path, roi: list[int], slice_axis: int | None) -> list[dict[str, Any]]:
    import multiprocessing

    jobs = {side: _job(side, model_dir, src, work / f"{side}.nii.gz", roi, slice_axis) for side in ("ours", "peer")}
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    for _ in range(REPEATS):  # alternate so drifting machine load hits both sides
        for side, job in jobs.items():
            times[side].append(timed(job))
    memory = {}
    spawn = multiprocessing.get_context("spawn")
    for side in ("ours", "peer"):
        with spawn.Pool(1) as pool:
            memory[side] = pool.apply(child_peak_mb, (side, model_dir, src, work / f"{side}-mem.nii.gz", roi, slice_axis))
    ot, pt, om, pm = min(times["ours"]), min(times["peer"]), memory["ours"], memory["peer"]
    threads = torch.get_num_threads()
    diff = outputs_max_abs_diff(work / "ours.nii.gz", work / f"{src.name.removesuffix('.nii.gz')}_peer.nii.gz")
    rows = [
        {"metric": "seconds", "ours": round(ot, 3), "peer": round(pt, 3), "ratio": round(pt / ot, 3), "goal": ">= 1.0", "meets_goal": pt / ot >= 1.0, "outputs_max_abs_diff": diff},
        {"metric": "peak_rss_mb", "ours": round(om, 1), "peer": round(pm, 1), "ratio": round(pm / max(om, 1e-6), 3), "goal": ">= 0.9", "meets_goal": pm / max(om, 1e-6) >= 0.9},
    ]
    peer_name = "MONAI LoadImage + sliding_window_inference (gaussian, sw_batch_size 4) + SaveImage" if slice_axis is None else "MONAI LoadImage + SliceInferer (gaussian, sw_batch_size 4) + SaveImage"
    return [{"benchmark": "translation_speed", "case": f"{name}, CPU threads {threads}", **row, "peer_name": peer_name} for row in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller volumes (a smoke run)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    from udl_med.data.io import write_image

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = []
        shape3d = (64, 64, 32) if args.quick else (128, 128, 64)
        shape2d = (256, 256, 8) if args.quick else (512, 512, 32)
        for layout, shape, size, model in (
            ("3d", shape3d, [32, 32, 32], {"channels": 8, "num_res_blocks": 2, "disc_layers": 2}),
            ("2d", shape2d, [64, 64], {"channels": 16, "num_res_blocks": 3, "disc_layers": 2}),
        ):
            # a CT-like volume: a noisy body ellipsoid in air, in HU
            grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
            body = sum(g**2 for g in grid) < 0.8
            ct = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, shape) * body
            src = work / f"ct-{layout}.nii.gz"
            write_image(torch.as_tensor(ct, dtype=torch.float32)[None], src)
            folder = work / f"model-{layout}"
            make_model(folder, layout, size, model)
            name = f"{layout} CycleGAN generator, {'x'.join(map(str, shape))} volume, windows {'x'.join(map(str, size))}"
            cases += run_case(name, folder, src, work, size, None if layout == "3d" else 2)
        for row in cases:
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
