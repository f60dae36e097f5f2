"""Every error the weights package raises. Each message is meant for the user, in one piece.

``WeightsError`` is a ``RuntimeError`` so that the command line's error handler, which prints one
line and exits 2 for runtime errors, reports any of them without a traceback.
"""
from __future__ import annotations

from typing import Optional


class WeightsError(RuntimeError):
    """Base class of every error of the weights package."""


class CatalogueError(WeightsError):
    """A plugin's weights catalogue (its TOML file or its contribution) is invalid."""


class UnknownWeightsError(WeightsError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsMissingError(WeightsError):
    pass


class CacheFolderError(WeightsError):
    """The weights cache folder cannot be created, read or written (read-only, a file, ...)."""


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


class UntrustedFileError(WeightsError):
    """A file without a published hash that failed the check before trusting it (it is not a
    weights-only checkpoint of the owning plugin's network, or its size is far off)."""

    def __init__(self, message: str, *, source: str = ""):
        super().__init__(message)
        self.source = source


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
