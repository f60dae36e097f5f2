"""Reading checkpoints without ever unpickling code, strict key/shape comparison, and the check a
file without a published hash must pass before it is trusted.

Every read goes through ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists and
dicts only: a pickle that would import or call anything is refused by torch before it runs). A
TorchScript archive is read only for catalogue entries whose format says so.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from . import catalogue
from .catalogue import WeightsEntry, format_bytes
from .errors import StateDictMismatchError, UntrustedFileError, WeightsError

_WRAPPER_KEYS = ("params_ema", "params", "g_ema", "state_dict", "model")
# A file without a published hash may differ from the catalogue's approximate size by this much
# (the estimate counts parameters x 4 bytes; pickle framing and key names add well under 1 %).
SIZE_TOLERANCE = 0.10


def read_checkpoint(path: os.PathLike | str, map_location: Any = "cpu", *, allow_torchscript: bool = False,
                    mmap: bool = False) -> Any:
    """What ``torch.save`` wrote to ``path``, read with ``weights_only=True``; anything else (code in
    a pickle, random bytes) is a :class:`WeightsError` and nothing in the file is executed."""
    import torch

    file = Path(path)
    if zipfile.is_zipfile(file):
        with zipfile.ZipFile(file) as bundle:
            is_script = any(n.endswith("constants.pkl") for n in bundle.namelist())
        if is_script:
            if not allow_torchscript:
                raise WeightsError(f"{file} is a TorchScript archive; it is only read for catalogue entries with "
                                   f"format = \"torchscript\" (or allow_torchscript=True)")
            with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated; CLIP ships as one
                warnings.simplefilter("ignore", DeprecationWarning)
                return dict(torch.jit.load(str(file), map_location="cpu").state_dict())
    else:
        mmap = False  # only the zip format can be memory-mapped
    try:
        return torch.load(file, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - unpickling errors have many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WeightsError(f"refusing to read {file}: it is not a weights-only PyTorch checkpoint (tensors, numbers, "
                           f"strings, lists and dicts only), so nothing in it was run ({type(exc).__name__}: "
                           f"{reason})") from None


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
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
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
    unexpected = [str(k) for k in state if k not in expected]
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


def entry_state(item: WeightsEntry, file: Path, *, allow_torchscript: bool = False, mmap: bool = False) -> dict:
    """The state dict a file for ``item`` holds: read safely, unwrapped, the entry's ``drop_keys`` removed."""
    if item.format == "data":
        raise WeightsError(f"'{item.id}' is a data file, not a checkpoint: use weights.path('{item.id}') to read it")
    raw = read_checkpoint(file, allow_torchscript=allow_torchscript or item.format == "torchscript", mmap=mmap)
    state = unwrap_state_dict(raw, item.state_dict_key)
    for name in item.drop_keys:
        state.pop(name, None)
    return state


def _build_shapes_only(build, config: dict):
    """The network on torch's meta device (shapes, no memory); a builder that cannot work there is
    built normally."""
    import torch

    try:
        with torch.device("meta"):
            return build(dict(config))
    except Exception:  # noqa: BLE001 - some builders compute buffers from real data
        return build(dict(config))


def check_before_trust(item: WeightsEntry, file: Path, source: str = "") -> None:
    """Refuse (:class:`UntrustedFileError`) a file for an entry without a published hash unless it is
    within :data:`SIZE_TOLERANCE` of the catalogue's approximate size and holds, read weights-only,
    exactly the keys and shapes of the owning plugin's network (or, for a data file, passes the
    plugin's checker)."""
    source = source or str(file)
    what = f"'{item.id}' from {source}"
    refused = "; it was not pinned or used"
    size = file.stat().st_size
    if item.approx_size and abs(size - item.approx_size) > SIZE_TOLERANCE * item.approx_size:
        raise UntrustedFileError(
            f"{what} is {format_bytes(size)} ({size} bytes), but the catalogue expects about "
            f"{format_bytes(item.approx_size)} (within {SIZE_TOLERANCE:.0%}){refused}", source=source)
    owner = f"plugin '{item.plugin}'" if item.plugin else "its plugin"
    check = catalogue.checker(item.id)
    if check is not None:  # not a network's weights (a vocabulary, ...): the plugin says what is right
        try:
            check(file, dict(item.config))
        except Exception as exc:  # noqa: BLE001 - any failure of the plugin's check refuses the file
            raise UntrustedFileError(f"{what} is not the file it is listed as ({owner}'s check: "
                                     f"{type(exc).__name__}: {exc}){refused}", source=source) from None
        return
    build = catalogue.builder(item.id) if item.format != "data" else None
    if build is None:
        raise UntrustedFileError(f"{what} cannot be checked: it has no published hash and {owner} provides no "
                                 f"network to check its keys and shapes against{refused}", source=source)
    try:
        state = entry_state(item, file, mmap=True)
        compare_state_dict(_build_shapes_only(build, item.config), state, keep_from_model=item.keep_from_model,
                           label="the file")
    except WeightsError as exc:
        raise UntrustedFileError(f"{what} is not a checkpoint of the network it is listed for ({owner}): "
                                 f"{str(exc).rstrip('.')}{refused}", source=source) from None
