"""CIFAR-10 style image data: import, a decoded uint8 cache, and in-memory batches.

A data source is either ``"cifar10"`` (torchvision's download, checksums verified by torchvision)
or an image-folder tree with ``train/<class>/`` and ``test/<class>/``, given as a folder or as a
``.tar.xz``, ``.tar.gz``, ``.tgz``, ``.tar`` or ``.zip`` archive. Each split is decoded once into a
``.npz`` cache of uint8 images in NCHW order. Later runs, and trials that start at the same moment,
reuse it under a file lock.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import lzma
import os
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from PIL import Image, UnidentifiedImageError

from gansearch.storage import atomic_write_bytes

logger = logging.getLogger(__name__)

IMAGE_SIZE = 32
CHANNELS = 3
SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".tar", ".zip")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CACHE_FORMAT_VERSION = 1


class DataError(ValueError):
    """Missing, unreadable, empty or wrongly shaped image data."""


@dataclass(frozen=True)
class ImageSet:
    """A decoded split: ``images`` is uint8 of shape (N, 3, 32, 32); ``labels`` is int64 of shape (N,)."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, per_class: int | None) -> "ImageSet":
        """Keep the first ``per_class`` images of every class (all of them when None)."""
        if per_class is None:
            return self
        if per_class < 1:
            raise DataError(f"subset must be at least 1 image per class, got {per_class}")

        keep = np.concatenate(
            [np.flatnonzero(self.labels == label)[:per_class] for label in range(len(self.classes))]
        )
        keep.sort()
        return ImageSet(self.images[keep], self.labels[keep], self.classes)


def default_cache_dir() -> Path:
    """Return the data cache folder: ``$GANSEARCH_CACHE`` or ``~/.cache/gansearch``."""
    return Path(os.environ.get("GANSEARCH_CACHE", Path.home() / ".cache" / "gansearch"))


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def check_source(source: str | os.PathLike) -> None:
    """Raise DataError when ``source`` is neither ``cifar10`` nor an existing folder or archive.

    This is the cheap check that runs before Ray starts; decoding finds unreadable images later.
    """
    if str(source) == "cifar10":
        return

    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"data source {str(path)!r} does not exist: pass 'cifar10' or a folder or archive "
            f"({', '.join(ARCHIVE_SUFFIXES)}) with train/<class>/ and test/<class>/ inside"
        )
    if path.is_dir():
        for split in SPLITS:
            if not (path / split).is_dir():
                raise DataError(f"data folder {str(path)!r} has no {split}/ folder of class folders")
        return
    if not is_archive(path):
        raise DataError(
            f"data source {str(path)!r} is a file but not an archive: use one of {', '.join(ARCHIVE_SUFFIXES)}"
        )
    if path.stat().st_size == 0:
        raise DataError(f"data archive {str(path)!r} is empty")


def load_split(
    source: str | os.PathLike,
    split: str,
    subset: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ImageSet:
    """Return one split of ``source`` as uint8 arrays, decoding it into the cache on first use."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    check_source(source)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_root.mkdir(parents=True, exist_ok=True)

    cache_file = cache_root / f"{source_fingerprint(source, split)}.npz"
    with FileLock(str(cache_file) + ".lock", timeout=3600):
        image_set = _read_cache(cache_file)
        if image_set is None:
            logger.info("decoding %s split of %s into %s", split, source, cache_file)
            image_set = _decode(source, split, cache_root)
            _write_cache(cache_file, image_set)
    return image_set.subset(subset)


def source_fingerprint(source: str | os.PathLike, split: str) -> str:
    """Return a cache key that changes when the source's files, names, sizes or times change."""
    digest = hashlib.sha256(f"v{CACHE_FORMAT_VERSION}:{split}:".encode())
    if str(source) == "cifar10":
        digest.update(b"torchvision-cifar10")
        return f"cifar10-{split}-{digest.hexdigest()[:16]}"

    path = Path(source).expanduser().resolve()
    digest.update(str(path).encode())
    if path.is_dir():
        for file in sorted((path / split).rglob("*")):
            stat = file.stat()
            digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        stat = path.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{path.name.split('.')[0]}-{split}-{digest.hexdigest()[:16]}"


def _read_cache(cache_file: Path) -> ImageSet | None:
    """Return the cached split, or None when the file is missing, truncated or corrupt."""
    if not cache_file.exists():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as archive:
            images = archive["images"]
            labels = archive["labels"]
            classes = tuple(json.loads(str(archive["classes"])))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        logger.warning("data cache %s is unreadable (%s); decoding again", cache_file, error)
        return None

    if images.dtype != np.uint8 or images.shape[1:] != (CHANNELS, IMAGE_SIZE, IMAGE_SIZE):
        logger.warning("data cache %s contains images of shape %s; decoding again", cache_file, images.shape)
        return None
    if len(images) != len(labels) or len(images) == 0:
        logger.warning("data cache %s is inconsistent; decoding again", cache_file)
        return None
    return ImageSet(images, labels.astype(np.int64), classes)


def _write_cache(cache_file: Path, image_set: ImageSet) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        images=image_set.images,
        labels=image_set.labels,
        classes=np.array(json.dumps(list(image_set.classes))),
    )
    atomic_write_bytes(cache_file, buffer.getvalue())


def _decode(source: str | os.PathLike, split: str, cache_root: Path) -> ImageSet:
    if str(source) == "cifar10":
        return _decode_torchvision(split, cache_root)

    path = Path(source).expanduser()
    if path.is_dir():
        entries = _folder_entries(path, split)
    elif path.name.lower().endswith(".zip"):
        entries = _zip_entries(path, split)
    else:
        entries = _tar_entries(path, split)
    return _assemble(entries, origin=str(path), split=split)


def _decode_torchvision(split: str, cache_root: Path) -> ImageSet:
    from torchvision.datasets import CIFAR10

    try:
        dataset = CIFAR10(root=str(cache_root / "torchvision"), train=(split == "train"), download=True)
    except (OSError, RuntimeError) as error:
        raise DataError(
            f"could not download CIFAR-10 through torchvision ({error}); "
            "pass --data with a folder or archive of train/<class>/ and test/<class>/ images instead"
        ) from error

    images = np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2))
    return ImageSet(images, np.asarray(dataset.targets, dtype=np.int64), tuple(dataset.classes))


def _split_member(parts: tuple[str, ...], split: str) -> tuple[str, str] | None:
    """Return (class, file name) for an archive member path ``.../<split>/<class>/<file>``."""
    if len(parts) < 3 or parts[-3] != split or parts[-1].startswith("."):
        return None
    if not parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return None
    return parts[-2], parts[-1]


def _folder_entries(root: Path, split: str) -> Iterator[tuple[str, str, bytes]]:
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"data folder {str(root)!r} has no {split}/ folder of class folders")
    for file in sorted(split_dir.glob("*/*")):
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
            yield file.parent.name, str(file), file.read_bytes()


def _tar_entries(path: Path, split: str) -> Iterator[tuple[str, str, bytes]]:
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for member in archive:
                found = _split_member(tuple(Path(member.name).parts), split)
                if not member.isfile() or found is None:
                    continue
                handle = archive.extractfile(member)
                yield found[0], f"{path}:{member.name}", handle.read()
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error) as error:
        raise DataError(f"data archive {str(path)!r} is unreadable: {error}") from error


def _zip_entries(path: Path, split: str) -> Iterator[tuple[str, str, bytes]]:
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                found = _split_member(tuple(Path(name).parts), split)
                if found is not None:
                    yield found[0], f"{path}:{name}", archive.read(name)
    except (zipfile.BadZipFile, OSError, zlib.error) as error:
        raise DataError(f"data archive {str(path)!r} is unreadable: {error}") from error


def decode_image(payload: bytes, name: str) -> np.ndarray:
    """Decode one encoded image into a uint8 (3, 32, 32) array, or raise DataError naming it."""
    try:
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            if image.mode != "RGB" or image.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise DataError(
                    f"image {name} is {image.size[0]}x{image.size[1]} {image.mode}; "
                    f"expected {IMAGE_SIZE}x{IMAGE_SIZE} RGB (resize or convert the data set first)"
                )
            pixels = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"image {name} is unreadable: {error}") from error
    return pixels.transpose(2, 0, 1)


def _assemble(entries: Iterator[tuple[str, str, bytes]], origin: str, split: str) -> ImageSet:
    """Decode entries into arrays ordered by class name, then by file name."""
    collected = sorted(entries, key=lambda entry: (entry[0], entry[1]))
    if not collected:
        raise DataError(
            f"data source {origin!r} has no images under {split}/<class>/ "
            f"(looked for {', '.join(IMAGE_SUFFIXES)} files)"
        )

    classes = tuple(sorted({class_name for class_name, _, _ in collected}))
    class_index = {name: index for index, name in enumerate(classes)}

    # PIL releases the GIL while decoding, so threads give a real speed-up here.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(lambda entry: decode_image(entry[2], entry[1]), collected))

    images = np.stack(decoded)
    labels = np.array([class_index[class_name] for class_name, _, _ in collected], dtype=np.int64)
    return ImageSet(images, labels, classes)


class DeviceBatches:
    """Shuffled mini-batches from an in-memory uint8 tensor, scaled to [-1, 1] on its device.

    The whole split lives on the trial's device, so no DataLoader worker processes are needed. The
    order of each epoch comes from a dedicated generator seeded by ``seed``, whose state travels with
    checkpoints so that a resumed run gets the same batches.
    """

    def __init__(self, images: np.ndarray, batch_size: int, device: torch.device, seed: int):
        if len(images) < batch_size:
            raise DataError(
                f"batch_size {batch_size} is larger than the {len(images)} training images; "
                "lower batch_size or raise subset"
            )
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.batch_size = batch_size
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        """Number of full batches per epoch; the remainder is dropped so batch statistics stay comparable."""
        return len(self.images) // self.batch_size

    def epoch(self) -> Iterator[torch.Tensor]:
        order = torch.randperm(len(self.images), generator=self.generator).to(self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = self.images[order[start : start + self.batch_size]]
            yield to_signed_unit(batch)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def to_signed_unit(images: torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels in [0, 255] to float32 in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Map float images in [-1, 1] to uint8 pixels, clamping what lies outside."""
    return images.add(1.0).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)


def load_images(path: str | os.PathLike) -> np.ndarray:
    """Decode every image in a folder (recursively) or archive into uint8 (N, 3, 32, 32), in name order."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"image path {str(path)!r} does not exist")

    if path.is_dir():
        files = sorted(file for file in path.rglob("*") if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES)
        entries = ((str(file), file.read_bytes()) for file in files)
    elif is_archive(path):
        entries = _archive_images(path)
    else:
        raise DataError(f"{str(path)!r} is neither a folder nor an archive ({', '.join(ARCHIVE_SUFFIXES)}) of images")

    collected = sorted(entries)
    if not collected:
        raise DataError(f"{str(path)!r} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return np.stack(list(pool.map(lambda entry: decode_image(entry[1], entry[0]), collected)))


def _archive_images(path: Path) -> Iterator[tuple[str, bytes]]:
    wanted = lambda name: name.lower().endswith(IMAGE_SUFFIXES) and not Path(name).name.startswith(".")  # noqa: E731
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    if wanted(name):
                        yield f"{path}:{name}", archive.read(name)
        else:
            with tarfile.open(path, mode="r:*") as archive:
                for member in archive:
                    if member.isfile() and wanted(member.name):
                        yield f"{path}:{member.name}", archive.extractfile(member).read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, lzma.LZMAError, zlib.error) as error:
        raise DataError(f"archive {str(path)!r} is unreadable: {error}") from error
