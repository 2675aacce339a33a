"""Data import: folders and archives, the uint8 cache, subsets, bad input, device batches."""

import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from gansearch.data import DataError, DeviceBatches, check_source, load_images, load_split, to_signed_unit, to_uint8


def make_tar(folder, path, mode="w:xz"):
    with tarfile.open(path, mode) as archive:
        archive.add(folder, arcname="cifar")
    return path


def test_folder_split_shapes_and_labels(image_folder, tmp_path):
    train = load_split(image_folder, "train", cache_dir=tmp_path)

    assert train.images.shape == (72, 3, 32, 32)
    assert train.images.dtype == np.uint8
    assert train.classes == ("class0", "class1", "class2")
    assert np.bincount(train.labels).tolist() == [24, 24, 24]
    # class0 images are red-dominant, as the fixture wrote them
    assert train.images[train.labels == 0][:, 0].mean() > train.images[train.labels == 0][:, 1].mean()


@pytest.mark.parametrize("suffix,mode", [(".tar.xz", "w:xz"), (".tar.gz", "w:gz")])
def test_tar_archive_matches_folder(image_folder, tmp_path, suffix, mode):
    archive = make_tar(image_folder, tmp_path / f"data{suffix}", mode)

    from_archive = load_split(archive, "test", cache_dir=tmp_path / "cache")
    from_folder = load_split(image_folder, "test", cache_dir=tmp_path / "cache")

    np.testing.assert_array_equal(from_archive.images, from_folder.images)
    np.testing.assert_array_equal(from_archive.labels, from_folder.labels)


def test_zip_archive_matches_folder(image_folder, tmp_path):
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(image_folder.rglob("*.png")):
            archive.write(file, arcname=str(file.relative_to(image_folder.parent)))

    np.testing.assert_array_equal(
        load_split(path, "train", cache_dir=tmp_path).images,
        load_split(image_folder, "train", cache_dir=tmp_path).images,
    )


def test_cache_is_reused(image_folder, tmp_path):
    load_split(image_folder, "train", cache_dir=tmp_path)
    cache_files = list(tmp_path.glob("*.npz"))
    assert len(cache_files) == 1
    stamp = cache_files[0].stat().st_mtime_ns

    load_split(image_folder, "train", cache_dir=tmp_path)

    assert cache_files[0].stat().st_mtime_ns == stamp


def test_truncated_cache_is_rebuilt(image_folder, tmp_path):
    expected = load_split(image_folder, "train", cache_dir=tmp_path)
    cache_file = next(tmp_path.glob("*.npz"))
    cache_file.write_bytes(cache_file.read_bytes()[:1000])

    rebuilt = load_split(image_folder, "train", cache_dir=tmp_path)

    np.testing.assert_array_equal(rebuilt.images, expected.images)


def test_subset_takes_first_per_class(image_folder, tmp_path):
    full = load_split(image_folder, "train", cache_dir=tmp_path)
    subset = load_split(image_folder, "train", subset=5, cache_dir=tmp_path)

    assert np.bincount(subset.labels).tolist() == [5, 5, 5]
    np.testing.assert_array_equal(subset.images[:5], full.images[full.labels == 0][:5])


def test_missing_source_names_path(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        check_source(tmp_path / "nowhere")


def test_folder_without_test_split(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no test/ folder"):
        check_source(tmp_path)


def test_empty_split_is_rejected(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images under train"):
        load_split(tmp_path, "train", cache_dir=tmp_path / "cache")


def test_wrong_image_size_names_file(image_folder, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    Image.new("RGB", (64, 64)).save(root / "train" / "class1" / "big.png")

    with pytest.raises(DataError, match=r"big\.png is 64x64 RGB; expected 32x32 RGB"):
        load_split(root, "train", cache_dir=tmp_path / "cache")


def test_grayscale_image_is_rejected(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
    Image.new("L", (32, 32)).save(tmp_path / "train" / "a" / "gray.png")
    with pytest.raises(DataError, match="gray.png is 32x32 L"):
        load_split(tmp_path, "train", cache_dir=tmp_path / "cache")


def test_unreadable_image_names_file(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg is unreadable"):
        load_split(tmp_path, "train", cache_dir=tmp_path / "cache")


def test_corrupt_archive_is_rejected(tmp_path):
    path = tmp_path / "data.tar.xz"
    path.write_bytes(b"\xfd7zXZ\x00garbage")
    with pytest.raises(DataError, match="unreadable"):
        load_split(path, "train", cache_dir=tmp_path / "cache")


def test_non_archive_file_is_rejected(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("x")
    with pytest.raises(DataError, match="not an archive"):
        check_source(path)


def test_load_images_reads_any_folder(image_folder):
    images = load_images(image_folder / "test")
    assert images.shape == (24, 3, 32, 32)


def test_load_images_rejects_empty_folder(tmp_path):
    with pytest.raises(DataError, match="contains no images"):
        load_images(tmp_path)


def test_batches_reshuffle_each_epoch_and_repeat_by_seed():
    images = np.arange(40 * 3 * 32 * 32, dtype=np.int64).reshape(40, 3, 32, 32).astype(np.uint8)
    images[:, 0, 0, 0] = np.arange(40)

    def first_pixels(batches):
        return [batch[:, 0, 0, 0].tolist() for batch in batches.epoch()]

    a = DeviceBatches(images, 8, torch.device("cpu"), seed=3)
    b = DeviceBatches(images, 8, torch.device("cpu"), seed=3)
    epoch1, epoch2 = first_pixels(a), first_pixels(a)

    assert len(epoch1) == 5
    assert epoch1 != epoch2
    assert epoch1 == first_pixels(b)
    assert sorted(sum(epoch1, [])) == pytest.approx(((np.arange(40) / 127.5) - 1).tolist())


def test_batch_larger_than_data_is_rejected():
    with pytest.raises(DataError, match="batch_size 64 is larger than the 10 training images"):
        DeviceBatches(np.zeros((10, 3, 32, 32), np.uint8), 64, torch.device("cpu"), seed=0)


def test_pixel_scaling_round_trip():
    pixels = torch.arange(256, dtype=torch.uint8)
    scaled = to_signed_unit(pixels)
    assert scaled.min() == -1
    assert scaled.max() == 1
    assert torch.equal(to_uint8(scaled), pixels)


def test_corrupt_xz_stream_is_rejected(image_folder, tmp_path):
    archive = make_tar(image_folder, tmp_path / "data.tar.xz")
    payload = bytearray(archive.read_bytes())
    payload[len(payload) // 2 : len(payload) // 2 + 64] = b"\x00" * 64
    archive.write_bytes(bytes(payload))
    # Depending on where the damage lands, xz reports it or a damaged image fails to decode first;
    # either way the error names the archive.
    with pytest.raises(DataError, match=r"data\.tar\.xz.* unreadable"):
        load_split(archive, "train", cache_dir=tmp_path / "cache")
