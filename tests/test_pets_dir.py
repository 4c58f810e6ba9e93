"""TLH_PETS_DIR / ensure_pets(path=...): an Oxford-IIIT Pet folder or archive you already have is checked,
used in every mode, never downloaded again and never written to. Real photos that ship with the course."""
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tlhelpers import config
from tlhelpers.pets import PetsDataset
from tlhelpers.tools import downloads, samples
from tlhelpers.tools.samples import PET_BREEDS, PETS_SAMPLE, check_pets_folder, ensure_pets


@pytest.fixture
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a Pets folder was given: nothing may be downloaded")
    monkeypatch.setattr(downloads, "ensure_dataset", refuse)
    monkeypatch.setattr(downloads, "download_url", refuse)


def images_only(tmp_path) -> Path:
    """The 222 shipped photos as `<folder>/images/*.jpg`, without annotations/ (like a copy from a shared drive)."""
    folder = tmp_path / "my-pets"
    shutil.copytree(PETS_SAMPLE / "images", folder / "images")
    return folder


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def read_only(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def writable(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.mark.parametrize("quick", [True, False])
def test_a_given_folder_is_used_in_every_mode_and_never_written(tmp_path, no_download, quick, capsys):
    folder = images_only(tmp_path)
    before = snapshot(folder)
    read_only(folder)
    try:
        assert ensure_pets(tmp_path / "data", quick=quick, path=folder) == folder
        assert ensure_pets(tmp_path / "data", quick=quick, path=folder / "images") == folder  # images/ itself
    finally:
        writable(folder)
    assert snapshot(folder) == before and not (tmp_path / "data").exists()
    assert "222 images of 37 breeds" in capsys.readouterr().out
    dataset = PetsDataset(folder)
    assert len(dataset) == 222 and dataset.classes == sorted(PET_BREEDS, key=str.lower)


def test_the_default_comes_from_tlh_pets_dir(tmp_path, monkeypatch, no_download):
    folder = images_only(tmp_path)
    monkeypatch.setattr(config, "PETS_DIR", str(folder))
    assert ensure_pets(tmp_path / "data", quick=True) == folder
    assert ensure_pets(tmp_path / "data", quick=False) == folder
    env = {**os.environ, "TLH_PETS_DIR": str(folder)}
    out = subprocess.run([sys.executable, "-c", "from tlhelpers import config; print(config.PETS_DIR)"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(folder)


def test_the_real_layout_with_annotations_is_accepted(tmp_path, no_download):
    folder = samples.real_pets_sample(tmp_path / "made")  # images/ with .mat files, annotations/
    assert ensure_pets(tmp_path / "data", quick=False, path=folder) == folder


def test_a_missing_breed_is_named(tmp_path):
    folder = images_only(tmp_path)
    for p in (folder / "images").glob("pug_*.jpg"):
        p.unlink()
    with pytest.raises(ValueError, match=r"found 36\. Missing: pug\."):
        check_pets_folder(folder)


def test_unreadable_and_misnamed_files_are_named(tmp_path):
    folder = images_only(tmp_path)
    (folder / "images" / "beagle_9999.jpg").write_bytes(b"<html>not a photo</html>")
    with pytest.raises(ValueError, match=r"1 image files in .* cannot be read: beagle_9999\.jpg"):
        check_pets_folder(folder)
    (folder / "images" / "beagle_9999.jpg").unlink()
    shutil.copyfile(PETS_SAMPLE / "images" / "beagle_1.jpg" if (PETS_SAMPLE / "images" / "beagle_1.jpg").exists()
                    else next((PETS_SAMPLE / "images").glob("beagle_*.jpg")), folder / "images" / "holiday.jpg")
    with pytest.raises(ValueError, match=r"not named <breed>_<number>.*holiday\.jpg"):
        check_pets_folder(folder)


def test_a_folder_without_images_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ensure_pets(tmp_path, quick=True, path=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no images/ folder"):
        ensure_pets(tmp_path, quick=True, path=tmp_path / "empty")


def test_a_downloaded_archive_is_extracted_once_beside_the_data_not_beside_the_archive(tmp_path, no_download):
    archive_dir = tmp_path / "downloads"
    remote = samples.make_pets_archive(archive_dir)
    archive = archive_dir / remote.filename
    before = snapshot(archive_dir)
    folder = ensure_pets(tmp_path / "data", quick=False, path=archive)
    assert folder == tmp_path / "data" / "oxford-iiit-pet-local" / "oxford-iiit-pet"
    assert len(PetsDataset(folder)) == 222 and snapshot(archive_dir) == before
    marker_state = snapshot(tmp_path / "data")
    assert ensure_pets(tmp_path / "data", quick=True, path=archive) == folder  # reused, not extracted again
    assert snapshot(tmp_path / "data") == marker_state
