"""Helpers shared by the benchmark scripts: the data argument and the machine description."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default=os.environ.get("GANSEARCH_CIFAR10", str(DEFAULT_ARCHIVE)),
        help="CIFAR-10 folder or archive with train/ and test/ (default: GANSEARCH_CIFAR10, else the shared archive)",
    )


def require_data(path: str) -> str:
    """Return the data source, or exit 0 with a message when the archive is absent (a clean skip)."""
    if path != "cifar10" and not Path(path).exists():
        print(f"skipped: CIFAR-10 data not found at {path}; pass --data PATH")
        sys.exit(0)
    return path


def machine() -> str:
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"CPU only, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"
    return f"{device}; torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}"
