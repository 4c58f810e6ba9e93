"""The uint8 image cache and the cached Pets loaders (notebook 05): contents, reuse, invalidation, atomicity, splits."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from tlhelpers.tools import cache
from tlhelpers.tools.cache import (
    build_image_cache, cache_build_seconds, cache_paths, cached_pets_loaders, images_per_second, load_square,
)
from tlhelpers.pets import PetsDataset, make_pets_splits
from tlhelpers.tools.gpu_data import GPUBatchLoader
from tlhelpers.tools.images import load_rgb
from tlhelpers.tools.samples import make_pets_sample

# (width, height): landscape, portrait, square and a very wide one
SHAPES = [(60, 40), (40, 60), (50, 50), (97, 31)]


def _gradient(width, height, blue=77):
    """Red grows left to right, green top to bottom, blue is constant: any misplaced pixel shows."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([255 * x / (width - 1), 255 * y / (height - 1), np.full((height, width), blue)], axis=-1)
    return Image.fromarray(rgb.round().astype(np.uint8))


@pytest.fixture()
def image_files(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    files = []
    for i, (w, h) in enumerate(SHAPES):
        path = folder / f"img_{i}.png"  # lossless, so the reference decode sees the same pixels
        _gradient(w, h, blue=50 + 40 * i).save(path)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def pet_dir(tmp_path_factory):
    return make_pets_sample(tmp_path_factory.mktemp("pets"), images_per_breed=6, image_size=(64, 48))


def _no_decoding(path, size):
    raise AssertionError(f"decoded {path} although the cache should have been reused")


# --- contents -------------------------------------------------------------------------------

def test_shape_dtype_and_rows_match_a_direct_decode_and_resize(image_files, tmp_path):
    images = build_image_cache(image_files, 32, cache_dir=tmp_path / "cache", progress=False)
    assert isinstance(images, np.memmap) and images.dtype == np.uint8
    assert images.shape == (len(image_files), 3, 32, 32)  # channels first, like GPUBatchLoader wants
    reference = T.Compose([T.Resize(32), T.CenterCrop(32)])  # short side to 32, centre square
    for i, path in enumerate(image_files):
        expected = np.asarray(reference(load_rgb(path))).transpose(2, 0, 1).astype(int)
        diff = np.abs(images[i].astype(int) - expected)
        assert diff.mean() <= 1.0 and diff.max() <= 4, f"row {i} ({path.name}) is not its file"
        assert (images[i, 2] == 50 + 40 * i).all(), "channel 2 must be blue: rows are RGB, in file order"


def test_load_square_keeps_the_centre_of_the_long_side(tmp_path):
    img = Image.new("RGB", (90, 30), (0, 0, 255))
    img.paste((255, 0, 0), (30, 0, 60, 30))  # a red centre third
    img.save(tmp_path / "wide.png")
    square = load_square(tmp_path / "wide.png", 10)
    assert square.shape == (10, 10, 3) and square.dtype == np.uint8
    inner = square[:, 1:-1]  # the edge columns blend in a little blue: the filter reaches past the square, as in Resize
    assert (inner[..., 0] == 255).all() and (inner[..., 2] == 0).all(), "only the red centre square is kept"
    assert (square[..., 0] > 200).all()


def test_awkward_pet_files_are_cached_as_rgb(pet_dir, tmp_path):
    names = ["Abyssinian_5.jpg", "Egyptian_Mau_139.jpg", "staffordshire_bull_terrier_22.jpg", "Egyptian_Mau_177.jpg"]
    images = build_image_cache([pet_dir / "images" / n for n in names], 16, cache_dir=tmp_path, progress=False)
    assert images.shape == (4, 3, 16, 16)
    gray = images[2].astype(int)
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all(), "a grayscale file gives equal channels"


# --- reuse and invalidation -------------------------------------------------------------------

def test_reused_without_decoding_and_sidecar_written(image_files, tmp_path, monkeypatch):
    first = np.array(build_image_cache(image_files, 24, cache_dir=tmp_path, progress=False))
    npy, sidecar = cache_paths(image_files, 24, tmp_path)
    assert npy.exists() and sidecar.exists()
    meta = json.loads(sidecar.read_text())
    assert meta["count"] == len(image_files) and meta["size"] == 24 and meta["version"] == cache.CACHE_VERSION
    assert cache_build_seconds(image_files, 24, tmp_path) == meta["build_seconds"] >= 0

    monkeypatch.setattr(cache, "load_square", _no_decoding)
    again = build_image_cache(image_files, 24, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(again, first)
    again[0] = 0  # copy-on-write: the file must not change
    np.testing.assert_array_equal(build_image_cache(image_files, 24, cache_dir=tmp_path, progress=False), first)


def test_default_location_is_the_data_dir(image_files, tmp_path, monkeypatch):
    monkeypatch.setenv("TLH_DATA_DIR", str(tmp_path / "data"))
    build_image_cache(image_files, 8, progress=False)
    npy, sidecar = cache_paths(image_files, 8)
    assert npy.parent == tmp_path / "data" / "cache" and npy.exists() and sidecar.exists()
    # named after the folder that holds images/ (like oxford-iiit-pet/images), then a hash of its path
    assert npy.name.startswith(tmp_path.name + "-") and npy.name.endswith("-8px.npy")


def test_changed_added_and_resized_files_invalidate_the_cache(image_files, tmp_path, monkeypatch):
    build_image_cache(image_files, 16, cache_dir=tmp_path, progress=False)
    calls = []

    def counting(path, size):
        calls.append(path)
        return load_square(path, size)  # the real decoder (imported before the patch)

    monkeypatch.setattr(cache, "load_square", counting)
    # a changed file (new content, new mtime) -> rebuilt, with the new pixels
    Image.new("RGB", (40, 40), (9, 9, 9)).save(image_files[1])
    stat = image_files[1].stat()
    os.utime(image_files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    images = build_image_cache(image_files, 16, cache_dir=tmp_path, progress=False)
    assert len(calls) == len(image_files)
    assert (images[1] == 9).all()
    # an added file -> rebuilt, one row more, same cache file
    extra = image_files[0].parent / "img_9.png"
    _gradient(30, 20).save(extra)
    images = build_image_cache([*image_files, extra], 16, cache_dir=tmp_path, progress=False)
    assert images.shape[0] == len(image_files) + 1 and len(calls) == 2 * len(image_files) + 1
    assert len(list(tmp_path.glob("*.npy"))) == 1, "a changed folder overwrites its cache, it does not add one"
    # another size is another cache
    build_image_cache(image_files, 12, cache_dir=tmp_path, progress=False)
    assert sorted(p.name.rsplit("-", 1)[1] for p in tmp_path.glob("*.npy")) == ["12px.npy", "16px.npy"]


def test_damaged_cache_files_are_rebuilt(image_files, tmp_path):
    reference = np.array(build_image_cache(image_files, 16, cache_dir=tmp_path, progress=False))
    npy, sidecar = cache_paths(image_files, 16, tmp_path)
    np.save(npy, np.zeros((2, 3, 16, 16), np.uint8))  # wrong number of rows for this sidecar
    np.testing.assert_array_equal(build_image_cache(image_files, 16, cache_dir=tmp_path, progress=False), reference)
    npy.write_bytes(b"not an npy file")
    np.testing.assert_array_equal(build_image_cache(image_files, 16, cache_dir=tmp_path, progress=False), reference)
    sidecar.write_text("{ truncated")
    np.testing.assert_array_equal(build_image_cache(image_files, 16, cache_dir=tmp_path, progress=False), reference)


# --- atomic writes -----------------------------------------------------------------------------

def test_unreadable_image_names_the_file_and_leaves_no_cache(image_files, tmp_path):
    bad = image_files[0].parent / "img_2_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(OSError, match="img_2_broken.png"):
        build_image_cache([*image_files, bad], 16, cache_dir=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == [], "no .npy, .json or .part may survive a failed build"


def test_interrupted_build_leaves_the_old_sidecar_unmatched_and_no_partial_file(image_files, tmp_path, monkeypatch):
    build_image_cache(image_files, 16, cache_dir=tmp_path, progress=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    Image.new("RGB", (40, 40), (1, 2, 3)).save(image_files[0])
    os.utime(image_files[0], ns=(0, image_files[0].stat().st_mtime_ns + 10**9))
    calls = []

    def interrupted(path, size):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the build
        return np.zeros((size, size, 3), np.uint8)

    monkeypatch.setattr(cache, "load_square", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_image_cache(image_files, 16, cache_dir=tmp_path, progress=False, num_threads=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "no .part file is left behind"
    # the old cache does not match the changed files, so the next call rebuilds it
    monkeypatch.setattr(cache, "load_square", load_square)
    images = build_image_cache(image_files, 16, cache_dir=tmp_path, progress=False)
    assert tuple(images[0, :, 8, 8]) == (1, 2, 3)


def test_bad_arguments_are_clear_errors(image_files, pet_dir, tmp_path):
    with pytest.raises(ValueError, match="files is empty"):
        build_image_cache([], 16, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="size=0"):
        build_image_cache(image_files, 0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="crop=40"):
        cached_pets_loaders(pet_dir, size=32, crop=40, cache_dir=tmp_path)


# --- the loaders -------------------------------------------------------------------------------

def test_loaders_have_the_same_files_labels_and_split_as_make_pets_splits(pet_dir, tmp_path):
    train_dl, valid_dl, classes = cached_pets_loaders(pet_dir, size=32, crop=28, batch_size=16, val_pct=0.25,
                                                      seed=7, cache_dir=tmp_path, progress=False)
    train_ds, valid_ds = make_pets_splits(pet_dir, size=28, val_pct=0.25, seed=7)
    assert isinstance(train_dl, GPUBatchLoader) and isinstance(valid_dl, GPUBatchLoader)
    assert classes == train_ds.dataset.classes
    assert train_dl.files == [train_ds.dataset.files[i] for i in train_ds.indices]
    assert valid_dl.files == [valid_ds.dataset.files[i] for i in valid_ds.indices]
    # validation: in order, the same labels; training: shuffled, the same labels once each
    assert torch.cat([y for _, y in valid_dl]).tolist() == [valid_ds.dataset.targets[i] for i in valid_ds.indices]
    assert sorted(torch.cat([y for _, y in train_dl]).tolist()) == sorted(
        train_ds.dataset.targets[i] for i in train_ds.indices)
    xb, yb = next(iter(train_dl))
    assert xb.shape == (16, 3, 28, 28) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert valid_dl.batch_size == 32 and len(valid_dl) == 2


def test_validation_images_are_centre_crops_of_the_cached_rows(pet_dir, tmp_path):
    _, valid_dl, _ = cached_pets_loaders(pet_dir, size=20, crop=16, batch_size=8, seed=3, mean=(0.5,) * 3,
                                         std=(0.25,) * 3, cache_dir=tmp_path, progress=False)
    files = PetsDataset(pet_dir).files
    rows = build_image_cache(files, 20, cache_dir=tmp_path, progress=False)  # the same cache, reused
    xv = torch.cat([x for x, _ in valid_dl])
    for i, path in enumerate(valid_dl.files):
        row = torch.from_numpy(np.array(rows[files.index(path)])).float() / 255
        torch.testing.assert_close(xv[i], (row[:, 2:18, 2:18] - 0.5) / 0.25)


def test_rows_on_device_copies_in_chunks():
    images = np.arange(7 * 3 * 2 * 2, dtype=np.uint8).reshape(7, 3, 2, 2)
    idx = [5, 0, 3, 6, 2]
    out = cache._rows_on_device(images, idx, torch.device("cpu"), chunk=2)
    assert out.dtype == torch.uint8
    torch.testing.assert_close(out, torch.from_numpy(images[idx]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cached_loaders_on_the_gpu(pet_dir, tmp_path):
    train_dl, valid_dl, _ = cached_pets_loaders(pet_dir, size=32, crop=28, batch_size=8, device="cuda",
                                                cache_dir=tmp_path, progress=False)
    assert train_dl.images.is_cuda and valid_dl.images.is_cuda
    xb, yb = next(iter(train_dl))
    assert xb.is_cuda and yb.is_cuda and xb.shape == (8, 3, 28, 28)


# --- measuring -----------------------------------------------------------------------------------

def test_images_per_second_counts_images_and_restarts_short_loaders():
    loader = GPUBatchLoader(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10), batch_size=4)
    assert len(loader) == 3
    rate = images_per_second(loader, num_batches=7, warmup_batches=1)  # more batches than one epoch
    assert rate > 0
    with pytest.raises(ValueError, match="num_batches"):
        images_per_second(loader, num_batches=0)
    with pytest.raises(ValueError, match="no batches"):
        images_per_second([], num_batches=1, warmup_batches=1)
