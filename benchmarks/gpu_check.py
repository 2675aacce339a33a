"""A short GPU check: device placement, mixed precision and four trials sharing one GPU.

Needs a CUDA GPU. On a machine without one it prints a message and exits 0. It prints, side by side in one
run: images/s of the default DCGAN with amp off, bf16 and fp16; the cost of one fid_proxy
evaluation at N=5000 next to one epoch; and a 4-trial search with 0.25 GPU per trial, checking
that all four trials ran on the GPU at the same time and reporting their peak GPU memory.

    python benchmarks/gpu_check.py [--data PATH] [--images K]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from common import add_data_argument, machine, require_data
from gansearch.data import load_split
from gansearch.metrics.proxy import FIDProxy
from gansearch.training import GANConfig, GANTrainer


def throughput(images, amp: str) -> tuple[float, bool]:
    trainer = GANTrainer(GANConfig(amp=amp), images, "cuda")
    trainer.train_epoch()  # warm-up: cuDNN autotuning, allocator
    torch.cuda.synchronize()
    stats = trainer.train_epoch()
    return stats.images_per_s, stats.finite


def packed_search(data: str, subset: int) -> list[dict]:
    """Run four 2-epoch trials at 0.25 GPU each and return their last results."""
    from gansearch.search import prepare_search, run_search
    from gansearch.spec import validate_document

    spec = {
        "name": "gpu_packing",
        "data": {"subset": subset},
        "search_space": {"lr_g": {"type": "loguniform", "low": 1e-4, "high": 1e-3}},
        "scheduler": {"type": "fifo", "max_epochs": 2},
        "trials": {"num_samples": 4, "cpus": 1, "gpus": 0.25},
        "metrics": {"n_samples": 5000},
    }
    storage = tempfile.mkdtemp(prefix="gansearch-gpu-")
    prepared = prepare_search(validate_document(spec, "gpu_check"), yaml.safe_dump(spec), data=data, storage=storage)
    run_search(prepared)
    last = []
    for result_file in Path(prepared.experiment_dir).glob("train_gan_*/result.json"):
        lines = [json.loads(line) for line in result_file.read_text().splitlines()]
        first, final = lines[0], lines[-1]
        final["started"] = first["timestamp"] - first["time_this_iter_s"]
        last.append(final)
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--images", type=int, default=1000, help="images per class for the timed epochs (default: 1000)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU visible to PyTorch")
        return
    data = require_data(args.data)
    print(f"machine: {machine()}")

    images = load_split(data, "train", subset=args.images).images
    for amp in ("off", "bf16", "fp16"):
        rate, finite = throughput(images, amp)
        print(f"default DCGAN, amp={amp}: {rate:,.0f} images/s, finite losses: {finite}")

    trainer = GANTrainer(GANConfig(amp="bf16"), load_split(data, "train").images, "cuda")
    scorer = FIDProxy(data, n_samples=5000, device="cuda")
    scorer.score_generator(trainer.sampler, trainer.config.z_dim)
    started = time.perf_counter()
    trainer.train_epoch()
    torch.cuda.synchronize()
    epoch_seconds = time.perf_counter() - started
    started = time.perf_counter()
    scorer.score_generator(trainer.sampler, trainer.config.z_dim)
    torch.cuda.synchronize()
    eval_seconds = time.perf_counter() - started
    print(f"epoch over 50,000 images (bf16): {epoch_seconds:.2f} s; fid_proxy at N=5000: {eval_seconds:.2f} s; "
          f"ratio {100 * eval_seconds / epoch_seconds:.1f}% (goal: at most 5%)")

    results = packed_search(data, subset=500)
    devices = {result["device"] for result in results}
    overlap = max(r["started"] for r in results) < min(r["timestamp"] for r in results)
    print(f"4 trials at 0.25 GPU: devices {devices}, all four overlapped in time: {overlap}")
    for result in results:
        print(f"  trial {result['trial_id']}: fid_proxy {result['fid_proxy']:.3f}, peak GPU memory {result.get('gpu_peak_mem_mb', float('nan')):.0f} MiB")


if __name__ == "__main__":
    main()
