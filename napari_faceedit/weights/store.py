"""Where weights files live and whether they can be trusted: settings, the cache folder, the hash
cache, the pinned hashes (trust on first use), and finding and checking the file for an id.

A file is looked for in the user's weights folder first, then in the cache (``<cache>/<id>/<file>``),
and is only used once its size and sha256 match the hash its authors published, or, where none is
published, once it passed the check before trusting (:func:`checkpoint.check_before_trust`) and
its hash was pinned. The two small JSON files in the cache (pins, hash cache) are set aside with a
warning and rebuilt when they cannot be read; a cache folder that cannot be used is a
:class:`CacheFolderError` with one line of explanation.

Settings, strongest first: the ``set_*`` functions, then ``FACEEDIT_CACHE_DIR`` (the cache itself),
``FACEEDIT_WEIGHTS_DIR`` (a folder of weights the user already has) and ``FACEEDIT_OFFLINE=1``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from . import catalogue
from .catalogue import WeightsEntry, entry, format_bytes
from .checkpoint import check_before_trust
from .errors import (CacheFolderError, UnknownWeightsError, UntrustedFileError, VerificationError,
                     WeightsMissingError)

log = logging.getLogger("napari_faceedit.weights")

ENV_CACHE_DIR = "FACEEDIT_CACHE_DIR"
ENV_WEIGHTS_DIR = "FACEEDIT_WEIGHTS_DIR"
ENV_OFFLINE = "FACEEDIT_OFFLINE"
APP_NAME = "napari-faceedit"
PINS_FILE = "pinned_hashes.json"
HASH_CACHE_FILE = "hash_cache.json"

PRESENT, MISSING, CORRUPT = "present", "missing", "corrupt"

ProgressCallback = Callable[[int, int], None]  # (done_bytes, total_bytes); total 0 = unknown
CancelledCallback = Callable[[], bool]

_CHUNK = 1 << 20
lock = threading.RLock()  # one writer at a time for the pins, the hash cache and commits


# -- settings ------------------------------------------------------------------------------------
_settings: dict[str, Any] = {"cache_dir": None, "weights_dir": None, "offline": None}


def set_cache_dir(path: Optional[os.PathLike | str]) -> None:
    """Use ``path`` as the weights cache (None: back to env / platform default)."""
    _settings["cache_dir"] = Path(path).expanduser() if path is not None else None


def set_weights_dir(path: Optional[os.PathLike | str]) -> None:
    """A folder of weights the user already has, searched before the cache (None: env / none)."""
    _settings["weights_dir"] = Path(path).expanduser() if path is not None else None


def set_offline(offline: Optional[bool]) -> None:
    """True forbids every download; None: back to the FACEEDIT_OFFLINE environment variable."""
    _settings["offline"] = offline


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


def reset_store() -> None:
    for key in _settings:
        _settings[key] = None
    with lock:
        _hash_memory.clear()
        _hash_loaded_from.clear()
        _trusted.clear()


# -- the cache folder ----------------------------------------------------------------------------
def cache_folder_error(exc: OSError, doing: str) -> CacheFolderError:
    """One line for the user: which folder, what failed, how to fix it."""
    reason = exc.strerror or type(exc).__name__
    return CacheFolderError(f"the weights cache folder {cache_dir()} cannot be used: {doing} failed ({reason}: "
                            f"{exc.filename or cache_dir()}); make it a writable folder or set {ENV_CACHE_DIR} "
                            "to another one")


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cache_folder_error(exc, f"creating {folder}") from None


def atomic_write_text(target: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``target``, then rename it (never half-written)."""
    make_folder(target.parent)
    try:
        handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        raise cache_folder_error(exc, f"writing {target.name}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, target)
    except OSError as exc:
        unlink_quietly(Path(tmp))
        raise cache_folder_error(exc, f"writing {target.name}") from None
    except BaseException:
        unlink_quietly(Path(tmp))
        raise


def unlink_quietly(file: Path) -> None:
    try:
        file.unlink()
    except FileNotFoundError:
        pass


def _read_json_ledger(file: Path, what: str) -> dict:
    """A JSON object from the cache; an unreadable one is set aside (``<name>.corrupt-<time>``) with
    a warning and an empty one is used, so that it is rebuilt."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (NotADirectoryError, PermissionError) as exc:
        raise cache_folder_error(exc, f"reading {file.name}") from None
    except (OSError, UnicodeDecodeError) as exc:
        return _set_aside(file, what, exc)
    try:
        data = json.loads(text)
    except ValueError as exc:
        return _set_aside(file, what, exc)
    if not isinstance(data, dict) or not all(isinstance(v, (dict, list)) for v in data.values()):
        return _set_aside(file, what, ValueError("not a JSON object of records"))
    return data


def _set_aside(file: Path, what: str, problem: BaseException) -> dict:
    aside = file.with_name(f"{file.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.replace(file, aside)
        where = f"moved aside to {aside}"
    except OSError as exc:
        where = f"could not be moved aside ({exc.strerror or exc}); it is ignored"
    log.warning("the %s file %s cannot be read (%s): %s and it will be rebuilt", what, file, problem, where)
    return {}


# -- hashing -------------------------------------------------------------------------------------
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
        stored = _read_json_ledger(target, "hash cache")
    except CacheFolderError as exc:  # hashing still works without the persisted cache
        log.debug("%s", exc)
        return
    for key, value in stored.items():
        if isinstance(value, list) and len(value) == 3 and key not in _hash_memory:
            try:
                _hash_memory[key] = (int(value[0]), int(value[1]), str(value[2]))
            except (TypeError, ValueError):
                continue


def remember_hash(path: Path, sha: str) -> None:
    st = path.stat()
    with lock:
        _hash_memory[str(path.resolve())] = (st.st_size, st.st_mtime_ns, sha)
        # Persisted so that a new session does not re-hash hundreds of MB to show a status.
        try:
            live = {k: list(v) for k, v in _hash_memory.items() if os.path.exists(k)}
            atomic_write_text(_hash_cache_file(), json.dumps(live, indent=0))
        except CacheFolderError as exc:
            log.debug("could not save the hash cache: %s", exc)


def sha256_file(path: os.PathLike | str, *, use_cache: bool = True,
                progress: Optional[ProgressCallback] = None) -> str:
    """sha256 of a file; cached by (path, size, mtime) so repeated checks are cheap."""
    path = Path(path)
    st = path.stat()
    key = str(path.resolve())
    if use_cache:
        with lock:
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
    remember_hash(path, sha)
    return sha


# -- pinned hashes (trust on first use) ---------------------------------------------------------
def pins_file() -> Path:
    return cache_dir() / PINS_FILE


def pinned_hashes() -> dict[str, dict]:
    return {k: v for k, v in _read_json_ledger(pins_file(), "pinned hashes").items() if isinstance(v, dict)}


def pinned_sha256(weights_id: str) -> Optional[str]:
    record = pinned_hashes().get(weights_id)
    return record.get("sha256") if record else None


def pin(item: WeightsEntry, sha: str, size: int, origin: str) -> str:
    """Record ``sha`` as the hash of ``item``'s file (it passed the check before trusting)."""
    with lock:
        pins = pinned_hashes()
        pins[item.id] = {"sha256": sha, "size": size, "file_name": item.file_name, "source": origin,
                         "plugin": item.plugin, "trust_checked": True,
                         "pinned_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(pins_file(), json.dumps(pins, indent=2, sort_keys=True))
    message = (f"'{item.id}' has no published hash; the file holds exactly its network's keys and shapes, so "
               f"it is now pinned sha256 {sha} ({format_bytes(size)}, from {origin}) in {pins_file()} "
               "(trust on first use; a different file will now be refused)")
    log.warning(message)
    return message


def unpin(weights_id: str) -> bool:
    """Forget the pinned hash of ``weights_id`` (e.g. to accept a new upstream version)."""
    entry(weights_id)
    with lock:
        pins = pinned_hashes()
        if weights_id not in pins:
            return False
        del pins[weights_id]
        atomic_write_text(pins_file(), json.dumps(pins, indent=2, sort_keys=True))
        return True


@dataclass(frozen=True)
class Expectation:
    """What a file for an entry must be: the published hash, else the pinned one (or nothing yet)."""

    sha256: str
    origin: str  # "published", "pinned" or "" (not pinned yet)
    size: Optional[int]
    record: dict  # the pin record ({} when none)

    @property
    def trusted_by_hash(self) -> bool:
        """True when the hash alone settles it: published by the authors."""
        return self.origin == "published"


def expectation(item: WeightsEntry) -> Expectation:
    """The published values of ``item``, else those pinned on first use (the pins file is read once)."""
    record = pinned_hashes().get(item.id, {}) if not item.hash_published else {}
    if item.hash_published:
        sha, origin = item.sha256, "published"
    elif record.get("sha256"):
        sha, origin = str(record["sha256"]), "pinned"
    else:
        sha, origin = "", ""
    size = item.size or (int(record["size"]) if str(record.get("size", "")).isdigit() else None)
    return Expectation(sha, origin, size, record)


def expected_hash(item: WeightsEntry | str) -> tuple[str, str]:
    """(sha256, origin) where origin is "published", "pinned" or "" (unknown: not yet pinned)."""
    item = entry(item) if isinstance(item, str) else item
    found = expectation(item)
    return found.sha256, found.origin


# -- the check before trusting -------------------------------------------------------------------
_trusted: set[tuple[str, int, int]] = set()  # (abs path, size, mtime_ns) of files that passed


def ensure_trusted(item: WeightsEntry, file: Path, expected: Expectation, source: str = "") -> None:
    """Run :func:`check_before_trust` on ``file`` unless its hash is published, its pin records a
    passed check, or it passed in this session. Raises :class:`UntrustedFileError`."""
    if expected.trusted_by_hash or (expected.origin == "pinned" and expected.record.get("trust_checked")):
        return
    st = file.stat()
    key = (str(file.resolve()), st.st_size, st.st_mtime_ns)
    if key in _trusted:
        return
    check_before_trust(item, file, source)
    _trusted.add(key)
    if expected.origin == "pinned":  # pinned by an older version, unchecked: record that it passed now
        try:
            with lock:
                pins = pinned_hashes()
                if item.id in pins:
                    pins[item.id]["trust_checked"] = True
                    atomic_write_text(pins_file(), json.dumps(pins, indent=2, sort_keys=True))
        except CacheFolderError as exc:
            log.debug("could not record the check in the pins: %s", exc)


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
        if sum(e.file_name == item.file_name for e in catalogue.load_catalogue().values()) == 1:
            found.append(folder / item.file_name)
    found.append(cache_dir() / item.id / item.file_name)
    return found


def mismatch(item: WeightsEntry, source: str, expected: Expectation, actual_sha: str,
             actual_size: int) -> Optional[VerificationError]:
    if expected.size is not None and actual_size != expected.size:
        return VerificationError(
            f"'{item.id}' from {source}: size mismatch: expected {expected.size} bytes, got {actual_size} "
            f"(truncated or a different file)", source=source, expected_sha256=expected.sha256,
            actual_sha256=actual_sha, expected_size=expected.size, actual_size=actual_size)
    if expected.sha256 and actual_sha and actual_sha != expected.sha256:
        what = "published" if expected.origin == "published" else f"pinned in {pins_file()}"
        hint = "" if expected.origin == "published" else f" (if the new file is intended: faceedit weights unpin {item.id})"
        return VerificationError(
            f"'{item.id}' from {source}: sha256 mismatch: expected {expected.sha256} ({what}), got {actual_sha}{hint}",
            source=source, expected_sha256=expected.sha256, actual_sha256=actual_sha,
            expected_size=expected.size, actual_size=actual_size)
    return None


def check(weights_id: str, *, fresh: bool = False) -> WeightsStatus:
    """Look for ``weights_id`` and verify what is found (``fresh``: re-hash, ignore the hash cache).

    A file without a published hash counts as present only once it passed the check before trusting.
    """
    item = entry(weights_id)
    expected = expectation(item)
    problems: list[VerificationError | UntrustedFileError] = []
    for candidate in candidate_paths(item):
        if not candidate.is_file():
            if candidate.is_symlink():
                problems.append(VerificationError(f"'{item.id}': {candidate} is a broken link", source=str(candidate)))
            continue
        size = candidate.stat().st_size
        sized_right = expected.size in (None, size)
        sha = sha256_file(candidate, use_cache=not fresh) if expected.sha256 and sized_right else ""
        problem = mismatch(item, str(candidate), expected, sha, size)
        if problem is None:
            try:
                ensure_trusted(item, candidate, expected)
            except UntrustedFileError as exc:
                problems.append(exc)
                continue
            message = "" if expected.sha256 else "no published hash; checked, not pinned yet (pinned on first use)"
            return WeightsStatus(item.id, PRESENT, candidate, sha, expected.sha256, expected.origin, message)
        problems.append(problem)
    if problems:
        first = problems[0]
        return WeightsStatus(item.id, CORRUPT, Path(first.source) if first.source else None,
                             getattr(first, "actual_sha256", ""), expected.sha256, expected.origin,
                             "; ".join(str(p) for p in problems))
    return WeightsStatus(item.id, MISSING, None, "", expected.sha256, expected.origin, how_to_get(item))


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

    A file without a published hash is pinned here on first use, after it passed the check
    before trusting (trust on first use).
    """
    found = check(weights_id)
    if found.state == MISSING:
        raise WeightsMissingError(found.message)
    if found.state == CORRUPT:
        raise VerificationError(found.message + f". Delete it, or run: faceedit weights download {weights_id} --force",
                                source=str(found.path or ""))
    assert found.path is not None
    if not found.hash_origin:
        with lock:
            item = entry(weights_id)
            if not expectation(item).sha256:
                pin(item, sha256_file(found.path), found.path.stat().st_size, str(found.path))
    return found.path


# -- summaries for the CLI and the dialog ------------------------------------------------------------
def describe(weights_id: str) -> dict:
    """A JSON-friendly summary of one entry and its local state."""
    item = entry(weights_id)
    found = check(weights_id)
    return {
        "id": item.id, "plugin": item.plugin, "backend": item.backend, "file_name": item.file_name,
        "size": item.size, "approx_size": item.approx_size, "size_text": item.size_text(), "status": found.state,
        "path": str(found.path) if found.path else None, "sha256": found.expected_sha256 or None,
        "hash_published": item.hash_published, "pinned": found.hash_origin == "pinned",
        "keys_verified": item.keys_verified, "url_verified": item.url_verified, "unverified": item.unverified(),
        "license": item.license, "urls": list(item.urls), "page": item.page, "paper": item.paper,
        "message": found.message,
    }


def locations() -> dict[str, Optional[str]]:
    folder = weights_dir()
    override = catalogue.catalogue_override()
    return {"cache_dir": str(cache_dir()), "weights_dir": str(folder) if folder else None,
            "catalogue": str(override) if override else "installed plugins (faceedit_weights hook)",
            "pinned_hashes": str(pins_file()), "offline": str(is_offline()).lower()}
