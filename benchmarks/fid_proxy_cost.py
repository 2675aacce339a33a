"""What one fid_proxy evaluation costs next to one training epoch of the default DCGAN.

Times, in one run, one epoch of the full-width DCGAN (the defaults of Radford et al., 2016) over
the CIFAR-10 training split and one evaluation at the default N for the device. An evaluation is
sampling N images, their features, the Fréchet distance and KID. It prints the ratio of the two. The goal is at most 5% of an epoch.

    python benchmarks/fid_proxy_cost.py [--data PATH] [--n N] [--images K]
"""

from __future__ import annotations

import argparse
import time

import torch

from common import add_data_argument, machine, require_data
from gansearch.data import load_split
from gansearch.metrics.proxy import FIDProxy, default_n_samples
from gansearch.training import GANConfig, GANTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--n", type=int, help="images per evaluation (default: 5000 on a GPU, 1000 on a CPU)")
    parser.add_argument("--images", type=int, help="train on the first K images per class (default: all 5,000)")
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="mixed precision for the epoch on CUDA")
    args = parser.parse_args()
    data = require_data(args.data)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = args.n or default_n_samples(device)

    images = load_split(data, "train", subset=args.images).images
    trainer = GANTrainer(GANConfig(amp=args.amp), images, device)
    scorer = FIDProxy(data, split="train", n_samples=n, device=device)
    scorer.score_generator(trainer.sampler, trainer.config.z_dim)  # warm-up: kernels, allocator

    epoch_seconds = timed(trainer.train_epoch, device)
    eval_seconds = min(timed(lambda: scorer.score_generator(trainer.sampler, trainer.config.z_dim), device) for _ in range(3))

    print(f"machine: {machine()}")
    print(f"epoch of the default DCGAN over {len(images):,} images: {epoch_seconds:.1f} s")
    print(f"one fid_proxy + kid_proxy evaluation at N={n}: {eval_seconds:.2f} s (best of 3)")
    print(f"evaluation / epoch: {100 * eval_seconds / epoch_seconds:.1f}% (goal: at most 5%)")


def timed(function, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    function()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
