"""Generated sample data for quick mode, in the real on-disk layouts (introduced in notebook 01).

Quick mode (``TLH_QUICK=1``, passed on as ``quick=True``) must run the whole course in minutes on
a laptop CPU, so instead of downloading the 800 MB Oxford-IIIT Pet archive we *draw* a small
stand-in with exactly the same folder layout, file names and annotation files. Every notebook
then runs the same code on it.

The pictures are not pets: each class gets a distinctive but noisy combination of a background
colour, a shape (circle, square, triangle, stripes, cross, ring) and a shape colour, with random
position, size, rotation, clutter and sensor noise. A pretrained network fine-tuned for an epoch or
two learns them well above chance, which is all a smoke test of the course needs.

- ``draw_sample``               the ONE drawing function, parameterised by a class index
- ``make_pets_sample``          ``<root>/oxford-iiit-pet/`` like the real extraction
- ``ensure_pets``               the sample (quick mode) or the real data (full mode)
- ``make_image_folder_sample``  a generic ``<root>/<class>/*.jpg`` tree (optionally ``train/`` ``val/``)

Everything is deterministic: the same seed writes the same bytes.
"""
from __future__ import annotations

import colorsys
import http.server
import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# The 37 breeds of the Oxford-IIIT Pet dataset, spelled as in its file names.
# Cats are Capitalised, dogs are lower case: the dataset's own convention.
CAT_BREEDS = (
    "Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau",
    "Maine_Coon", "Persian", "Ragdoll", "Russian_Blue", "Siamese", "Sphynx",
)
DOG_BREEDS = (
    "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "boxer",
    "chihuahua", "english_cocker_spaniel", "english_setter", "german_shorthaired",
    "great_pyrenees", "havanese", "japanese_chin", "keeshond", "leonberger",
    "miniature_pinscher", "newfoundland", "pomeranian", "pug", "saint_bernard", "samoyed",
    "scottish_terrier", "shiba_inu", "staffordshire_bull_terrier", "wheaten_terrier",
    "yorkshire_terrier",
)
#: All breeds in the order of the official CLASS-ID (1-37): alphabetical, ignoring case.
PET_BREEDS = tuple(sorted(CAT_BREEDS + DOG_BREEDS, key=str.lower))

# The awkward files of the real set, reproduced under the same names, so that notebook 02 meets
# the same surprises on the sample as on the real data:
#   Abyssinian_5.jpg                   RGBA, PNG-encoded although it is called .jpg
#   Egyptian_Mau_139.jpg               palette image (mode P), GIF-encoded, called .jpg
#   staffordshire_bull_terrier_22.jpg  grayscale JPEG (mode L)
#   Egyptian_Mau_177.jpg               CMYK JPEG (not in the real set, common in photo collections)
#   Abyssinian_100/101/102.mat         not images at all (MATLAB files in images/)
AWKWARD_IMAGES = {
    "Abyssinian_5.jpg": "RGBA",
    "Egyptian_Mau_139.jpg": "P",
    "staffordshire_bull_terrier_22.jpg": "L",
    "Egyptian_Mau_177.jpg": "CMYK",
}
NON_IMAGE_FILES = ("Abyssinian_100.mat", "Abyssinian_101.mat", "Abyssinian_102.mat")

#: Written last into a finished sample; a folder without it is an interrupted generation.
MARKER = ".tlhelpers-sample.json"
_SAMPLE_VERSION = 2  # bump when the drawing changes, so old samples are regenerated

_SHAPES = ("circle", "square", "triangle", "stripes", "cross", "ring")
_TEXTURES = ("plain", "horizontal", "vertical", "checker", "diagonal", "dots")
_BACKGROUNDS = (  # well separated RGB colours
    (35, 45, 95),     # navy
    (225, 205, 160),  # sand
    (45, 105, 55),    # forest green
    (125, 35, 45),    # maroon
    (205, 205, 210),  # light grey
    (35, 125, 135),   # teal
    (100, 65, 140),   # purple
)
_LIST_HEADER = (
    # Verbatim from the real annotations/list.txt (its BREED ID line swaps cats and dogs:
    # cats are 1-12, dogs 1-25).
    "#Image CLASS-ID SPECIES BREED ID\n"
    "#ID: 1:37 Class ids\n"
    "#SPECIES: 1:Cat 2:Dog\n"
    "#BREED ID: 1-25:Cat 1:12:Dog\n"
    "#All images with 1st letter as captial are cat images\n"
    "#images with small first letter are dog images\n"
)


# --- drawing -------------------------------------------------------------------------------

def class_style(class_idx: int) -> dict:
    """The look of class ``class_idx``: background colour and texture, shape, shape colour (notebook 01).

    The background alone (7 colours x 6 textures) is unique for the first 42 classes, so even a
    random crop that misses the shape shows the class; the shape (6 kinds) and its colour (hue
    stepped by the golden ratio, unique for every class) say it a second time.
    """
    hue = (class_idx * 0.618034) % 1.0
    value = 0.95 if class_idx % 2 == 0 else 0.7
    foreground = tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, value))
    return {
        "shape": _SHAPES[class_idx % len(_SHAPES)],
        "background": _BACKGROUNDS[class_idx % len(_BACKGROUNDS)],
        "texture": _TEXTURES[(class_idx // len(_BACKGROUNDS)) % len(_TEXTURES)],
        "foreground": foreground,
    }


def _rotated(points, cx, cy, r, angle):
    """Scale unit-circle ``points`` by ``r``, rotate by ``angle`` and move them to (cx, cy)."""
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in points]


def _bar(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _draw_shape(draw, shape, cx, cy, r, angle, colour):
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(1, round(r * 0.35)))
    elif shape == "square":
        draw.polygon(_rotated(_bar(-0.8, -0.8, 0.8, 0.8), cx, cy, r, angle), fill=colour)
    elif shape == "triangle":
        corners = [(math.cos(a), math.sin(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
        draw.polygon(_rotated(corners, cx, cy, r, angle), fill=colour)
    elif shape == "stripes":
        for x in (-0.9, -0.2, 0.5):
            draw.polygon(_rotated(_bar(x, -1, x + 0.4, 1), cx, cy, r, angle), fill=colour)
    elif shape == "cross":
        draw.polygon(_rotated(_bar(-1, -0.25, 1, 0.25), cx, cy, r, angle), fill=colour)
        draw.polygon(_rotated(_bar(-0.25, -1, 0.25, 1), cx, cy, r, angle), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A (height, width) pattern in [-1, 1] with a random period and phase; zeros for "plain"."""
    period = max(3.0, min(width, height) * rng.uniform(0.09, 0.14))
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    x, y = x + rng.uniform(0, period), y + rng.uniform(0, period)
    wave = {
        "plain": lambda: np.zeros_like(x),
        "horizontal": lambda: np.sin(2 * np.pi * y / period),
        "vertical": lambda: np.sin(2 * np.pi * x / period),
        "checker": lambda: np.sign(np.sin(np.pi * x / period) * np.sin(np.pi * y / period)),
        "diagonal": lambda: np.sin(2 * np.pi * (x + y) / (1.4 * period)),
        "dots": lambda: 2.0 * (((x % period) - period / 2) ** 2 + ((y % period) - period / 2) ** 2
                               < (period / 4) ** 2) - 1,
    }[texture]
    return wave()


def _to_uint8(arr) -> np.ndarray:
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def draw_sample(class_idx: int, rng: np.random.Generator, size=(160, 120)) -> Image.Image:
    """Draw one noisy RGB picture of class ``class_idx``, ``size=(width, height)`` (notebook 01).

    The one drawing function behind every generated data set: the class decides the colours, the
    background texture and the shape (``class_style``), ``rng`` decides everything else (jitter,
    texture period, position, scale, rotation, clutter, noise).
    """
    width, height = size
    style = class_style(class_idx)
    side = min(width, height)

    # background: the class colour and texture, jittered, with a random gentle gradient
    background = np.asarray(style["background"], dtype=np.float64) + rng.normal(0, 12, 3)
    gradient = np.linspace(-1, 1, height)[:, None, None] * rng.uniform(-25, 25, 3)
    texture = _texture(style["texture"], width, height, rng)[:, :, None] * rng.uniform(18, 28)
    img = Image.fromarray(_to_uint8(background + gradient + texture))
    draw = ImageDraw.Draw(img)

    # clutter: small blobs of random colours, so "class = one colour somewhere" is not enough
    for _ in range(int(rng.integers(1, 4))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = side * rng.uniform(0.03, 0.08)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))

    # the object: class shape in the class colour, anywhere near the middle, any size and angle
    colour = tuple(int(c) for c in _to_uint8(np.asarray(style["foreground"]) + rng.normal(0, 12, 3)))
    r = side * rng.uniform(0.22, 0.36)
    cx = width / 2 + rng.uniform(-0.18, 0.18) * width
    cy = height / 2 + rng.uniform(-0.18, 0.18) * height
    _draw_shape(draw, style["shape"], cx, cy, r, rng.uniform(0, 2 * math.pi), colour)

    # sensor noise
    noisy = np.asarray(img, dtype=np.float64) + rng.normal(0, 10, (height, width, 3))
    return Image.fromarray(_to_uint8(noisy))


def _image_rng(seed: int, class_idx: int, number: int) -> np.random.Generator:
    """One generator per image, so an image does not depend on which others are drawn."""
    return np.random.default_rng([seed, class_idx, number])


def _varied_size(rng: np.random.Generator, image_size) -> tuple[int, int]:
    """Vary ``(width, height)`` by +-20%, and make about one picture in four portrait."""
    width, height = (round(s * rng.uniform(0.8, 1.2)) for s in image_size)
    if rng.random() < 0.25:
        width, height = height, width
    return width, height


# --- writing a sample atomically -----------------------------------------------------------

def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _build_sample(final_dir: Path, params: dict, build) -> Path:
    """Run ``build(tmp_dir)`` in ``<final_dir>.part`` and move it into place when complete.

    The marker is written last, and only then is the folder renamed, so an interrupted run leaves
    a ``.part`` folder (deleted by the next run), never a half-made sample. An existing sample with
    the same parameters is kept; a folder that is not one of our samples is never overwritten.
    """
    final_dir = Path(final_dir)
    if _read_marker(final_dir) == params:
        return final_dir
    if final_dir.exists() and _read_marker(final_dir) is None and any(final_dir.iterdir()):
        raise FileExistsError(
            f"{final_dir} exists and is not a generated sample (no {MARKER}); it may be real data. "
            "Pass another root, or delete the folder if you want a sample there."
        )
    tmp_dir = final_dir.with_name(final_dir.name + ".part")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    build(tmp_dir)
    (tmp_dir / MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")
    shutil.rmtree(final_dir, ignore_errors=True)  # an older or different sample
    os.replace(tmp_dir, final_dir)
    return final_dir


# --- Oxford-IIIT Pet -----------------------------------------------------------------------

def _save_image(img: Image.Image, path: Path, mode: str = "RGB") -> None:
    """Save as a normal JPEG, or as one of the awkward files of the real set."""
    if mode == "RGB":
        img.save(path, "JPEG", quality=90)
    elif mode == "L":
        img.convert("L").save(path, "JPEG", quality=90)
    elif mode == "CMYK":
        img.convert("CMYK").save(path, "JPEG", quality=90)
    elif mode == "P":
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(path, "GIF")
    elif mode == "RGBA":
        # a cut-out: a fully transparent frame whose hidden colour is black, so dropping the alpha
        # channel (``convert("RGB")``) shows a black frame and compositing on white a white one
        rgba = img.convert("RGBA")
        alpha = np.zeros((img.height, img.width), dtype=np.uint8)
        my, mx = img.height // 8, img.width // 8
        alpha[my:img.height - my, mx:img.width - mx] = 255
        pixels = np.asarray(rgba).copy()
        pixels[..., 3] = alpha
        pixels[alpha == 0, :3] = 0
        Image.fromarray(pixels, "RGBA").save(path, "PNG")
    else:
        raise ValueError(f"unknown mode {mode!r}")


def _pick_numbers(rng: np.random.Generator, breed: str, count: int) -> list[int]:
    """Image numbers like the real set's (1..200, with gaps), including the awkward files' numbers."""
    forced = [int(name.rsplit("_", 1)[1].split(".")[0]) for name in AWKWARD_IMAGES
              if name.rsplit("_", 1)[0] == breed]
    pool = np.setdiff1d(np.arange(1, 201), forced)
    extra = rng.choice(pool, size=max(0, count - len(forced)), replace=False)
    return sorted(forced + [int(n) for n in extra])


def make_pets_sample(root, images_per_breed: int = 8, image_size=(160, 120), seed: int = 0) -> Path:
    """Write a small Oxford-IIIT Pet look-alike to ``<root>/oxford-iiit-pet/`` and return it (notebook 01).

    Same layout as the real extraction: ``images/<Breed_Name>_<n>.jpg`` for all 37 breeds (cats
    Capitalised, dogs lower case), ``annotations/list.txt`` (``#`` header, then
    ``Image CLASS-ID SPECIES BREED-ID`` rows), ``annotations/trainval.txt`` and ``test.txt``
    (about half of each breed each), and the real set's awkward files (see ``AWKWARD_IMAGES`` and
    ``NON_IMAGE_FILES``). ``image_size=(width, height)`` is varied +-20% per picture.
    A finished sample with the same parameters is reused.
    """
    if images_per_breed < 2:
        raise ValueError(f"images_per_breed={images_per_breed}: need at least 2 (one trainval, one test).")
    params = {"kind": "oxford-iiit-pet", "version": _SAMPLE_VERSION, "seed": seed,
              "images_per_breed": images_per_breed, "image_size": list(image_size)}

    def build(pet_dir: Path) -> None:
        images_dir, annotations_dir = pet_dir / "images", pet_dir / "annotations"
        images_dir.mkdir()
        annotations_dir.mkdir()
        rows = []  # (name without extension, class id, species, breed id)
        trainval, test = [], []
        for class_idx, breed in enumerate(PET_BREEDS):
            species = 1 if breed in CAT_BREEDS else 2
            breed_id = (CAT_BREEDS if species == 1 else DOG_BREEDS).index(breed) + 1
            breed_rng = np.random.default_rng([seed, class_idx])
            numbers = _pick_numbers(breed_rng, breed, images_per_breed)
            for number in numbers:
                name = f"{breed}_{number}"
                rng = _image_rng(seed, class_idx, number)
                img = draw_sample(class_idx, rng, _varied_size(rng, image_size))
                _save_image(img, images_dir / f"{name}.jpg", AWKWARD_IMAGES.get(f"{name}.jpg", "RGB"))
                rows.append((name, class_idx + 1, species, breed_id))
            in_trainval = set(breed_rng.permutation(numbers)[: (len(numbers) + 1) // 2].tolist())
            for row in rows[-len(numbers):]:
                (trainval if int(row[0].rsplit("_", 1)[1]) in in_trainval else test).append(row)
        for name in NON_IMAGE_FILES:
            # the real .mat files are MATLAB 5.0 files; a header and padding is enough to trip a loader
            header = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created by tlhelpers.tools.samples"
            (images_dir / name).write_bytes(header.ljust(128, b" ") + bytes(64))

        def write_rows(path: Path, table, header: str = "") -> None:
            lines = [f"{name} {class_id} {species} {breed_id}\n" for name, class_id, species, breed_id in table]
            path.write_text(header + "".join(lines), newline="\n")

        # like the real files: ordered by class, then by name as a string (Abyssinian_10 < Abyssinian_5)
        for table in (rows, trainval, test):
            table.sort(key=lambda row: (row[1], row[0]))
        write_rows(annotations_dir / "list.txt", rows, _LIST_HEADER)
        write_rows(annotations_dir / "trainval.txt", trainval)
        write_rows(annotations_dir / "test.txt", test)

    return _build_sample(Path(root) / "oxford-iiit-pet", params, build)


def read_pets_list(path) -> list[dict]:
    """Parse an Oxford-IIIT Pet ``list.txt``/``trainval.txt``/``test.txt`` into row dicts (notebook 01).

    Each row: ``{"image": "Abyssinian_100", "class_id": 1, "species": 1, "breed_id": 1}``
    (species 1 = cat, 2 = dog); ``#`` header lines are skipped.
    """
    rows = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 4:
            raise ValueError(f"{path}, line {line_no}: expected 'Image CLASS-ID SPECIES BREED-ID', got {line!r}")
        image, class_id, species, breed_id = parts[0], *map(int, parts[1:])
        rows.append({"image": image, "class_id": class_id, "species": species, "breed_id": breed_id})
    return rows


#: The real photos that ship with the course (with their attribution and licence beside them).
SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"
PETS_SAMPLE = SAMPLE_DATA / "pets"          # 222 Oxford-IIIT Pet photos, 6 per breed
CIFAR10_SAMPLE = SAMPLE_DATA / "cifar10"    # 1,000 CIFAR-10 images, 100 per class

#: Four of the shipped photos are stored in the awkward forms the real data set (or any photo
#: collection) contains, so that notebook 02 meets the same surprises in quick mode.
REAL_AWKWARD_IMAGES = {
    "Abyssinian_12.jpg": "RGBA",                   # PNG-encoded cut-out, although called .jpg
    "Egyptian_Mau_10.jpg": "P",                    # palette image, GIF-encoded, called .jpg
    "staffordshire_bull_terrier_100.jpg": "L",     # grayscale JPEG
    "Egyptian_Mau_101.jpg": "CMYK",                # CMYK JPEG
}


def _annotation_rows(names: list[str]) -> list[tuple[str, int, int, int]]:
    """``(image, CLASS-ID, SPECIES, BREED-ID)`` rows of ``list.txt`` for images named ``<Breed>_<n>``."""
    rows = []
    for name in names:
        breed = name.rsplit("_", 1)[0]
        species = 1 if breed in CAT_BREEDS else 2
        breed_id = (CAT_BREEDS if species == 1 else DOG_BREEDS).index(breed) + 1
        rows.append((name, PET_BREEDS.index(breed) + 1, species, breed_id))
    return sorted(rows, key=lambda row: (row[1], row[0]))  # like the real file: by class, then by name


def real_pets_sample(root) -> Path:
    """``<root>/oxford-iiit-pet/``: the course's 222 real Pets photos in the layout of the real extraction.

    Quick mode's data set (notebooks 01-06 and 08). ``images/`` holds the shipped photos, four of
    them stored in awkward forms (``REAL_AWKWARD_IMAGES``) plus three non-image ``.mat`` files, as
    in the real ``images/``; ``annotations/`` holds ``list.txt``, ``trainval.txt`` and ``test.txt``
    in the real format (half of each breed in each split), and ``README.md``/``LICENSE.md`` carry
    the photos' attribution and licence. Made once; a finished folder is reused.
    """
    photos = sorted((PETS_SAMPLE / "images").glob("*.jpg"))
    if not photos:
        raise FileNotFoundError(f"The course's Pets sample is missing from {PETS_SAMPLE / 'images'}: reinstall "
                                "the course package (pip install -e .) or check out the repository again.")
    params = {"kind": "oxford-iiit-pet-real", "version": 1, "photos": len(photos)}

    def build(pet_dir: Path) -> None:
        images_dir, annotations_dir = pet_dir / "images", pet_dir / "annotations"
        images_dir.mkdir()
        annotations_dir.mkdir()
        for path in photos:
            mode = REAL_AWKWARD_IMAGES.get(path.name)
            if mode is None:
                shutil.copyfile(path, images_dir / path.name)
            else:
                with Image.open(path) as img:
                    _save_image(img.convert("RGB"), images_dir / path.name, mode)
        for name in NON_IMAGE_FILES:
            header = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created by tlhelpers.tools.samples"
            (images_dir / name).write_bytes(header.ljust(128, b" ") + bytes(64))
        for doc in ("README.md", "LICENSE.md"):
            shutil.copyfile(PETS_SAMPLE / doc, pet_dir / doc)
        rows = _annotation_rows([p.stem for p in photos])
        trainval = [row for i, row in enumerate(rows) if i % 2 == 0]
        test = [row for i, row in enumerate(rows) if i % 2 == 1]
        for filename, table, header in (("list.txt", rows, _LIST_HEADER), ("trainval.txt", trainval, ""),
                                        ("test.txt", test, "")):
            lines = [f"{name} {class_id} {species} {breed_id}\n" for name, class_id, species, breed_id in table]
            (annotations_dir / filename).write_text(header + "".join(lines), newline="\n")

    return _build_sample(Path(root) / "oxford-iiit-pet", params, build)


def check_pets_folder(path) -> Path:
    """Check an Oxford-IIIT Pet folder you already have, without writing to it; return the folder holding ``images/``.

    ``path`` is the folder with ``images/`` (``annotations/`` is optional) or the ``images/`` folder
    itself. Every image file must be readable (its header is opened, the pixels are not decoded)
    and named ``<breed>_<number>``, and all 37 breeds must be there; the error names the files or
    breeds that are not. Non-image files (the real ``images/`` holds a few ``.mat`` files) are ignored.
    """
    from tlhelpers.pets import parse_breed
    from tlhelpers.tools.images import IMAGE_EXTENSIONS

    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"Oxford-IIIT Pet folder {path} does not exist (TLH_PETS_DIR or path=): point it at the "
                                "folder that holds images/, or at the downloaded archive.")
    folder = path.parent if path.name == "images" and not (path / "images").is_dir() else path
    images_dir = folder / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{path} has no images/ folder: point TLH_PETS_DIR (or path=) at the Oxford-IIIT Pet "
                                "folder that holds images/ (annotations/ is optional).")
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    unreadable, misnamed, breeds = [], [], set()
    for file in files:
        try:
            breeds.add(parse_breed(file.name))
        except ValueError:
            misnamed.append(file.name)
        try:
            with Image.open(file):
                pass
        except (OSError, ValueError, Image.DecompressionBombError):
            unreadable.append(file.name)

    def some(names):
        return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")

    if unreadable:
        raise ValueError(f"{len(unreadable)} image files in {images_dir} cannot be read: {some(unreadable)}. "
                         "Delete or replace them (copy them again from the archive).")
    if misnamed:
        raise ValueError(f"{len(misnamed)} files in {images_dir} are not named <breed>_<number> like the "
                         f"Oxford-IIIT Pet images: {some(misnamed)}. Move them out of images/.")
    missing = [breed for breed in PET_BREEDS if breed not in breeds]
    unknown = sorted(breeds - set(PET_BREEDS))
    if missing or unknown:
        raise ValueError(f"{images_dir} should hold the 37 Oxford-IIIT Pet breeds; found {len(breeds)}. "
                         + (f"Missing: {some(missing)}. " if missing else "")
                         + (f"Not an Oxford-IIIT Pet breed: {some(unknown)}. " if unknown else "")
                         + "Point TLH_PETS_DIR (or path=) at a complete copy.")
    print(f"Oxford-IIIT Pet folder {folder}: {len(files)} images of 37 breeds (used as it is, never written to)")
    return folder


def ensure_pets(root=None, *, quick: bool, path=None) -> Path:
    """The Oxford-IIIT Pet folder (the one holding ``images/`` and ``annotations/``) (notebook 01).

    ``path`` (default ``config.PETS_DIR``, set by ``TLH_PETS_DIR``): a Pets folder you already have
    (``images/``, ``annotations/`` optional), checked by ``check_pets_folder`` and used as it is in
    quick and full mode alike, or an archive you already downloaded (``.tgz``, ``.tar.gz``, ``.zip``),
    extracted once into ``<root>/oxford-iiit-pet-local``. Nothing is downloaded, and nothing is
    written next to ``path``. Without it: ``quick=True`` gives the course's real 222-photo sample in
    ``<root>/quick/oxford-iiit-pet`` (``real_pets_sample``); ``quick=False`` the real data set,
    downloaded and extracted by ``tlhelpers.tools.downloads`` into ``<root>/oxford-iiit-pet``.
    ``root`` defaults to ``config.DATA_DIR``; notebooks pass ``quick=QUICK`` from their setup cell.
    """
    from tlhelpers import config

    root = Path(root) if root is not None else config.DATA_DIR
    path = path if path is not None else config.PETS_DIR
    if path is not None and Path(path).expanduser().is_file():
        from tlhelpers.tools import downloads

        dest = root / "oxford-iiit-pet-local"
        downloads.extract_archive(Path(path).expanduser(), dest)  # once; a marker records a complete extraction
        found = sorted(p.parent for p in dest.glob("*/images")) + sorted(p.parent for p in dest.glob("images"))
        if not found:
            raise FileNotFoundError(f"The archive {path} holds no images/ folder: is it the Oxford-IIIT Pet archive?")
        return check_pets_folder(found[0])
    if path is not None:
        return check_pets_folder(path)
    if quick:
        return real_pets_sample(root / "quick")

    from tlhelpers.tools import downloads  # imported here: quick mode never needs the download code

    return downloads.ensure_dataset("oxford-iiit-pet-fastai", root)


# --- a generic image-folder tree -----------------------------------------------------------

def make_image_folder_sample(
    root,
    classes: int | Sequence[str] = 10,
    images_per_class: int = 20,
    size=(32, 32),
    split_dirs: bool = False,
    val_pct: float = 0.2,
    seed: int = 0,
) -> Path:
    """Write a small learnable ``<root>/<class>/<class>_<n>.jpg`` tree and return ``root`` (notebook 01).

    ``classes`` is a number of classes (named ``class_00``, ``class_01``, ...) or a list of names.
    With ``split_dirs=True`` the tree is ``<root>/train/<class>/`` and ``<root>/val/<class>/``
    (``val_pct`` of each class in ``val/``), the layout ``torchvision.datasets.ImageFolder`` and
    "bring your own photos" folders use. ``size=(width, height)`` is the same for every image.
    A finished sample with the same parameters is reused.
    """
    names = [f"class_{i:02d}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"classes={classes!r}: need at least one class and no duplicate names.")
    if split_dirs and not 0 < round(images_per_class * val_pct) < images_per_class:
        raise ValueError(f"val_pct={val_pct} with images_per_class={images_per_class} leaves a split empty.")
    params = {"kind": "image-folder", "version": _SAMPLE_VERSION, "seed": seed, "classes": names,
              "images_per_class": images_per_class, "size": list(size),
              "split_dirs": split_dirs, "val_pct": val_pct}
    n_val = round(images_per_class * val_pct) if split_dirs else 0

    def build(folder: Path) -> None:
        for class_idx, name in enumerate(names):
            for number in range(1, images_per_class + 1):
                split = ("val" if number > images_per_class - n_val else "train") if split_dirs else ""
                out_dir = folder / split / name
                out_dir.mkdir(parents=True, exist_ok=True)
                img = draw_sample(class_idx, _image_rng(seed, class_idx, number), size)
                img.save(out_dir / f"{name}_{number}.jpg", "JPEG", quality=90)

    return _build_sample(Path(root), params, build)


# --- a stand-in for the download server ------------------------------------------------------

def make_pets_archive(root):
    """The course's real Pets sample packed as ``.tgz`` behind a ``file://`` URL: quick mode's download (notebook 01).

    Returns a ``tlhelpers.tools.downloads.RemoteFile`` like the registry's real entry, so notebook 01 runs the
    same download, checksum and extraction code in quick mode as on the real 800 MB archive.
    """
    import tarfile

    from tlhelpers.tools.downloads import RemoteFile, file_checksum
    from tlhelpers.tools.fileio import atomic_path

    root = Path(root)
    pet_dir = real_pets_sample(root / "src")
    archive = root / "oxford-iiit-pet-sample.tgz"
    if not archive.exists():
        with atomic_path(archive) as part, tarfile.open(part, "w:gz") as tar:
            tar.add(pet_dir, arcname="oxford-iiit-pet")
    return RemoteFile(url=archive.resolve().as_uri(), filename=archive.name,
                      checksum="sha256:" + file_checksum(archive),
                      checksum_source="computed from the packed sample archive when it was made",
                      size=archive.stat().st_size)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def serve_pets_sample(root):
    """The course's Pets sample packed as ``.tgz`` and served by a small web server on 127.0.0.1 (notebook 01).

    Quick mode's stand-in for the real download: a ``RemoteFile`` whose ``http://127.0.0.1:<port>/``
    address any HTTP client can fetch, torchvision's ``download_url`` included. The server runs in
    a daemon thread of this process, so it ends with the notebook's kernel.
    """
    import dataclasses
    import functools
    import threading

    remote = make_pets_archive(root)
    handler = functools.partial(_QuietHandler, directory=str(Path(root)))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/{remote.filename}"
    return dataclasses.replace(remote, url=url, checksum_source="computed from the packed sample archive; "
                               "served from this machine by tlhelpers.tools.samples.serve_pets_sample")


def real_cats_dogs_folder(root) -> Path:
    """``<root>/cats_vs_dogs/{cat,dog}/``: the course's real Pets photos as "your own photos" (notebook 09).

    72 cat and 150 dog photos (imbalanced, as home-made sets often are), with the awkward files a
    real folder collects: a grayscale JPEG, a CMYK JPEG, a PNG, a text file, a macOS ``.DS_Store``,
    a macOS ``._`` resource-fork file with an image name, and an ``.ipynb_checkpoints`` folder.
    Made once; a finished folder is reused.
    """
    photos = sorted((PETS_SAMPLE / "images").glob("*.jpg"))
    params = {"kind": "cats-vs-dogs-real", "version": 1, "photos": len(photos)}

    def build(folder: Path) -> None:
        for path in photos:
            kind = "cat" if path.name[:1].isupper() else "dog"  # cat breeds are Capitalised
            (folder / kind).mkdir(exist_ok=True)
            shutil.copyfile(path, folder / kind / path.name)
        with Image.open(folder / "cat" / "Bengal_107.jpg") as img:
            img.convert("L").save(folder / "cat" / "Bengal_107.jpg", "JPEG", quality=90)  # grayscale
        with Image.open(folder / "dog" / "beagle_107.jpg") as img:
            img.convert("CMYK").save(folder / "dog" / "beagle_107.jpg", "JPEG", quality=90)  # CMYK
        png = folder / "dog" / "pug_112.jpg"
        with Image.open(png) as img:
            img.save(png.with_suffix(".png"), "PNG")
        png.unlink()
        (folder / "dog" / "notes.txt").write_text("photos from the park, June\n")
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
        (folder / "cat" / "._Bengal_107.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # not an image
        (folder / ".ipynb_checkpoints").mkdir()
        shutil.copyfile(PETS_SAMPLE / "README.md", folder / "README.md")
        shutil.copyfile(PETS_SAMPLE / "LICENSE.md", folder / "LICENSE.md")

    return _build_sample(Path(root) / "cats_vs_dogs", params, build)
