"""tlhelpers.tools.image_folder: layouts, checks with clear errors, the split, the ImageFolder datasets."""
import os
import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from torchvision.datasets import ImageFolder

from tlhelpers.tools.image_folder import (
    FolderError, VisibleImageFolder, folder_splits, pets_image_folder, scan_image_folder, split_summary,
    subset_samples,
)
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
    assert scan.layout == "class folders" and scan.val is None
    assert scan.classes == scan.train.classes == reference.classes == ["cat", "dog", "fox"]
    assert scan.train.samples == reference.samples and scan.train.targets == reference.targets
    assert scan.skipped == [] and scan.notes == []
    image, label = scan.train[0]
    assert image.mode == "RGB" and label == 0  # read through load_rgb, no transform


def test_train_val_layout_is_respected(split_dir):
    scan = scan_image_folder(split_dir)
    train_ds, valid_ds = folder_splits(scan, size=16)
    assert scan.layout == "train/ + val/"
    assert scan.classes == ["class_00", "class_01", "class_02"]
    assert all(path.parts[-3] == "train" for path, _ in subset_samples(train_ds))
    assert all(path.parts[-3] == "val" for path, _ in subset_samples(valid_ds))
    assert (len(train_ds), len(valid_ds)) == (21, 9)
    assert [target for _, target in subset_samples(valid_ds)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert "train/ + val/, 3 classes, 21 training and 9 validation images (from the val/ folder)" \
        in split_summary(scan, train_ds, valid_ds)


@pytest.mark.parametrize("val_name", ["valid", "validation"])
def test_other_val_folder_names(split_dir, tmp_path, val_name):
    root = Path(shutil.copytree(split_dir, tmp_path / "photos"))
    (root / "val").rename(root / val_name)
    scan = scan_image_folder(root, check_images=False)
    assert scan.layout == "train/ + val/" and len(scan.val) == 9


def test_val_missing_a_class_keeps_the_indices(split_dir, tmp_path):
    root = Path(shutil.copytree(split_dir, tmp_path / "photos"))
    shutil.rmtree(root / "val" / "class_01")
    scan = scan_image_folder(root)
    assert scan.val.classes == scan.classes and sorted(set(scan.val.targets)) == [0, 2]  # not renumbered
    assert any("val/ has no folder for class_01" in note for note in scan.notes)


def test_train_folder_without_val_is_split(split_dir, tmp_path):
    root = Path(shutil.copytree(split_dir, tmp_path / "photos"))
    shutil.rmtree(root / "val")
    scan = scan_image_folder(root)
    train_ds, valid_ds = folder_splits(scan, size=16, val_pct=0.3)
    assert scan.layout == "train/ only"
    assert (len(train_ds), len(valid_ds)) == (14, 7)  # scikit-learn rounds the held-out share up
    assert any("no val/ folder" in note for note in scan.notes)


def test_hidden_and_non_image_files_are_ignored(own_flat):
    for hidden in (own_flat / ".ipynb_checkpoints", own_flat / "__MACOSX", own_flat / "dog" / "__MACOSX"):
        hidden.mkdir()
        (hidden / "x.jpg").write_bytes(some_jpg(own_flat).read_bytes())
    (own_flat / "cat" / "._cat_1.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    (own_flat / "cat" / "notes.txt").write_text("not an image")
    (own_flat / "dog" / "more").mkdir()
    shutil.copy(some_jpg(own_flat / "dog"), own_flat / "dog" / "more" / "deep.JPG")  # nested, upper-case ending
    scan = scan_image_folder(own_flat)
    assert scan.classes == ["cat", "dog", "fox"]
    assert len(scan.train) == 31 and scan.skipped == []
    assert not any("MACOSX" in path or "/." in path for path, _ in scan.train.samples)
    assert scan.ignored_files == 1
    assert any("ignored 1 file" in note for note in scan.notes)


def test_a_hidden_folder_above_the_root_is_fine(flat_dir, tmp_path):
    root = Path(shutil.copytree(flat_dir, tmp_path / ".cache" / "photos"))
    assert len(scan_image_folder(root, check_images=False).train) == 30


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


def test_unreadable_images_fail_or_skip(own_flat):
    names = ["broken_1.jpg", "broken_2.png"]
    (own_flat / "dog" / names[0]).write_bytes(b"GIF89a but not really")
    (own_flat / "fox" / names[1]).write_bytes(b"")
    with pytest.raises(FolderError, match="2 unreadable image") as info:
        scan_image_folder(own_flat)
    assert all(name in str(info.value) for name in names)
    assert "--bad-images skip" in str(info.value)
    scan = scan_image_folder(own_flat, bad_images="skip")
    assert sorted(p.name for p in scan.skipped) == names
    assert len(scan.train) == 30 and not {str(p) for p in scan.skipped} & {path for path, _ in scan.train.samples}
    assert len(scan.train.targets) == len(scan.train.imgs) == 30
    assert any("skipped 2 unreadable" in note for note in scan.notes)
    with pytest.raises(ValueError, match="bad_images='ignore'"):
        scan_image_folder(own_flat, bad_images="ignore")


def test_skipping_every_image_of_a_class_is_an_error(own_flat):
    for path in (own_flat / "fox").iterdir():
        path.write_bytes(b"broken")
    with pytest.raises(FolderError, match="no images left to train on: fox/"):
        scan_image_folder(own_flat, bad_images="skip")


def test_a_class_folder_named_in_another_encoding_is_named_in_the_error(own_flat):
    """A folder "café" written as Latin-1 bytes (b"caf\\xe9"): a FolderError naming the folder and the class."""
    os.rename(own_flat / "fox", os.fsencode(own_flat) + b"/caf\xe9")
    with pytest.raises(FolderError) as info:
        scan_image_folder(own_flat)
    message = str(info.value)
    assert message.startswith(f"{own_flat}: the class folder 'caf\\xe9'") and "not UTF-8" in message
    assert "rename the folder, e.g. to 'café'" in message
    message.encode("utf-8")  # the message itself prints anywhere


def test_files_that_are_not_regular_files_are_listed_not_waited_on(own_flat):
    fifo = own_flat / "dog" / "pipe.jpg"
    os.mkfifo(fifo)
    # reading a FIFO waits for a writer: if the scan still waits after 20 s, be that writer and release it
    release = threading.Timer(20, lambda: os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)))
    release.start()
    try:
        with pytest.raises(FolderError, match=r"1 unreadable image.*pipe\.jpg \(a FIFO \(named pipe\), not a regular file\)"):
            scan_image_folder(own_flat)
    finally:
        release.cancel()


def test_class_folders_that_differ_only_in_case_get_a_warning(own_flat):
    shutil.copytree(own_flat / "cat", own_flat / "Cat")
    with pytest.warns(UserWarning, match="class folders Cat/ and cat/ differ only in upper/lower case"):
        scan = scan_image_folder(own_flat)
    assert scan.classes == ["Cat", "cat", "dog", "fox"]  # still two classes, as ImageFolder makes them
    assert any("Cat/ and cat/" in note for note in scan.notes)  # also in split_summary's notes


# --- the split -----------------------------------------------------------------------------

def test_split_is_stratified_disjoint_and_reproducible(flat_dir):
    scan = scan_image_folder(flat_dir)
    train_ds, valid_ds = folder_splits(scan, size=16, val_pct=0.2, seed=5)
    train, valid = subset_samples(train_ds), subset_samples(valid_ds)
    assert Counter(target for _, target in valid) == {0: 2, 1: 2, 2: 2}
    assert sorted(train + valid) == sorted((Path(path), target) for path, target in scan.train.samples)  # a partition
    assert subset_samples(folder_splits(scan, size=16, val_pct=0.2, seed=5)[1]) == valid
    assert subset_samples(folder_splits(scan, size=16, val_pct=0.2, seed=6)[1]) != valid


def test_training_images_are_augmented_validation_images_not(flat_dir):
    scan = scan_image_folder(flat_dir)
    train_ds, valid_ds = folder_splits(scan, size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert train_ds[0][0].shape == valid_ds[0][0].shape == (3, 16, 16)
    assert torch.equal(valid_ds[0][0], valid_ds[0][0])
    torch.manual_seed(0)
    assert not torch.equal(train_ds[0][0], train_ds[0][0])  # random crops and flips
    assert scan.train.transform is None  # the scan itself is untouched


def test_a_split_that_cannot_be_stratified_says_what_to_do(own_flat):
    for path in sorted((own_flat / "fox").iterdir())[1:]:
        path.unlink()
    scan = scan_image_folder(own_flat)
    with pytest.raises(FolderError, match=r"Cannot split 21 images.*Add images to the small classes.*train/ and val/"):
        folder_splits(scan, size=16)


def test_summary_points_out_imbalance(own_flat):
    for path in sorted((own_flat / "fox").iterdir())[3:]:
        path.unlink()
    scan = scan_image_folder(own_flat)
    text = split_summary(scan, *folder_splits(scan, size=16, val_pct=0.3))
    assert "fox  train     2  valid     1" in text
    assert "the largest class has 3.5x the images of the smallest" in text


def test_visible_image_folder_drop():
    folder = VisibleImageFolder.__new__(VisibleImageFolder)
    folder.samples = [("a.jpg", 0), ("b.jpg", 1), ("c.jpg", 1)]
    folder.drop([Path("b.jpg")])
    assert folder.samples == folder.imgs == [("a.jpg", 0), ("c.jpg", 1)] and folder.targets == [0, 1]


def test_pets_image_folder(tmp_path):
    from tlhelpers.tools.samples import PET_BREEDS, make_pets_sample

    pets_dir = make_pets_sample(tmp_path, images_per_breed=2, image_size=(24, 20))
    root = pets_image_folder(pets_dir, root=tmp_path / "data")
    assert root == tmp_path / "data" / "pets_by_breed" and pets_image_folder(pets_dir, tmp_path / "data") == root  # once
    assert not (pets_dir.parent / "pets_by_breed").exists()  # nothing beside the photos (they may be TLH_PETS_DIR's)
    scan = scan_image_folder(root)  # the awkward files (RGBA, palette, CMYK) all decode
    assert scan.classes == sorted(PET_BREEDS) and len(scan.train) == 74
    assert Counter(scan.train.targets) == {i: 2 for i in range(37)}
