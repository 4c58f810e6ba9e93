"""Notebook 07: CIFAR-10 sources, cache and splits (tlhelpers.tools.cifar_data); the scratch CNN and flip TTA
(tlhelpers.cifar, the lesson module).

The real-data test at the end runs only where ``TLH_CIFAR10_TEST_DATA`` points at an
image-folder copy of CIFAR-10 (a folder or a .zip of ``train/<class>/*.jpg``).
"""
import functools
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlhelpers import cifar, config
from tlhelpers.tools import cache
from tlhelpers.tools import cifar_data as cd

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "ship": (30, 30, 200)}


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path, monkeypatch):
    """Every test gets its own data folder, and so its own cache."""
    monkeypatch.setenv("TLH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def _write_tree(root: Path, split: str = "train", per_class: int = 3, size: int = 32) -> Path:
    """``<root>/<split>/<class>/<n>.png``: each class one solid colour (PNG, so pixels are exact)."""
    for cls, colour in COLOURS.items():
        folder = root / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), colour).save(folder / f"{i:04d}.png")
    (root / split / ".DS_Store").write_bytes(b"junk")  # not a class folder: ignored
    return root


def _zip_tree(folder: Path, zip_path: Path, prefix: str) -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return zip_path


def _check_arrays(arrays, per_class=3, size=32):
    images, labels, classes = arrays
    assert classes == sorted(COLOURS)
    assert images.shape == (per_class * len(COLOURS), 3, size, size) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    assert torch.equal(labels.bincount(), torch.full((len(COLOURS),), per_class))
    for image, label in zip(images, labels):  # every image has its class's colour
        assert tuple(image[:, 0, 0].tolist()) == COLOURS[classes[label]]


# --- sources ----------------------------------------------------------------------------------

def test_image_folder(tmp_path):
    _check_arrays(cd.load_cifar10(_write_tree(tmp_path / "mycifar"), progress=False))


def test_train_level_is_found_in_a_nested_folder(tmp_path):
    _write_tree(tmp_path / "download" / "cifar10")
    _check_arrays(cd.load_cifar10(tmp_path / "download", progress=False))
    _check_arrays(cd.load_cifar10(tmp_path / "download" / "cifar10" / "train", progress=False))


def test_nested_zip(tmp_path):
    folder = _write_tree(tmp_path / "tree")
    zip_path = _zip_tree(folder, tmp_path / "cifar10-jpeg-train.zip", prefix="outer/cifar10")
    _check_arrays(cd.load_cifar10(zip_path, progress=False))
    assert cd.has_split(zip_path, "train") and not cd.has_split(zip_path, "test")


def test_resize_on_decode_and_max_per_class(tmp_path):
    root = _write_tree(tmp_path / "big", per_class=5, size=20)
    images, labels, _ = cd.load_cifar10(root, size=8, max_per_class=2, progress=False)
    assert images.shape == (6, 3, 8, 8) and torch.equal(labels.bincount(), torch.tensor([2, 2, 2]))
    assert tuple(images[0, :, 4, 4].tolist()) == COLOURS["cat"]


def test_which_source(tmp_path):
    root = _write_tree(tmp_path / "mine")
    assert cd.resolve_source(None) == "torchvision" == cd.resolve_source("torchvision")
    assert cd.resolve_source(str(root)) == root.resolve()
    # quick mode reads the sample that ships with the course, whatever the source
    assert cd.resolve_source(root, quick=True) == cd.CIFAR10_SAMPLE


def test_missing_path_and_bad_trees_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-cifar.zip.*does not exist.*TLH_CIFAR10_DIR"):
        cd.load_cifar10(tmp_path / "no-such-cifar.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no 'train/' folder"):
        cd.load_cifar10(tmp_path / "empty")
    not_a_zip = tmp_path / "data.zip"
    not_a_zip.write_text("hello")
    with pytest.raises(ValueError, match="not a zip archive"):
        cd.load_cifar10(not_a_zip)
    wrong = tmp_path / "wrong.zip"
    with zipfile.ZipFile(wrong, "w") as zf:
        zf.writestr("images/cat/1.jpg", b"x")
    with pytest.raises(FileNotFoundError, match="no 'train/<class>/<image>' files"):
        cd.load_cifar10(wrong)
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as zf:
        zf.writestr("cifar10/train/cat/0001.jpg", b"not a jpeg")
    with pytest.raises(OSError, match="broken.zip: cannot read cifar10/train/cat/0001.jpg"):
        cd.load_cifar10(broken, progress=False)


def test_torchvision_source_converts_layout_and_explains_a_failed_download(monkeypatch, private_data_dir):
    import torchvision.datasets

    class FakeCIFAR10:  # what torchvision.datasets.CIFAR10 holds: (N, 32, 32, 3) uint8 and a list of labels
        classes = list(cd.CIFAR10_CLASSES)

        def __init__(self, root, train, download):
            assert download and Path(root) == private_data_dir
            self.data = np.zeros((40 if train else 20, 32, 32, 3), dtype=np.uint8)
            self.data[..., 0] = 255  # red
            self.targets = [i % 10 for i in range(len(self.data))]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    images, labels, classes = cd.load_cifar10(None)
    assert images.shape == (40, 3, 32, 32) and images[:, 0].min() == 255 and images[:, 1].max() == 0
    assert labels[:4].tolist() == [0, 1, 2, 3] and classes == list(cd.CIFAR10_CLASSES)
    splits = cd.load_cifar10_splits("torchvision", valid_pct=0.25, progress=False)
    assert len(splits.test.labels) == 20 and "test split" in splits.test_from  # test_pct is not used
    assert (len(splits.train.labels), len(splits.valid.labels)) == (30, 10)

    def offline(*args, **kwargs):
        raise OSError("no internet")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(RuntimeError, match="no internet.*TLH_CIFAR10_DIR.*TLH_QUICK=1"):
        cd.load_cifar10(None)


def test_quick_sample_is_the_shipped_real_sample(private_data_dir):
    images, labels, classes = cd.load_cifar10(quick=True, progress=False)
    assert classes == list(cd.CIFAR10_CLASSES) and images.shape == (10 * cd.QUICK_IMAGES_PER_CLASS, 3, 32, 32)
    assert torch.equal(labels.bincount(), torch.full((10,), cd.QUICK_IMAGES_PER_CLASS))
    assert images.float().std() > 40, "photos, not blank images"
    splits = cd.load_cifar10_splits(quick=True, progress=False)  # the notebook's split: 720 / 80 / 200
    assert [len(p.labels) for p in (splits.train, splits.valid, splits.test)] == [720, 80, 200]


# --- the cache ----------------------------------------------------------------------------------

def _forbid_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decoded an image although the cache is valid")
    monkeypatch.setattr(cache, "load_square", fail)


def test_cache_is_reused_then_invalidated_by_a_changed_folder(tmp_path, monkeypatch, private_data_dir):
    root = _write_tree(tmp_path / "tree")
    first = cd.load_cifar10(root, progress=False)
    cached = sorted(p.name for p in (private_data_dir / "cache").iterdir())
    assert len(cached) == 2 and cached[0].startswith("tree-") and cached[0].endswith("-train-32px.json")

    with monkeypatch.context() as m:
        _forbid_decoding(m)
        again = cd.load_cifar10(root, progress=False)
    assert torch.equal(first.images, again.images) and first.classes == again.classes

    # a new image invalidates the cache
    Image.new("RGB", (32, 32), COLOURS["dog"]).save(root / "train" / "dog" / "9999.png")
    assert len(cd.load_cifar10(root, progress=False).labels) == len(first.labels) + 1
    # so does an edited one (same name, newer mtime)
    target = root / "train" / "cat" / "0000.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(target)
    os.utime(target, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert tuple(cd.load_cifar10(root, progress=False).images[0, :, 0, 0].tolist()) == (1, 2, 3)


def test_zip_cache_is_keyed_by_size_and_mtime(tmp_path, monkeypatch):
    zip_path = _zip_tree(_write_tree(tmp_path / "tree"), tmp_path / "c.zip", prefix="cifar10")
    cd.load_cifar10(zip_path, progress=False)
    with monkeypatch.context() as m:
        _forbid_decoding(m)
        cd.load_cifar10(zip_path, progress=False)
        with pytest.raises(AssertionError, match="decoded"):  # another size is another cache
            cd.load_cifar10(zip_path, size=4, progress=False)
        later = time.time() + 5
        os.utime(zip_path, (later, later))
        with pytest.raises(AssertionError, match="decoded"):  # a newer zip is decoded again
            cd.load_cifar10(zip_path, progress=False)


def test_a_damaged_cache_is_rebuilt(tmp_path, private_data_dir):
    root = _write_tree(tmp_path / "tree")
    first = cd.load_cifar10(root, progress=False).images.clone()  # a copy: the cache file is memory-mapped
    next((private_data_dir / "cache").glob("*.npy")).write_bytes(b"truncated")
    assert torch.equal(cd.load_cifar10(root, progress=False).images, first)


# --- splits -------------------------------------------------------------------------------------

def test_hold_out_is_seeded_disjoint_and_stratified():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2)  # image i shows i
    arrays = cd.ImageArrays(images, torch.tensor([0] * 50 + [1] * 30 + [2] * 20), ["a", "b", "c"])
    rest, held = cd.hold_out(arrays, 0.2, seed=1)
    assert len(held.labels) == 20 and held.labels.bincount().tolist() == [10, 6, 4]
    ids_rest, ids_held = rest.images[:, 0, 0, 0].tolist(), held.images[:, 0, 0, 0].tolist()
    assert set(ids_rest).isdisjoint(ids_held) and len(ids_rest) + len(ids_held) == 100
    assert ids_held == sorted(ids_held), "both parts keep the original order"
    assert all(arrays.labels[i] == label for i, label in zip(ids_held, held.labels.tolist()))
    assert torch.equal(cd.hold_out(arrays, 0.2, seed=1)[1].images, held.images)
    assert not torch.equal(cd.hold_out(arrays, 0.2, seed=2)[1].images, held.images)
    with pytest.raises(ValueError, match="Cannot split"):  # one training image cannot hold three classes
        cd.hold_out(arrays, 0.99)


def test_splits_are_three_disjoint_sets_and_use_a_test_folder(tmp_path):
    root = _write_tree(tmp_path / "tree", per_class=10)
    splits = cd.load_cifar10_splits(root, valid_pct=0.25, test_pct=0.2, progress=False)
    sizes = [len(part.labels) for part in (splits.train, splits.valid, splits.test)]
    assert sizes == [18, 6, 6] and "hold-out" in splits.test_from and splits.classes == sorted(COLOURS)
    for part in (splits.train, splits.valid, splits.test):
        assert part.labels.bincount().tolist() == [len(part.labels) // 3] * 3
    # with a test/ folder, the test images are those; validation still comes from train/
    _write_tree(root, split="test", per_class=2)
    splits = cd.load_cifar10_splits(root, valid_pct=0.2, test_pct=0.5, progress=False)
    assert [len(p.labels) for p in (splits.train, splits.valid, splits.test)] == [24, 6, 6]
    assert "test split" in splits.test_from and torch.equal(splits.test.labels.bincount(), torch.tensor([2, 2, 2]))


# --- the lesson module: the scratch CNN and flip TTA ------------------------------------------------

def test_scratch_cnn_shapes_and_label_smoothing():
    torch.manual_seed(0)
    model = cifar.ScratchCNN(num_classes=10, widths=(8, 16, 16, 32))
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    assert model(images).shape == (4, 10)
    model.label_smoothing = 0.0
    plain = model.training_step((images, labels))
    model.label_smoothing = 0.5
    smoothed = model.training_step((images, labels))
    assert not torch.isclose(plain, smoothed)
    result = model.validation_step((images, labels))
    assert torch.isclose(result["val_loss"], plain), "validation is plain cross entropy"


def test_scratch_cnn_learns_with_the_notebooks_recipe():
    from tlhelpers.finetune import fit_one_cycle
    from tlhelpers.tools.gpu_data import GPUBatchLoader

    torch.manual_seed(0)
    labels = torch.arange(128) % 2
    images = torch.randint(0, 128, (128, 3, 32, 32), dtype=torch.uint8)
    images[labels == 1, 0] += 127  # class 1 is redder
    train_dl = GPUBatchLoader(images, labels, 16, train=True, pad=4, mean=cd.CIFAR10_MEAN, std=cd.CIFAR10_STD)
    valid_dl = GPUBatchLoader(images, labels, 128, train=False, mean=cd.CIFAR10_MEAN, std=cd.CIFAR10_STD)
    model = cifar.ScratchCNN(2, widths=(8, 8, 16, 16))
    sgd = functools.partial(torch.optim.SGD, momentum=0.9, nesterov=True)
    history = fit_one_cycle(4, 0.1, model, train_dl, valid_dl, weight_decay=5e-4, opt_func=sgd)
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[-1]["val_acc"] >= 0.9


def test_flip_tta_averages_an_image_and_its_mirror():
    class LeftMinusRight(torch.nn.Module):  # a logit that changes sign when the image is mirrored
        def forward(self, x):
            left_minus_right = x[:, 0, :, 0].mean(1) - x[:, 0, :, -1].mean(1)
            return torch.stack([left_minus_right, torch.zeros_like(left_minus_right)], dim=1)

    images = torch.zeros(2, 3, 4, 4)
    images[:, 0, :, 0] = 1.0
    loader = [(images, torch.tensor([0, 0]))]
    assert LeftMinusRight()(images).softmax(1)[0, 0] > 0.7
    assert len(cifar.Mirrored(loader)) == 1
    probs, labels = cifar.predict_with_flip_tta(LeftMinusRight(), loader)
    torch.testing.assert_close(probs, torch.full((2, 2), 0.5))  # +1 and -1 cancel out
    assert labels.tolist() == [0, 0]


# --- the real-data test ---------------------------------------------------------------------------

REAL_DATA = os.environ.get("TLH_CIFAR10_TEST_DATA")


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA, reason="set TLH_CIFAR10_TEST_DATA to a CIFAR-10 image-folder copy "
                                          "(a folder or .zip of train/<class>/*.jpg) to run the real-data test")
def test_real_cifar10_pretrained_beats_scratch_on_a_small_budget():
    """525 real CIFAR-10 training images, 2 epochs each, on the CPU, scored on 200 held-out test images.

    ImageNet features (EfficientNet-Lite0 with its offline weights, backbone frozen, images
    upsampled to 96 px, through ``fine_tune``) must beat the scratch CNN on the same images and
    epochs (``fit_one_cycle``, Nesterov SGD) by at least 15 points.
    """
    from tlhelpers.finetune import FineTuneConfig, Phase, fine_tune, fit_one_cycle
    from tlhelpers.tools.backbones import BACKBONES
    from tlhelpers.tools.gpu_data import GPUBatchLoader
    from tlhelpers.training import PretrainedClassifier

    torch.set_num_threads(min(2, torch.get_num_threads()))
    splits = cd.load_cifar10_splits(REAL_DATA, valid_pct=0.125, test_pct=0.25, max_per_class=80, progress=False)
    assert splits.classes == list(cd.CIFAR10_CLASSES)
    assert [len(p.labels) for p in (splits.train, splits.valid, splits.test)] == [525, 75, 200]

    def loaders(**transform):
        return [GPUBatchLoader(part.images, part.labels, 50 if train else 200, train=train, pad=4, drop_last=train,
                               seed=0, **transform)
                for part, train in ((splits.train, True), (splits.valid, False), (splits.test, False))]

    def test_accuracy(model, test_dl):
        probs, labels = cifar.predict_with_flip_tta(model, test_dl)
        return (probs.argmax(1) == labels).float().mean().item()

    lite0 = BACKBONES["efficientnet_lite0"]
    train_dl, valid_dl, test_dl = loaders(size=96, mean=lite0.mean, std=lite0.std)
    config.seed_everything(0)
    pretrained = PretrainedClassifier("efficientnet_lite0", 10)
    fine_tune(pretrained, train_dl, valid_dl, FineTuneConfig(phases=[Phase(2, 1e-2, unfreeze=0)]))
    pretrained_acc = test_accuracy(pretrained, test_dl)

    train_dl, valid_dl, test_dl = loaders(mean=cd.CIFAR10_MEAN, std=cd.CIFAR10_STD)
    config.seed_everything(0)
    scratch = cifar.ScratchCNN(widths=(32, 64, 128, 256))
    fit_one_cycle(2, 0.2, scratch, train_dl, valid_dl, weight_decay=5e-4,
                  opt_func=functools.partial(torch.optim.SGD, momentum=0.9, nesterov=True))
    scratch_acc = test_accuracy(scratch, test_dl)
    print(f"test accuracy: pretrained EfficientNet-Lite0 {pretrained_acc:.3f}, scratch CNN {scratch_acc:.3f}")
    assert pretrained_acc >= scratch_acc + 0.15, (pretrained_acc, scratch_acc)
