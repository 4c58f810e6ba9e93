"""tlhelpers.tools.images.load_rgb, the course's one image loader: orientation, bit depth, size limit, odd files.

Every image here is a real file written by PIL (or, for headers PIL cannot write, by hand); the
checks are on pixel values read back.
"""
import os
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from tlhelpers.tools import images
from tlhelpers.tools.images import load_rgb


def pixels(path) -> np.ndarray:
    image = load_rgb(path)
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def ramp16() -> np.ndarray:
    """A 16-bit gradient with the extremes: 0, 257 (8-bit 1), 32896 (8-bit 128), 65535 (8-bit 255)."""
    values = np.array([[0, 257, 32896, 65535], [1000, 20000, 40000, 60000]], dtype=np.uint16)
    return np.repeat(np.repeat(values, 3, axis=0), 3, axis=1)  # 6 x 12 pixels


def expected8(values16) -> np.ndarray:
    return np.round(np.asarray(values16, dtype=float) * 255 / 65535).astype(int)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(path, width, height):
    """A valid PNG signature and header for ``width`` x ``height`` gray pixels, with almost no data (a "bomb")."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + png_chunk(b"IEND", b""))
    return path


def png48(path, rgb16: np.ndarray):
    """A 16-bit-per-channel RGB PNG (PIL cannot write these)."""
    height, width, _ = rgb16.shape
    rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows))
                     + png_chunk(b"IEND", b""))
    return path


# --- 16-bit and float images -------------------------------------------------------------------

@pytest.mark.parametrize("name, dtype", [("gray16.png", "<u2"), ("gray16.tif", "<u2"), ("gray16_big_endian.tif", ">u2")])
def test_16_bit_grayscale_is_scaled_to_8_bits(tmp_path, name, dtype):
    path = tmp_path / name
    Image.fromarray(ramp16().astype(dtype)).save(path)
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I;16B")  # what PIL reads: the test file really is 16-bit
    got = pixels(path)
    assert (got == expected8(ramp16())[..., None]).all()  # 65535 -> 255, 32896 -> 128, 257 -> 1 in all 3 channels
    # 16-bit RGB PNGs were already right (PIL keeps the high byte): they stay so
    rgb16 = np.stack([ramp16(), 65535 - ramp16(), np.full_like(ramp16(), 32896)], axis=-1)
    got = pixels(png48(tmp_path / "rgb48.png", rgb16))
    assert np.abs(got - expected8(rgb16)).max() <= 1


def test_16_bit_pgm_read_as_32_bit_integers_is_scaled(tmp_path):
    path = tmp_path / "gray16.pgm"
    path.write_bytes(b"P5 12 6 65535\n" + ramp16().astype(">u2").tobytes())
    with Image.open(path) as img:
        assert img.mode == "I"
    assert (pixels(path) == expected8(ramp16())[..., None]).all()


def test_float_images_in_0_to_1_and_in_0_to_65535_are_scaled(tmp_path):
    unit = (ramp16() / 65535).astype(np.float32)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    assert (pixels(tmp_path / "unit.tif") == np.round(unit * 255).astype(int)[..., None]).all()
    assert pixels(tmp_path / "unit.tif").max() == 255  # 1.0 is white, not black
    Image.fromarray(ramp16().astype(np.float32)).save(tmp_path / "whole.tif")  # a 16-bit image stored as floats
    assert (pixels(tmp_path / "whole.tif") == expected8(ramp16())[..., None]).all()


@pytest.mark.parametrize("values, says", [(np.full((4, 4), 2.5, np.float32), "from 2.5 to 2.5"),
                                          (np.array([[0.5, np.nan]], np.float32), "NaN or infinite"),
                                          (np.array([[-1.0, 0.5]], np.float32), "from -1 to 0.5"),
                                          (np.array([[0, 70000]], np.int32), "from 0 to 70000")])
def test_pixel_values_of_unknown_brightness_are_refused_by_name(tmp_path, values, says):
    path = tmp_path / "odd.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(OSError, match=rf"odd\.tif.*{says}.*8-bit or 16-bit PNG") as info:
        load_rgb(path)
    assert info.value.reason.startswith("mode ")  # the short reason, for lists of files


# --- EXIF orientation ----------------------------------------------------------------------------

def rotated_jpeg(path, orientation: int):
    """A 40 x 20 photo stored sideways: blue left half, red right half, and an EXIF orientation tag."""
    image = Image.new("RGB", (40, 20), (220, 20, 20))
    image.paste((20, 20, 220), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, quality=95)
    return path


def colour(pixel) -> str:
    red, _, blue = (int(v) for v in pixel)
    return "red" if red > 150 > blue else "blue" if blue > 150 > red else "other"


@pytest.mark.parametrize("orientation, size, top, bottom", [
    (6, (20, 40), "blue", "red"),    # "rotate 90 clockwise to show": the left half ends on top
    (8, (20, 40), "red", "blue"),    # "rotate 90 counter-clockwise"
    (3, (40, 20), None, None),       # "rotate 180": blue ends on the right
])
def test_exif_orientation_is_applied(tmp_path, orientation, size, top, bottom):
    image = load_rgb(rotated_jpeg(tmp_path / "phone.jpg", orientation))
    values = np.asarray(image)
    assert image.size == size
    if top is not None:
        assert (colour(values[2, 10]), colour(values[-3, 10])) == (top, bottom)
    else:
        assert (colour(values[10, 2]), colour(values[10, -3])) == ("red", "blue")


# --- one pixel limit -----------------------------------------------------------------------------

def test_pixel_limit_is_one_course_constant(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 10), (1, 2, 3)).save(path)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 200)
    assert load_rgb(path).size == (20, 10)  # exactly at the limit: read
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 199)
    with pytest.raises(OSError, match=r"small\.png.*20 x 10 = 200 pixels, more than 199.*MAX_IMAGE_PIXELS"):
        load_rgb(path)


@pytest.mark.parametrize("width, height", [(11_000, 11_000),    # above the course's limit, below PIL's error
                                           (30_000, 30_000)])   # above PIL's own error threshold
def test_huge_images_are_refused_before_decoding(tmp_path, width, height):
    path = png_header_only(tmp_path / "bomb.png", width, height)
    assert path.stat().st_size < 200 and width * height > images.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PIL DecompressionBombWarning on the way
        with pytest.raises(OSError, match=r"bomb\.png.*too large.*MAX_IMAGE_PIXELS.*Downscale"):
            load_rgb(path)


# --- files that are not images -------------------------------------------------------------------

def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    outcome = {}

    def read():
        try:
            load_rgb(fifo)
        except OSError as err:
            outcome["error"] = err

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # the old behaviour: open() waits for a writer forever; release it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
        pytest.fail("load_rgb blocked on a FIFO")
    assert "photo.jpg" in str(outcome["error"]) and "FIFO" in str(outcome["error"])


def test_in_memory_files_are_named_by_the_caller(tmp_path):
    import io

    with pytest.raises(OSError, match="train/cat/1.jpg in cifar.zip"):
        load_rgb(io.BytesIO(b"not an image"), name="train/cat/1.jpg in cifar.zip")


# --- every reader of the course goes through load_rgb ---------------------------------------------

def test_datasets_folder_tools_caches_and_predict_see_the_same_upright_8_bit_pixels(tmp_path):
    from tlhelpers.pets import PetsDataset
    from tlhelpers.tools.cache import load_square
    from tlhelpers.tools.image_folder import scan_image_folder
    from tlhelpers.tools.predict import load_images

    root = tmp_path / "photos"
    (root / "beagle").mkdir(parents=True)
    (root / "pug").mkdir()
    rotated_jpeg(root / "beagle" / "beagle_1.jpg", 6)
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(root / "pug" / "pug_1.png")  # white, 16-bit
    files = [root / "beagle" / "beagle_1.jpg", root / "pug" / "pug_1.png"]

    pets = PetsDataset(root, files=files)
    folder = scan_image_folder(root).train
    for dataset in (pets, folder):
        rotated, white = dataset[0][0], dataset[1][0]
        assert rotated.size == (20, 40) and colour(np.asarray(rotated)[2, 10]) == "blue"
        assert np.asarray(white).min() == 255
    assert colour(load_square(files[0], 16)[0, 8]) == "blue" and load_square(files[1], 16).min() == 255
    meta = {"image_size": 16, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    batch = load_images(files, meta)  # predict's reader, with a transform that keeps values in 0..1
    assert batch[1].min() == 1.0
    assert batch[0][2, 1, 8] > 0.7 and batch[0][0, 1, 8] < 0.3  # blue on top
