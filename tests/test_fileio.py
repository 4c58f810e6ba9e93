"""Atomic writes: the target is replaced whole or not at all."""
import pytest

from tlhelpers.tools.fileio import atomic_path, write_bytes_atomic, write_text_atomic


def test_write_creates_folders_and_leaves_no_part_file(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    write_text_atomic(target, "hello")
    write_bytes_atomic(tmp_path / "out.bin", b"\x00\x01")
    assert target.read_text() == "hello" and (tmp_path / "out.bin").read_bytes() == b"\x00\x01"
    assert not list(tmp_path.rglob("*.part"))


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as part:
            part.write_text("half-writ")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert not list(tmp_path.glob("*.part"))
