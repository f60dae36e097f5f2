"""Loading weights into a network: verified first, read weights-only, keys and shapes strict."""
from __future__ import annotations

import os
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Optional

from . import catalogue, store
from .checkpoint import compare_state_dict, entry_state, read_checkpoint, unwrap_state_dict
from .errors import UnknownWeightsError, VerificationError, WeightsMissingError
from .store import expected_hash, sha256_file


def load_state_dict(id_or_path: str | os.PathLike, model, expected_sha256: Optional[str] = None, *,
                    keep_from_model: Iterable[str] = (), allow_torchscript: bool = False) -> str:
    """Verify, then load a checkpoint into ``model`` strictly; return the file's sha256.

    ``id_or_path``: a catalogue id (verified against its published or pinned hash, checked before
    trusting when it has no published hash) or a file path (verified against ``expected_sha256``
    when given). Loading uses ``torch.load(weights_only=True)``: a file holding code is refused
    unread. Any key or shape mismatch raises :class:`StateDictMismatchError` before anything is copied.
    """
    known = catalogue.load_catalogue()
    item = known.get(str(id_or_path)) if isinstance(id_or_path, str) else None
    if item is not None:
        file = store.path(item.id)
        label = f"checkpoint '{item.id}' ({file})"
        keep = tuple(item.keep_from_model) + tuple(keep_from_model)
    else:
        file = Path(id_or_path).expanduser()
        if not file.is_file():
            if isinstance(id_or_path, str) and os.sep not in id_or_path and not file.suffix:
                raise UnknownWeightsError(f"unknown weights id '{id_or_path}' (known: {', '.join(sorted(known))})")
            raise WeightsMissingError(f"weights file not found: {file}")
        label = f"checkpoint {file}"
        keep = tuple(keep_from_model)
    # Hashed anew, not from the (size, mtime) cache: the bytes about to be loaded are the ones checked,
    # even when a file was replaced with its size and time kept. Loading reads the whole file anyway.
    sha = sha256_file(file, use_cache=False)
    wanted = (expected_sha256 or "").lower()
    if item is not None and not wanted:
        wanted = expected_hash(item)[0]
    if wanted and sha != wanted:
        raise VerificationError(f"{label}: sha256 mismatch: expected {wanted}, got {sha}; not loaded",
                                source=str(file), expected_sha256=wanted, actual_sha256=sha)
    if item is not None:
        state = entry_state(item, file, allow_torchscript=allow_torchscript)
    else:
        state = unwrap_state_dict(read_checkpoint(file, allow_torchscript=allow_torchscript))
    compare_state_dict(model, state, keep_from_model=keep, label=label)
    current = model.state_dict()
    for name, value in current.items():
        if name not in state or any(fnmatchcase(name, p) for p in keep):
            state[name] = value  # tolerated above: num_batches_tracked or kept from the model
    model.load_state_dict(state, strict=True)
    return sha


def load_bundled(file_name: str, model, path: Optional[os.PathLike | str] = None) -> str:
    """Strictly load a model a plugin ships (``path``: another file of the same network, e.g. a
    fresh training export) into ``model``; return the file's sha256."""
    file = Path(path) if path else catalogue.bundled_path(file_name)
    if not file.is_file():
        raise WeightsMissingError(f"embedded model '{file_name}' is missing: {file} "
                                  "(it ships with the plugin that uses it; reinstall that plugin)")
    return load_state_dict(file, model)
