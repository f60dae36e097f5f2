"""What every trainer shares: weights-only checkpoints written atomically, random-number states as
tensors and plain lists (so a checkpoint reads back with ``weights_only=True``), the history file."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any


class CheckpointError(ValueError):
    """A training checkpoint that cannot be resumed from (not weights-only, or not this network's)."""


def read_training_checkpoint(path: os.PathLike | str, map_location: Any = "cpu") -> dict:
    """A checkpoint dict read with ``torch.load(weights_only=True)``: a file holding code is refused
    before anything in it runs."""
    from .weights import WeightsError, read_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = read_checkpoint(path, map_location=map_location)
    except WeightsError as exc:
        raise CheckpointError(f"refusing to resume from {path}: it is not a weights-only checkpoint (tensors, "
                              f"numbers, strings, lists and dicts only): {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dict")
    return state


def save_atomically(obj: Any, path: os.PathLike | str) -> None:
    """``torch.save`` to a temporary name, then rename: an interrupted save never leaves half a file."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_history(path: os.PathLike | str, config: dict, records: list[dict]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"config": config, "records": records}, indent=1))
    os.replace(tmp, path)


def rng_states(device: Any = "cpu") -> dict:
    """torch (and CUDA), numpy and Python random states in weights-only-loadable form."""
    import numpy as np
    import torch

    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda else [],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_states(states: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    numpy = states["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    python = states["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))


def celebamask_training_folder(root: os.PathLike | str) -> Path:
    """The CelebAMask-HQ training folder (images/ + masks/) under ``root``; the val split, the
    project's test set, is refused so no trainer can learn from it."""
    root = Path(root)
    folder = root / "train" if (root / "train" / "images").is_dir() else root
    if folder.resolve().name == "val":
        raise ValueError(f"{folder} is the CelebAMask-HQ val split, the project's test set: never train on it")
    if not (folder / "images").is_dir() or not (folder / "masks").is_dir():
        raise FileNotFoundError(f"{root}: expected train/images and train/masks (or images/ and masks/)")
    return folder
