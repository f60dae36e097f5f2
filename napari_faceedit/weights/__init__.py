"""Published checkpoints: plugin-owned catalogues, the cache, verification, download/import
(pooch underneath) and safe loading.

* ``catalogue``: each plugin's entries (``faceedit_weights`` hook), their union, bundled models.
* ``checkpoint``: weights-only reading, strict key/shape comparison, the check before trusting.
* ``store``: settings, cache folder, hash cache, pinned hashes, finding and checking files.
* ``fetch``: download through pooch, import, atomic commit.
* ``load``: loading into a network.

Qt-free; torch and pooch are imported only when a checkpoint is read or a file downloaded.
"""
from __future__ import annotations

from . import catalogue as _catalogue
from . import store as _store
from .catalogue import (ENV_CATALOGUE, Builder, Checker, PluginCatalogue, WeightsCatalogue, WeightsEntry, builder,
                        bundled_path, catalogue_override, checker, entry, format_bytes, ids, load_catalogue,
                        read_catalogue_file, resolve_contribution, set_catalogue_override)
from .checkpoint import SIZE_TOLERANCE, check_before_trust, compare_state_dict, read_checkpoint, unwrap_state_dict
from .errors import (CacheFolderError, CatalogueError, DownloadCancelled, DownloadError, OfflineError,
                     StateDictMismatchError, UnknownWeightsError, UntrustedFileError, VerificationError,
                     WeightsError, WeightsMissingError)
from .fetch import FetchResult, download, import_file
from .load import load_bundled, load_state_dict
from .store import (APP_NAME, CORRUPT, ENV_CACHE_DIR, ENV_OFFLINE, ENV_WEIGHTS_DIR, HASH_CACHE_FILE, MISSING,
                    PINS_FILE, PRESENT, CancelledCallback, ProgressCallback, WeightsStatus, cache_dir,
                    candidate_paths, check, describe, expected_hash, how_to_get, is_offline, locations, missing,
                    path, pinned_hashes, pinned_sha256, pins_file, set_cache_dir, set_offline, set_weights_dir,
                    sha256_file, status, unpin, weights_dir)


def reset_settings() -> None:
    """Forget every ``set_*`` setting and the in-memory caches (tests)."""
    _store.reset_store()
    _catalogue.reset()


__all__ = [
    "APP_NAME", "Builder", "CORRUPT", "Checker", "checker", "CacheFolderError", "CancelledCallback", "CatalogueError", "DownloadCancelled",
    "DownloadError", "ENV_CACHE_DIR", "ENV_CATALOGUE", "ENV_OFFLINE", "ENV_WEIGHTS_DIR", "FetchResult",
    "HASH_CACHE_FILE", "MISSING", "OfflineError", "PINS_FILE", "PRESENT", "PluginCatalogue", "ProgressCallback",
    "SIZE_TOLERANCE", "StateDictMismatchError", "UnknownWeightsError", "UntrustedFileError", "VerificationError",
    "WeightsCatalogue", "WeightsEntry", "WeightsError", "WeightsMissingError", "WeightsStatus", "builder",
    "bundled_path", "cache_dir", "candidate_paths", "catalogue_override", "check", "check_before_trust",
    "compare_state_dict", "describe", "download", "entry", "expected_hash", "format_bytes", "how_to_get", "ids",
    "import_file", "is_offline", "load_bundled", "load_catalogue", "load_state_dict", "locations", "missing",
    "path", "pinned_hashes", "pinned_sha256", "pins_file", "read_catalogue_file", "read_checkpoint",
    "reset_settings", "resolve_contribution", "set_cache_dir", "set_catalogue_override", "set_offline",
    "set_weights_dir", "sha256_file", "status", "unpin", "unwrap_state_dict", "weights_dir",
]
