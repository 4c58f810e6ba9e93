"""The generated quick-mode samples have the real layouts, are deterministic and learnable."""
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlhelpers.tools import samples
from tlhelpers.tools.samples import (
    AWKWARD_IMAGES, CAT_BREEDS, DOG_BREEDS, MARKER, NON_IMAGE_FILES, PET_BREEDS,
    draw_sample, ensure_pets, make_image_folder_sample, make_pets_sample, read_pets_list,
)


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """One sample for the whole module (about a second to make); returns (folder, seconds)."""
    start = time.perf_counter()
    folder = make_pets_sample(tmp_path_factory.mktemp("pets"))
    return folder, time.perf_counter() - start


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _jpgs(folder: Path):
    return sorted((folder / "images").glob("*.jpg"))


# --- layout --------------------------------------------------------------------------------

def test_breed_lists_match_the_real_set():
    assert len(CAT_BREEDS) == 12 and len(DOG_BREEDS) == 25 and len(set(PET_BREEDS)) == 37
    assert all(b[0].isupper() for b in CAT_BREEDS) and all(b.islower() for b in DOG_BREEDS)
    # official CLASS-IDs: alphabetical ignoring case (Sphynx is 34 in the real list.txt)
    assert PET_BREEDS[0] == "Abyssinian" and PET_BREEDS[5] == "Bengal" and PET_BREEDS.index("Sphynx") == 33


def test_layout_and_file_names(pets):
    folder, seconds = pets
    assert folder.name == "oxford-iiit-pet" and seconds < 10
    assert sorted(p.name for p in folder.iterdir()) == sorted(["images", "annotations", MARKER])
    names = [p.name for p in _jpgs(folder)]
    assert len(names) == 37 * 8
    breeds = {n.rsplit("_", 1)[0] for n in names}
    assert breeds == set(PET_BREEDS)
    for name in names:
        number = name.rsplit("_", 1)[1].removesuffix(".jpg")
        assert number.isdigit() and 1 <= int(number) <= 200
    assert not list(folder.parent.glob("*.part"))


def test_list_txt_format(pets):
    folder, _ = pets
    text = (folder / "annotations" / "list.txt").read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header[0] == "#Image CLASS-ID SPECIES BREED ID" and len(header) == 6
    assert text.splitlines()[: len(header)] == header  # the header comes first
    rows = read_pets_list(folder / "annotations" / "list.txt")
    assert {r["image"] + ".jpg" for r in rows} == {p.name for p in _jpgs(folder)}
    for row in rows:
        breed = row["image"].rsplit("_", 1)[0]
        assert row["class_id"] == PET_BREEDS.index(breed) + 1
        assert row["species"] == (1 if breed[0].isupper() else 2)
        species_breeds = CAT_BREEDS if row["species"] == 1 else DOG_BREEDS
        assert row["breed_id"] == species_breeds.index(breed) + 1
    assert {r["class_id"] for r in rows} == set(range(1, 38))
    with pytest.raises(ValueError, match="line 1"):
        bad = folder.parent / "bad_list.txt"
        bad.write_text("Abyssinian_1 1 1\n")
        read_pets_list(bad)


def test_trainval_and_test_split_every_breed(pets):
    folder, _ = pets
    listed = read_pets_list(folder / "annotations" / "list.txt")
    trainval = read_pets_list(folder / "annotations" / "trainval.txt")
    test = read_pets_list(folder / "annotations" / "test.txt")
    assert "#" not in (folder / "annotations" / "trainval.txt").read_text()
    trainval_names, test_names = {r["image"] for r in trainval}, {r["image"] for r in test}
    assert not trainval_names & test_names
    assert trainval_names | test_names == {r["image"] for r in listed}
    assert sorted(trainval + test, key=lambda r: r["image"]) == sorted(listed, key=lambda r: r["image"])
    for class_id in range(1, 38):
        n_trainval = sum(r["class_id"] == class_id for r in trainval)
        n_test = sum(r["class_id"] == class_id for r in test)
        assert abs(n_trainval - n_test) <= 1


def test_awkward_files(pets):
    folder, _ = pets
    for name, mode in AWKWARD_IMAGES.items():
        with Image.open(folder / "images" / name) as img:
            assert img.mode == mode, name
    with Image.open(folder / "images" / "Abyssinian_5.jpg") as img:
        assert img.format == "PNG"  # a PNG called .jpg, as in the real set
    for name in NON_IMAGE_FILES:
        path = folder / "images" / name
        assert path.is_file()
        with pytest.raises(Image.UnidentifiedImageError):
            Image.open(path)


# --- determinism and reuse -----------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first = make_pets_sample(tmp_path / "first", images_per_breed=3)
    again = make_pets_sample(tmp_path / "again", images_per_breed=3)
    other = make_pets_sample(tmp_path / "other", images_per_breed=3, seed=1)
    assert _tree_digest(again) == _tree_digest(first)
    assert _tree_digest(other) != _tree_digest(first)
    awkward = "Abyssinian_5.jpg"
    assert (other / "images" / awkward).read_bytes() != (first / "images" / awkward).read_bytes()


def test_finished_sample_is_reused_and_interrupted_one_redone(tmp_path):
    folder = make_pets_sample(tmp_path, images_per_breed=2)
    marker_time = (folder / MARKER).stat().st_mtime_ns
    assert make_pets_sample(tmp_path, images_per_breed=2) == folder
    assert (folder / MARKER).stat().st_mtime_ns == marker_time  # not regenerated
    # an interrupted run: the marker is missing, so the folder counts as unfinished
    (folder / MARKER).unlink()
    (folder / "images" / "leftover.jpg").write_bytes(b"half")
    with pytest.raises(FileExistsError, match="not a generated sample"):
        make_pets_sample(tmp_path, images_per_breed=2)  # never overwrite what we did not make
    # ... but an interrupted run in the .part folder is cleaned up
    os.rename(folder, tmp_path / "oxford-iiit-pet.part")
    folder = make_pets_sample(tmp_path, images_per_breed=2)
    assert not (folder / "images" / "leftover.jpg").exists() and (folder / MARKER).exists()
    # other parameters: regenerated
    folder = make_pets_sample(tmp_path, images_per_breed=3)
    assert len(_jpgs(folder)) == 37 * 3


def test_ensure_pets_quick_mode(tmp_path, monkeypatch):
    monkeypatch.setattr(samples, "real_pets_sample", lambda root: Path(root) / "oxford-iiit-pet")
    assert ensure_pets(tmp_path / "x", quick=True) == tmp_path / "x" / "quick" / "oxford-iiit-pet"
    with pytest.raises(TypeError, match="quick"):
        ensure_pets(tmp_path)  # quick mode is the caller's choice, never read behind its back


def test_ensure_pets_full_mode_downloads_the_registered_archive(tmp_path, monkeypatch):
    from tlhelpers.tools import downloads

    calls = []

    def fake_ensure_dataset(name, root):
        calls.append((name, root))
        return root / "oxford-iiit-pet"

    monkeypatch.setattr(downloads, "ensure_dataset", fake_ensure_dataset)
    assert ensure_pets(tmp_path, quick=False) == tmp_path / "oxford-iiit-pet"
    assert calls == [("oxford-iiit-pet-fastai", tmp_path)] and "oxford-iiit-pet-fastai" in downloads.DATASETS


def test_pets_archive_unpacks_to_the_sample(tmp_path):
    import tarfile

    from tlhelpers.tools.downloads import verify_checksum

    remote = samples.make_pets_archive(tmp_path)
    archive = tmp_path / remote.filename
    assert remote.url == archive.resolve().as_uri() and verify_checksum(archive, remote.checksum)
    assert remote.size == archive.stat().st_size and not list(tmp_path.glob("*.part"))
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "oxford-iiit-pet/annotations/list.txt" in names and "oxford-iiit-pet/LICENSE.md" in names
    assert sum(n.startswith("oxford-iiit-pet/images/") for n in names) == 222 + len(NON_IMAGE_FILES)


# --- the real photos that ship with the course -------------------------------------------------

def test_the_shipped_samples_are_real_photos_with_attribution_and_licence():
    photos = sorted((samples.PETS_SAMPLE / "images").glob("*.jpg"))
    assert len(photos) == 222
    from collections import Counter
    assert set(Counter(p.stem.rsplit("_", 1)[0] for p in photos).values()) == {6}  # 6 per breed, 37 breeds
    assert {p.stem.rsplit("_", 1)[0] for p in photos} == set(PET_BREEDS)
    for path in photos[::37]:
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and min(img.size) <= 192
    assert sum(p.stat().st_size for p in photos) < 5e6
    for doc in ("README.md", "LICENSE.md"):
        assert "CC BY-SA 4.0" in (samples.PETS_SAMPLE / doc).read_text()
    cifar = sorted((samples.CIFAR10_SAMPLE / "train").glob("*/*.jpg"))
    assert len(cifar) == 1000 and sum(p.stat().st_size for p in cifar) < 1.5e6
    assert "Krizhevsky" in (samples.CIFAR10_SAMPLE / "README.md").read_text()


def test_real_pets_sample_has_the_layout_and_the_awkward_files_of_the_real_set(tmp_path):
    folder = samples.real_pets_sample(tmp_path)
    images = folder / "images"
    assert len(list(images.glob("*.jpg"))) == 222 and (folder / "LICENSE.md").exists()
    for name, mode in samples.REAL_AWKWARD_IMAGES.items():
        with Image.open(images / name) as img:
            assert img.mode == mode
    assert all((images / name).exists() for name in NON_IMAGE_FILES)
    rows = read_pets_list(folder / "annotations" / "list.txt")
    assert len(rows) == 222 and rows[0]["class_id"] == 1 and {r["species"] for r in rows} == {1, 2}
    trainval = read_pets_list(folder / "annotations" / "trainval.txt")
    test = read_pets_list(folder / "annotations" / "test.txt")
    assert len(trainval) + len(test) == 222 and not {r["image"] for r in trainval} & {r["image"] for r in test}
    assert samples.real_pets_sample(tmp_path) == folder  # made once, then reused


def test_served_sample_downloads_with_torchvision(tmp_path):
    from torchvision.datasets.utils import download_url

    from tlhelpers.tools.downloads import verify_checksum

    remote = samples.serve_pets_sample(tmp_path / "server")
    assert remote.url.startswith("http://127.0.0.1:")
    download_url(remote.url, tmp_path / "downloaded", filename=remote.filename)
    assert verify_checksum(tmp_path / "downloaded" / remote.filename, remote.checksum)


# --- learnability --------------------------------------------------------------------------

def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        small = img.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32).ravel() / 255


def _nearest_centroid_accuracy(x_train, y_train, x_test, y_test) -> float:
    classes = np.unique(y_train)
    centroids = np.stack([x_train[y_train == c].mean(axis=0) for c in classes])
    distances = ((x_test[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    return float((classes[distances.argmin(axis=1)] == y_test).mean())


def test_sample_is_learnable(pets):
    """A nearest-centroid classifier on 16x16 pixels, trained on trainval, scores on test.

    Chance is 1/37 = 2.7%. With shuffled labels the same classifier must stay near chance,
    which shows the check can fail.
    """
    folder, _ = pets

    def load(split):
        rows = read_pets_list(folder / "annotations" / f"{split}.txt")
        x = np.stack([_pixels(folder / "images" / f"{r['image']}.jpg") for r in rows])
        return x, np.array([r["class_id"] for r in rows])

    x_train, y_train = load("trainval")
    x_test, y_test = load("test")
    accuracy = _nearest_centroid_accuracy(x_train, y_train, x_test, y_test)
    assert accuracy > 0.4, f"nearest-centroid accuracy {accuracy:.2f}: the sample is not learnable enough"
    shuffled = np.random.default_rng(0).permutation(y_train)
    assert _nearest_centroid_accuracy(x_train, shuffled, x_test, y_test) < 0.15


# --- generic image folders -----------------------------------------------------------------

def test_draw_sample_is_one_function_of_class_and_rng():
    a = draw_sample(3, np.random.default_rng(7), (32, 32))
    b = draw_sample(3, np.random.default_rng(7), (32, 32))
    c = draw_sample(4, np.random.default_rng(7), (32, 32))
    assert a.size == (32, 32) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))


def test_image_folder_sample(tmp_path):
    root = make_image_folder_sample(tmp_path / "cifar", classes=["cat", "dog", "ship"], images_per_class=5)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["cat", "dog", "ship"]
    files = sorted(root.glob("*/*.jpg"))
    assert len(files) == 15
    with Image.open(files[0]) as img:
        assert img.size == (32, 32) and img.mode == "RGB"

    split = make_image_folder_sample(tmp_path / "mine", classes=4, images_per_class=10, size=(64, 48),
                                     split_dirs=True, val_pct=0.2)
    assert sorted(p.name for p in split.iterdir() if p.is_dir()) == ["train", "val"]
    assert sorted(p.name for p in (split / "train").iterdir()) == [f"class_0{i}" for i in range(4)]
    assert len(list((split / "train").glob("*/*.jpg"))) == 32 and len(list((split / "val").glob("*/*.jpg"))) == 8
    with pytest.raises(ValueError, match="duplicate"):
        make_image_folder_sample(tmp_path / "bad", classes=["a", "a"])
