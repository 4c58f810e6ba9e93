"""Hostile inputs on the data path: archive bombs, broken archives, bad URLs, runaway servers, interrupted
and killed writes, damaged caches (tlhelpers.tools.downloads, fileio, cache, cifar_data).

Every hostile input is built small and fast: a "bomb" is a few tens of MiB of zeros that compress to
about 80 kB. The download cases that need a server (too many bytes, names taken from URLs, Ctrl-C) are
in test_downloads.py, with its server on 127.0.0.1. The archive, pickle and checksum cases that were
already right are covered there too (traversal, links, device files, checksums) and at the end of this
file (a malicious pickle).
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tracemalloc
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tlhelpers.tools import cache, downloads, fileio
from tlhelpers.tools import cifar_data as cd
from tlhelpers.tools.downloads import download_url, extract_archive
from tlhelpers.tools.fileio import atomic_path, write_bytes_atomic

FAST = dict(retries=2, timeout=5, progress=False, backoff=0.01)
MiB = 2**20
GOOD_FILES = {"pets/images/Abyssinian_1.jpg": b"jpeg bytes", "pets/annotations/list.txt": b"Abyssinian_1 1 1 1\n"}


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


# --------------------------------------------------------------------------------------------
# Small hostile archives
# --------------------------------------------------------------------------------------------
class _Zeros(io.RawIOBase):
    """``n`` zero bytes, produced on demand (nothing of that size is ever held in memory)."""

    def __init__(self, n: int):
        self.left = n

    def readable(self):
        return True

    def readinto(self, buffer):
        k = min(len(buffer), self.left)
        buffer[:k] = bytes(k)
        self.left -= k
        return k


def zeros_tar(path: Path, nbytes: int, name: str = "zeros.bin") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = nbytes
        tar.addfile(info, io.BufferedReader(_Zeros(nbytes)))
    return path


def zeros_zip(path: Path, nbytes: int, name: str = "zeros.bin", others: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for other, content in (others or {}).items():
            zf.writestr(other, content)
        with zf.open(name, "w") as out:
            for _ in range(nbytes // MiB):
                out.write(bytes(MiB))
            out.write(bytes(nbytes % MiB))
    return path


def good_tar(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in GOOD_FILES.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


def good_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in GOOD_FILES.items():
            zf.writestr(name, content * 50)
    return path


# --------------------------------------------------------------------------------------------
# Bombs: the total unpacked size is checked before anything is written
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_a_decompression_bomb_is_refused_before_writing(tmp_path, kind):
    make = zeros_tar if kind == "tar.gz" else zeros_zip
    archive = make(tmp_path / f"bomb.{kind}", 80 * MiB)  # about 80 kB on disk: 1,000 times smaller
    assert archive.stat().st_size < MiB
    dest = tmp_path / "out"
    with pytest.raises(downloads.ArchiveError, match=r"bomb\.(tar\.gz|zip).*80\.0 MiB.*max_ratio"):
        extract_archive(archive, dest)
    assert listing(dest) == set()  # nothing written, not even a staging folder


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_max_bytes_limits_the_unpacked_size(tmp_path, kind):
    archive = (good_tar if kind == "tar.gz" else good_zip)(tmp_path / f"pets.{kind}")
    dest = tmp_path / "out"
    with pytest.raises(downloads.ArchiveError, match=r"pets\..*max_bytes=10\b"):
        extract_archive(archive, dest, max_bytes=10)
    assert listing(dest) == set()
    extract_archive(archive, dest, max_bytes=10 * MiB)  # a limit it fits in
    assert (dest / "pets/images/Abyssinian_1.jpg").is_file()


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_not_enough_free_disk_space_is_refused_before_writing(tmp_path, kind, monkeypatch):
    archive = (good_tar if kind == "tar.gz" else good_zip)(tmp_path / f"pets.{kind}")
    dest = tmp_path / "not" / "yet" / "there"
    asked = []

    def tiny_disk(path):
        asked.append(Path(path))
        return SimpleNamespace(total=10**9, used=10**9 - 100, free=100)  # 100 bytes free

    monkeypatch.setattr(downloads.shutil, "disk_usage", tiny_disk)
    with pytest.raises(downloads.ArchiveError, match=r"pets\..*free"):
        extract_archive(archive, dest)
    assert asked == [tmp_path]  # the disk the folder will be on (its nearest existing parent)
    assert listing(tmp_path / "not") == set()


# --------------------------------------------------------------------------------------------
# Broken archives raise the course's ArchiveError, naming the archive and what to do
# --------------------------------------------------------------------------------------------
def _broken(tmp_path: Path, case: str) -> Path:
    if case.startswith("truncated"):
        suffix = case.split("-")[1]
        good = good_tar(tmp_path / "good.tgz") if suffix == "tgz" else good_zip(tmp_path / "good.zip")
        data = good.read_bytes()
        path = tmp_path / f"pets.{suffix}"
        path.write_bytes(data[: len(data) * 2 // 3])
        return path
    if case == "garbage-tgz":
        path = tmp_path / "pets.tgz"
    elif case == "garbage-zip":
        path = tmp_path / "pets.zip"
    else:  # a zip whose member data is damaged: its directory is fine, its CRC is not
        good = tmp_path / "pets.zip"
        with zipfile.ZipFile(good, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("pets/a.txt", b"A" * 1000)
        data = bytearray(good.read_bytes())
        at = data.index(b"A" * 100)
        data[at: at + 10] = b"B" * 10
        good.write_bytes(bytes(data))
        return good
    path.write_bytes(b"<html>404 Not Found</html>" * 40)
    return path


@pytest.mark.parametrize("case", ["truncated-tgz", "truncated-zip", "garbage-tgz", "garbage-zip", "bad-crc-zip"])
def test_a_broken_archive_is_an_archive_error_that_says_what_to_do(tmp_path, case):
    archive = _broken(tmp_path, case)
    dest = tmp_path / "out"
    with pytest.raises(downloads.ArchiveError) as info:
        extract_archive(archive, dest)
    message = str(info.value)
    assert str(archive) in message and "download it again" in message
    assert not isinstance(info.value, downloads.UnsafeArchiveError)
    assert listing(dest) == set()  # no half-extracted files, no staging folder, no marker


# --------------------------------------------------------------------------------------------
# .part files: removed on Ctrl-C, swept when a killed run left them, never a live process's
# --------------------------------------------------------------------------------------------
def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_stale_parts_of_dead_processes_are_swept_and_live_ones_kept(tmp_path, live_pid):
    target = tmp_path / "model.pt"
    dead = tmp_path / f"model.pt.{_dead_pid()}.part"
    legacy = tmp_path / "model.pt.part"  # the downloader's old name, without a process id
    alive = tmp_path / f"model.pt.{live_pid}.part"
    other = tmp_path / f"other.pt.{_dead_pid()}.part"  # another target's: not ours to judge here
    for part in (dead, legacy, alive, other):
        part.write_bytes(b"half a file")
    write_bytes_atomic(target, b"weights")
    assert target.read_bytes() == b"weights"
    assert not dead.exists() and not legacy.exists()
    assert alive.read_bytes() == b"half a file" and other.exists()


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")
def test_a_part_file_left_by_sigkill_is_removed_by_the_next_run(tmp_path):
    target = tmp_path / "model.pt"
    code = (
        "import os, signal, sys\n"
        "from tlhelpers.tools.fileio import atomic_path\n"
        "with atomic_path(sys.argv[1]) as part:\n"
        "    part.write_bytes(b'half a checkpoint')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(target)])
    assert killed.returncode == -signal.SIGKILL
    left = list(tmp_path.glob("model.pt.*.part"))
    assert len(left) == 1 and not target.exists()  # what SIGKILL leaves: nothing can run after it
    with atomic_path(target) as part:
        torch.save({"w": torch.ones(2)}, part)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_download_sweeps_stale_parts_even_when_the_file_is_there(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "pets.tgz").write_bytes(b"bytes")
    (root / f"pets.tgz.{_dead_pid()}.part").write_bytes(b"half")
    download_url("http://127.0.0.1:9/files/pets.tgz", root, **FAST)  # the file is there: no request is made
    assert listing(root) == {"pets.tgz"}


def test_atomic_path_fsyncs_the_file_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with atomic_path(tmp_path / "model.pt") as part:
        torch.save({"w": torch.ones(2)}, part)
    replaced = [ino for what, ino in events if what == "replace"]
    assert len(replaced) == 1
    assert ("fsync", replaced[0]) in events[: events.index(("replace", replaced[0]))]


# --------------------------------------------------------------------------------------------
# CIFAR-10 zips: members are size-checked before they are read; damaged members are named
# --------------------------------------------------------------------------------------------
@pytest.fixture
def private_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TLH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_huge_cifar_zip_member_is_refused_without_reading_it(tmp_path, private_data_dir):
    good = {f"cifar10/train/{cls}/{i}.png": _png((i * 40, 0, 0)) for cls in ("cat", "dog") for i in range(2)}
    nbytes = cd.MAX_MEMBER_BYTES + MiB if hasattr(cd, "MAX_MEMBER_BYTES") else 65 * MiB
    archive = zeros_zip(tmp_path / "cifar.zip", nbytes, name="cifar10/train/cat/huge.png", others=good)
    assert archive.stat().st_size < MiB
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            cd.load_cifar10(archive, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert str(archive) in message and "cifar10/train/cat/huge.png" in message and "max_member_bytes" in message
    assert peak < 16 * MiB, f"read {peak / MiB:.0f} MiB into memory"
    # The limit is an argument: above it, the member is read, and is no image.
    with pytest.raises(OSError, match="huge.png"):
        cd.load_image_folder(archive, progress=False, max_member_bytes=nbytes)


def test_a_damaged_cifar_zip_member_is_an_archive_error_naming_it(tmp_path, private_data_dir):
    archive = tmp_path / "cifar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("cifar10/train/cat/0.png", _png((200, 0, 0)))
        zf.writestr("cifar10/train/dog/0.png", _png((0, 200, 0)))
    data = bytearray(archive.read_bytes())
    at = data.index(b"IDAT") + 8  # inside the first PNG's pixels: the CRC no longer matches
    data[at: at + 4] = bytes(4)
    archive.write_bytes(bytes(data))
    with pytest.raises(downloads.ArchiveError) as info:
        cd.load_cifar10(archive, progress=False)
    assert str(archive) in str(info.value) and "cifar10/train/cat/0.png" in str(info.value)
    assert not list((private_data_dir / "cache").glob("*.npy"))  # no cache of a broken zip


# --------------------------------------------------------------------------------------------
# The CIFAR-10 cache: a wrong shape, type or label count is never returned silently
# --------------------------------------------------------------------------------------------
def _tree(root: Path) -> Path:
    for cls, colour in {"cat": (200, 30, 30), "dog": (30, 200, 30)}.items():
        (root / "train" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), colour).save(root / "train" / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("wrong", [np.zeros((6, 3, 16, 16), np.uint8), np.zeros((6, 32, 32, 3), np.uint8),
                                   np.zeros((6, 3, 32, 32), np.float32), np.zeros((5, 3, 32, 32), np.uint8)],
                         ids=["16px", "channels-last", "float32", "one-row-short"])
def test_a_cache_with_a_wrong_shape_or_type_is_named_and_rebuilt(tmp_path, private_data_dir, capsys, wrong):
    root = _tree(tmp_path / "tree")
    first = cd.load_cifar10(root, progress=False).images.clone()
    npy = next((private_data_dir / "cache").glob("*.npy"))
    sidecar = json.loads(npy.with_suffix(".json").read_text())
    np.save(npy, wrong)  # the sidecar still matches: only the array is wrong
    assert json.loads(npy.with_suffix(".json").read_text()) == sidecar
    capsys.readouterr()
    again = cd.load_cifar10(root, progress=False)
    out = capsys.readouterr().out
    assert str(npy) in out and "rebuilding" in out
    assert torch.equal(again.images, first) and again.images.dtype == torch.uint8


def test_a_decoder_returning_the_wrong_shape_is_an_error_not_a_broadcast(tmp_path):
    npy, sidecar = tmp_path / "c.npy", tmp_path / "c.json"
    with pytest.raises(ValueError, match=r"row 0 .*c\.npy.*\(1, 1, 3\)"):
        cache.build_uint8_cache(npy, sidecar, "fp", 2, 8, lambda i: np.full((1, 1, 3), 9, np.uint8), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("fault", ["labels", "shape"])
def test_torchvision_data_with_a_wrong_label_count_or_shape_is_a_clear_error(monkeypatch, private_data_dir, fault):
    import torchvision.datasets

    class FakeCIFAR10:
        classes = list(cd.CIFAR10_CLASSES)

        def __init__(self, root, train, download):
            self.data = np.zeros((40, 32, 32, 1 if fault == "shape" else 3), dtype=np.uint8)
            self.targets = [i % 10 for i in range(39 if fault == "labels" else 40)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    with pytest.raises(ValueError, match="cifar-10-batches-py.*Delete the folder"):
        cd.load_cifar10(None)


# --------------------------------------------------------------------------------------------
# Right before this issue, and kept: a malicious pickle is refused by weights_only=True
# --------------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # unpickling would call open(marker, "w"): code run by loading a file
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    from tlhelpers.tools.export import load_exported

    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"kind": "x", "payload": _Evil(str(marker))}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_exported(path)
    assert not marker.exists()
