"""PetsDataset, transforms, splits and loaders on the generated sample; the image plots."""
import shutil
from collections import Counter

import matplotlib
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset
from torchvision import transforms as T

from tlhelpers import pets
from tlhelpers.tools import plotting
from tlhelpers.pets import (
    IMAGENET_MEAN, IMAGENET_STD, PetsDataset, class_counts, eval_transforms, is_cat, load_rgb,
    make_loaders, make_pets_splits, parse_breed, random_split_indices, stratified_split_indices,
    train_transforms,
)
from tlhelpers.tools.samples import NON_IMAGE_FILES, PET_BREEDS, make_pets_sample, read_pets_list

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def pet_dir(tmp_path_factory):
    return make_pets_sample(tmp_path_factory.mktemp("pets"), images_per_breed=6, image_size=(64, 48))


@pytest.fixture()
def own_copy(pet_dir, tmp_path):
    """A private copy of the sample, for tests that add or break files."""
    return shutil.copytree(pet_dir, tmp_path / "oxford-iiit-pet")


# --- labels --------------------------------------------------------------------------------

@pytest.mark.parametrize("filename, breed", [
    ("great_pyrenees_173.jpg", "great_pyrenees"),
    ("Abyssinian_1.jpg", "Abyssinian"),
    ("american_pit_bull_terrier_10.JPG", "american_pit_bull_terrier"),
    ("/some/folder/British_Shorthair_99.png", "British_Shorthair"),
])
def test_parse_breed(filename, breed):
    assert parse_breed(filename) == breed


def test_parse_breed_rejects_other_names():
    with pytest.raises(ValueError, match="notabreed.jpg"):
        parse_breed("notabreed.jpg")


def test_is_cat():
    assert is_cat("Abyssinian") and is_cat("British_Shorthair")
    assert not is_cat("great_pyrenees") and not is_cat("pug")


# --- the Dataset ---------------------------------------------------------------------------

def test_dataset_classes_files_and_targets(pet_dir):
    ds = PetsDataset(pet_dir)
    assert len(ds) == 37 * 6
    assert ds.files == sorted(ds.files)
    assert not any(f.suffix == ".mat" for f in ds.files) and (pet_dir / "images" / NON_IMAGE_FILES[0]).exists()
    # sorted ignoring case: the index is the official CLASS-ID - 1, the same in every session
    assert ds.classes == list(PET_BREEDS)
    rows = {r["image"]: r["class_id"] for r in read_pets_list(pet_dir / "annotations" / "list.txt")}
    assert all(ds.targets[i] == rows[f.stem] - 1 for i, f in enumerate(ds.files))
    assert ds.class_to_idx["Sphynx"] == 33 and ds.classes[ds.targets[0]] == parse_breed(ds.files[0])
    # the images/ folder works as root too
    assert PetsDataset(pet_dir / "images").files == ds.files


def test_items_are_rgb_whatever_the_file(pet_dir):
    ds = PetsDataset(pet_dir, transform=T.ToTensor())
    for name, mode in [("staffordshire_bull_terrier_22.jpg", "L"), ("Abyssinian_5.jpg", "RGBA"),
                       ("Egyptian_Mau_139.jpg", "P"), ("Egyptian_Mau_177.jpg", "CMYK")]:
        with Image.open(pet_dir / "images" / name) as img:
            assert img.mode == mode
        x, y = ds[ds.files.index(pet_dir / "images" / name)]
        assert x.shape[0] == 3 and x.dtype == torch.float32, name
        assert ds.classes[y] == parse_breed(name)


def test_rgba_is_composited_on_white(pet_dir):
    # the sample's RGBA file has a transparent frame hiding black pixels
    path = pet_dir / "images" / "Abyssinian_5.jpg"
    with Image.open(path) as img:
        assert img.convert("RGB").getpixel((0, 0)) == (0, 0, 0)  # dropping alpha shows black
    assert load_rgb(path).getpixel((0, 0)) == (255, 255, 255)


def test_unreadable_image_error_names_the_file(own_copy):
    bad = own_copy / "images" / "pug_999.jpg"
    bad.write_bytes(b"this is not a JPEG")
    ds = PetsDataset(own_copy)
    with pytest.raises(OSError, match="pug_999.jpg"):
        ds[ds.files.index(bad)]
    skipping = PetsDataset(own_copy, on_bad_image="skip")
    assert skipping.skipped == [bad] and bad not in skipping.files and len(skipping) == len(ds) - 1
    with pytest.raises(ValueError, match="on_bad_image"):
        PetsDataset(own_copy, on_bad_image="ignore")


def test_missing_folder_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PetsDataset(tmp_path / "nowhere")


def test_subsets_by_index_list(pet_dir):
    ds = PetsDataset(pet_dir, transform=eval_transforms(32))
    subset = Subset(ds, [5, 0, 17])
    assert len(subset) == 3 and subset[1][1] == ds[0][1]
    assert torch.equal(subset[1][0], ds[0][0])


# --- transforms ----------------------------------------------------------------------------

def test_transforms_shapes_and_determinism(pet_dir):
    img = load_rgb(pet_dir / "images" / "Abyssinian_5.jpg")
    ev = eval_transforms(64)
    assert ev(img).shape == (3, 64, 64) and torch.equal(ev(img), ev(img))
    tr = train_transforms(64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    torch.manual_seed(0)
    assert tr(img).shape == (3, 64, 64) and not torch.equal(tr(img), tr(img))
    assert [type(t).__name__ for t in ev.transforms] == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert ev.transforms[0].size == int(64 * 1.14)


# --- splits --------------------------------------------------------------------------------

def test_random_split_indices():
    train, valid = random_split_indices(100, val_pct=0.2, seed=1)
    assert len(valid) == 20 and sorted(train + valid) == list(range(100))
    assert (train, valid) == random_split_indices(100, val_pct=0.2, seed=1)
    assert valid != random_split_indices(100, val_pct=0.2, seed=2)[1]
    with pytest.raises(ValueError, match="val_pct"):
        random_split_indices(100, val_pct=20)


def test_stratified_split_keeps_proportions():
    targets = [0] * 50 + [1] * 30 + [2] * 15 + [3] * 5
    train, valid = stratified_split_indices(targets, val_pct=0.2, seed=3)
    assert sorted(train + valid) == list(range(100)) and not set(train) & set(valid)
    assert (train, valid) == stratified_split_indices(targets, val_pct=0.2, seed=3)
    in_valid = Counter(targets[i] for i in valid)
    for cls, total in Counter(targets).items():
        assert abs(in_valid[cls] - 0.2 * total) <= 1, cls


def test_make_pets_splits(pet_dir):
    train_ds, valid_ds = make_pets_splits(pet_dir, val_pct=0.2, size=32, seed=0)
    n = len(PetsDataset(pet_dir))
    assert len(train_ds) + len(valid_ds) == n and not set(train_ds.indices) & set(valid_ds.indices)
    assert train_ds.classes == valid_ds.classes == list(PET_BREEDS)
    assert train_ds.dataset.files == valid_ds.dataset.files  # one file list, two transforms
    assert make_pets_splits(pet_dir, val_pct=0.2, size=32, seed=0)[1].indices == valid_ds.indices
    counts = class_counts(valid_ds.targets, valid_ds.classes)
    assert all(1 <= c <= 2 for c in counts.values())  # 6 per breed * 0.2 = 1.2, stratified
    # validation items are deterministic (eval transform), training items are augmented
    x1, y1 = valid_ds[0]
    x2, y2 = valid_ds[0]
    assert torch.equal(x1, x2) and y1 == y2 and x1.shape == (3, 32, 32)
    torch.manual_seed(0)
    assert not torch.equal(train_ds[0][0], train_ds[0][0])
    random_train, random_valid = make_pets_splits(pet_dir, val_pct=0.2, size=32, stratified=False, seed=0)
    assert len(random_valid) == len(valid_ds) and random_valid.indices != valid_ds.indices


def test_class_counts():
    assert class_counts([0, 2, 2], ["a", "b", "c"]) == {"a": 1, "b": 0, "c": 2}


# --- loaders -------------------------------------------------------------------------------

def test_loaders(pet_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train_ds, valid_ds = make_pets_splits(pet_dir, size=32)
    train_dl, valid_dl = make_loaders(train_ds, valid_ds, batch_size=8, num_workers=0)
    assert train_dl.pin_memory is False and valid_dl.pin_memory is False
    assert train_dl.batch_size == 8 and valid_dl.batch_size == 16
    assert not train_dl.persistent_workers
    x, y = next(iter(train_dl))
    assert x.shape == (8, 3, 32, 32) and y.shape == (8,)
    # training order is seeded: the same loader settings give the same first batch labels
    again, _ = make_loaders(train_ds, valid_ds, batch_size=8, num_workers=0)
    assert torch.equal(next(iter(again))[1], y)
    # validation is not shuffled
    assert next(iter(valid_dl))[1].tolist() == valid_ds.targets[:16]


def test_default_num_workers(monkeypatch):
    monkeypatch.setattr(pets, "_usable_cpus", lambda: 8)
    monkeypatch.setattr(pets, "_in_notebook", lambda: True)
    monkeypatch.setattr(pets.multiprocessing, "get_start_method", lambda allow_none=True: "spawn")
    assert pets.default_num_workers() == 0
    monkeypatch.setattr(pets.multiprocessing, "get_start_method", lambda allow_none=True: "fork")
    assert pets.default_num_workers() == 4
    monkeypatch.setattr(pets, "_usable_cpus", lambda: 1)
    assert pets.default_num_workers() == 0


# --- image plots (tlhelpers.tools.plotting, section "images") ------------------------------------

def test_denormalize_inverts_normalize():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 8)
    normalized = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(images)
    assert torch.allclose(plotting.denormalize(normalized), images, atol=1e-6)
    assert torch.allclose(plotting.denormalize(normalized[0]), images[0], atol=1e-6)  # single image
    half = T.Normalize((0.5,) * 3, (0.5,) * 3)(images)
    assert torch.allclose(plotting.denormalize(half, (0.5,) * 3, (0.5,) * 3), images, atol=1e-6)
    assert plotting.denormalize(normalized * 10).max() <= 1 and plotting.denormalize(normalized * 10).min() >= 0


def test_show_batch_titles_every_image(pet_dir):
    train_ds, valid_ds = make_pets_splits(pet_dir, size=32)
    _, valid_dl = make_loaders(train_ds, valid_ds, batch_size=8, num_workers=0)
    fig = plotting.show_batch(valid_dl, n=12, nrow=6)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(fig.axes) == 12 and len(titled) == 12
    assert [ax.get_title() for ax in titled] == [valid_ds.classes[t] for t in valid_ds.targets[:12]]
    assert fig._suptitle is not None
    images, labels = next(iter(valid_dl))
    fig = plotting.show_batch((images, labels), classes=valid_ds.classes, n=5, nrow=8)
    assert sum(bool(ax.get_title()) for ax in fig.axes) == 5
    matplotlib.pyplot.close("all")


def test_other_image_figures_have_titles_and_labels(pet_dir):
    ds = PetsDataset(pet_dir, transform=eval_transforms(32))
    fig = plotting.show_example(*ds[0], classes=ds.classes)
    ax = fig.axes[0]
    assert ds.classes[ds[0][1]] in ax.get_title() and ax.get_xlabel() and ax.get_ylabel()

    fig = plotting.plot_image_grid(ds.files[:6], ncols=3)
    assert sum(bool(ax.get_title()) for ax in fig.axes) == 6 and fig._suptitle is not None

    fig = plotting.plot_breed_counts(class_counts(ds.targets, ds.classes))
    ax = fig.axes[0]
    assert len(ax.patches) == 37 and ax.get_title() and ax.get_xlabel() and ax.get_ylabel()

    train, valid = stratified_split_indices(ds.targets, 0.2)
    fig = plotting.plot_class_balance({"train": [ds.targets[i] for i in train],
                                       "valid": [ds.targets[i] for i in valid]}, ds.classes)
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * 37 and ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    matplotlib.pyplot.close("all")
