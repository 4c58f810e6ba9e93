"""Tests for tlhelpers.tools.downloads: registry, verified downloads and safe extraction (notebook 01).

Every download test talks to a small HTTP server on 127.0.0.1 started by the ``server`` fixture;
nothing here touches any other address.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import socket
import tarfile
import threading
import urllib.parse
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from tlhelpers.tools import downloads
from tlhelpers.tools.downloads import (
    DATASETS,
    ChecksumError,
    DatasetRecord,
    DownloadError,
    RemoteFile,
    UnsafeArchiveError,
    ensure_dataset,
    download_dataset,
    download_url,
    extract_archive,
    file_checksum,
    verify_checksum,
)

MiB = 2**20
PAYLOAD = b"pretend this is an archive of pet photos\n" * 2000  # ~80 kB: several reads, still instant
FAST = dict(retries=3, timeout=5, progress=False, backoff=0.01)  # small back-off: tests stay fast


def sha256(data_bytes: bytes) -> str:
    return "sha256:" + hashlib.sha256(data_bytes).hexdigest()


def md5(data_bytes: bytes) -> str:
    return "md5:" + hashlib.md5(data_bytes).hexdigest()


# --------------------------------------------------------------------------------------------
# A local HTTP server (127.0.0.1 only)
# --------------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /files/<name>, /truncated/<name>, /flaky/<name> (500 first), /error/<code>,
    /endless/<n> (n zero bytes, no Content-Length), /liar/<n> (the same, announcing n)."""

    def do_GET(self):  # noqa: N802 (the name http.server expects)
        self.server.hits[self.path] += 1
        route, _, name = urllib.parse.unquote(self.path).lstrip("/").partition("/")
        if route in ("endless", "liar"):
            self._send_zeros(int(name), announce=(route == "liar"))
            return
        if route == "error":
            self.send_error(int(name))
            return
        if route == "flaky" and self.server.hits[self.path] == 1:
            self.send_error(500)
            return
        file = self.server.served / name
        if route not in ("files", "truncated", "flaky") or not file.is_file():
            self.send_error(404)
            return
        body = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))  # the full size, even when truncating
        self.end_headers()
        if route == "truncated":
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True  # hang up with half the promised bytes
        else:
            self.wfile.write(body)

    def _send_zeros(self, total: int, announce: bool):
        """``total`` zero bytes, without Content-Length (or announcing it), counted in ``server.sent``."""
        self.send_response(200)
        if announce:
            self.send_header("Content-Length", str(total))
        self.end_headers()
        chunk = bytes(64 * 1024)
        try:
            while self.server.sent < total:
                self.wfile.write(chunk)
                self.server.sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up: what a careful client does
        self.close_connection = True

    def log_message(self, *args):  # keep test output quiet
        pass


class LocalServer:
    def __init__(self, served: Path):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.served = served
        self.httpd.hits = Counter()
        self.httpd.sent = 0  # bytes sent by /endless and /liar
        self.served = served
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def hits(self) -> Counter:
        return self.httpd.hits

    def url(self, route: str, name: str) -> str:
        return f"{self.base}/{route}/{name}"

    def serve(self, name: str, content: bytes) -> str:
        (self.served / name).write_bytes(content)
        return self.url("files", name)


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    """A proxy setting must never send our 127.0.0.1 requests anywhere else."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    local = LocalServer(served)
    thread = threading.Thread(target=local.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield local
    local.httpd.shutdown()
    local.httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def closed_port_url():
    """A URL on 127.0.0.1 where nothing listens: bind a free port, then close it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/files/pets.tgz"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------
def test_file_checksum_and_verify(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    assert file_checksum(path, "md5") == hashlib.md5(PAYLOAD).hexdigest()
    assert file_checksum(path) == hashlib.sha256(PAYLOAD).hexdigest()
    assert verify_checksum(path, sha256(PAYLOAD))
    assert verify_checksum(path, md5(PAYLOAD).upper().replace("MD5", "md5"))  # hex case does not matter
    assert not verify_checksum(path, sha256(b"something else"))
    assert not verify_checksum(tmp_path / "missing.bin", sha256(PAYLOAD))


@pytest.mark.parametrize("bad", ["abc", "md5:1234", "sha1:" + "0" * 40, "sha256:" + "z" * 64, "md5" + "0" * 32])
def test_malformed_checksum_is_a_clear_error(tmp_path, bad):
    with pytest.raises(ValueError, match="md5:<32 hex digits>"):
        download_url("http://127.0.0.1:9/never", tmp_path, checksum=bad, **FAST)


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_checksum", [sha256, md5])
def test_download_verifies_and_leaves_no_part(server, tmp_path, make_checksum):
    url = server.serve("pets.tgz", PAYLOAD)
    root = tmp_path / "downloads"
    path = download_url(url, root, checksum=make_checksum(PAYLOAD), size=len(PAYLOAD), **FAST)
    assert path == root / "pets.tgz"
    assert path.read_bytes() == PAYLOAD
    assert leftovers(root) == ["pets.tgz"]  # no .part
    assert server.hits["/files/pets.tgz"] == 1


def test_download_with_progress_bar_and_custom_filename(server, tmp_path, capsys):
    url = server.serve("images.tar.gz", PAYLOAD)
    path = download_url(url, tmp_path / "d", filename="pets-images.tar.gz", checksum=sha256(PAYLOAD),
                        retries=1, timeout=5, backoff=0.01)  # progress=True (the default)
    assert path.name == "pets-images.tar.gz" and path.read_bytes() == PAYLOAD
    assert "pets-images.tar.gz" in capsys.readouterr().err  # tqdm's bar names the file


def test_checksum_mismatch_raises_and_leaves_nothing(server, tmp_path):
    url = server.serve("pets.tgz", PAYLOAD)
    root = tmp_path / "downloads"
    wrong = sha256(b"the bytes the course was written for")
    with pytest.raises(ChecksumError) as info:
        download_url(url, root, checksum=wrong, **FAST)
    message = str(info.value)
    assert "pets.tgz" in message
    assert wrong in message  # expected
    assert hashlib.sha256(PAYLOAD).hexdigest() in message  # actual
    assert leftovers(root) == []  # neither pets.tgz nor pets.tgz.part
    assert server.hits["/files/pets.tgz"] == 1  # wrong bytes are not fetched again and again


def test_size_mismatch_is_refused(server, tmp_path):
    url = server.serve("pets.tgz", PAYLOAD)
    with pytest.raises(ChecksumError, match=f"expected {len(PAYLOAD) + 1} bytes, got {len(PAYLOAD)}"):
        download_url(url, tmp_path, size=len(PAYLOAD) + 1, **FAST)
    assert not (tmp_path / "pets.tgz").exists() and not (tmp_path / "pets.tgz.part").exists()


def test_interrupted_transfer_is_retried_then_fails_without_a_file(server, tmp_path):
    server.serve("pets.tgz", PAYLOAD)
    url = server.url("truncated", "pets.tgz")
    root = tmp_path / "downloads"
    # No checksum on purpose: even then, a short transfer must never become "the file".
    with pytest.raises(DownloadError, match="connection closed early") as info:
        download_url(url, root, **FAST)
    assert not isinstance(info.value, ChecksumError)
    assert server.hits["/truncated/pets.tgz"] == FAST["retries"]
    assert leftovers(root) == []


def test_server_error_is_retried_with_backoff(server, tmp_path):
    server.serve("pets.tgz", PAYLOAD)
    path = download_url(server.url("flaky", "pets.tgz"), tmp_path, checksum=sha256(PAYLOAD), **FAST)
    assert path.read_bytes() == PAYLOAD
    assert server.hits["/flaky/pets.tgz"] == 2  # one 500, then success


def test_404_is_not_retried_and_the_mirror_is_used(server, tmp_path):
    mirror = server.serve("pets.tgz", PAYLOAD)
    primary = server.url("error", "404")
    path = download_url(primary, tmp_path, filename="pets.tgz", checksum=sha256(PAYLOAD), mirrors=[mirror], **FAST)
    assert path.read_bytes() == PAYLOAD
    assert server.hits["/error/404"] == 1
    assert server.hits["/files/pets.tgz"] == 1


def test_refused_primary_falls_back_to_mirror(server, tmp_path, closed_port_url):
    mirror = server.serve("pets.tgz", PAYLOAD)
    root = tmp_path / "downloads"
    path = download_url(closed_port_url, root, checksum=md5(PAYLOAD), mirrors=(mirror,), **FAST)
    assert path.read_bytes() == PAYLOAD and leftovers(root) == ["pets.tgz"]


def test_mirror_with_wrong_bytes_is_not_accepted(server, tmp_path):
    primary = server.url("error", "500")
    mirror = server.serve("pets.tgz", b"a different archive with the same name")
    root = tmp_path / "downloads"
    with pytest.raises(ChecksumError) as info:
        download_url(primary, root, filename="pets.tgz", checksum=sha256(PAYLOAD), mirrors=[mirror], **FAST)
    assert primary in str(info.value) and mirror in str(info.value)
    assert server.hits["/error/500"] == FAST["retries"]  # 5xx is worth retrying
    assert leftovers(root) == []


def test_present_and_verified_file_makes_no_request(server, tmp_path):
    url = server.serve("pets.tgz", b"the server would send different bytes")
    (tmp_path / "pets.tgz").write_bytes(PAYLOAD)
    path = download_url(url, tmp_path, checksum=sha256(PAYLOAD), size=len(PAYLOAD), **FAST)
    assert path.read_bytes() == PAYLOAD
    assert sum(server.hits.values()) == 0


def test_present_file_without_checksum_is_kept(server, tmp_path, capsys):
    url = server.serve("pets.tgz", b"new")
    (tmp_path / "pets.tgz").write_bytes(PAYLOAD)
    assert download_url(url, tmp_path, **FAST).read_bytes() == PAYLOAD
    assert sum(server.hits.values()) == 0
    assert "unverified" in capsys.readouterr().out  # it says so


def test_present_file_with_wrong_checksum_is_downloaded_again(server, tmp_path):
    url = server.serve("pets.tgz", PAYLOAD)
    (tmp_path / "pets.tgz").write_bytes(b"truncated or corrupted copy")
    path = download_url(url, tmp_path, checksum=sha256(PAYLOAD), **FAST)
    assert path.read_bytes() == PAYLOAD
    assert server.hits["/files/pets.tgz"] == 1


def test_part_file_from_a_crash_is_not_trusted(server, tmp_path):
    url = server.serve("pets.tgz", PAYLOAD)
    root = tmp_path / "downloads"
    root.mkdir()
    (root / "pets.tgz.part").write_bytes(b"garbage left by a crash" * 100)
    path = download_url(url, root, checksum=sha256(PAYLOAD), **FAST)
    assert path.read_bytes() == PAYLOAD and leftovers(root) == ["pets.tgz"]


def test_offline_error_says_what_to_do(tmp_path, closed_port_url):
    root = tmp_path / "downloads"
    mirror = closed_port_url.replace("pets.tgz", "mirror/pets.tgz")
    with pytest.raises(DownloadError) as info:
        download_url(closed_port_url, root, checksum=sha256(PAYLOAD), mirrors=[mirror], **FAST)
    message = str(info.value)
    assert not isinstance(info.value, ChecksumError)
    assert "TLH_QUICK=1" in message
    assert str(root / "pets.tgz") in message  # where to put a manual download
    assert closed_port_url in message and mirror in message  # every source tried
    assert "Last error:" in message and "refused" in message.lower()
    assert leftovers(root) == []


# --------------------------------------------------------------------------------------------
# Hostile servers and URLs: downloads stop as soon as more bytes arrive than expected
# --------------------------------------------------------------------------------------------
def test_a_server_sending_too_much_is_cut_off(server, tmp_path):
    root = tmp_path / "data"
    expected = 2 * MiB
    with pytest.raises(ChecksumError, match="sent more"):
        download_url(f"{server.base}/endless/{64 * MiB}", root, filename="pets.tgz", size=expected, **FAST)
    # The client hung up after about the expected size (socket buffers hold a few MiB more); it did
    # not read the 64 MiB the server wanted to send.
    assert server.httpd.sent < 24 * MiB, server.httpd.sent
    assert leftovers(root) == []


def test_a_too_big_content_length_is_refused_before_reading(server, tmp_path):
    root = tmp_path / "data"
    with pytest.raises(ChecksumError, match="announces"):
        download_url(f"{server.base}/liar/{64 * MiB}", root, filename="pets.tgz", size=MiB, **FAST)
    assert server.httpd.sent < 24 * MiB and leftovers(root) == []


# --------------------------------------------------------------------------------------------
# File names taken from URLs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tail", ["files/", "files/?download=1", "files/..", "files/%2e%2e", "files/a%2F..%2F..%2Fx",
                                  "files/.", "files/pets.tgz.part"])
def test_a_url_without_a_usable_file_name_is_a_clear_error(server, tmp_path, tail):
    root = tmp_path / "data"
    url = f"{server.base}/{tail}"
    with pytest.raises(ValueError, match="filename=") as info:
        download_url(url, root, **FAST)
    assert url in str(info.value) and "Pass a file name" in str(info.value)
    assert sum(server.hits.values()) == 0  # refused before any request
    assert leftovers(tmp_path) == ["served"]  # nothing written, inside or outside root


@pytest.mark.parametrize("name", ["../pets.tgz", "sub/pets.tgz", "<absolute>", "..", ""])
def test_a_filename_argument_with_folders_is_a_clear_error(server, tmp_path, name):
    (server.served / "pets.tgz").write_bytes(b"x")
    name = str(tmp_path / "elsewhere" / "pets.tgz") if name == "<absolute>" else name
    with pytest.raises(ValueError, match="plain file name"):
        download_url(f"{server.base}/files/pets.tgz", tmp_path / "data", filename=name, **FAST)
    assert sum(server.hits.values()) == 0 and leftovers(tmp_path) == ["served"]


def test_a_percent_encoded_url_name_is_decoded(server, tmp_path):
    (server.served / "my pets.tgz").write_bytes(b"bytes")
    path = download_url(f"{server.base}/files/my%20pets.tgz", tmp_path / "data", **FAST)
    assert path == tmp_path / "data" / "my pets.tgz" and path.read_bytes() == b"bytes"


# --------------------------------------------------------------------------------------------
# Ctrl-C (the sweeping of .part files left by killed runs: test_hostile_inputs_data.py)
# --------------------------------------------------------------------------------------------
def test_ctrl_c_during_a_download_leaves_no_part_file(server, tmp_path, monkeypatch):
    (server.served / "pets.tgz").write_bytes(b"x" * (3 * MiB))

    class InterruptedBar:  # the progress bar is updated after each chunk is written: Ctrl-C there
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            raise KeyboardInterrupt

    monkeypatch.setattr(downloads, "tqdm", InterruptedBar)
    root = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        download_url(f"{server.base}/files/pets.tgz", root, **FAST)
    assert leftovers(root) == []


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
def test_registry_entries_are_well_formed():
    assert {"oxford-iiit-pet-fastai", "oxford-iiit-pet", "cifar10", "cifar10-fastai"} <= set(DATASETS)
    filenames = []
    for name, dataset in DATASETS.items():
        assert isinstance(dataset, DatasetRecord) and dataset.name == name
        assert dataset.files and dataset.folder and dataset.extract_to
        for remote in dataset.files:
            assert isinstance(remote, RemoteFile)
            assert remote.url.startswith("https://"), remote.url
            assert all(m.startswith("https://") for m in remote.mirrors)
            assert remote.filename and "/" not in remote.filename
            assert remote.filename.endswith((".tar", ".tar.gz", ".tgz", ".zip"))
            # Either a checksum we can parse, or an explicit None; always with its source.
            valid = r"md5:[0-9a-f]{32}|sha256:[0-9a-f]{64}"
            assert remote.checksum is None or re.fullmatch(valid, remote.checksum), remote.checksum
            assert len(remote.checksum_source) > 10
            assert remote.size is None or (isinstance(remote.size, int) and remote.size > 0)
            filenames.append(remote.filename)
    assert len(filenames) == len(set(filenames)), "two registry files would overwrite each other in data/"


def test_registry_checksums_match_torchvision():
    """Our md5s for the official archives are the ones torchvision checks (read from its source, no import)."""
    import importlib.util

    spec = importlib.util.find_spec("torchvision")  # finds the package without importing torch (fast)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchvision is not installed")
    sources = Path(list(spec.submodule_search_locations)[0]) / "datasets"
    for name, source_file in [("oxford-iiit-pet", "oxford_iiit_pet.py"), ("cifar10", "cifar.py")]:
        text = (sources / source_file).read_text()
        for remote in DATASETS[name].files:
            md5_hex = remote.checksum.removeprefix("md5:")
            assert remote.checksum.startswith("md5:") and md5_hex in text, (remote.url, source_file)
            assert remote.url.rsplit("/", 1)[-1] in text
    assert DATASETS["cifar10"].files[0].checksum == "md5:c58f30108f718f92721af3b95e74349a"


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(KeyError, match="oxford-iiit-pet-fastai"):
        download_dataset("imagenet")


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------
GOOD_FILES = {"pets/images/Abyssinian_1.jpg": b"jpeg bytes", "pets/annotations/list.txt": b"Abyssinian_1 1 1 1\n"}


def make_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz", extra=()) -> Path:
    """A tar archive with ``files`` followed by ``extra`` (TarInfo, data-or-None) members."""
    with tarfile.open(path, mode) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info, content in extra:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return path


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in files.items():
            zf.writestr(zipfile.ZipInfo(name), content)
    return path


def all_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("suffix,mode", [(".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar", "w")])
def test_good_tar_extracts_once(tmp_path, suffix, mode, monkeypatch):
    archive = make_tar(tmp_path / f"pets{suffix}", GOOD_FILES, mode)
    dest = tmp_path / "out"
    assert extract_archive(archive, dest) == dest
    for name, content in GOOD_FILES.items():
        assert (dest / name).read_bytes() == content
    assert leftovers(dest) == [f".pets{suffix}.extracted", "pets"]  # no staging folder left
    # A second call does not even open the archive.
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: pytest.fail("extracted twice"))
    assert extract_archive(archive, dest) == dest


def test_good_zip_extracts(tmp_path):
    archive = make_zip(tmp_path / "pets.zip", GOOD_FILES)
    dest = tmp_path / "out"
    extract_archive(archive, dest)
    for name, content in GOOD_FILES.items():
        assert (dest / name).read_bytes() == content
    assert (dest / ".pets.zip.extracted").is_file()


def test_deleted_folder_is_extracted_again(tmp_path):
    import shutil

    archive = make_tar(tmp_path / "pets.tgz", GOOD_FILES)
    dest = tmp_path / "out"
    extract_archive(archive, dest)
    shutil.rmtree(dest / "pets")
    extract_archive(archive, dest)
    assert (dest / "pets/images/Abyssinian_1.jpg").read_bytes() == b"jpeg bytes"


def test_extraction_does_not_overwrite_foreign_files(tmp_path):
    archive = make_tar(tmp_path / "pets.tgz", GOOD_FILES)
    dest = tmp_path / "out"
    (dest / "pets").mkdir(parents=True)
    (dest / "pets" / "mine.txt").write_text("not from the archive")
    with pytest.raises(FileExistsError, match="pets"):
        extract_archive(archive, dest)
    assert all_files(dest) == {"pets", "pets/mine.txt"}  # untouched, no marker, no staging folder


def test_unsupported_archive_format(tmp_path):
    path = tmp_path / "pets.rar"
    path.write_bytes(b"Rar!")
    with pytest.raises(ValueError, match="pets.rar"):
        extract_archive(path, tmp_path / "out")


def _tarinfo(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, size
    return info


def _malicious_members(outside: Path):
    """(id, bad member name, extra members) triples; each archive also holds GOOD_FILES first."""
    evil = b"evil"
    return [
        ("dotdot", "../evil.txt", [(_tarinfo("../evil.txt", size=4), evil)]),
        ("dotdot2", "../../evil.txt", [(_tarinfo("../../evil.txt", size=4), evil)]),
        ("nested-dotdot", "pets/../../evil.txt", [(_tarinfo("pets/../../evil.txt", size=4), evil)]),
        ("absolute", str(outside / "abs_evil.txt"), [(_tarinfo(str(outside / "abs_evil.txt"), size=4), evil)]),
        ("symlink-out", "link", [
            (_tarinfo("link", tarfile.SYMTYPE, linkname="../.."), None),
            (_tarinfo("link/evil.txt", size=4), evil),
        ]),
        ("symlink-abs", "abslink", [(_tarinfo("abslink", tarfile.SYMTYPE, linkname=str(outside)), None)]),
        ("symlink-chain", "b", [
            (_tarinfo("a", tarfile.SYMTYPE, linkname="."), None),
            (_tarinfo("b", tarfile.SYMTYPE, linkname="a/.."), None),
            (_tarinfo("b/evil.txt", size=4), evil),
        ]),
        ("hardlink-out", "hard", [(_tarinfo("hard", tarfile.LNKTYPE, linkname="../../outside.txt"), None)]),
        ("device", "null", [(_tarinfo("null", tarfile.CHRTYPE), None)]),
    ]


@pytest.mark.parametrize("tar_filter", ["data", None], ids=["with-data-filter", "own-check-only"])
@pytest.mark.parametrize("case", range(9), ids=[c[0] for c in _malicious_members(Path("/x"))])
def test_malicious_tar_is_refused_and_nothing_is_written(tmp_path, monkeypatch, tar_filter, case):
    if tar_filter and not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile data filter")
    monkeypatch.setattr(downloads, "_TAR_FILTER", tar_filter)
    # Layout: tmp_path/outside.txt, tmp_path/work/archive.tgz, tmp_path/work/out/  (the target)
    (tmp_path / "outside.txt").write_text("a file the archive must not reach")
    work = tmp_path / "work"
    dest = work / "out"
    dest.mkdir(parents=True)
    _, bad_name, extra = _malicious_members(tmp_path)[case]
    archive = make_tar(work / "evil.tgz", GOOD_FILES, extra=extra)
    before = all_files(tmp_path)

    with pytest.raises(UnsafeArchiveError) as info:
        extract_archive(archive, dest)

    assert "evil.tgz" in str(info.value) and bad_name in str(info.value)
    assert leftovers(dest) == []  # nothing inside (not even the good members)
    assert all_files(tmp_path) == before  # nothing outside
    assert (tmp_path / "outside.txt").read_text() == "a file the archive must not reach"


@pytest.mark.parametrize("bad_name", ["../evil.txt", "pets/../../evil.txt", "/abs_evil.txt", "C:/evil.txt"])
def test_malicious_zip_is_refused_and_nothing_is_written(tmp_path, bad_name):
    work = tmp_path / "work"
    dest = work / "out"
    dest.mkdir(parents=True)
    archive = make_zip(work / "evil.zip", {**GOOD_FILES, bad_name: b"evil"})
    assert bad_name in zipfile.ZipFile(archive).namelist()  # the name really is in the archive
    before = all_files(tmp_path)

    with pytest.raises(UnsafeArchiveError) as info:
        extract_archive(archive, dest)

    assert "evil.zip" in str(info.value) and bad_name in str(info.value)
    assert leftovers(dest) == []
    assert all_files(tmp_path) == before


# --------------------------------------------------------------------------------------------
# Registry + download + extraction together
# --------------------------------------------------------------------------------------------
def test_ensure_dataset_end_to_end(server, tmp_path, monkeypatch):
    archive = make_tar(tmp_path / "toy-pets.tgz", GOOD_FILES)
    content = archive.read_bytes()
    url = server.serve("toy-pets.tgz", content)
    toy = DatasetRecord(
        name="toy-pets", description="test", homepage="https://example.org/",
        files=(RemoteFile(url=url, filename="toy-pets.tgz", checksum=sha256(content),
                          checksum_source="computed in the test", size=len(content)),),
        extract_to=".", folder="pets",
    )
    monkeypatch.setitem(DATASETS, "toy-pets", toy)
    root = tmp_path / "data"

    folder = ensure_dataset("toy-pets", root, **FAST)
    assert folder == root / "pets"
    assert (folder / "images" / "Abyssinian_1.jpg").read_bytes() == b"jpeg bytes"
    assert server.hits["/files/toy-pets.tgz"] == 1

    # Done before: no request, even after the archive was deleted to save space.
    (root / "toy-pets.tgz").unlink()
    assert ensure_dataset("toy-pets", root, **FAST) == folder
    assert server.hits["/files/toy-pets.tgz"] == 1

    # download_dataset alone fetches the archive; the default root is config.data_dir().
    monkeypatch.setenv("TLH_DATA_DIR", str(tmp_path / "default-root"))
    assert download_dataset("toy-pets", **FAST) == tmp_path / "default-root"
    assert (tmp_path / "default-root" / "toy-pets.tgz").read_bytes() == content

    # A registry folder that the archive does not create is reported, not returned.
    monkeypatch.setitem(DATASETS, "toy-pets", replace(toy, folder="oxford-iiit-pet"))
    with pytest.raises(FileNotFoundError, match="registry"):
        ensure_dataset("toy-pets", root, **FAST)
    assert os.path.isdir(folder)
