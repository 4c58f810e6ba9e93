"""tlhelpers.pets (notebooks 02-03) on the generated sample, and the image tooling it reads files with
(tlhelpers.tools.images)."""
import random
import shutil
from collections import Counter

import matplotlib.pyplot as plt
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset
from torchvision import transforms as T

from tlhelpers.config import IMAGENET_MEAN, IMAGENET_STD
from tlhelpers.pets import (
    PetsDataset, denormalize, eval_transforms, is_cat, make_loaders, make_pets_splits, parse_breed,
    random_split_indices, show_batch, stratified_split_indices, train_transforms,
)
from tlhelpers.tools import images
from tlhelpers.tools.images import find_bad_images, list_image_files, load_rgb
from tlhelpers.tools.samples import AWKWARD_IMAGES, NON_IMAGE_FILES, PET_BREEDS, make_pets_sample, read_pets_list

torch.set_num_threads(1)  # small tensors on a shared CPU: one thread is fastest


@pytest.fixture(scope="module")
def pet_dir(tmp_path_factory):
    return make_pets_sample(tmp_path_factory.mktemp("pets"), images_per_breed=5, image_size=(40, 32))


@pytest.fixture()
def own_copy(pet_dir, tmp_path):
    """A private copy of the sample, for tests that add or break files."""
    return shutil.copytree(pet_dir, tmp_path / "oxford-iiit-pet")


# --- labels from file names ------------------------------------------------------------------

@pytest.mark.parametrize("filename, breed", [
    ("great_pyrenees_173.jpg", "great_pyrenees"),
    ("Abyssinian_1.jpg", "Abyssinian"),
    ("american_pit_bull_terrier_10.JPG", "american_pit_bull_terrier"),
    ("/some/folder/British_Shorthair_99.png", "British_Shorthair"),
])
def test_parse_breed(filename, breed):
    assert parse_breed(filename) == breed


@pytest.mark.parametrize("filename", ["notabreed.jpg", "pug_.jpg", "_12.jpg", "pug_x1.jpg", "pug-12.jpg"])
def test_parse_breed_rejects_other_names(filename):
    with pytest.raises(ValueError, match=f"{filename}.*<breed>_<number>"):
        parse_breed(filename)


def test_is_cat():
    assert is_cat("Abyssinian") and is_cat("British_Shorthair")
    assert not is_cat("great_pyrenees") and not is_cat("pug") and not is_cat("")


# --- PetsDataset --------------------------------------------------------------------------------

def test_dataset_classes_files_and_targets(pet_dir):
    ds = PetsDataset(pet_dir)
    assert len(ds) == 37 * 5 and ds.images_dir == pet_dir / "images"
    assert ds.files == sorted(ds.files) and all(f.suffix == ".jpg" for f in ds.files)
    assert (pet_dir / "images" / NON_IMAGE_FILES[0]).exists()  # there, but not an image
    # sorted ignoring case: the index is the official CLASS-ID - 1
    assert ds.classes == list(PET_BREEDS) and ds.classes[:3] == ["Abyssinian", "american_bulldog",
                                                                 "american_pit_bull_terrier"]
    assert ds.class_to_idx == {name: i for i, name in enumerate(PET_BREEDS)}
    rows = {r["image"]: r["class_id"] for r in read_pets_list(pet_dir / "annotations" / "list.txt")}
    assert ds.targets == [rows[f.stem] - 1 for f in ds.files]
    assert PetsDataset(pet_dir / "images").files == ds.files  # the images/ folder works as root too


def test_classes_do_not_depend_on_file_order(pet_dir):
    files = PetsDataset(pet_dir).files
    shuffled = list(files)
    random.Random(0).shuffle(shuffled)
    a, b = PetsDataset(pet_dir, files=files), PetsDataset(pet_dir, files=shuffled)
    assert shuffled != files and a.files == b.files
    assert a.classes == b.classes and a.targets == b.targets
    few = PetsDataset(pet_dir, files=[f for f in shuffled if parse_breed(f.name) in ("pug", "Bengal", "boxer")])
    assert few.classes == ["Bengal", "boxer", "pug"] and set(few.targets) == {0, 1, 2}


def test_hidden_and_non_image_files_are_ignored(own_copy):
    n = len(PetsDataset(own_copy))
    folder = own_copy / "images"
    shutil.copy(PetsDataset(own_copy).files[0], folder / ".pug_7777.jpg")  # a hidden copy
    (folder / "._pug_12.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata, not an image
    (folder / "notes.txt").write_text("no image")
    ds = PetsDataset(own_copy)
    assert len(ds) == n and not any(f.name.startswith(".") for f in ds.files)


@pytest.mark.parametrize("name", sorted(AWKWARD_IMAGES))
def test_items_are_rgb_whatever_the_file(pet_dir, name):
    path = pet_dir / "images" / name
    with Image.open(path) as img:
        assert img.mode == AWKWARD_IMAGES[name]  # grayscale, RGBA, palette or CMYK on disk ...
    ds = PetsDataset(pet_dir, transform=T.ToTensor())
    x, y = ds[ds.files.index(path)]
    assert x.shape[0] == 3 and x.dtype == torch.float32  # ... 3 channels in the Dataset
    assert ds.classes[y] == parse_breed(name)
    assert load_rgb(path).mode == "RGB"


def test_rgba_is_composited_on_white(pet_dir):
    path = pet_dir / "images" / "Abyssinian_5.jpg"  # its transparent frame hides black pixels
    with Image.open(path) as img:
        assert img.convert("RGB").getpixel((0, 0)) == (0, 0, 0)  # dropping alpha shows black
    assert load_rgb(path).getpixel((0, 0)) == (255, 255, 255)


def test_grayscale_and_cmyk_convert_to_matching_rgb(tmp_path):
    Image.new("L", (4, 4), 200).save(tmp_path / "gray.png")
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "red.jpg")  # no cyan/black: red
    assert load_rgb(tmp_path / "gray.png").getpixel((1, 1)) == (200, 200, 200)
    r, g, b = load_rgb(tmp_path / "red.jpg").getpixel((1, 1))
    assert r > 200 and g < 60 and b < 60


def test_unreadable_image_error_names_the_file(own_copy):
    bad = own_copy / "images" / "pug_999.jpg"
    bad.write_bytes(b"this is not a JPEG")
    ds = PetsDataset(own_copy)
    with pytest.raises(OSError, match="pug_999.jpg.*Delete or replace"):
        ds[ds.files.index(bad)]
    assert find_bad_images(ds.files) == [bad]


def test_empty_or_missing_folder_errors(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "README.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="No images in .*images.*oxford-iiit-pet"):
        PetsDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PetsDataset(tmp_path / "nowhere")


def test_subsets_by_index_list(pet_dir):
    ds = PetsDataset(pet_dir, transform=eval_transforms(16))
    subset = Subset(ds, [5, 0, 17])
    assert len(subset) == 3 and subset[1][1] == ds[0][1] and torch.equal(subset[1][0], ds[0][0])


# --- transforms, denormalize, show_batch ------------------------------------------------------

def test_eval_transforms_are_deterministic_and_resize_to_8_7(pet_dir):
    img = load_rgb(pet_dir / "images" / "Abyssinian_5.jpg")
    ev = eval_transforms(32)
    assert ev(img).shape == (3, 32, 32) and torch.equal(ev(img), ev(img))
    assert [type(t).__name__ for t in ev.transforms] == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert eval_transforms(224).transforms[0].size == 256  # the standard ImageNet evaluation
    assert eval_transforms(224).transforms[-1].mean == IMAGENET_MEAN


def test_train_transforms_are_random(pet_dir):
    img = load_rgb(pet_dir / "images" / "Abyssinian_5.jpg")
    tr = train_transforms(32, mean=(0.5,) * 3, std=(0.5,) * 3)
    torch.manual_seed(0)
    first, second = tr(img), tr(img)
    assert first.shape == (3, 32, 32) and not torch.equal(first, second)
    torch.manual_seed(0)
    assert torch.equal(tr(img), first)  # random, but seeded
    assert first.min() >= -1 and first.max() <= 1  # normalised with the given mean/std


def test_denormalize_inverts_normalize():
    torch.manual_seed(0)
    batch = torch.rand(4, 3, 8, 8)
    normalized = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(batch)
    assert torch.allclose(denormalize(normalized), batch, atol=1e-6)
    assert torch.allclose(denormalize(normalized[0]), batch[0], atol=1e-6)  # one (C, H, W) image
    half = T.Normalize((0.5,) * 3, (0.5,) * 3)(batch)
    assert torch.allclose(denormalize(half, (0.5,) * 3, (0.5,) * 3), batch, atol=1e-6)
    big = denormalize(normalized * 10)
    assert big.min() == 0 and big.max() == 1  # clipped for imshow
    assert not denormalize(normalized.requires_grad_()).requires_grad


def test_show_batch_titles_every_image():
    images = torch.zeros(5, 3, 8, 8)
    fig = show_batch(images, torch.tensor([0, 2, 1, 2, 0]), ["Abyssinian", "great_pyrenees", "pug"],
                     nrow=3, title="A batch")
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 6  # 2 rows of 3
    assert titles == ["Abyssinian", "pug", "great pyrenees", "pug", "Abyssinian", ""]
    assert fig._suptitle.get_text() == "A batch"
    assert len(show_batch(images[:2], [1, 1], ["a", "b"]).axes) == 2  # fewer images than nrow: one short row
    plt.close("all")


# --- splits -------------------------------------------------------------------------------------

def test_random_split_indices_seeded_disjoint_complete():
    train, valid = random_split_indices(100, val_pct=0.2, seed=1)
    assert len(valid) == 20 and len(train) == 80
    assert not set(train) & set(valid) and sorted(train + valid) == list(range(100))
    assert (train, valid) == random_split_indices(100, val_pct=0.2, seed=1)
    assert valid != random_split_indices(100, val_pct=0.2, seed=2)[1]
    assert valid != list(range(80, 100))  # shuffled, not the last 20


def test_stratified_split_keeps_every_class_share():
    targets = [0] * 50 + [1] * 30 + [2] * 15 + [3] * 5
    train, valid = stratified_split_indices(targets, val_pct=0.2, seed=3)
    assert len(valid) == 20 and not set(train) & set(valid) and sorted(train + valid) == list(range(100))
    assert [train, valid] == list(stratified_split_indices(targets, val_pct=0.2, seed=3))
    assert valid != stratified_split_indices(targets, val_pct=0.2, seed=4)[1]
    assert Counter(targets[i] for i in valid) == {0: 10, 1: 6, 2: 3, 3: 1}


def test_stratified_split_error_says_what_to_do():
    with pytest.raises(ValueError, match="every class.*Add images"):
        stratified_split_indices([0, 0, 0, 0, 1], val_pct=0.2)  # class 1 has a single image


def test_make_pets_splits(pet_dir):
    train_ds, valid_ds = make_pets_splits(pet_dir, size=16, val_pct=0.2, seed=0)
    assert isinstance(train_ds, Subset) and isinstance(valid_ds, Subset)
    assert len(train_ds) + len(valid_ds) == 37 * 5 and not set(train_ds.indices) & set(valid_ds.indices)
    assert train_ds.dataset.files == valid_ds.dataset.files  # one file list, two transforms
    assert train_ds.dataset.classes == list(PET_BREEDS)
    assert Counter(valid_ds.dataset.targets[i] for i in valid_ds.indices) == {c: 1 for c in range(37)}  # stratified
    assert make_pets_splits(pet_dir, size=16, val_pct=0.2, seed=0)[1].indices == valid_ds.indices
    assert make_pets_splits(pet_dir, size=16, val_pct=0.2, seed=1)[1].indices != valid_ds.indices
    # validation items are not augmented, training items are
    torch.manual_seed(0)
    assert torch.equal(valid_ds[0][0], valid_ds[0][0]) and valid_ds[0][0].shape == (3, 16, 16)
    assert not torch.equal(train_ds[0][0], train_ds[0][0])
    assert isinstance(valid_ds.dataset.transform.transforms[0], T.Resize)
    assert isinstance(train_ds.dataset.transform.transforms[0], T.RandomResizedCrop)


# --- loaders ------------------------------------------------------------------------------------

def test_make_loaders(pet_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train_ds, valid_ds = make_pets_splits(pet_dir, size=16)
    train_dl, valid_dl = make_loaders(train_ds, valid_ds, batch_size=8)
    assert train_dl.batch_size == 8 and valid_dl.batch_size == 16
    assert not train_dl.pin_memory and not train_dl.persistent_workers and train_dl.num_workers == 0
    x, y = next(iter(train_dl))
    assert x.shape == (8, 3, 16, 16) and y.shape == (8,)
    again, _ = make_loaders(train_ds, valid_ds, batch_size=8)
    assert torch.equal(next(iter(again))[1], y)  # the shuffle is seeded
    other, _ = make_loaders(train_ds, valid_ds, batch_size=8, seed=1)
    assert not torch.equal(next(iter(other))[1], y)
    valid_targets = [valid_ds.dataset.targets[i] for i in valid_ds.indices]
    assert next(iter(valid_dl))[1].tolist() == valid_targets[:16]  # validation in order


# --- tlhelpers.tools.images ---------------------------------------------------------------------

def test_list_image_files(own_copy):
    (own_copy / "images" / ".DS_Store.jpg").write_bytes(b"")
    files = list_image_files(own_copy / "images")
    assert files == PetsDataset(own_copy).files
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_image_files(own_copy / "nowhere")


def test_default_num_workers(monkeypatch):
    monkeypatch.setattr(images, "_usable_cpus", lambda: 8)
    monkeypatch.setattr(images, "_in_notebook", lambda: True)
    monkeypatch.setattr(images.multiprocessing, "get_start_method", lambda allow_none=True: "spawn")
    assert images.default_num_workers() == 0  # a notebook's objects cannot be sent to spawned workers
    monkeypatch.setattr(images.multiprocessing, "get_start_method", lambda allow_none=True: "fork")
    assert images.default_num_workers() == 4
    monkeypatch.setattr(images, "_usable_cpus", lambda: 1)
    assert images.default_num_workers() == 0
