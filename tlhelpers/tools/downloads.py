"""Datasets by name: a registry, verified downloads and safe extraction (introduced in notebook 01).

The idea comes from d2l's ``DATA_HUB``: every dataset the course uses is registered once, with the
address of each file, its mirrors, its size and a checksum that proves we got the right bytes::

    from tlhelpers.tools.downloads import ensure_dataset
    pets_dir = ensure_dataset("oxford-iiit-pet-fastai")   # data/oxford-iiit-pet

Three rules make downloads safe to re-run and safe to interrupt:

1. A file already on disk whose checksum verifies is used as is: no network request at all.
2. A download is streamed to ``<file>.<pid>.part`` (``tlhelpers.tools.fileio.atomic_path``),
   verified, flushed to the disk and only then renamed to ``<file>`` (``os.replace`` is atomic),
   so a crash or a dropped connection never leaves a complete-looking file behind. A ``.part``
   file found on disk is never trusted: Ctrl-C removes its own, and the next run removes those
   of killed runs. A server that sends more bytes than expected is cut off at once.
3. An archive is checked member by member *before* anything is extracted: absolute paths,
   ``..`` escapes, links that point outside and device files are refused
   (:class:`UnsafeArchiveError`) and nothing is written; so is an archive that would unpack to
   far more than its own size (a "decompression bomb") or to more than the free disk space.
   An archive that cannot be read (truncated, not an archive) raises :class:`ArchiveError`.
   Extraction goes to a temporary folder first and a marker file is written at the very end,
   so a half-extracted dataset is never mistaken for a complete one.

Offline? Run the course in quick mode (``TLH_QUICK=1``): it uses generated sample data instead.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import lzma
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Sequence

from tqdm.auto import tqdm

from tlhelpers.config import data_dir
from tlhelpers.tools.fileio import atomic_path, sweep_stale_parts, write_text_atomic

__all__ = [
    "RemoteFile",
    "DatasetRecord",
    "DATASETS",
    "DownloadError",
    "ChecksumError",
    "ArchiveError",
    "UnsafeArchiveError",
    "get_dataset",
    "file_checksum",
    "verify_checksum",
    "download_url",
    "download_dataset",
    "extract_archive",
    "ensure_dataset",
]


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: where it lives, what it is called here, and how to verify it (notebook 01)."""

    url: str
    filename: str
    #: ``"md5:<hex>"`` or ``"sha256:<hex>"``, or ``None`` when nobody publishes one.
    checksum: str | None
    #: Where the checksum (or the fact that there is none) comes from: a reader must be able to check it.
    checksum_source: str
    #: Size in bytes when known (shown in the progress bar, and a free first check), else ``None``.
    size: int | None = None
    #: Other addresses of the *same bytes*; each is verified against the same checksum.
    mirrors: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetRecord:
    """A named dataset: its files, where its archives unpack, and the folder you get back (notebook 01)."""

    name: str
    description: str
    homepage: str
    files: tuple[RemoteFile, ...]
    #: Folder, relative to the data root, that the archives are extracted into.
    extract_to: str
    #: Folder, relative to the data root, that :func:`ensure_dataset` returns.
    folder: str


_S3_FASTAI = "https://s3.amazonaws.com/fast-ai-"
_FASTAI_CHECKS = "fastai/fastai, file fastai/data/checks.txt (it records [size, md5] per URL)"

DATASETS: dict[str, DatasetRecord] = {
    "oxford-iiit-pet-fastai": DatasetRecord(
        name="oxford-iiit-pet-fastai",
        description="Oxford-IIIT Pet (37 breeds, 7,390 photos), images and annotations in one archive, "
        "as re-packed by fast.ai; the archive the original write-up used.",
        homepage="https://www.robots.ox.ac.uk/~vgg/data/pets/",
        files=(
            RemoteFile(
                url=f"{_S3_FASTAI}imageclas/oxford-iiit-pet.tgz",
                filename="oxford-iiit-pet.tgz",
                # Size and md5 as fastai records them for exactly this URL.
                checksum="md5:e4db5c768afd933bb91f5f594d7417a4",
                checksum_source=_FASTAI_CHECKS,
                size=811_706_944,
            ),
        ),
        extract_to=".",  # the archive already holds oxford-iiit-pet/{images,annotations}
        folder="oxford-iiit-pet",
    ),
    "oxford-iiit-pet": DatasetRecord(
        name="oxford-iiit-pet",
        description="Oxford-IIIT Pet from the authors' site: two archives (images, annotations). "
        "fast.ai's combined archive is the registry entry 'oxford-iiit-pet-fastai', not a mirror of these.",
        homepage="https://www.robots.ox.ac.uk/~vgg/data/pets/",
        files=(
            RemoteFile(
                url="https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
                # Renamed here so that a generic name like "images.tar.gz" never collides in data/.
                filename="oxford-iiit-pet-images.tar.gz",
                checksum="md5:5c4f3ee8e5d25df40f4fd59a7f44e54c",
                checksum_source="pytorch/vision, torchvision/datasets/oxford_iiit_pet.py "
                "(OxfordIIITPet._RESOURCES); the authors publish no checksum",
                # The authors only say "755M". This is the Content-Length their server sends, as
                # recorded in public wget logs; the md5 above is what really proves the bytes.
                size=791_918_971,
            ),
            RemoteFile(
                url="https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
                filename="oxford-iiit-pet-annotations.tar.gz",
                checksum="md5:95a8c909bbe2e81eed6a22bccdf3f68f",
                checksum_source="pytorch/vision, torchvision/datasets/oxford_iiit_pet.py "
                "(OxfordIIITPet._RESOURCES); the authors publish no checksum",
                # The authors only say "18M"; Content-Length as recorded in public wget logs.
                size=19_173_078,
            ),
        ),
        # images.tar.gz holds images/, annotations.tar.gz holds annotations/: unpacking both into
        # oxford-iiit-pet/ gives the same layout as the fast.ai archive (and as torchvision uses).
        extract_to="oxford-iiit-pet",
        folder="oxford-iiit-pet",
    ),
    "cifar10": DatasetRecord(
        name="cifar10",
        description="CIFAR-10 (10 classes, 60,000 32x32 images), the authors' Python pickles.",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        files=(
            RemoteFile(
                url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                filename="cifar-10-python.tar.gz",
                checksum="md5:c58f30108f718f92721af3b95e74349a",
                checksum_source="pytorch/vision, torchvision/datasets/cifar.py (CIFAR10.tgz_md5); "
                "the authors publish no checksum",
                # The authors only say "163 MB"; Content-Length as recorded in public download logs.
                size=170_498_071,
            ),
        ),
        extract_to=".",  # the archive holds cifar-10-batches-py/
        folder="cifar-10-batches-py",
    ),
    "cifar10-fastai": DatasetRecord(
        name="cifar10-fastai",
        description="CIFAR-10 as PNG image folders (cifar10/{train,test}/<class>/), re-packed by fast.ai. "
        "A different layout from 'cifar10', so a separate entry rather than a mirror.",
        homepage="https://docs.fast.ai/data.external.html",
        files=(
            RemoteFile(
                # fastai's own URLs.CIFAR; checks.txt records size and md5 for this address.
                url=f"{_S3_FASTAI}sample/cifar10.tgz",
                filename="cifar10.tgz",
                checksum="md5:a5f8c31371b63a406b23368042812d3c",
                checksum_source=_FASTAI_CHECKS,
                size=168_168_549,
                # The address most tutorials copy. checks.txt records nothing for it, so we cannot
                # promise it serves the same bytes: it is used only if it matches the md5 above.
                mirrors=(f"{_S3_FASTAI}imageclas/cifar10.tgz",),
            ),
        ),
        extract_to=".",  # the archive holds cifar10/
        folder="cifar10",
    ),
}


def get_dataset(name: str) -> DatasetRecord:
    """Look up a registry entry by name, with an error that lists the names we know (notebook 01)."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise KeyError(f"Unknown dataset {name!r}. Registered datasets: {known}.") from None


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
class DownloadError(RuntimeError):
    """No source delivered the file (network errors, HTTP errors or wrong bytes) (notebook 01)."""


class ChecksumError(DownloadError):
    """A source delivered bytes whose checksum (or size) is not the expected one (notebook 01)."""


class ArchiveError(ValueError):
    """An archive cannot be read (truncated, damaged, not an archive) or is too big to unpack (notebook 01)."""


class UnsafeArchiveError(ArchiveError):
    """An archive member would land outside the target folder, or is a device file (notebook 01)."""


class _WrongBytes(Exception):
    """A source delivered a complete answer, but not the bytes we want (size or checksum)."""


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------
_HEX_LENGTHS = {"md5": 32, "sha256": 64}
_CHUNK = 1024 * 1024  # read and hash 1 MiB at a time: constant memory for multi-GB files


def _parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"md5:<hex>"`` / ``"sha256:<hex>"`` into (algorithm, hex digest), or raise a clear error."""
    algo, sep, hexdigest = str(checksum).partition(":")
    algo, hexdigest = algo.strip().lower(), hexdigest.strip().lower()
    if (
        not sep
        or algo not in _HEX_LENGTHS
        or len(hexdigest) != _HEX_LENGTHS[algo]
        or any(c not in "0123456789abcdef" for c in hexdigest)
    ):
        raise ValueError(
            f"Checksum {checksum!r} is not understood: write 'md5:<32 hex digits>' or 'sha256:<64 hex digits>'."
        )
    return algo, hexdigest


def file_checksum(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks so that big archives fit in memory (notebook 01)."""
    digest = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: str | os.PathLike, checksum: str) -> bool:
    """True if the file exists and its digest matches ``"md5:<hex>"`` / ``"sha256:<hex>"`` (notebook 01)."""
    algo, expected = _parse_checksum(checksum)
    return Path(path).is_file() and file_checksum(path, algo) == expected


def _is_verified(path: Path, checksum: str | None, size: int | None) -> bool:
    """Size first (free), then the checksum (reads the whole file)."""
    if size is not None and path.stat().st_size != size:
        return False
    return checksum is None or verify_checksum(path, checksum)


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------
_USER_AGENT = "tlhelpers (course downloader; Python urllib)"


def _fetch(url: str, part: Path, *, timeout: float, progress: bool, size: int | None, algo: str | None,
           label: str):
    """Stream ``url`` into ``part`` (always from byte 0) and return (bytes received, hex digest or None).

    Reading stops as soon as more bytes arrive than expected (``size``, else the announced
    ``Content-Length``): a wrong or hostile server cannot fill the disk.
    """
    opener = urllib.request.build_opener()  # built per call, so proxy settings are read now
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.new(algo) if algo else None  # hash while writing: no second pass over the file
    received = 0
    with opener.open(request, timeout=timeout) as response:
        length_header = response.headers.get("Content-Length", "")
        announced = int(length_header) if length_header.isdigit() else None
        if size is not None and announced is not None and announced > size:
            raise _WrongBytes(f"expected {size} bytes, but the server announces {announced}; nothing was read")
        limit = size if size is not None else announced
        bar = tqdm(
            total=announced or size, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress,
        )
        with bar, open(part, "wb") as out:
            while True:
                # Never ask for more than one byte beyond the limit: that byte is the proof of "too many".
                chunk = response.read(_CHUNK if limit is None else min(_CHUNK, limit - received + 1))
                if not chunk:
                    break
                received += len(chunk)
                if limit is not None and received > limit:
                    raise _WrongBytes(f"expected {limit} bytes, but the server sent more; stopped reading")
                out.write(chunk)
                bar.update(len(chunk))
                if digest is not None:
                    digest.update(chunk)
    if announced is not None and received != announced:
        # The server promised more than it sent: the connection was closed early.
        raise http.client.IncompleteRead(b"", announced - received)
    return received, (digest.hexdigest() if digest is not None else None)


def _describe(error: BaseException) -> str:
    """A short, readable description of a failed attempt."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"{type(error).__name__}: {error.reason}"
    if isinstance(error, http.client.IncompleteRead):
        return f"connection closed early ({error.expected} bytes missing)"
    return f"{type(error).__name__}: {error}"


def _check_filename(url: str, filename: str | None, root: Path) -> str:
    """The file name to save ``url`` under: ``filename``, else the URL's last path part; a plain name, or an error."""
    name = filename if filename is not None else urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    why = None
    if not name:
        why = "is empty"
    elif name in (".", ".."):
        why = "names a folder, not a file"
    elif any(c in name for c in "/\\\0") or _is_absolute(name):
        why = "holds a folder separator"
    elif name.endswith(".part"):
        why = "ends in .part, the ending of unfinished downloads"
    if why is None:
        return name
    if filename is not None:
        raise ValueError(
            f"download_url({url!r}): filename={filename!r} {why}: it must be a plain file name inside {root}, "
            "e.g. filename='data.tar.gz'."
        )
    raise ValueError(
        f"Cannot take a file name from the URL {url!r}: its last path part {name!r} {why}, so the file could "
        f"land outside {root}. Pass a file name, e.g. download_url(url, root, filename='data.tar.gz')."
    )


def download_url(
    url: str,
    root: str | os.PathLike,
    filename: str | None = None,
    checksum: str | None = None,
    mirrors: Sequence[str] = (),
    size: int | None = None,
    retries: int = 3,
    timeout: float = 30,
    progress: bool = True,
    backoff: float = 0.5,
) -> Path:
    """Download ``url`` (else each mirror) to ``root/filename`` via ``.part``, verified, atomic (notebook 01).

    ``filename`` defaults to the URL's last path part; either must be a plain file name. A
    server that sends more than ``size`` bytes (or than it announced) is cut off at once.
    """
    if retries < 1:
        raise ValueError(f"retries={retries}: need at least 1 attempt per source.")
    root = Path(root).expanduser()
    filename = _check_filename(url, filename, root)
    path = root / filename
    algo = _parse_checksum(checksum)[0] if checksum else None  # a malformed checksum fails here, offline
    sweep_stale_parts(path)  # .part files of killed runs (Ctrl-C removes its own)

    if path.is_file():
        if checksum is None and size is None:
            print(f"Using {path}: it is already there (no checksum is published, so it is kept unverified).")
            return path
        if _is_verified(path, checksum, size):
            print(f"Using {path}: already downloaded and verified.")
            return path
        print(f"{path} is there but does not verify: downloading it again.")

    root.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []  # one line per source, for the final error message
    mismatch: str | None = None
    last_error = "none"

    for source in [url, *mirrors]:
        for attempt in range(1, retries + 1):
            try:
                # atomic_path: the bytes go to <file>.<pid>.part, which is fsynced and renamed to <file>
                # only if the block ends without an error; on any error or Ctrl-C it is deleted.
                with atomic_path(path) as part:
                    received, actual = _fetch(source, part, timeout=timeout, progress=progress, size=size,
                                              algo=algo, label=filename)
                    # The transfer finished: are these the bytes we wanted?
                    if size is not None and received != size:
                        raise _WrongBytes(f"expected {size} bytes, got {received}")
                    if checksum is not None and actual != _parse_checksum(checksum)[1]:
                        raise _WrongBytes(f"checksum mismatch: expected {checksum}, got {algo}:{actual}")
            except _WrongBytes as wrong:
                last_error = str(wrong)
                mismatch = f"{filename} from {source}: {last_error}"
                break  # wrong bytes will not become right by asking again; try the next mirror
            except (OSError, http.client.HTTPException) as error:  # URLError, HTTPError, timeouts, resets
                last_error = _describe(error)
                client_error = isinstance(error, urllib.error.HTTPError) and error.code < 500
                if client_error and error.code not in (408, 429):
                    break  # 404, 403...: asking again will not help, try the next mirror
                if attempt < retries:
                    time.sleep(backoff * 2 ** (attempt - 1))  # 0.5 s, 1 s, 2 s...: let a busy server recover
                continue
            verified = "verified" if checksum else "no checksum to verify"
            print(f"Downloaded {path} from {source} ({verified}).")
            return path
        failures.append(f"  - {source}: {last_error} (after {attempt} attempt{'s' if attempt > 1 else ''})")

    how = "it will be verified and used" if checksum or size else "it will be used as is"
    advice = (
        "What to do: run in quick mode with TLH_QUICK=1 (generated sample data), or download the file "
        f"yourself and put it at {path} ({how})."
    )
    tried = "\n".join(failures)
    if mismatch:
        raise ChecksumError(
            f"Wrong bytes for {filename}: {mismatch}. The partial file was deleted.\n"
            f"Sources tried:\n{tried}\nLast error: {last_error}\n{advice}"
        )
    raise DownloadError(
        f"Could not download {filename} from any source.\nSources tried:\n{tried}\n"
        f"Last error: {last_error}\n{advice}"
    )


def download_dataset(name: str, root: str | os.PathLike | None = None, **kwargs) -> Path:
    """Download (and verify) every file of a registered dataset into ``root`` and return ``root`` (notebook 01)."""
    dataset = get_dataset(name)
    root = Path(root).expanduser() if root is not None else data_dir()
    for remote in dataset.files:
        download_url(
            remote.url, root, filename=remote.filename, checksum=remote.checksum,
            mirrors=remote.mirrors, size=remote.size, **kwargs,
        )
    return root


# --------------------------------------------------------------------------------------------
# Safe extraction
# --------------------------------------------------------------------------------------------
# Python >= 3.11.4 / 3.12 ships tarfile's "data" filter, which refuses the same dangers at extraction
# time. We use it where it exists, *and* check every member ourselves first, in every Python version.
_TAR_FILTER: str | None = "data" if hasattr(tarfile, "data_filter") else None


def _marker(archive: Path, dest: Path) -> Path:
    """The file that says "this archive was fully extracted here"; it lists what it created."""
    return dest / f".{archive.name}.extracted"


def _created_by(archive: Path, dest: Path) -> list[str] | None:
    """The top-level names an earlier extraction of ``archive`` created in ``dest``, or None if none did."""
    marker = _marker(archive, dest)
    if not marker.is_file():
        return None
    return [line for line in marker.read_text().splitlines()[1:] if line]


def _already_extracted(archive: Path, dest: Path) -> bool:
    """True if the marker exists and everything it lists is still there (a deleted folder means: again)."""
    created = _created_by(archive, dest)
    return created is not None and all(os.path.lexists(dest / name) for name in created)


def _inside_parts(start: Sequence[str], path: str, links: set[str]) -> list[str] | None:
    """Resolve ``path`` relative to ``start`` by its text alone; None if it leaves the target folder.

    Also None if it would pass *through* a symbolic link of the archive: the operating system
    would follow that link, so its text alone would no longer say where we end up.
    """
    parts = list(start)
    for component in path.replace("\\", "/").split("/"):
        if component in ("", "."):
            continue
        if parts and "/".join(parts) in links:
            return None
        if component == "..":
            if not parts:
                return None  # climbs above the target folder
            parts.pop()
        else:
            parts.append(component)
    return parts


def _is_absolute(name: str) -> bool:
    """``/etc/passwd``, ``\\\\server\\share`` or ``C:\\...``: absolute on some operating system."""
    name = name.replace("\\", "/")
    return name.startswith("/") or (len(name) > 1 and name[1] == ":")


def _check_tar(archive: Path, members: list[tarfile.TarInfo]) -> None:
    """Raise UnsafeArchiveError for the first member that is unsafe; check them all before extracting any."""
    links = {"/".join(_inside_parts([], m.name, set()) or []) for m in members if m.issym()}

    def refuse(member: tarfile.TarInfo, why: str) -> NoReturn:
        raise UnsafeArchiveError(
            f"Refusing to extract {archive}: member {member.name!r} {why}. Nothing was extracted."
        )

    for member in members:
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            refuse(member, "is a device file, FIFO or other special file")
        if _is_absolute(member.name):
            refuse(member, "has an absolute path")
        parts = _inside_parts([], member.name, links)
        if parts is None:
            refuse(member, "would be written outside the target folder")
        if not parts and not member.isdir():
            refuse(member, "has an empty name")
        if member.issym():
            # A symlink's target is relative to the folder that holds the link.
            target = None if _is_absolute(member.linkname) else _inside_parts(parts[:-1], member.linkname, links)
            if target is None or "/".join(target) in links:
                refuse(member, f"is a symlink to {member.linkname!r}, outside the target folder or via a link")
        if member.islnk():
            # A hard link's target is relative to the top of the archive.
            target = None if _is_absolute(member.linkname) else _inside_parts([], member.linkname, links)
            if not target:
                refuse(member, f"is a hard link to {member.linkname!r}, outside the target folder")


def _check_zip(archive: Path, names: list[str]) -> None:
    """Raise UnsafeArchiveError for the first unsafe zip member name, before extracting anything."""
    for name in names:
        parts = None if _is_absolute(name) else _inside_parts([], name, set())
        if parts is None or (not parts and not name.endswith("/")):
            raise UnsafeArchiveError(
                f"Refusing to extract {archive}: member {name!r} has an absolute path or would be written "
                "outside the target folder. Nothing was extracted."
            )


def _archive_kind(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    raise ValueError(f"Cannot extract {archive}: expected a .tar, .tar.gz, .tgz or .zip file.")


#: What the readers raise for a truncated, damaged or fake archive (``BadGzipFile`` is an ``OSError``:
#: listed by name, so that a real disk error such as "no space left" is never mistaken for one).
_UNREADABLE = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


@contextlib.contextmanager
def _reading(archive: Path):
    """Turn the readers' errors about a broken archive into an :class:`ArchiveError` that says what to do."""
    try:
        yield
    except getattr(tarfile, "FilterError", ()) as error:  # () catches nothing on old Python
        raise UnsafeArchiveError(f"Refusing to extract {archive}: {error}. Nothing was extracted.") from error
    except _UNREADABLE as error:
        raise ArchiveError(
            f"Cannot read {archive}: it is truncated, damaged or not a {_archive_kind(archive)} archive "
            f"({type(error).__name__}: {error}). Delete it and download it again (ensure_dataset downloads "
            "a missing archive by itself)."
        ) from error


#: An archive that unpacks to more than this many times its own size, and to more than
#: ``_RATIO_FLOOR`` bytes, is refused by default: photos hardly compress (about 1x), a
#: "decompression bomb" of zeros unpacks to 1,000x its size.
MAX_RATIO = 100
_RATIO_FLOOR = 64 * 1024 * 1024
_BLOCK = 4096  # what one file costs on the disk at least


def _gib(n: int) -> str:
    """A size for people: GiB, MiB or bytes."""
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _check_size(archive: Path, dest: Path, total: int, count: int, max_bytes: int | None,
                max_ratio: float | None) -> None:
    """Refuse, before anything is written, an archive too big for ``max_bytes``, ``max_ratio`` or the free disk."""
    packed = archive.stat().st_size
    if max_bytes is not None and total > max_bytes:
        raise ArchiveError(
            f"Refusing to extract {archive}: it would unpack to {_gib(total)} ({total:,} bytes), more than "
            f"max_bytes={max_bytes:,}. Nothing was extracted. If you trust it, pass a larger max_bytes."
        )
    if max_ratio is not None and total > _RATIO_FLOOR and total > max_ratio * packed:
        raise ArchiveError(
            f"Refusing to extract {archive}: it would unpack to {_gib(total)} from {_gib(packed)}, "
            f"{total / max(packed, 1):,.0f} times its size (more than max_ratio={max_ratio}), like a "
            "decompression bomb. Nothing was extracted. If you trust it, pass max_ratio=None."
        )
    existing = dest
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # dest may not exist yet: ask about the disk it will be on
    free = shutil.disk_usage(existing).free
    needed = total + count * _BLOCK
    if needed > free:
        raise ArchiveError(
            f"Cannot extract {archive}: it needs about {_gib(needed)} but only {_gib(free)} are free on the disk "
            f"of {existing}. Nothing was extracted. Free some space, or extract it somewhere else."
        )


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike, *, max_bytes: int | None = None,
                    max_ratio: float | None = MAX_RATIO) -> Path:
    """Safely extract a .tar/.tar.gz/.tgz/.zip into ``dest`` once (a marker skips it next time) (notebook 01).

    Before anything is written: every member's path is checked (:class:`UnsafeArchiveError`), and
    the total unpacked size (the sizes the archive declares, which the readers enforce) against
    ``max_bytes``, ``max_ratio`` times the archive's size and the free disk space
    (:class:`ArchiveError`). A truncated or damaged archive raises :class:`ArchiveError`.
    """
    archive, dest = Path(archive), Path(dest)
    marker = _marker(archive, dest)
    if _already_extracted(archive, dest):
        print(f"{archive.name} is already extracted in {dest}.")
        return dest
    if not archive.is_file():
        raise FileNotFoundError(f"Cannot extract {archive}: the file does not exist. Download it first.")
    kind = _archive_kind(archive)

    # 1. Check every member. Reading a .tar.gz twice costs time, but nothing is written before
    #    we know the whole archive is safe, and that it fits.
    with _reading(archive):
        if kind == "tar":
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                _check_tar(archive, members)
                sizes = [m.size for m in members if m.isfile()]
        else:
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                _check_zip(archive, [info.filename for info in infos])
                sizes = [info.file_size for info in infos]  # zipfile stops reading a member at this size
    _check_size(archive, dest, sum(sizes), len(sizes), max_bytes, max_ratio)

    # 2. Extract into a private folder inside dest (same disk, so the moves below are renames).
    staging = dest / f".{archive.name}.extracting"
    if staging.exists():
        shutil.rmtree(staging)  # left over by an interrupted run: ours, and incomplete
    staging.mkdir(parents=True)
    try:
        with _reading(archive):
            if kind == "tar":
                with tarfile.open(archive, "r:*") as tar:
                    if _TAR_FILTER:
                        tar.extractall(staging, filter=_TAR_FILTER)
                    else:
                        tar.extractall(staging)  # older Python: our _check_tar above is the protection
            else:
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(staging)

        # 3. Move the top-level entries into place; never overwrite something we did not create.
        entries = sorted(staging.iterdir())
        ours = set(_created_by(archive, dest) or [])  # left by an earlier extraction of this archive
        clashes = [str(dest / e.name) for e in entries if os.path.lexists(dest / e.name) and e.name not in ours]
        if clashes:
            raise FileExistsError(
                f"Cannot extract {archive.name} into {dest}: {', '.join(clashes)} already exist(s) but "
                f"{marker.name} does not, so they may be incomplete or someone else's. Delete or move "
                "them, then run again."
            )
        for entry in entries:
            target = dest / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # only ever one of ours (see above): replace it whole
            elif os.path.lexists(target):
                target.unlink()
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    # 4. Only now is the extraction complete.
    created = "".join(f"{entry.name}\n" for entry in entries)
    write_text_atomic(marker, f"{archive.name} was extracted completely. It created:\n{created}")
    print(f"Extracted {archive.name} into {dest}.")
    return dest


def ensure_dataset(name: str, root: str | os.PathLike | None = None, **kwargs) -> Path:
    """Download, verify and extract a registered dataset, skipping done work; return its folder (notebook 01)."""
    dataset = get_dataset(name)
    root = Path(root).expanduser() if root is not None else data_dir()
    dest = root / dataset.extract_to
    for remote in dataset.files:
        archive = root / remote.filename
        if _already_extracted(archive, dest):
            continue  # extracted before: no need for the archive, nor the network
        download_url(
            remote.url, root, filename=remote.filename, checksum=remote.checksum,
            mirrors=remote.mirrors, size=remote.size, **kwargs,
        )
        extract_archive(archive, dest)
    folder = root / dataset.folder
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{name}: the archives were extracted into {dest}, but {folder} is not there. "
            "The registry entry's 'folder' does not match the archive layout; please report it."
        )
    return folder
