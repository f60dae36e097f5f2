"""The weights catalogue: which published checkpoints exist, who owns them, how to check them.

Each plugin contributes its own entries through the ``faceedit_weights`` hook: a
:class:`WeightsCatalogue` names a TOML file inside the plugin package (one table per checkpoint,
the table name is the id backends list in ``Backend.weights``), the folder of the plugin's bundled
models, and one network builder per entry (used to check a file before trusting it). The plugin
registry reads the contributions (a broken one is recorded as a plugin failure and skipped); this
module serves their union. ``FACEEDIT_WEIGHTS_CATALOGUE`` (or :func:`set_catalogue_override`)
replaces the plugins' entries with one TOML file, e.g. for tests.

Fields of an entry:

* ``backend``: which backend family uses it (informational); ``file_name``: the file's name in the
  cache (``<cache>/<id>/<file_name>``) and in a weights folder.
* ``urls``: direct download URLs, tried in order ([] = no automatic download); ``page``: the human
  download page; ``archive = "zip"`` when the URLs give an archive (``archive_member``: the file in it).
* ``sha256`` + ``hash_published = true`` + ``hash_source``: only for a hash the authors publish.
  Without one, a file is checked before it is trusted (keys and shapes against the plugin's
  network, size against ``approx_size``) and then pinned locally (trust on first use).
* ``size``: exact bytes, only where the authors state it; ``approx_size``: an estimate, checked
  within :data:`checkpoint.SIZE_TOLERANCE` for files without a published hash.
* ``keys_verified``: true when the state-dict key list of the authors' code at this configuration
  loads strictly into our network (parity fixtures); ``url_verified``: true when a download from
  ``urls`` was seen to give the file. Both default to false and are shown when false.
* ``license``, ``paper``, ``source``, ``note`` (caveats: whatever could not be verified).
* ``format``: "pickle" (``torch.save``, read weights-only), "torchscript", or "data" (not a
  checkpoint, e.g. a tokenizer vocabulary: checked by the plugin's checker); ``state_dict_key``:
  the state dict inside a wrapped checkpoint; ``drop_keys``: entries that are not parameters;
  ``keep_from_model``: parameters the model builds itself; ``config``: the builder's arguments.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as the "tomli" package
    import tomli as tomllib

from .errors import CatalogueError, UnknownWeightsError, WeightsMissingError

ENV_CATALOGUE = "FACEEDIT_WEIGHTS_CATALOGUE"
OVERRIDE_OWNER = "catalogue override"
CATALOGUE_FILE = "weights.toml"
MODELS_FOLDER = "models"
_FORMATS = ("pickle", "torchscript", "data")

Builder = Callable[[dict], Any]  # entry config -> torch.nn.Module
Checker = Callable[[Path, dict], Any]  # (file, entry config) -> raises when the file is not the right one


def format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


# -- entries ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsEntry:
    id: str
    backend: str
    file_name: str
    plugin: str = ""  # the plugin that owns the entry (its entry-point name)
    urls: tuple[str, ...] = ()
    page: str = ""
    sha256: str = ""
    hash_published: bool = False
    hash_source: str = ""
    size: Optional[int] = None
    approx_size: Optional[int] = None
    keys_verified: bool = False  # our network's keys/shapes checked against the authors' code
    url_verified: bool = False  # a download from the URLs was seen to give this file
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
    extra: dict = field(default_factory=dict)  # any other catalogue field (image_size, ...)

    @property
    def downloadable(self) -> bool:
        return bool(self.urls)

    def size_text(self) -> str:
        if self.size:
            return format_bytes(self.size)
        if self.approx_size:
            return "~" + format_bytes(self.approx_size)
        return "size unknown"

    def unverified(self) -> list[str]:
        """What about this entry nobody has checked: "key layout", "download URL"."""
        found = []
        if not self.keys_verified:
            found.append("key layout")
        if self.urls and not self.url_verified:
            found.append("download URL")
        return found


_KNOWN_FIELDS = set(WeightsEntry.__dataclass_fields__) - {"id", "extra", "plugin"}
_BOOL_FIELDS = ("hash_published", "keys_verified", "url_verified")


def parse_entry(entry_id: str, raw: Mapping[str, Any], where: Path, plugin: str = "") -> WeightsEntry:
    def bad(why: str) -> CatalogueError:
        return CatalogueError(f"weights catalogue {where}: entry '{entry_id}': {why}")

    if not isinstance(raw, Mapping):
        raise bad("must be a table")
    for required in ("backend", "file_name", "license"):
        if not isinstance(raw.get(required), str) or not raw[required]:
            raise bad(f"'{required}' must be a non-empty string")
    if Path(raw["file_name"]).name != raw["file_name"]:
        raise bad("'file_name' must be a bare file name")
    for flag in _BOOL_FIELDS:
        if flag in raw and not isinstance(raw[flag], bool):
            raise bad(f"'{flag}' must be true or false")
    sha = str(raw.get("sha256", "")).lower()
    published = bool(raw.get("hash_published", bool(sha)))
    if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise bad(f"'sha256' is not a 64-digit hex digest: {sha!r}")
    if published and not sha:
        raise bad("hash_published = true needs a sha256")
    if sha and not published:
        raise bad("a sha256 is given but hash_published = false (only hashes the authors publish are enforced)")
    if published and not raw.get("hash_source"):
        raise bad("hash_published = true needs 'hash_source' (where the authors publish it)")
    fmt = raw.get("format", "pickle")
    if fmt not in _FORMATS:
        raise bad(f"'format' must be one of {_FORMATS}, got {fmt!r}")
    if raw.get("archive", "") not in ("", "zip"):
        raise bad("'archive' must be \"zip\" or absent")
    if raw.get("archive") and not raw.get("archive_member"):
        raise bad("'archive' needs 'archive_member'")
    for key in ("size", "approx_size"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
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
    return WeightsEntry(id=entry_id, plugin=plugin, extra=extra, **kwargs)


_file_cache: dict[tuple[Path, str], tuple[int, dict[str, WeightsEntry]]] = {}
_lock = threading.RLock()


def read_catalogue_file(path: os.PathLike | str, plugin: str = "") -> dict[str, WeightsEntry]:
    """Every entry of one catalogue TOML file, owned by ``plugin`` (cached until the file changes)."""
    path = Path(path)
    try:
        mtime = path.stat().st_mtime_ns
        with _lock:
            cached = _file_cache.get((path, plugin))
            if cached and cached[0] == mtime:
                return cached[1]
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CatalogueError(f"cannot read the weights catalogue {path}: {exc}") from None
    entries = {entry_id: parse_entry(entry_id, value, path, plugin) for entry_id, value in raw.items()}
    with _lock:
        _file_cache[(path, plugin)] = (mtime, entries)
    return entries


# -- plugin contributions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsCatalogue:
    """What a plugin's ``faceedit_weights`` hook returns (a list of these).

    ``toml_path``: the plugin's catalogue file (None: the plugin only ships bundled models).
    ``models_dir``: the folder of the plugin's bundled models (None: none).
    ``builders``: weights id -> ``build(config) -> nn.Module``, the network a file for that id must
    fit; used to check a file without a published hash before it is pinned or marked ready.
    ``checkers``: weights id -> ``check(path, config)`` raising when the file is wrong, for files that
    are not a network's weights (``format = "data"``, e.g. a tokenizer vocabulary).
    """

    toml_path: Optional[Path] = None
    models_dir: Optional[Path] = None
    builders: Mapping[str, Builder] = field(default_factory=dict)
    checkers: Mapping[str, Checker] = field(default_factory=dict)

    @classmethod
    def in_folder(cls, folder: os.PathLike | str, builders: Optional[Mapping[str, Builder]] = None,
                  checkers: Optional[Mapping[str, Checker]] = None) -> "WeightsCatalogue":
        """The usual layout: ``folder/weights.toml`` and ``folder/models/`` (each only when present)."""
        folder = Path(folder)
        toml_path = folder / CATALOGUE_FILE
        models_dir = folder / MODELS_FOLDER
        return cls(toml_path if toml_path.is_file() else None, models_dir if models_dir.is_dir() else None,
                   dict(builders or {}), dict(checkers or {}))


@dataclass(frozen=True)
class PluginCatalogue:
    """One plugin's contribution, read and checked."""

    plugin: str
    contribution: WeightsCatalogue
    entries: dict[str, WeightsEntry]


def resolve_contribution(contribution: object, plugin: str) -> PluginCatalogue:
    """Read and check what a plugin's hook returned; :class:`CatalogueError` names what is wrong."""
    if not isinstance(contribution, WeightsCatalogue):
        raise CatalogueError(f"{contribution!r} is not a napari_faceedit.weights.WeightsCatalogue")
    entries: dict[str, WeightsEntry] = {}
    if contribution.toml_path is not None:
        entries = read_catalogue_file(contribution.toml_path, plugin)
    if contribution.models_dir is not None and not Path(contribution.models_dir).is_dir():
        raise CatalogueError(f"bundled models folder {contribution.models_dir} does not exist")
    for kind, functions in (("builders", contribution.builders), ("checkers", contribution.checkers)):
        strays = sorted(set(functions) - set(entries))
        if strays:
            raise CatalogueError(f"{kind} for ids that are not in the plugin's catalogue: {', '.join(strays)}")
        not_callable = sorted(k for k, v in functions.items() if not callable(v))
        if not_callable:
            raise CatalogueError(f"{kind} that are not callable: {', '.join(not_callable)}")
    return PluginCatalogue(plugin, contribution, entries)


# -- settings -----------------------------------------------------------------------------------------
_override: dict[str, Any] = {"path": None, "builders": {}, "checkers": {}}


def set_catalogue_override(path: Optional[os.PathLike | str], builders: Optional[Mapping[str, Builder]] = None,
                           checkers: Optional[Mapping[str, Checker]] = None) -> None:
    """Use one TOML file instead of the plugins' catalogues (tests); ``builders`` and ``checkers``
    check its files. None: back to the ``FACEEDIT_WEIGHTS_CATALOGUE`` environment variable, else the
    plugins."""
    _override["path"] = Path(path).expanduser() if path is not None else None
    _override["builders"] = dict(builders or {})
    _override["checkers"] = dict(checkers or {})


def catalogue_override() -> Optional[Path]:
    """The one file replacing the plugins' catalogues, if any (setting, then environment)."""
    if _override["path"] is not None:
        return _override["path"]
    env = os.environ.get(ENV_CATALOGUE)
    return Path(env).expanduser() if env else None


def reset() -> None:
    set_catalogue_override(None)
    with _lock:
        _file_cache.clear()


# -- the union ------------------------------------------------------------------------------------------
def plugin_catalogues() -> list[PluginCatalogue]:
    """The installed plugins' contributions, as the plugin registry read them."""
    from ..registry import get_registry  # the registry loads the plugins; the weights code never does

    return list(get_registry().weights_catalogues)


def load_catalogue(path: Optional[os.PathLike | str] = None) -> dict[str, WeightsEntry]:
    """Every entry: of the file ``path``, else of the override file, else of all installed plugins."""
    if path is not None:
        return read_catalogue_file(path, OVERRIDE_OWNER)
    override = catalogue_override()
    if override is not None:
        return read_catalogue_file(override, OVERRIDE_OWNER)
    union: dict[str, WeightsEntry] = {}
    for part in plugin_catalogues():
        union.update(part.entries)  # ids are unique: the registry refuses a clashing catalogue
    return union


def ids() -> list[str]:
    return list(load_catalogue())


def entry(weights_id: str) -> WeightsEntry:
    """The catalogue entry of ``weights_id`` (owner, licence, urls, size, config, ...)."""
    catalogue = load_catalogue()
    try:
        return catalogue[weights_id]
    except KeyError:
        known = ", ".join(sorted(catalogue)) or "none"
        raise UnknownWeightsError(f"unknown weights id '{weights_id}' (known: {known})") from None


def builder(weights_id: str) -> Optional[Builder]:
    """The owning plugin's network builder for ``weights_id`` (None when it provides none)."""
    return _owner_function("builders", weights_id)


def checker(weights_id: str) -> Optional[Checker]:
    """The owning plugin's file checker for ``weights_id`` (None when it provides none)."""
    return _owner_function("checkers", weights_id)


def _owner_function(kind: str, weights_id: str):
    if catalogue_override() is not None:
        return _override[kind].get(weights_id)
    for part in plugin_catalogues():
        if weights_id in part.entries:
            return getattr(part.contribution, kind).get(weights_id)
    return None


def bundled_path(file_name: str) -> Path:
    """One of the small models a plugin ships inside its package (``<package>/models/<file_name>``),
    found in whichever installed plugin provides it; two plugins shipping the same name is an error."""
    owners = [(part.plugin, Path(part.contribution.models_dir) / file_name) for part in plugin_catalogues()
              if part.contribution.models_dir is not None]
    found = [(plugin, path) for plugin, path in owners if path.is_file()]
    if len(found) > 1:
        listing = " and ".join(f"plugin '{plugin}' ({path})" for plugin, path in found)
        raise CatalogueError(f"bundled model '{file_name}' is shipped by more than one plugin: {listing}; "
                             "uninstall one of them or rename its file")
    if not found:
        searched = ", ".join(f"{plugin}: {path.parent}" for plugin, path in owners) or "no plugin ships models"
        raise WeightsMissingError(f"embedded model '{file_name}' is missing: no installed plugin ships it "
                                  f"(searched {searched}); reinstall the plugin that provides it")
    return found[0][1]
