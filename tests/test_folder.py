"""tlhelpers.tools.folder: layouts, checks with clear errors, the per-class split, imbalance, metrics, the recipe."""
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import WeightedRandomSampler
from torchvision.datasets import ImageFolder

from tlhelpers.tools import folder
from tlhelpers.tools.folder import (
    FolderError, balanced_sampler, class_weights, format_metrics_table, load_image_folder, validation_metrics,
    scan_image_folder, split_per_class, train_on_folder,
)
from tlhelpers.tools.efficientnet_lite import LITE0_MEAN
from tlhelpers.tools.samples import make_image_folder_sample

torch.set_num_threads(1)  # 2 shared cores: tiny models are fastest on one thread


@pytest.fixture(scope="module")
def flat_dir(tmp_path_factory):
    return make_image_folder_sample(tmp_path_factory.mktemp("flat") / "photos", classes=["cat", "dog", "fox"],
                                    images_per_class=10, size=(24, 24))


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    return make_image_folder_sample(tmp_path_factory.mktemp("split") / "photos", classes=3, images_per_class=10,
                                    size=(24, 24), split_dirs=True, val_pct=0.3)


@pytest.fixture()
def own_flat(flat_dir, tmp_path):
    """A private copy, for tests that add, remove or break files."""
    return Path(shutil.copytree(flat_dir, tmp_path / "photos"))


def some_jpg(root):
    return next(Path(root).rglob("*.jpg"))


# --- layouts -------------------------------------------------------------------------------

def test_flat_layout_matches_imagefolder(flat_dir):
    scan = scan_image_folder(flat_dir)
    reference = ImageFolder(flat_dir)
    assert scan.layout == "class folders" and not scan.has_val_folder
    assert scan.classes == reference.classes == ["cat", "dog", "fox"]
    assert [str(p) for p in scan.train_files] == [path for path, _ in reference.samples]
    assert scan.train_targets == reference.targets
    assert scan.val_files == [] and scan.skipped == []


def test_train_val_layout_is_respected(split_dir):
    data = load_image_folder(split_dir, image_size=16, batch_size=4, num_workers=0)
    assert data.scan.layout == "train/ + val/"
    assert data.classes == ["class_00", "class_01", "class_02"]
    assert all(p.parts[-3] == "train" for p in data.train_ds.files)
    assert all(p.parts[-3] == "val" for p in data.valid_ds.files)
    assert (len(data.train_ds), len(data.valid_ds)) == (21, 9)
    assert data.valid_ds.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert "from the val/ folder" in data.summary()


@pytest.mark.parametrize("val_name", ["valid", "validation"])
def test_other_val_folder_names(split_dir, tmp_path, val_name):
    root = Path(shutil.copytree(split_dir, tmp_path / "photos"))
    (root / "val").rename(root / val_name)
    scan = scan_image_folder(root, check_images=False)
    assert scan.layout == "train/ + val/" and len(scan.val_files) == 9


def test_train_folder_without_val_is_split(split_dir, tmp_path):
    root = Path(shutil.copytree(split_dir, tmp_path / "photos"))
    shutil.rmtree(root / "val")
    data = load_image_folder(root, image_size=16, val_pct=0.3, num_workers=0)
    assert data.scan.layout == "train/ only"
    assert (len(data.train_ds), len(data.valid_ds)) == (15, 6)
    assert any("no val/ folder" in note for note in data.scan.notes)


def test_hidden_and_non_image_files_are_ignored(own_flat):
    (own_flat / ".ipynb_checkpoints").mkdir()
    (own_flat / ".ipynb_checkpoints" / "x.jpg").write_bytes(some_jpg(own_flat).read_bytes())
    (own_flat / "cat" / "._cat_1.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    (own_flat / "cat" / "notes.txt").write_text("not an image")
    (own_flat / "dog" / "more").mkdir()
    shutil.copy(some_jpg(own_flat / "dog"), own_flat / "dog" / "more" / "deep.JPG")  # nested, upper-case ending
    scan = scan_image_folder(own_flat)
    assert scan.classes == ["cat", "dog", "fox"]
    assert len(scan.train_files) == 31 and scan.skipped == []
    assert scan.ignored_files == 1
    assert any("ignored 1 file" in note for note in scan.notes)


# --- errors --------------------------------------------------------------------------------

def test_missing_folder(tmp_path):
    with pytest.raises(FolderError, match=r"nope does not exist.*one sub-folder per class"):
        scan_image_folder(tmp_path / "nope")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(FolderError, match="is a file, not a folder"):
        scan_image_folder(tmp_path / "file.jpg")


def test_fewer_than_two_classes(own_flat, tmp_path):
    shutil.rmtree(own_flat / "dog")
    shutil.rmtree(own_flat / "fox")
    with pytest.raises(FolderError, match=r"found 1 class folder \(cat/\).*at least two classes"):
        scan_image_folder(own_flat)
    loose = tmp_path / "loose"
    loose.mkdir()
    for i in range(3):
        shutil.copy(some_jpg(own_flat), loose / f"img_{i}.jpg")
    with pytest.raises(FolderError, match="no class folders; its 3 images must be sorted into one sub-folder"):
        scan_image_folder(loose)


def test_class_without_images(own_flat):
    (own_flat / "empty_class").mkdir()
    (own_flat / "empty_class" / "readme.txt").write_text("no images here")
    with pytest.raises(FolderError, match=r"no images: empty_class/"):
        scan_image_folder(own_flat)


def test_val_without_train_and_unknown_val_class(split_dir, tmp_path):
    root = Path(shutil.copytree(split_dir, tmp_path / "a"))
    shutil.rmtree(root / "train")
    with pytest.raises(FolderError, match="has a val/ folder but no train/ folder"):
        scan_image_folder(root)
    root = Path(shutil.copytree(split_dir, tmp_path / "b"))
    (root / "val" / "class_00").rename(root / "val" / "zebra")
    with pytest.raises(FolderError, match="val has class folders that train/ lacks: zebra"):
        scan_image_folder(root)


def break_images(root):
    """One file that is no image at all and one truncated JPEG; returns their names."""
    (root / "cat" / "not_really.jpg").write_bytes(b"<html>404 Not Found</html>")
    data = some_jpg(root / "dog").read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return ["not_really.jpg", "truncated.jpg"]


def test_unreadable_images_fail_or_skip(own_flat):
    names = break_images(own_flat)
    with pytest.raises(FolderError, match="2 unreadable image") as info:
        scan_image_folder(own_flat)
    assert all(name in str(info.value) for name in names)
    assert "--bad-images skip" in str(info.value)
    scan = scan_image_folder(own_flat, bad_images="skip")
    assert sorted(p.name for p in scan.skipped) == names
    assert len(scan.train_files) == 30 and not set(scan.skipped) & set(scan.train_files)
    assert any("skipped 2 unreadable" in note for note in scan.notes)
    with pytest.raises(ValueError, match="bad_images='ignore'"):
        scan_image_folder(own_flat, bad_images="ignore")


def test_skipping_every_image_of_a_class_is_an_error(own_flat):
    for path in (own_flat / "fox").iterdir():
        path.write_bytes(b"broken")
    with pytest.raises(FolderError, match="no images left to train on: fox/"):
        scan_image_folder(own_flat, bad_images="skip")


def test_unknown_backbone_lists_the_valid_ones(flat_dir):
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet1000'.*resnet34.*mobilenet_v2.*efficientnet_lite0"):
        load_image_folder(flat_dir, backbone="resnet1000")


# --- the split -----------------------------------------------------------------------------

TARGETS = [0] * 20 + [1] * 10 + [2] * 3 + [3] * 2


def test_split_is_stratified_disjoint_and_complete():
    train, valid = split_per_class(TARGETS, val_pct=0.2, seed=1)
    assert sorted(train + valid) == list(range(len(TARGETS)))
    assert not set(train) & set(valid)
    assert Counter(TARGETS[i] for i in valid) == {0: 4, 1: 2, 2: 1, 3: 1}  # small classes still get one
    assert train == sorted(train) and valid == sorted(valid)


def test_split_is_deterministic_for_a_seed():
    assert split_per_class(TARGETS, seed=7) == split_per_class(TARGETS, seed=7)
    assert split_per_class(TARGETS, seed=7) != split_per_class(TARGETS, seed=8)


def test_adding_a_class_keeps_the_other_splits():
    classes = ["a", "b", "c", "d"]
    _, valid = split_per_class(TARGETS, seed=3, classes=classes)
    _, valid_more = split_per_class(TARGETS + [4] * 5, seed=3, classes=classes + ["e"])
    assert set(valid) <= set(valid_more)


def test_split_needs_two_images_per_class():
    with pytest.raises(FolderError, match="class 'lonely' has only 1 image"):
        split_per_class([0, 0, 1], classes=["many", "lonely"])
    with pytest.raises(ValueError, match="val_pct=1.5"):
        split_per_class(TARGETS, val_pct=1.5)


def test_flat_split_in_load_image_folder(flat_dir):
    data = load_image_folder(flat_dir, image_size=16, val_pct=0.2, seed=5, num_workers=0)
    again = load_image_folder(flat_dir, image_size=16, val_pct=0.2, seed=5, num_workers=0)
    assert data.valid_ds.files == again.valid_ds.files
    assert Counter(data.valid_ds.targets) == {0: 2, 1: 2, 2: 2}
    assert not set(data.train_ds.files) & set(data.valid_ds.files)
    images, labels = next(iter(data.train_dl))
    assert images.shape[1:] == (3, 16, 16)
    assert data.mean == LITE0_MEAN  # the backbone decides the normalisation


# --- imbalance -----------------------------------------------------------------------------

def test_class_weights():
    weights = class_weights([0, 0, 0, 1], num_classes=2)
    assert torch.allclose(weights, torch.tensor([4 / 6, 2.0]))
    assert torch.allclose(class_weights([0, 1, 2, 0, 1, 2], 3), torch.ones(3))
    with pytest.raises(ValueError, match="no training images"):
        class_weights([0, 0], num_classes=2)


def test_balanced_sampler_draws_classes_equally():
    targets = [0] * 90 + [1] * 10
    sampler = balanced_sampler(targets, seed=0, num_samples=4000)
    drawn = Counter(targets[i] for i in sampler)
    assert 0.45 < drawn[1] / 4000 < 0.55
    assert list(balanced_sampler(targets, seed=0)) == list(balanced_sampler(targets, seed=0))


def test_balance_options(flat_dir):
    data = load_image_folder(flat_dir, image_size=16, balance="sampler", num_workers=0)
    assert isinstance(data.train_dl.sampler, WeightedRandomSampler) and data.class_weights is None
    data = load_image_folder(flat_dir, image_size=16, balance="loss", num_workers=0)
    assert torch.allclose(data.class_weights, torch.ones(3))
    with pytest.raises(ValueError, match="balance='oversample'"):
        load_image_folder(flat_dir, balance="oversample")


def test_weighted_loss_is_for_training_only():
    torch.manual_seed(0)
    model = folder.FolderModel(2, "efficientnet_lite0", pretrained=False).eval()
    batch = (torch.randn(4, 3, 32, 32), torch.tensor([0, 0, 0, 1]))
    plain = model.training_step(batch)
    model.set_class_weights([1.0, 5.0])
    assert not torch.isclose(model.training_step(batch), plain)
    assert torch.isclose(model.validation_step(batch)["val_loss"], plain)
    with pytest.raises(ValueError, match="one weight per class"):
        model.set_class_weights([1.0, 2.0, 3.0])


# --- metrics -------------------------------------------------------------------------------

def test_validation_metrics_and_table():
    metrics = validation_metrics(torch.tensor([0, 0, 1, 1, 1, 2]), [0, 0, 0, 1, 1, 2], ["a", "b", "c"])
    assert metrics["val_acc"] == pytest.approx(5 / 6)
    assert metrics["per_class"]["a"] == {"images": 3, "correct": 2, "accuracy": pytest.approx(2 / 3)}
    assert metrics["balanced_acc"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [0, 0, 1]]
    table = format_metrics_table(metrics)
    assert "a                                3        2     66.7%" in table
    assert "overall" in table and "83.3%" in table
    probs = torch.eye(3)[[0, 0, 1, 1, 1, 2]]  # probabilities give the same result as labels
    assert validation_metrics(probs, [0, 0, 0, 1, 1, 2], ["a", "b", "c"])["val_acc"] == metrics["val_acc"]


# --- the recipe ----------------------------------------------------------------------------

def test_train_on_folder_runs_both_phases(flat_dir, capsys):
    data = load_image_folder(flat_dir, image_size=32, batch_size=8, num_workers=0)
    run = train_on_folder(data, frozen_epochs=1, epochs=1, progress=False)
    assert [h["phase"] for h in run.history] == ["frozen", "unfrozen"]
    first_lrs, second_lrs = run.history[0]["lrs"], run.history[1]["lrs"]
    assert max(second_lrs) == pytest.approx(max(first_lrs) / 10, rel=0.05)  # a lower rate to fine-tune
    bn = [m for m in run.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bn_params = {id(p) for m in bn for p in m.parameters()}
    assert all(p.requires_grad for p in run.model.parameters() if id(p) not in bn_params)  # unfrozen ...
    assert bn and not any(p.requires_grad for m in bn for p in m.parameters())  # ... except BatchNorm
    assert set(run.metrics) >= {"val_acc", "balanced_acc", "per_class", "confusion_matrix", "train_time_s"}
    assert sum(r["images"] for r in run.metrics["per_class"].values()) == len(data.valid_ds)
    out = capsys.readouterr().out
    assert "Phase 1, feature extraction" in out and "unfrozen epoch 1/1" in out


def test_train_on_folder_is_reproducible(flat_dir):
    """Re-running the training cell gives the same result: seeds and the loader's shuffling are reset."""
    data = load_image_folder(flat_dir, image_size=32, batch_size=8, num_workers=0)
    runs = [train_on_folder(data, frozen_epochs=1, epochs=0, progress=False, verbose=False) for _ in range(2)]
    assert runs[0].history[0]["train_loss"] == runs[1].history[0]["train_loss"]
    weights = [dict(run.model.named_parameters())["network._fc.weight"] for run in runs]
    assert torch.equal(*weights)


def test_train_on_folder_checks_its_arguments(flat_dir):
    data = load_image_folder(flat_dir, image_size=16, num_workers=0)
    with pytest.raises(ValueError, match="image_size were already decided"):
        train_on_folder(data, image_size=64)
    with pytest.raises(ValueError, match="at least one epoch"):
        train_on_folder(data, frozen_epochs=0, epochs=0)
    with pytest.raises(ValueError, match=r"unfreeze_stages=99: efficientnet_lite0 has \d+ stages"):
        train_on_folder(data, unfreeze_stages=99, progress=False)


def test_pets_image_folder(tmp_path):
    from tlhelpers.tools.samples import PET_BREEDS, make_pets_sample

    pets_dir = make_pets_sample(tmp_path, images_per_breed=2, image_size=(24, 20))
    root = folder.pets_image_folder(pets_dir)
    assert root == tmp_path / "pets_by_breed" and folder.pets_image_folder(pets_dir) == root  # made once
    scan = scan_image_folder(root)  # the awkward files (RGBA, palette, CMYK) all decode
    assert scan.classes == sorted(PET_BREEDS) and len(scan.train_files) == 74
    assert Counter(scan.train_targets) == {i: 2 for i in range(37)}
