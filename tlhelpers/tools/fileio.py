"""Atomic file writes: a reader never sees a half-written file (used by every module that saves).

Write to ``<name>.<pid>.part`` beside the target, then ``os.replace`` it onto the target, which
is atomic on one file system. If the writing fails (or is interrupted), the ``.part`` file is
removed and the old target, if any, is left untouched.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        yield part
        os.replace(part, path)
    finally:
        if part.exists():
            part.unlink()


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as part:
        part.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as part:
        part.write_bytes(data)
    return Path(path)
