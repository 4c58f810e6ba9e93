"""GPUBatchLoader on the CPU: shapes, dtypes, normalisation, augmentation, epochs (notebook 07)."""
import numpy as np
import pytest
import torch

from tlhelpers.config import IMAGENET_MEAN, IMAGENET_STD
from tlhelpers.tools.gpu_data import GPUBatchLoader


def _images(n=10, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _ids(n):
    """Labels that identify each example, so we can see which ones a batch holds."""
    return torch.arange(n)


def test_shapes_dtypes_and_len():
    loader = GPUBatchLoader(_images(10), _ids(10), batch_size=4, train=True, pad=2)
    batches = list(loader)
    assert len(loader) == 3 == len(batches)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    xb, yb = batches[0]
    assert xb.shape == (4, 3, 8, 8) and xb.dtype == torch.float32
    assert yb.dtype == torch.int64
    assert loader.output_size == (8, 8)


def test_drop_last():
    loader = GPUBatchLoader(_images(10), _ids(10), batch_size=4, drop_last=True)
    assert len(loader) == 2
    assert [len(y) for _, y in loader] == [4, 4]


def test_every_example_exactly_once_per_epoch_and_new_order_each_epoch():
    n = 23
    loader = GPUBatchLoader(_images(n), _ids(n), batch_size=5, train=True, pad=1, seed=3)
    epoch1 = torch.cat([y for _, y in loader])
    epoch2 = torch.cat([y for _, y in loader])
    assert sorted(epoch1.tolist()) == list(range(n))
    assert sorted(epoch2.tolist()) == list(range(n))
    assert not torch.equal(epoch1, epoch2), "shuffling should give a new order each epoch"
    assert not torch.equal(epoch1, torch.arange(n)), "a training loader shuffles"


def test_seed_makes_runs_repeat():
    a = GPUBatchLoader(_images(12), _ids(12), batch_size=6, pad=2, seed=5)
    b = GPUBatchLoader(_images(12), _ids(12), batch_size=6, pad=2, seed=5)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_labels_follow_their_images():
    # Each image is filled with its own index, so after shuffling the label must still match.
    n = 9
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    loader = GPUBatchLoader(images, _ids(n), batch_size=4, train=True, pad=1, pad_mode="reflect")
    for xb, yb in loader:
        assert torch.allclose(xb.mul(255).round()[:, 0, 0, 0], yb.float())


def test_normalisation_value_range():
    images = torch.stack([torch.zeros(3, 4, 4, dtype=torch.uint8), torch.full((3, 4, 4), 255, dtype=torch.uint8)])
    plain = GPUBatchLoader(images, torch.tensor([0, 1]), batch_size=2, train=False)
    xb, _ = next(iter(plain))
    assert xb[0].max() == 0 and xb[1].min() == 1  # no mean/std: values in [0, 1]
    norm = GPUBatchLoader(images, torch.tensor([0, 1]), batch_size=2, train=False,
                          mean=IMAGENET_MEAN, std=IMAGENET_STD)
    xb, _ = next(iter(norm))
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(xb[0, :, 0, 0], -mean / std)
    torch.testing.assert_close(xb[1, :, 0, 0], (1 - mean) / std)


def test_random_images_are_roughly_standardised():
    images = _images(64, size=16)
    loader = GPUBatchLoader(images, _ids(64), batch_size=64, train=False, mean=(0.5,) * 3, std=(0.29,) * 3)
    xb, _ = next(iter(loader))
    assert abs(xb.mean().item()) < 0.05 and abs(xb.std().item() - 1) < 0.05
    assert xb.min() >= -0.5 / 0.29 - 1e-4 and xb.max() <= 0.5 / 0.29 + 1e-4


def test_augmentation_changes_images_and_eval_does_not():
    images = _images(32, size=8)
    train = GPUBatchLoader(images, _ids(32), batch_size=32, train=True, shuffle=False, pad=2, seed=1)
    xb, yb = next(iter(train))
    assert torch.equal(yb, _ids(32))
    original = images.float() / 255
    changed = (xb - original).abs().flatten(1).amax(1) > 1e-6
    assert changed.float().mean() > 0.7, "crops and flips should change most images"
    evaluation = GPUBatchLoader(images, _ids(32), batch_size=32, train=False)
    xe, _ = next(iter(evaluation))
    torch.testing.assert_close(xe, original)


def test_flip_alone_mirrors_some_images_exactly():
    images = _images(40, size=6)
    loader = GPUBatchLoader(images, _ids(40), batch_size=40, train=True, shuffle=False, pad=0, seed=2)
    xb, _ = next(iter(loader))
    original = images.float() / 255
    same = [(xb[i] - original[i]).abs().max() < 1e-6 for i in range(40)]
    mirrored = [(xb[i] - original[i].flip(-1)).abs().max() < 1e-6 for i in range(40)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 5 < sum(mirrored) < 35


def test_crops_are_shifted_windows_of_the_padded_image():
    images = _images(16, size=8)
    loader = GPUBatchLoader(images, _ids(16), batch_size=16, train=True, shuffle=False, pad=2,
                            pad_mode="constant", flip=False, seed=4)
    xb, _ = next(iter(loader))
    padded = torch.nn.functional.pad(images.float() / 255, (2, 2, 2, 2))
    shifts = set()
    for i in range(16):
        found = [(t, l) for t in range(5) for l in range(5)
                 if torch.allclose(xb[i], padded[i, :, t:t + 8, l:l + 8])]
        assert found, f"image {i} is not a crop of its padded original"
        shifts.add(found[0])
    assert len(shifts) > 3, "crop positions should vary between images"


@pytest.mark.parametrize("pad, pad_mode, crop, flip", [(0, "reflect", 6, True), (2, "reflect", 8, True),
                                                     (3, "constant", (7, 5), False)])
def test_cpu_numpy_and_gpu_torch_paths_make_the_same_batches(monkeypatch, pad, pad_mode, crop, flip):
    # A CPU makes batches with NumPy (slices), a GPU with PyTorch (one gather): same random numbers, same batch.
    from tlhelpers.tools import gpu_data

    def batches(use_numpy):
        monkeypatch.setattr(gpu_data, "_numpy_on_cpu", lambda device: use_numpy)
        loader = GPUBatchLoader(_images(13, size=8), _ids(13), batch_size=5, train=True, pad=pad,
                                pad_mode=pad_mode, crop=crop, flip=flip, mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=9)
        return [b for epoch in range(2) for b in loader]

    for (xs, ys), (xg, yg) in zip(batches(True), batches(False)):
        assert torch.equal(ys, yg) and torch.equal(xs, xg)
        assert xs.dtype == torch.float32 and xs.is_contiguous()


def test_eval_is_deterministic():
    images = _images(20)
    loader = GPUBatchLoader(images, _ids(20), batch_size=8, train=False, pad=4, size=12)
    first = [x for x, _ in loader]
    second = [x for x, _ in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert torch.equal(torch.cat([y for _, y in loader]), _ids(20)), "evaluation keeps the order"


def test_upsampling_size_and_channels_last():
    loader = GPUBatchLoader(_images(6, size=8), _ids(6), batch_size=3, train=True, pad=2, size=24,
                            channels_last=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    xb, _ = next(iter(loader))
    assert xb.shape == (3, 3, 24, 24)
    assert xb.is_contiguous(memory_format=torch.channels_last)
    assert loader.output_size == (24, 24)
    # Upsampling a constant image keeps it constant (bilinear, no ringing).
    const = GPUBatchLoader(torch.full((1, 3, 4, 4), 128, dtype=torch.uint8), [0], batch_size=1,
                           train=False, size=(10, 14))
    xc, _ = next(iter(const))
    assert xc.shape == (1, 3, 10, 14)
    torch.testing.assert_close(xc, torch.full_like(xc, 128 / 255))


def test_crop_smaller_than_image_for_cached_pipelines():
    # e.g. Pets cached at 144 px and trained at 128: random crops in training, centre crop in eval
    images = _images(4, size=10)
    train = GPUBatchLoader(images, _ids(4), batch_size=4, train=True, crop=8)
    assert next(iter(train))[0].shape == (4, 3, 8, 8)
    evaluation = GPUBatchLoader(images, _ids(4), batch_size=4, train=False, crop=8)
    torch.testing.assert_close(next(iter(evaluation))[0], images[:, :, 1:9, 1:9].float() / 255)


def test_numpy_input_and_dtype():
    images = np.zeros((5, 3, 4, 4), dtype=np.uint8)
    loader = GPUBatchLoader(images, np.arange(5), batch_size=5, train=False, dtype=torch.bfloat16)
    xb, yb = next(iter(loader))
    assert xb.dtype == torch.bfloat16 and yb.dtype == torch.int64


def test_bad_input_is_a_clear_error():
    with pytest.raises(TypeError, match=r"uint8 .*\(N, C, H, W\)"):
        GPUBatchLoader(torch.zeros(4, 3, 8, 8), torch.arange(4))
    with pytest.raises(TypeError, match="permute"):
        GPUBatchLoader(np.zeros((4, 8, 8), dtype=np.uint8), np.arange(4))
    with pytest.raises(ValueError, match="labels"):
        GPUBatchLoader(_images(4), torch.arange(3))
    with pytest.raises(ValueError, match="pad_mode"):
        GPUBatchLoader(_images(4), torch.arange(4), pad_mode="wrap")
    with pytest.raises(ValueError, match="mean and std"):
        GPUBatchLoader(_images(4), torch.arange(4), mean=IMAGENET_MEAN)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batches_are_made_on_the_gpu():
    loader = GPUBatchLoader(_images(8), _ids(8), batch_size=4, pad=2, size=16, device="cuda")
    xb, yb = next(iter(loader))
    assert xb.is_cuda and yb.is_cuda and loader.images.is_cuda
