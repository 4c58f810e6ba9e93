"""Atomic file writes: a reader never sees a half-written file (used by every module that saves).

Write to ``<name>.<pid>.part`` beside the target, flush it to the disk (``os.fsync``), then
``os.replace`` it onto the target, which is atomic on one file system. If the writing fails or
is interrupted (an exception, Ctrl-C), the ``.part`` file is removed and the old target, if any,
is left untouched. Only a killed process (SIGKILL, a power cut) can leave a ``.part`` file
behind; the next write of the same target removes it, once the process that wrote it is gone.
"""
from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "fsync_file", "sweep_stale_parts", "write_text_atomic", "write_bytes_atomic"]


def fsync_file(path) -> None:
    """Flush a file's bytes from the operating system's cache to the disk."""
    fd = os.open(path, os.O_RDONLY if os.name == "posix" else os.O_RDWR)  # Windows flushes writable files only
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX; Windows cannot open folders, and needs no such step)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (network mounts) refuse to fsync a folder: the rename still happened
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    """True if a process with this id runs on this machine (or we cannot tell: then we keep its files)."""
    if pid <= 0:
        return True
    if os.name == "posix":
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return False
        except OSError:  # PermissionError: it exists, and belongs to someone else
            return True
        return True
    if sys.platform == "win32":  # os.kill would terminate the process on Windows: ask the kernel instead
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() != 87  # 87 = ERROR_INVALID_PARAMETER: no such process
        try:
            code = ctypes.c_ulong()
            kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    return True


def sweep_stale_parts(path) -> list[Path]:
    """Delete the ``.part`` files that writes of ``path`` left behind; return what was deleted.

    ``<name>.<pid>.part`` is deleted only when process ``pid`` no longer runs (a live one may
    still be writing it); ``<name>.part`` (no process id: the downloader of earlier course
    versions) is always stale. Files of other names are never touched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(re.escape(path.name) + r"(?:\.(\d+))?\.part")
    removed = []
    for candidate in path.parent.iterdir():
        match = pattern.fullmatch(candidate.name)
        if not match or not candidate.is_file() or candidate.is_symlink():
            continue
        pid = match.group(1)
        if pid is not None and (int(pid) == os.getpid() or _pid_alive(int(pid))):
            continue  # ours (another thread may be writing it) or a running process's
        try:
            candidate.unlink()
        except FileNotFoundError:  # someone else swept it first
            continue
        removed.append(candidate)
    if removed:
        print(f"Removed {len(removed)} unfinished file(s) left by an interrupted run: "
              f"{', '.join(p.name for p in removed)}")
    return removed


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The block writes the temporary path (any way it likes: ``torch.save``, ``write_bytes``...);
    it is fsynced before the rename, so after a crash ``path`` holds either the old or the new
    bytes, never a file the disk had not finished. Stale ``.part`` files of ``path`` left by a
    killed run are removed first (:func:`sweep_stale_parts`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_parts(path)
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        yield part
        if part.is_file():
            fsync_file(part)
        os.replace(part, path)
        _fsync_folder(path.parent)
    finally:  # also on Ctrl-C (KeyboardInterrupt): never leave a .part behind
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
