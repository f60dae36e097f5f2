"""Official checkpoints: registry, cache, verification, download/import and safe loading.

The registry (``weights.toml``) lists every third-party checkpoint a backend may need. A file is
looked for in the user's weights folder first, then in the cache, and is only used once its size
and sha256 match the registry (or, where no hash is published, the hash pinned locally the first
time the file was used: trust on first use). Downloads and imports are atomic: they write a
temporary file next to the destination, verify it, then rename it; a failure deletes it.

Settings, strongest first: the ``set_*`` functions, then environment variables
``FACEEDIT_CACHE_DIR`` (the weights cache itself), ``FACEEDIT_WEIGHTS_DIR`` (a folder of weights
the user already has), ``FACEEDIT_OFFLINE=1`` (no network access at all) and
``FACEEDIT_WEIGHTS_REGISTRY`` (another registry file, e.g. for tests).

Qt-free; torch is imported only when a checkpoint is loaded.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Optional

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as the "tomli" package
    import tomli as tomllib

log = logging.getLogger(__name__)

ENV_CACHE_DIR = "FACEEDIT_CACHE_DIR"
ENV_WEIGHTS_DIR = "FACEEDIT_WEIGHTS_DIR"
ENV_OFFLINE = "FACEEDIT_OFFLINE"
ENV_REGISTRY = "FACEEDIT_WEIGHTS_REGISTRY"
APP_NAME = "napari-faceedit"
PINS_FILE = "pinned_hashes.json"
HASH_CACHE_FILE = "hash_cache.json"

PRESENT, MISSING, CORRUPT = "present", "missing", "corrupt"

ProgressCallback = Callable[[int, int], None]  # (done_bytes, total_bytes); total 0 = unknown
CancelledCallback = Callable[[], bool]

_CHUNK = 1 << 20
_WRAPPER_KEYS = ("params_ema", "params", "g_ema", "state_dict", "model")
_FORMATS = ("pickle", "torchscript")


# -- errors ------------------------------------------------------------------------------------
class WeightsError(Exception):
    """Base class of every error this module raises; the message is meant for the user."""


class UnknownWeightsError(WeightsError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsMissingError(WeightsError):
    pass


class VerificationError(WeightsError):
    """A file whose size or sha256 is not the expected one."""

    def __init__(self, message: str, *, source: str = "", expected_sha256: str = "",
                 actual_sha256: str = "", expected_size: Optional[int] = None,
                 actual_size: Optional[int] = None):
        super().__init__(message)
        self.source = source
        self.expected_sha256 = expected_sha256
        self.actual_sha256 = actual_sha256
        self.expected_size = expected_size
        self.actual_size = actual_size


class OfflineError(WeightsError):
    pass


class DownloadError(WeightsError):
    def __init__(self, message: str, attempts: Optional[list[tuple[str, BaseException]]] = None):
        super().__init__(message)
        self.attempts = attempts or []


class DownloadCancelled(WeightsError):
    pass


class StateDictMismatchError(WeightsError):
    def __init__(self, message: str, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple, tuple]]):
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched


# -- registry ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsEntry:
    id: str
    backend: str
    file_name: str
    urls: tuple[str, ...] = ()
    page: str = ""
    sha256: str = ""
    hash_published: bool = False
    hash_source: str = ""
    size: Optional[int] = None
    approx_size: Optional[int] = None
    license: str = ""
    paper: str = ""
    source: str = ""
    format: str = "pickle"
    archive: str = ""
    archive_member: str = ""
    state_dict_key: str = ""
    drop_keys: tuple[str, ...] = ()
    keep_from_model: tuple[str, ...] = ()
    config: dict = field(default_factory=dict)
    note: str = ""
    extra: dict = field(default_factory=dict)  # any other registry field (image_size, ...)

    @property
    def downloadable(self) -> bool:
        return bool(self.urls)

    def size_text(self) -> str:
        if self.size:
            return format_bytes(self.size)
        if self.approx_size:
            return "~" + format_bytes(self.approx_size)
        return "size unknown"


_KNOWN_FIELDS = {f for f in WeightsEntry.__dataclass_fields__} - {"id", "extra"}


def _parse_entry(entry_id: str, raw: Mapping[str, Any], where: Path) -> WeightsEntry:
    def bad(why: str) -> WeightsError:
        return WeightsError(f"weights registry {where}: entry '{entry_id}': {why}")

    if not isinstance(raw, Mapping):
        raise bad("must be a table")
    for required in ("backend", "file_name", "license"):
        if not isinstance(raw.get(required), str) or not raw[required]:
            raise bad(f"'{required}' must be a non-empty string")
    if Path(raw["file_name"]).name != raw["file_name"]:
        raise bad("'file_name' must be a bare file name")
    sha = str(raw.get("sha256", "")).lower()
    published = bool(raw.get("hash_published", bool(sha)))
    if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise bad(f"'sha256' is not a 64-digit hex digest: {sha!r}")
    if published and not sha:
        raise bad("hash_published = true needs a sha256")
    if sha and not published:
        raise bad("a sha256 is given but hash_published = false")
    fmt = raw.get("format", "pickle")
    if fmt not in _FORMATS:
        raise bad(f"'format' must be one of {_FORMATS}, got {fmt!r}")
    if raw.get("archive", "") not in ("", "zip"):
        raise bad("'archive' must be \"zip\" or absent")
    if raw.get("archive") and not raw.get("archive_member"):
        raise bad("'archive' needs 'archive_member'")
    for key in ("size", "approx_size"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise bad(f"'{key}' must be a positive integer (bytes)")
    urls = raw.get("urls", [])
    if isinstance(urls, str):
        urls = [urls]
    kwargs = {k: v for k, v in raw.items() if k in _KNOWN_FIELDS}
    kwargs.update(
        sha256=sha, hash_published=published, urls=tuple(urls),
        drop_keys=tuple(raw.get("drop_keys", ())), keep_from_model=tuple(raw.get("keep_from_model", ())),
        config=dict(raw.get("config", {})),
    )
    extra = {k: v for k, v in raw.items() if k not in _KNOWN_FIELDS}
    return WeightsEntry(id=entry_id, extra=extra, **kwargs)


_settings: dict[str, Any] = {"cache_dir": None, "weights_dir": None, "offline": None, "registry": None}
_registry_cache: dict[Path, tuple[int, dict[str, WeightsEntry]]] = {}
_lock = threading.RLock()


def registry_path() -> Path:
    """The registry file in use: setting, then env, then the packaged copy, then the source tree."""
    explicit = _settings["registry"] or os.environ.get(ENV_REGISTRY)
    if explicit:
        return Path(explicit).expanduser()
    here = Path(__file__).resolve().parent
    for candidate in (here / "resources" / "weights.toml", here.parent / "resources" / "weights.toml"):
        if candidate.is_file():
            return candidate
    raise WeightsError(f"weights registry not found (looked for {here / 'resources' / 'weights.toml'} "
                       f"and {here.parent / 'resources' / 'weights.toml'}); set {ENV_REGISTRY}")


def load_registry(path: Optional[os.PathLike | str] = None) -> dict[str, WeightsEntry]:
    """All entries of the registry (cached until the file changes)."""
    path = Path(path) if path is not None else registry_path()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise WeightsError(f"cannot read the weights registry {path}: {exc}") from None
    with _lock:
        cached = _registry_cache.get(path)
        if cached and cached[0] == mtime:
            return cached[1]
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise WeightsError(f"cannot read the weights registry {path}: {exc}") from None
        entries = {entry_id: _parse_entry(entry_id, value, path) for entry_id, value in raw.items()}
        _registry_cache[path] = (mtime, entries)
        return entries


def ids() -> list[str]:
    return list(load_registry())


def bundled_path(file_name: str) -> Path:
    """One of our own small trained models, shipped in ``resources/models`` with the core package."""
    return Path(__file__).resolve().parent / "resources" / "models" / file_name


def load_bundled(file_name: str, model, path: Optional[os.PathLike | str] = None) -> str:
    """Strictly load one of our shipped models (``path``: another file of the same network, e.g. a
    fresh training export) into ``model``; return the file's sha256."""
    file = Path(path) if path else bundled_path(file_name)
    if not file.is_file():
        raise WeightsMissingError(f"embedded model '{file_name}' is missing: {file} "
                                  "(it ships with napari-faceedit; reinstall the package)")
    return load_state_dict(file, model)


def entry(weights_id: str) -> WeightsEntry:
    """The registry entry of ``weights_id`` (licence, urls, size, config, ...)."""
    registry = load_registry()
    try:
        return registry[weights_id]
    except KeyError:
        known = ", ".join(sorted(registry)) or "none"
        raise UnknownWeightsError(f"unknown weights id '{weights_id}' (known: {known})") from None


# -- settings ----------------------------------------------------------------------------------
def set_cache_dir(path: Optional[os.PathLike | str]) -> None:
    """Use ``path`` as the weights cache (None: back to env / platform default)."""
    _settings["cache_dir"] = Path(path).expanduser() if path is not None else None


def set_weights_dir(path: Optional[os.PathLike | str]) -> None:
    """A folder of weights the user already has, searched before the cache (None: env / none)."""
    _settings["weights_dir"] = Path(path).expanduser() if path is not None else None


def set_offline(offline: Optional[bool]) -> None:
    """True forbids every download; None: back to the FACEEDIT_OFFLINE environment variable."""
    _settings["offline"] = offline


def set_registry_path(path: Optional[os.PathLike | str]) -> None:
    _settings["registry"] = Path(path).expanduser() if path is not None else None


def reset_settings() -> None:
    """Forget every ``set_*`` setting and the in-memory caches (tests)."""
    for key in _settings:
        _settings[key] = None
    with _lock:
        _registry_cache.clear()
        _hash_memory.clear()
        _hash_loaded_from.clear()


def cache_dir() -> Path:
    """Where downloaded/imported weights live: ``<cache>/<id>/<file_name>``.

    Default: the platform's user cache dir for napari-faceedit (``$XDG_CACHE_HOME`` on Linux) / weights.
    """
    if _settings["cache_dir"] is not None:
        return _settings["cache_dir"]
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)) / "weights"


def weights_dir() -> Optional[Path]:
    if _settings["weights_dir"] is not None:
        return _settings["weights_dir"]
    env = os.environ.get(ENV_WEIGHTS_DIR)
    return Path(env).expanduser() if env else None


def is_offline() -> bool:
    if _settings["offline"] is not None:
        return bool(_settings["offline"])
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


# -- hashing -----------------------------------------------------------------------------------
_hash_memory: dict[str, tuple[int, int, str]] = {}  # abs path -> (size, mtime_ns, sha256)
_hash_loaded_from: set[Path] = set()


def _hash_cache_file() -> Path:
    return cache_dir() / HASH_CACHE_FILE


def _load_hash_cache() -> None:
    target = _hash_cache_file()
    if target in _hash_loaded_from:
        return
    _hash_loaded_from.add(target)
    try:
        stored = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    for key, value in stored.items() if isinstance(stored, dict) else ():
        if isinstance(value, list) and len(value) == 3 and key not in _hash_memory:
            _hash_memory[key] = (int(value[0]), int(value[1]), str(value[2]))


def _remember_hash(path: Path, sha: str) -> None:
    st = path.stat()
    with _lock:
        _hash_memory[str(path.resolve())] = (st.st_size, st.st_mtime_ns, sha)
        # Persisted so that a new session does not re-hash hundreds of MB to show a status.
        try:
            live = {k: list(v) for k, v in _hash_memory.items() if os.path.exists(k)}
            _atomic_write_text(_hash_cache_file(), json.dumps(live, indent=0))
        except OSError as exc:
            log.debug("could not save the hash cache: %s", exc)


def sha256_file(path: os.PathLike | str, *, use_cache: bool = True,
                progress: Optional[ProgressCallback] = None) -> str:
    """sha256 of a file; cached by (path, size, mtime) so repeated checks are cheap."""
    path = Path(path)
    st = path.stat()
    key = str(path.resolve())
    if use_cache:
        with _lock:
            _load_hash_cache()
            cached = _hash_memory.get(key)
        if cached and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
            return cached[2]
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, st.st_size)
    sha = digest.hexdigest()
    _remember_hash(path, sha)
    return sha


# -- pinned hashes (trust on first use) ---------------------------------------------------------
def pins_file() -> Path:
    return cache_dir() / PINS_FILE


def pinned_hashes() -> dict[str, dict]:
    try:
        data = json.loads(pins_file().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read the pinned hashes {pins_file()}: {exc}; fix or delete that file") from None
    return data if isinstance(data, dict) else {}


def pinned_sha256(weights_id: str) -> Optional[str]:
    record = pinned_hashes().get(weights_id)
    return record.get("sha256") if isinstance(record, dict) else None


def _pin(item: WeightsEntry, sha: str, size: int, origin: str) -> str:
    with _lock:
        pins = pinned_hashes()
        pins[item.id] = {"sha256": sha, "size": size, "file_name": item.file_name, "source": origin,
                         "pinned_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _atomic_write_text(pins_file(), json.dumps(pins, indent=2, sort_keys=True))
    message = (f"'{item.id}' has no published hash: pinned sha256 {sha} ({format_bytes(size)}, from {origin}) "
               f"in {pins_file()} (trust on first use; a different file will now be refused)")
    log.warning(message)
    return message


def unpin(weights_id: str) -> bool:
    """Forget the pinned hash of ``weights_id`` (e.g. to accept a new upstream version)."""
    entry(weights_id)
    with _lock:
        pins = pinned_hashes()
        if weights_id not in pins:
            return False
        del pins[weights_id]
        _atomic_write_text(pins_file(), json.dumps(pins, indent=2, sort_keys=True))
        return True


def expected_hash(item: WeightsEntry | str) -> tuple[str, str]:
    """(sha256, origin) where origin is "published", "pinned" or "" (unknown: not yet pinned)."""
    item = entry(item) if isinstance(item, str) else item
    return _expectation(item)[:2]


def _expectation(item: WeightsEntry) -> tuple[str, str, Optional[int]]:
    """(sha256, origin, size in bytes or None) a file for ``item`` must have: the registry's values,
    else those pinned on first use (the pins file is read at most once)."""
    record = pinned_hashes().get(item.id) if not (item.sha256 and item.size) else None
    record = record if isinstance(record, dict) else {}
    if item.sha256:
        sha, origin = item.sha256, "published"
    elif record.get("sha256"):
        sha, origin = record["sha256"], "pinned"
    else:
        sha, origin = "", ""
    size = item.size or (int(record["size"]) if record.get("size") else None)
    return sha, origin, size


# -- locating and checking files -----------------------------------------------------------------
@dataclass(frozen=True)
class WeightsStatus:
    id: str
    state: str  # PRESENT, MISSING or CORRUPT
    path: Optional[Path] = None
    sha256: str = ""  # of the file found (when hashed)
    expected_sha256: str = ""
    hash_origin: str = ""  # "published", "pinned" or "" (not pinned yet)
    message: str = ""


def candidate_paths(item: WeightsEntry | str) -> list[Path]:
    """Where a file for ``item`` may be, in search order (weights folder first, then the cache)."""
    item = entry(item) if isinstance(item, str) else item
    found: list[Path] = []
    folder = weights_dir()
    if folder is not None:
        found.append(folder / item.id / item.file_name)
        # A bare file name is unambiguous only when no other entry uses the same name.
        if sum(e.file_name == item.file_name for e in load_registry().values()) == 1:
            found.append(folder / item.file_name)
    found.append(cache_dir() / item.id / item.file_name)
    return found


def _mismatch(item: WeightsEntry, source: str, expected_sha: str, origin: str, actual_sha: str,
              expected_size: Optional[int], actual_size: int) -> Optional[VerificationError]:
    if expected_size is not None and actual_size != expected_size:
        return VerificationError(
            f"'{item.id}' from {source}: size mismatch: expected {expected_size} bytes, got {actual_size} "
            f"(truncated or a different file)", source=source, expected_sha256=expected_sha,
            actual_sha256=actual_sha, expected_size=expected_size, actual_size=actual_size)
    if expected_sha and actual_sha and actual_sha != expected_sha:
        what = "published" if origin == "published" else f"pinned in {pins_file()}"
        hint = "" if origin == "published" else f" (if the new file is intended: faceedit weights unpin {item.id})"
        return VerificationError(
            f"'{item.id}' from {source}: sha256 mismatch: expected {expected_sha} ({what}), got {actual_sha}{hint}",
            source=source, expected_sha256=expected_sha, actual_sha256=actual_sha,
            expected_size=expected_size, actual_size=actual_size)
    return None


def check(weights_id: str, *, fresh: bool = False) -> WeightsStatus:
    """Look for ``weights_id`` and verify what is found (``fresh``: re-hash, ignore the hash cache)."""
    item = entry(weights_id)
    expected, origin, expected_size = _expectation(item)
    problems: list[VerificationError] = []
    for candidate in candidate_paths(item):
        if not candidate.is_file():
            if candidate.is_symlink():
                problems.append(VerificationError(f"'{item.id}': {candidate} is a broken link", source=str(candidate)))
            continue
        size = candidate.stat().st_size
        sha = sha256_file(candidate, use_cache=not fresh) if expected and (expected_size in (None, size)) else ""
        problem = _mismatch(item, str(candidate), expected, origin, sha, expected_size, size)
        if problem is None:
            message = "" if expected else "no published hash; not pinned yet (pinned on first use)"
            return WeightsStatus(item.id, PRESENT, candidate, sha, expected, origin, message)
        problems.append(problem)
    if problems:
        return WeightsStatus(item.id, CORRUPT, Path(problems[0].source) if problems[0].source else None,
                             problems[0].actual_sha256, expected, origin,
                             "; ".join(str(p) for p in problems))
    return WeightsStatus(item.id, MISSING, None, "", expected, origin, how_to_get(item))


def status(weights_id: str) -> str:
    """"present", "missing" or "corrupt"."""
    return check(weights_id).state


def missing(weights_ids: Iterable[str]) -> list[str]:
    """The ids among ``weights_ids`` that are not present and verified (unknown ids included)."""
    absent = []
    for weights_id in weights_ids:
        try:
            if check(weights_id).state != PRESENT:
                absent.append(weights_id)
        except UnknownWeightsError:
            absent.append(weights_id)
    return absent


def how_to_get(item: WeightsEntry | str) -> str:
    item = entry(item) if isinstance(item, str) else item
    ways = []
    if item.urls:
        ways.append(f"faceedit weights download {item.id}")
    ways.append(f"faceedit weights import {item.id} PATH")
    where = f" (download page: {item.page})" if item.page and not item.urls else ""
    return (f"weights '{item.id}' ({item.file_name}, {item.size_text()}) are missing: run "
            + " or ".join(ways) + where + f". Licence: {item.license}")


def path(weights_id: str) -> Path:
    """Path of the verified file for ``weights_id``; raises a clear error when absent or corrupt.

    A file without a published hash is pinned here on first use (trust on first use).
    """
    found = check(weights_id)
    if found.state == MISSING:
        raise WeightsMissingError(found.message)
    if found.state == CORRUPT:
        raise VerificationError(found.message + f". Delete it, or run: faceedit weights download {weights_id} --force",
                                source=str(found.path or ""))
    assert found.path is not None
    if not found.hash_origin:
        with _lock:
            if not expected_hash(weights_id)[0]:
                _pin(entry(weights_id), sha256_file(found.path), found.path.stat().st_size, str(found.path))
    return found.path


# -- getting files -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FetchResult:
    id: str
    path: Path
    sha256: str
    pinned_now: bool = False
    already_present: bool = False
    message: str = ""


def _atomic_write_text(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, target)
    except BaseException:
        _unlink(Path(tmp))
        raise


def _unlink(file: Path) -> None:
    try:
        file.unlink()
    except FileNotFoundError:
        pass


class _Staging:
    """A temporary file in ``<cache>/<id>/``; removed on failure together with a folder it created."""

    def __init__(self, item: WeightsEntry):
        self.item = item
        self.folder = cache_dir() / item.id
        self.created_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.temps: list[Path] = []

    def new_temp(self) -> Path:
        handle, name = tempfile.mkstemp(dir=self.folder, prefix=f".{self.item.file_name}.", suffix=".part")
        os.close(handle)
        self.temps.append(Path(name))
        return self.temps[-1]

    @property
    def final(self) -> Path:
        return self.folder / self.item.file_name

    def cleanup(self) -> None:
        for temp in self.temps:
            _unlink(temp)
        if self.created_folder:
            try:
                self.folder.rmdir()  # only when empty
            except OSError:
                pass


def _verify_and_commit(staging: _Staging, temp: Path, sha: str, source: str) -> FetchResult:
    """Check ``temp`` against the registry/pin, pin if needed, then move it into place."""
    item = staging.item
    with _lock:
        expected, origin, expected_size = _expectation(item)
        size = temp.stat().st_size  # follows a symlink (import --link)
        problem = _mismatch(item, source, expected, origin, sha, expected_size, size)
        if problem is not None:
            raise problem
        message = _pin(item, sha, size, source) if not expected else ""
        if staging.final.is_dir() and not staging.final.is_symlink():
            raise WeightsError(f"{staging.final} is a folder; remove it first")
        os.replace(temp, staging.final)
        staging.temps.remove(temp)
    _remember_hash(staging.final, sha)
    from .model_cache import invalidate  # loaded networks of this id are stale now

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


def _fetch_one(staging: _Staging, url: str, progress: Optional[ProgressCallback],
               cancelled: Optional[CancelledCallback], timeout: float) -> FetchResult:
    item = staging.item
    temp = staging.new_temp()
    request = urllib.request.Request(url, headers={"User-Agent": f"{APP_NAME} weights manager"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            announced = int(length) if length and length.isdigit() else None
            total = announced or (item.size if not item.archive else 0) or 0
            kind = (response.headers.get("Content-Type") or "").lower()
            sha, done = _copy_hashing(response, temp, total, progress, cancelled)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"'{item.id}': download from {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        raise DownloadError(f"'{item.id}': download from {url} failed: {reason}") from None
    if announced is not None and done != announced:
        raise DownloadError(f"'{item.id}': download from {url} stopped after {done} of {announced} bytes "
                            f"(connection closed early)")
    with open(temp, "rb") as head:
        if "text/html" in kind or _looks_like_html(head.read(512)):
            raise DownloadError(
                f"'{item.id}': {url} returned a web page instead of the file (the host may need a browser or "
                f"a confirmation); download it from {item.page or url} and run: faceedit weights import {item.id} PATH")
    if item.archive:
        member, sha = _extract_member(staging, temp, url, cancelled)
        staging.temps.remove(temp)
        _unlink(temp)
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
            except (DownloadError, VerificationError) as exc:
                attempts.append((url, exc))
                log.warning("%s", exc)
                for temp in list(staging.temps):
                    _unlink(temp)
                    staging.temps.remove(temp)
    finally:
        staging.cleanup()
    details = "\n".join(f"  - {exc}" for _, exc in attempts)
    raise DownloadError(f"could not download '{item.id}' ({len(attempts)} URL(s) tried; nothing was kept):\n"
                        f"{details}\nAlternatively download it yourself ({item.page or item.urls[0]}) and run: "
                        f"faceedit weights import {item.id} PATH", attempts)


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
            sha = sha256_file(source, use_cache=False)
            expected, origin, expected_size = _expectation(item)
            size = source.stat().st_size
            problem = _mismatch(item, str(source), expected, origin, sha, expected_size, size)
            if problem:
                raise problem
            message = "" if expected else _pin(item, sha, size, str(source))
            return FetchResult(item.id, staging.final, sha, pinned_now=bool(message), already_present=True,
                               message=message or f"'{item.id}' is already in place: {source}")
        if item.archive and zipfile.is_zipfile(source) and not _is_torch_zip(source):
            if link:
                raise WeightsError(f"cannot link '{item.id}' to an archive; import without --link to extract it")
            temp, sha = _extract_member(staging, source, str(source), cancelled)
            return _verify_and_commit(staging, temp, sha, str(source))
        if link:
            sha = sha256_file(source, use_cache=False, progress=progress)
            temp = staging.new_temp()
            _unlink(temp)
            try:
                os.symlink(source, temp)
            except OSError as exc:
                raise WeightsError(f"cannot link {source} into the cache ({exc}); import it without --link") from None
            return _verify_and_commit(staging, temp, sha, str(source))
        temp = staging.new_temp()
        with open(source, "rb") as handle:
            sha, _ = _copy_hashing(handle, temp, source.stat().st_size, progress, cancelled)
        return _verify_and_commit(staging, temp, sha, str(source))
    finally:
        staging.cleanup()


def _is_torch_zip(file: Path) -> bool:
    """torch.save's own format is a zip too; tell it apart from a download archive."""
    try:
        with zipfile.ZipFile(file) as bundle:
            return any(name.endswith("data.pkl") or name.endswith("constants.pkl") for name in bundle.namelist())
    except zipfile.BadZipFile:
        return False


# -- loading ---------------------------------------------------------------------------------------
def unwrap_state_dict(obj: Any, key: str = "") -> dict:
    """The plain ``{name: tensor}`` dict inside a checkpoint.

    Unwraps ``params_ema``/``params``/``g_ema``/``state_dict``/``model`` wrappers (first found) and
    strips a ``module.`` prefix (DataParallel) when every key carries it.
    """
    import torch

    if key:
        if not isinstance(obj, Mapping) or key not in obj:
            found = ", ".join(list(obj)[:10]) if isinstance(obj, Mapping) else type(obj).__name__
            raise WeightsError(f"checkpoint has no '{key}' entry (top level: {found})")
        obj = obj[key]
    for _ in range(3):
        if not isinstance(obj, Mapping):
            raise WeightsError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _format_shape(shape) -> str:
    return "[" + ",".join(str(int(s)) for s in shape) + "]"


def compare_state_dict(model, state: Mapping[str, Any], *, keep_from_model: Iterable[str] = (),
                       label: str = "checkpoint", limit: int = 5) -> None:
    """Raise :class:`StateDictMismatchError` unless ``state`` fits ``model`` key for key and shape for shape.

    Missing ``num_batches_tracked`` and ``keep_from_model`` keys (exact names or glob patterns) are allowed.
    """
    import torch

    expected = model.state_dict()
    keep = tuple(keep_from_model)

    def tolerated(name: str) -> bool:
        return name.endswith("num_batches_tracked") or any(fnmatchcase(name, p) for p in keep)

    missing_keys = [k for k in expected if k not in state and not tolerated(k)]
    unexpected = [k for k in state if k not in expected]
    mismatched = []
    not_tensors = []
    for name, value in state.items():
        if name not in expected:
            continue
        if not isinstance(value, torch.Tensor):
            not_tensors.append(name)
        elif tuple(value.shape) != tuple(expected[name].shape):
            mismatched.append((name, tuple(value.shape), tuple(expected[name].shape)))
    if not (missing_keys or unexpected or mismatched or not_tensors):
        return

    def listing(items: list[str]) -> str:
        more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more

    parts = []
    if missing_keys:
        parts.append(f"{len(missing_keys)} missing key(s): {listing(missing_keys)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {listing(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es): " + listing(
            [f"{n} (checkpoint {_format_shape(a)} vs model {_format_shape(b)})" for n, a, b in mismatched]))
    if not_tensors:
        parts.append(f"{len(not_tensors)} non-tensor value(s): {listing(not_tensors)}")
    raise StateDictMismatchError(
        f"{label} does not fit {type(model).__name__}: " + "; ".join(parts) + ". Nothing was loaded.",
        missing_keys, unexpected, mismatched)


def _read_checkpoint(file: Path, allow_torchscript: bool) -> Any:
    import torch

    if zipfile.is_zipfile(file):
        with zipfile.ZipFile(file) as bundle:
            is_script = any(n.endswith("constants.pkl") for n in bundle.namelist())
        if is_script:
            if not allow_torchscript:
                raise WeightsError(f"{file} is a TorchScript archive; it is only read for registry entries with "
                                   f"format = \"torchscript\" (or allow_torchscript=True)")
            with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated; CLIP ships as one
                warnings.simplefilter("ignore", DeprecationWarning)
                return dict(torch.jit.load(str(file), map_location="cpu").state_dict())
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors have many types
        raise WeightsError(f"cannot read {file} as a weights-only PyTorch checkpoint: "
                           f"{type(exc).__name__}: {exc}") from None


def load_state_dict(id_or_path: str | os.PathLike, model, expected_sha256: Optional[str] = None, *,
                    keep_from_model: Iterable[str] = (), allow_torchscript: bool = False) -> str:
    """Verify, then load a checkpoint into ``model`` strictly; return the file's sha256.

    ``id_or_path``: a registry id (verified against its published or pinned hash) or a file path
    (verified against ``expected_sha256`` when given). Loading uses ``torch.load(weights_only=True)``.
    Any key or shape mismatch raises :class:`StateDictMismatchError` before anything is copied.
    """
    registry = load_registry()
    item = registry.get(str(id_or_path)) if isinstance(id_or_path, str) else None
    if item is not None:
        file = path(item.id)
        label = f"checkpoint '{item.id}' ({file})"
        keep = tuple(item.keep_from_model) + tuple(keep_from_model)
        allow_torchscript = allow_torchscript or item.format == "torchscript"
    else:
        file = Path(id_or_path).expanduser()
        if not file.is_file():
            if isinstance(id_or_path, str) and os.sep not in id_or_path and not file.suffix:
                raise UnknownWeightsError(f"unknown weights id '{id_or_path}' (known: {', '.join(sorted(registry))})")
            raise WeightsMissingError(f"weights file not found: {file}")
        label = f"checkpoint {file}"
        keep = tuple(keep_from_model)
    sha = sha256_file(file)
    wanted = (expected_sha256 or "").lower()
    if item is not None and not wanted:
        wanted = expected_hash(item)[0]
    if wanted and sha != wanted:
        raise VerificationError(f"{label}: sha256 mismatch: expected {wanted}, got {sha}; not loaded",
                                source=str(file), expected_sha256=wanted, actual_sha256=sha)
    state = unwrap_state_dict(_read_checkpoint(file, allow_torchscript), item.state_dict_key if item else "")
    for name in item.drop_keys if item else ():
        state.pop(name, None)
    compare_state_dict(model, state, keep_from_model=keep, label=label)
    current = model.state_dict()
    for name, value in current.items():
        if name not in state or any(fnmatchcase(name, p) for p in keep):
            state[name] = value  # tolerated above: num_batches_tracked or kept from the model
    model.load_state_dict(state, strict=True)
    return sha


# -- helpers for the CLI and the widget ----------------------------------------------------------------
def format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


def describe(weights_id: str) -> dict:
    """A JSON-friendly summary of one entry and its local state."""
    item = entry(weights_id)
    found = check(weights_id)
    return {
        "id": item.id, "backend": item.backend, "file_name": item.file_name, "size": item.size,
        "approx_size": item.approx_size, "size_text": item.size_text(), "status": found.state,
        "path": str(found.path) if found.path else None, "sha256": found.expected_sha256 or None,
        "hash_published": item.hash_published, "pinned": found.hash_origin == "pinned",
        "license": item.license, "urls": list(item.urls), "page": item.page, "paper": item.paper,
        "message": found.message,
    }


def locations() -> dict[str, Optional[str]]:
    folder = weights_dir()
    try:
        registry = str(registry_path())
    except WeightsError:
        registry = None
    return {"cache_dir": str(cache_dir()), "weights_dir": str(folder) if folder else None,
            "registry": registry, "pinned_hashes": str(pins_file()), "offline": str(is_offline()).lower()}
