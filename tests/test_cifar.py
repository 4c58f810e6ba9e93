"""CIFAR-10 sources, cache, splits, the scratch CNN and gradual unfreezing (notebook 07).

The real-data test at the end runs only where ``TLH_CIFAR10_TEST_DATA`` points at an
image-folder copy of CIFAR-10 (a folder or a .zip of ``train/<class>/*.jpg``).
"""
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlhelpers import cifar, config

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "ship": (30, 30, 200)}


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path, monkeypatch):
    """Every test gets its own data folder (and so its own cache), and no CIFAR-10 from the environment."""
    monkeypatch.setenv("TLH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv(cifar.ENV_VAR, raising=False)
    monkeypatch.delenv("TLH_QUICK", raising=False)
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
    root = _write_tree(tmp_path / "mycifar")
    _check_arrays(cifar.load_cifar10(root, verbose=False))


def test_train_level_is_found_in_a_nested_folder(tmp_path):
    _write_tree(tmp_path / "download" / "cifar10")
    _check_arrays(cifar.load_cifar10(tmp_path / "download", verbose=False))
    _check_arrays(cifar.load_cifar10(tmp_path / "download" / "cifar10" / "train", verbose=False))


def test_nested_zip(tmp_path):
    folder = _write_tree(tmp_path / "tree")
    zip_path = _zip_tree(folder, tmp_path / "cifar10-jpeg-train.zip", prefix="outer/cifar10")
    _check_arrays(cifar.load_cifar10(zip_path, verbose=False))
    assert cifar.has_split(zip_path, "train") and not cifar.has_split(zip_path, "test")


def test_resize_on_decode(tmp_path):
    root = _write_tree(tmp_path / "big", size=20)
    _check_arrays(cifar.load_cifar10(root, size=8, verbose=False), size=8)


def test_max_per_class(tmp_path):
    root = _write_tree(tmp_path / "c", per_class=5)
    images, labels, _ = cifar.load_cifar10(root, max_per_class=2, verbose=False)
    assert torch.equal(labels.bincount(), torch.tensor([2, 2, 2]))


def test_environment_variable_picks_the_source(tmp_path, monkeypatch):
    root = _write_tree(tmp_path / "fromenv")
    monkeypatch.setenv(cifar.ENV_VAR, str(root))
    assert cifar.resolve_cifar10_source(quick=False) == root.resolve()
    _check_arrays(cifar.load_cifar10(quick=False, verbose=False))
    monkeypatch.delenv(cifar.ENV_VAR)
    assert cifar.resolve_cifar10_source(quick=False) == "torchvision"


def test_missing_path_is_a_clear_error(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-cifar.zip"
    with pytest.raises(FileNotFoundError, match="no-such-cifar.zip.*does not exist"):
        cifar.load_cifar10(missing)
    monkeypatch.setenv(cifar.ENV_VAR, str(missing))
    with pytest.raises(FileNotFoundError, match=f"{cifar.ENV_VAR}: .*no-such-cifar.zip"):
        cifar.load_cifar10(quick=False)


def test_bad_trees_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no 'train/' folder"):
        cifar.load_cifar10(tmp_path / "empty")
    not_a_zip = tmp_path / "data.zip"
    not_a_zip.write_text("hello")
    with pytest.raises(ValueError, match="not a zip archive"):
        cifar.load_cifar10(not_a_zip)
    wrong = tmp_path / "wrong.zip"
    with zipfile.ZipFile(wrong, "w") as zf:
        zf.writestr("images/cat/1.jpg", b"x")
    with pytest.raises(FileNotFoundError, match="no 'train/<class>/<image>' files"):
        cifar.load_cifar10(wrong)


def test_torchvision_source_converts_layout_and_explains_a_failed_download(monkeypatch, private_data_dir):
    import torchvision.datasets

    class FakeCIFAR10:  # what torchvision.datasets.CIFAR10 holds: (N, 32, 32, 3) uint8 and a list of labels
        classes = list(cifar.CIFAR10_CLASSES)

        def __init__(self, root, train, download):
            assert download and Path(root) == private_data_dir
            self.data = np.zeros((4 if train else 2, 32, 32, 3), dtype=np.uint8)
            self.data[..., 0] = 255  # red
            self.targets = [0, 1, 2, 3][: len(self.data)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    images, labels, classes = cifar.load_cifar10("torchvision")
    assert images.shape == (4, 3, 32, 32) and images[:, 0].min() == 255 and images[:, 1].max() == 0
    assert labels.tolist() == [0, 1, 2, 3] and classes == list(cifar.CIFAR10_CLASSES)
    splits = cifar.load_cifar10_splits("torchvision", verbose=False)
    assert len(splits.val_labels) == 2 and "test split" in splits.held_out

    def offline(*args, **kwargs):
        raise OSError("no internet")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(RuntimeError, match=f"no internet.*{cifar.ENV_VAR}.*TLH_QUICK=1"):
        cifar.load_cifar10(quick=False)


def test_quick_sample_layout_and_classes(private_data_dir):
    root = cifar.resolve_cifar10_source(quick=True)
    assert root == private_data_dir / "quick" / "cifar10"
    assert sorted(p.name for p in (root / "train").iterdir() if p.is_dir()) == list(cifar.CIFAR10_CLASSES)
    images, labels, classes = cifar.load_cifar10(quick=True, verbose=False)
    assert classes == list(cifar.CIFAR10_CLASSES)
    assert images.shape == (10 * cifar.QUICK_IMAGES_PER_CLASS, 3, 32, 32)
    assert torch.equal(labels.bincount(), torch.full((10,), cifar.QUICK_IMAGES_PER_CLASS))


# --- the cache ----------------------------------------------------------------------------------

def _forbid_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decoded an image although the cache is valid")
    monkeypatch.setattr(cifar, "_decode", fail)


def test_cache_is_reused_then_invalidated_by_a_changed_folder(tmp_path, monkeypatch, private_data_dir):
    root = _write_tree(tmp_path / "tree")
    first = cifar.load_cifar10(root, verbose=False)
    paths = cifar.cache_paths(root.resolve())
    assert all(p.is_file() for p in paths.values()) and paths["images"].parent == private_data_dir / "cache"
    assert not list(paths["images"].parent.glob("*.part")), "atomic writes leave no .part files"

    with monkeypatch.context() as m:
        _forbid_decoding(m)
        again = cifar.load_cifar10(root, verbose=False)
    assert torch.equal(first.images, again.images) and first.classes == again.classes

    # a new image invalidates the cache
    Image.new("RGB", (32, 32), COLOURS["dog"]).save(root / "train" / "dog" / "9999.png")
    assert len(cifar.load_cifar10(root, verbose=False).labels) == len(first.labels) + 1
    # so does an edited one (same name, newer mtime)
    target = root / "train" / "cat" / "0000.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(target)
    os.utime(target, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    images, labels, classes = cifar.load_cifar10(root, verbose=False)
    assert tuple(images[0, :, 0, 0].tolist()) == (1, 2, 3)


def test_zip_cache_is_keyed_by_size_and_mtime(tmp_path, monkeypatch):
    zip_path = _zip_tree(_write_tree(tmp_path / "tree"), tmp_path / "c.zip", prefix="cifar10")
    cifar.load_cifar10(zip_path, verbose=False)
    with monkeypatch.context() as m:
        _forbid_decoding(m)
        cifar.load_cifar10(zip_path, verbose=False)
        with pytest.raises(AssertionError, match="decoded"):  # another size is another cache
            cifar.load_cifar10(zip_path, size=4, verbose=False)
        later = time.time() + 5
        os.utime(zip_path, (later, later))
        with pytest.raises(AssertionError, match="decoded"):  # a newer zip is decoded again
            cifar.load_cifar10(zip_path, verbose=False)


def test_a_damaged_cache_is_rebuilt(tmp_path):
    root = _write_tree(tmp_path / "tree")
    first = cifar.load_cifar10(root, verbose=False)
    cifar.cache_paths(root.resolve())["images"].write_bytes(b"truncated")
    assert torch.equal(cifar.load_cifar10(root, verbose=False).images, first.images)


# --- splits -------------------------------------------------------------------------------------

def test_stratified_split_is_seeded_disjoint_and_stratified():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    train_idx, val_idx = cifar.stratified_split(labels, val_size=0.2, seed=1)
    assert len(val_idx) == 20 and len(train_idx) == 80
    assert set(train_idx.tolist()).isdisjoint(val_idx.tolist())
    assert labels[val_idx].bincount().tolist() == [10, 6, 4]
    again, _ = cifar.stratified_split(labels, val_size=0.2, seed=1)
    other, _ = cifar.stratified_split(labels, val_size=0.2, seed=2)
    assert torch.equal(train_idx, again) and not torch.equal(train_idx, other)
    small, val_small = cifar.stratified_split(labels, val_size=10, train_size=40, seed=1)
    assert labels[small].bincount().tolist() == [20, 12, 8] and len(val_small) == 10
    assert cifar.stratified_subset(labels, 10, seed=3).numel() == 10
    with pytest.raises(ValueError, match="Cannot split"):
        cifar.stratified_split(labels, val_size=100)


def test_splits_hold_out_or_use_the_test_folder(tmp_path):
    root = _write_tree(tmp_path / "tree", per_class=10)
    splits = cifar.load_cifar10_splits(root, val_size=6, verbose=False)
    assert len(splits.val_labels) == 6 and len(splits.train_labels) == 24
    assert "hold-out" in splits.held_out
    _write_tree(root, split="test", per_class=2)
    splits = cifar.load_cifar10_splits(root, val_size=6, train_size=9, verbose=False)
    assert len(splits.val_labels) == 6 and "test split" in splits.held_out
    assert torch.equal(splits.train_labels.bincount(), torch.tensor([3, 3, 3]))


# --- models -------------------------------------------------------------------------------------

def test_scratch_cnn_shapes_and_label_smoothing():
    model = cifar.ScratchCNN(num_classes=10, widths=(8, 16, 16, 32))
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    assert model(images).shape == (4, 10)
    model.label_smoothing = 0.0
    plain = model.training_step((images, labels))
    model.label_smoothing = 0.5
    smoothed = model.training_step((images, labels))
    assert not torch.isclose(plain, smoothed)
    assert model.validation_step((images, labels))["val_loss"].shape == ()


def test_flip_tta_averages_an_image_and_its_mirror():
    class LeftMinusRight(torch.nn.Module):  # a logit that changes sign when the image is mirrored
        def forward(self, x):
            left_minus_right = x[:, 0, :, 0].mean(1) - x[:, 0, :, -1].mean(1)
            return torch.stack([left_minus_right, torch.zeros_like(left_minus_right)], dim=1)

    images = torch.zeros(2, 3, 4, 4)
    images[:, 0, :, 0] = 1.0
    dl = [(images, torch.tensor([0, 0]))]
    plain = LeftMinusRight()(images).softmax(1)
    assert plain[0, 0] > 0.7
    probs, targets = cifar.predict_with_flip_tta(LeftMinusRight(), dl)
    torch.testing.assert_close(probs, torch.full((2, 2), 0.5))  # logits +1 and -1 average out
    assert targets.tolist() == [0, 0]


def _tiny_lite0_run(phases, **options):
    from tlhelpers.tools.gpu_data import GPUBatchLoader
    from tlhelpers.models import PetsModel

    torch.manual_seed(0)
    model = PetsModel(num_classes=3, backbone="efficientnet_lite0", pretrained=False)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(8) % 3
    train_dl = GPUBatchLoader(images, labels, batch_size=4, train=True, pad=2)  # 2 steps: a real one-cycle
    val_dl = GPUBatchLoader(images, labels, batch_size=8, train=False)
    history = cifar.fit_gradual_unfreezing(model, phases, train_dl, val_dl, progress=False, verbose=False, **options)
    return model, history, val_dl


def test_gradual_unfreezing_unfreezes_more_each_phase(capsys):
    from tlhelpers.models import parameter_summary

    phases = [cifar.Phase(stages=0, epochs=1, max_lr=1e-3), cifar.Phase(stages=1, epochs=1, max_lr=1e-3)]
    model, history, _ = _tiny_lite0_run(phases)
    out = capsys.readouterr().out
    assert "Phase 1/2: training the head only (3,843 parameters)" in out
    assert "Phase 2/2: training the head + conv_head (416,003 parameters)" in out
    assert parameter_summary(model)["trainable"] == 416_003
    assert [h["phase"] for h in history] == [1, 2]
    assert all(k in history[0] for k in ("train_loss", "val_loss", "val_acc"))


def test_a_phase_that_makes_things_worse_is_undone(capsys):
    from tlhelpers.train import evaluate

    phases = [cifar.Phase(stages=0, epochs=1, max_lr=1e-2),
              cifar.Phase(stages=1, epochs=1, max_lr=10.0),  # plain SGD at this rate wrecks the model
              cifar.Phase(stages=1, epochs=1, max_lr=1e-2)]
    model, history, val_dl = _tiny_lite0_run(phases, opt_func=torch.optim.SGD)
    assert not history[1]["val_loss"] < history[0]["val_loss"]
    assert "Phase 2 did not improve the validation loss" in capsys.readouterr().out
    assert [h["phase"] for h in history] == [1, 2], "training stops after the failed phase"
    assert evaluate(model, val_dl)["val_loss"] == pytest.approx(history[0]["val_loss"], rel=1e-5)


# --- the real-data test ---------------------------------------------------------------------------

REAL_DATA = os.environ.get("TLH_CIFAR10_TEST_DATA")


def _train_and_score(model, splits, size, mean, std, epochs, max_lr, opt_func, batch_size=50):
    """Train on the GPU-resident path (here on the CPU); return (held-out accuracy, seconds)."""
    from tlhelpers.tools.gpu_data import GPUBatchLoader
    from tlhelpers.train import evaluate, fit_one_cycle

    train_dl = GPUBatchLoader(splits.train_images, splits.train_labels, batch_size, train=True, pad=4,
                              size=size, mean=mean, std=std, drop_last=True, seed=0)
    val_dl = GPUBatchLoader(splits.val_images, splits.val_labels, 300, train=False, size=size, mean=mean, std=std)
    start = time.perf_counter()
    fit_one_cycle(epochs, max_lr, model, train_dl, None, weight_decay=5e-4, opt_func=opt_func,
                  progress=False, verbose=False)
    seconds = time.perf_counter() - start
    return evaluate(model, val_dl)["val_acc"], seconds


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA, reason="set TLH_CIFAR10_TEST_DATA to a CIFAR-10 image-folder copy "
                                          "(a folder or .zip of train/<class>/*.jpg) to run the real-data test")
def test_real_cifar10_pretrained_beats_scratch_on_a_small_budget():
    """500 real CIFAR-10 training images, 300 held out, 2 epochs each, on the CPU.

    ImageNet features (EfficientNet-Lite0 with its offline weights, backbone frozen, images
    upsampled to 96 px) must beat the same data and epochs from scratch by at least 15 points.
    """
    from tlhelpers.models import PetsModel

    torch.set_num_threads(min(2, torch.get_num_threads()))
    splits = cifar.load_cifar10_splits(REAL_DATA, val_size=300, train_size=500, max_per_class=80, verbose=False)
    assert splits.classes == list(cifar.CIFAR10_CLASSES)
    assert len(splits.train_labels) == 500 and len(splits.val_labels) == 300

    config.seed_everything(0)
    pretrained = PetsModel(num_classes=10, backbone="efficientnet_lite0", dropout=0.2)
    pretrained.freeze()
    pretrained_acc, pretrained_s = _train_and_score(pretrained, splits, 96, pretrained.meta["mean"],
                                                    pretrained.meta["std"], 2, 1e-2, torch.optim.AdamW)
    config.seed_everything(0)
    scratch = cifar.ScratchCNN(widths=(32, 64, 128, 256))
    scratch_acc, scratch_s = _train_and_score(scratch, splits, None, cifar.CIFAR10_MEAN, cifar.CIFAR10_STD,
                                              2, 0.2, cifar.sgd_nesterov)
    print(f"held-out accuracy: pretrained EfficientNet-Lite0 {pretrained_acc:.3f} ({pretrained_s:.0f} s), "
          f"scratch CNN {scratch_acc:.3f} ({scratch_s:.0f} s)")
    assert pretrained_acc >= scratch_acc + 0.15, (pretrained_acc, scratch_acc)
