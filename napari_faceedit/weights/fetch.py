"""Getting a file into the cache: download through pooch, or import a file the user already has.

pooch does the transfer (requests, streamed into a temporary file it deletes on failure) and the
sha256 check whenever a hash is known. On top of it: URLs tried in order, ``file://`` mirrors,
offline mode, cancel and byte progress for the dialog, size checks, web pages refused, zip
archives opened for one member, the check before trusting a file without a published hash, then
pinning and an atomic move into place. A failure leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .catalogue import WeightsEntry, entry
from .errors import (DownloadCancelled, DownloadError, OfflineError, UntrustedFileError, VerificationError,
                     WeightsError)
from .store import (APP_NAME, ENV_OFFLINE, PRESENT, CancelledCallback, ProgressCallback, cache_dir,
                    cache_folder_error, check, ensure_trusted, expectation, is_offline, lock, make_folder,
                    mismatch, pin, remember_hash, sha256_file, unlink_quietly)

log = logging.getLogger("napari_faceedit.weights")

_CHUNK = 1 << 20
_HEAD = 512  # bytes kept from the start of a download, to recognise a web page


@dataclass(frozen=True)
class FetchResult:
    id: str
    path: Path
    sha256: str
    pinned_now: bool = False
    already_present: bool = False
    message: str = ""


class _Staging:
    """Temporary files in ``<cache>/<id>/``; removed on failure together with a folder it created."""

    def __init__(self, item: WeightsEntry):
        self.item = item
        self.folder = cache_dir() / item.id
        self.created_folder = not self.folder.exists()
        make_folder(self.folder)
        self.temps: list[Path] = []

    def new_temp(self) -> Path:
        try:
            handle, name = tempfile.mkstemp(dir=self.folder, prefix=f".{self.item.file_name}.", suffix=".part")
        except OSError as exc:
            raise cache_folder_error(exc, f"writing into {self.folder}") from None
        os.close(handle)
        self.temps.append(Path(name))
        return self.temps[-1]

    def discard(self, temp: Path) -> None:
        unlink_quietly(temp)
        if temp in self.temps:
            self.temps.remove(temp)

    @property
    def final(self) -> Path:
        return self.folder / self.item.file_name

    def cleanup(self) -> None:
        for temp in self.temps:
            unlink_quietly(temp)
        if self.created_folder:
            try:
                self.folder.rmdir()  # only when empty
            except OSError:
                pass


def _verify_and_commit(staging: _Staging, temp: Path, sha: str, source: str) -> FetchResult:
    """Check ``temp`` against the published or pinned hash, else check it before trusting it and
    pin it; then move it into place."""
    item = staging.item
    with lock:
        expected = expectation(item)
        size = temp.stat().st_size  # follows a symlink (import --link)
        problem = mismatch(item, source, expected, sha, size)
        if problem is not None:
            raise problem
        ensure_trusted(item, temp, expected, source)
        message = pin(item, sha, size, source) if not expected.sha256 else ""
        if staging.final.is_dir() and not staging.final.is_symlink():
            raise WeightsError(f"{staging.final} is a folder; remove it first")
        try:
            os.replace(temp, staging.final)
        except OSError as exc:
            raise cache_folder_error(exc, f"moving the file into {staging.folder}") from None
        staging.temps.remove(temp)
    remember_hash(staging.final, sha)
    from ..model_cache import invalidate  # loaded networks of this id are stale now

    invalidate(item.id)
    return FetchResult(item.id, staging.final, sha, pinned_now=bool(message), message=message)


def _copy_hashing(src, dst: Path, total: int, progress: Optional[ProgressCallback],
                  cancelled: Optional[CancelledCallback]) -> tuple[str, int]:
    digest = hashlib.sha256()
    done = 0
    with open(dst, "wb") as out:
        while chunk := src.read(_CHUNK):
            if cancelled is not None and cancelled():
                raise DownloadCancelled("cancelled by the user")
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), done


def _extract_member(staging: _Staging, archive: Path, source: str,
                    cancelled: Optional[CancelledCallback]) -> tuple[Path, str]:
    """Extract the entry's ``archive_member`` (matched by base name) into a new temporary file."""
    item = staging.item
    try:
        with zipfile.ZipFile(archive) as bundle:
            names = [n for n in bundle.namelist() if Path(n).name == Path(item.archive_member).name]
            if len(names) != 1:
                listing = ", ".join(bundle.namelist()[:10])
                raise DownloadError(f"'{item.id}' from {source}: the archive holds "
                                    f"{'no' if not names else 'several'} '{item.archive_member}' (contents: {listing})")
            target = staging.new_temp()
            with bundle.open(names[0]) as member:
                sha, _ = _copy_hashing(member, target, 0, None, cancelled)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"'{item.id}' from {source}: not a valid zip archive ({exc})") from None
    return target, sha


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:64].lower()
    return start.startswith((b"<!doctype html", b"<html"))


# -- download through pooch ---------------------------------------------------------------------------
class _Transfer:
    """The file object pooch's downloader writes into: hashes and counts the bytes, keeps the first
    ones, reports progress and stops when the user cancels. Also pooch's "progress bar", only to
    learn the announced size (``total``)."""

    def __init__(self, progress: Optional[ProgressCallback], cancelled: Optional[CancelledCallback]):
        self.progress = progress
        self.cancelled = cancelled
        self.total = 0  # set by pooch from Content-Length
        self.done = 0
        self.head = b""
        self.digest = hashlib.sha256()
        self.out = None

    # pooch's progress-bar interface: only ``total`` matters, the byte count comes from write()
    def update(self, _count) -> None:
        pass

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass

    def write(self, chunk: bytes) -> None:
        if self.cancelled is not None and self.cancelled():
            raise DownloadCancelled("cancelled by the user")
        self.out.write(chunk)
        self.digest.update(chunk)
        if len(self.head) < _HEAD:
            self.head += chunk[: _HEAD - len(self.head)]
        self.done += len(chunk)
        if self.progress:
            self.progress(self.done, self.total)

    def flush(self) -> None:
        self.out.flush()

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


def _copy_file_url(url: str, transfer: _Transfer) -> None:
    """A ``file://`` mirror (pooch only speaks http(s), ftp, sftp and doi)."""
    source = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    try:
        transfer.total = source.stat().st_size
        with open(source, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                transfer.write(chunk)
    except OSError as exc:
        raise DownloadError(f"download from {url} failed: cannot read {source} ({exc.strerror or exc})") from None


def _downloader(transfer: _Transfer, timeout: float):
    """A pooch downloader that streams into ``transfer`` instead of the path pooch gives it."""
    import pooch

    http = pooch.HTTPDownloader(progressbar=transfer, chunk_size=_CHUNK, timeout=timeout,
                                headers={"User-Agent": f"{APP_NAME} weights manager"})

    def download(url: str, output_file, pooch_instance, check_only: bool = False):
        with open(output_file, "wb") as out:
            transfer.out = out
            if urllib.parse.urlsplit(url).scheme == "file":
                _copy_file_url(url, transfer)
            else:
                http(url, transfer, pooch_instance)
            out.flush()
            os.fsync(out.fileno())

    return download


@contextlib.contextmanager
def _quiet_pooch():
    """pooch logs every download at INFO on stderr, naming our temporary file; we report ourselves."""
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _bytes_received(error: BaseException) -> int:
    """Bytes that arrived before the connection broke: urllib3's IncompleteRead inside requests'
    error counts them (requests drops the partial chunk)."""
    pending: list = [error]
    while pending:
        item = pending.pop()
        if isinstance(getattr(item, "partial", None), int):
            return item.partial
        if isinstance(item, BaseException):
            pending.extend(item.args)
    return 0


def _fetch_one(staging: _Staging, url: str, progress: Optional[ProgressCallback],
               cancelled: Optional[CancelledCallback], timeout: float) -> FetchResult:
    import pooch
    import requests

    item = staging.item
    expected = expectation(item)
    # The catalogue's hash is the one of the file itself: pooch checks it unless the URL gives an archive.
    known_hash = f"sha256:{expected.sha256}" if expected.sha256 and not item.archive else None
    temp = staging.new_temp()
    unlink_quietly(temp)  # a name reserved in the cache folder: pooch would take an existing file as fetched
    transfer = _Transfer(progress, cancelled)
    web_page = DownloadError(
        f"'{item.id}': {url} returned a web page instead of the file (the host may need a browser or "
        f"a confirmation); download it from {item.page or url} and run: faceedit weights import {item.id} PATH")
    try:
        with _quiet_pooch():
            pooch.retrieve(url, known_hash=known_hash, fname=temp.name, path=staging.folder,
                           downloader=_downloader(transfer, timeout), progressbar=False)
    except requests.HTTPError as exc:
        response = exc.response
        status = f"HTTP {response.status_code} {response.reason}" if response is not None else str(exc)
        raise DownloadError(f"'{item.id}': download from {url} failed: {status}") from None
    except ValueError as exc:  # pooch: the hash does not match (it deleted the download)
        if _looks_like_html(transfer.head):
            raise web_page from None
        problem = mismatch(item, url, expected, transfer.sha256, transfer.done)
        raise (problem or VerificationError(f"'{item.id}' from {url}: {exc}", source=url)) from None
    except requests.RequestException as exc:  # before OSError: requests' errors are OSErrors too
        received = max(transfer.done, _bytes_received(exc))
        if transfer.total and received < transfer.total:
            raise DownloadError(f"'{item.id}': download from {url} stopped after {received} of "
                                f"{transfer.total} bytes (connection closed early)") from None
        raise DownloadError(f"'{item.id}': download from {url} failed: {type(exc).__name__}: {exc}") from None
    except OSError as exc:  # writing into the cache folder
        raise cache_folder_error(exc, f"writing into {staging.folder}") from None
    if transfer.total and transfer.done != transfer.total:
        raise DownloadError(f"'{item.id}': download from {url} stopped after {transfer.done} of "
                            f"{transfer.total} bytes (connection closed early)")
    if _looks_like_html(transfer.head):
        raise web_page
    sha = transfer.sha256
    if item.archive:
        member, sha = _extract_member(staging, temp, url, cancelled)
        staging.discard(temp)
        temp = member
    return _verify_and_commit(staging, temp, sha, url)


def download(weights_id: str, progress: Optional[ProgressCallback] = None,
             cancelled: Optional[CancelledCallback] = None, *, force: bool = False,
             timeout: float = 60.0) -> FetchResult:
    """Download ``weights_id`` into the cache (URLs tried in order), verified and atomic.

    ``progress(done_bytes, total_bytes)`` is called as data arrives (total 0 = unknown);
    ``cancelled()`` returning True stops it (:class:`DownloadCancelled`). Nothing partial is left.
    """
    item = entry(weights_id)
    if not force:
        found = check(weights_id)
        if found.state == PRESENT:
            return FetchResult(item.id, found.path, found.sha256, already_present=True,
                               message=f"'{item.id}' is already present: {found.path}")
    if not item.urls:
        raise DownloadError(f"'{item.id}' cannot be downloaded automatically (the publisher shares it only "
                            f"through {item.page or 'a web page'}); download it there and run: "
                            f"faceedit weights import {item.id} PATH. Licence: {item.license}")
    if is_offline():
        raise OfflineError(f"offline mode ({ENV_OFFLINE}=1 or --offline): not downloading '{item.id}' from "
                           f"{item.urls[0]}; import a copy with: faceedit weights import {item.id} PATH")
    staging = _Staging(item)
    attempts: list[tuple[str, BaseException]] = []
    try:
        for url in item.urls:
            try:
                return _fetch_one(staging, url, progress, cancelled, timeout)
            except (DownloadError, VerificationError, UntrustedFileError) as exc:
                attempts.append((url, exc))
                log.warning("%s", exc)
                for temp in list(staging.temps):
                    staging.discard(temp)
    finally:
        staging.cleanup()
    details = "\n".join(f"  - {exc}" for _, exc in attempts)
    raise DownloadError(f"could not download '{item.id}' ({len(attempts)} URL(s) tried; nothing was kept):\n"
                        f"{details}\nAlternatively download it yourself ({item.page or item.urls[0]}) and run: "
                        f"faceedit weights import {item.id} PATH", attempts)


# -- import --------------------------------------------------------------------------------------------
def import_file(weights_id: str, source: os.PathLike | str, link: bool = False,
                progress: Optional[ProgressCallback] = None,
                cancelled: Optional[CancelledCallback] = None) -> FetchResult:
    """Verify a local file and copy (or symlink) it into the cache as ``weights_id``.

    For entries shipped in a zip, the zip itself is accepted too (its member is extracted).
    """
    item = entry(weights_id)
    source = Path(source).expanduser()
    if not source.is_file():
        raise WeightsError(f"cannot import '{item.id}': {source} is not a file")
    source = source.resolve()
    staging = _Staging(item)
    try:
        if staging.final.exists() and staging.final.resolve() == source:
            return _accept_in_place(item, source)
        if item.archive and zipfile.is_zipfile(source) and not _is_torch_zip(source):
            if link:
                raise WeightsError(f"cannot link '{item.id}' to an archive; import without --link to extract it")
            temp, sha = _extract_member(staging, source, str(source), cancelled)
            return _verify_and_commit(staging, temp, sha, str(source))
        if link:
            sha = sha256_file(source, use_cache=False, progress=progress)
            temp = staging.new_temp()
            unlink_quietly(temp)
            try:
                os.symlink(source, temp)
            except OSError as exc:
                raise WeightsError(f"cannot link {source} into the cache ({exc}); import it without --link") from None
            return _verify_and_commit(staging, temp, sha, str(source))
        temp = staging.new_temp()
        try:
            with open(source, "rb") as handle:
                sha, _ = _copy_hashing(handle, temp, source.stat().st_size, progress, cancelled)
        except OSError as exc:
            if isinstance(exc, PermissionError) or exc.filename == str(temp):
                raise cache_folder_error(exc, f"writing into {staging.folder}") from None
            raise WeightsError(f"cannot read {source}: {exc.strerror or exc}") from None
        return _verify_and_commit(staging, temp, sha, str(source))
    finally:
        staging.cleanup()


def _accept_in_place(item: WeightsEntry, source: Path) -> FetchResult:
    """The file to import already is the cache's file: verify (and check, pin) it where it is."""
    sha = sha256_file(source, use_cache=False)
    expected = expectation(item)
    problem = mismatch(item, str(source), expected, sha, source.stat().st_size)
    if problem:
        raise problem
    ensure_trusted(item, source, expected)
    message = "" if expected.sha256 else pin(item, sha, source.stat().st_size, str(source))
    return FetchResult(item.id, source, sha, pinned_now=bool(message), already_present=True,
                       message=message or f"'{item.id}' is already in place: {source}")


def _is_torch_zip(file: Path) -> bool:
    """torch.save's own format is a zip too; tell it apart from a download archive."""
    try:
        with zipfile.ZipFile(file) as bundle:
            return any(name.endswith("data.pkl") or name.endswith("constants.pkl") for name in bundle.namelist())
    except zipfile.BadZipFile:
        return False

