"""Make the small real-photo samples that ship with the course (quick mode uses them).

    python scripts/make_samples.py --pets PETS_DIR --cifar10 CIFAR10_ZIP

- ``--pets``: a folder of Oxford-IIIT Pet photos (``images/<Breed>_<n>.jpg``); every photo is
  downscaled to a short side of at most 192 px (JPEG quality 85) into
  ``tlhelpers/sample_data/pets/images/``.
- ``--cifar10``: the CIFAR-10 JPEG image-folder zip (``cifar10/train/<class>/<n>.jpg``); the first
  100 images per class (in sorted name order) are copied unchanged into
  ``tlhelpers/sample_data/cifar10/train/<class>/``.
The attribution and licence files beside them are written by hand, not by this script.
"""
from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "tlhelpers" / "sample_data"


def make_pets(src: Path, short_side: int = 192, quality: int = 85) -> None:
    images = src / "images" if (src / "images").is_dir() else src
    out = OUT / "pets" / "images"
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(images.glob("*.jpg")):
        with Image.open(path) as img:
            img = img.convert("RGB")
            scale = short_side / min(img.size)
            if scale < 1:
                img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
            img.save(out / path.name, "JPEG", quality=quality, optimize=True)


def make_cifar10(zip_path: Path, per_class: int = 100) -> None:
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith(".jpg") and "/train/" in n)
        taken: dict[str, int] = {}
        for name in names:
            cls = name.split("/")[-2]
            if taken.get(cls, 0) >= per_class:
                continue
            taken[cls] = taken.get(cls, 0) + 1
            target = OUT / "cifar10" / "train" / cls / Path(name).name
            target.parent.mkdir(parents=True, exist_ok=True)
            data = zf.read(name)
            Image.open(io.BytesIO(data)).verify()  # a real JPEG, copied byte for byte
            target.write_bytes(data)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pets", type=Path)
    parser.add_argument("--cifar10", type=Path)
    args = parser.parse_args()
    if args.pets:
        make_pets(args.pets)
    if args.cifar10:
        make_cifar10(args.cifar10)
