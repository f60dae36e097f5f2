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


class TrainingLeg:
    """The bookkeeping of a trainer's step loop: loss averages per logging window, the log / dev /
    checkpoint cadence, ``--max-minutes`` and the history file. ``save(step)`` writes the checkpoint,
    ``dev_record(step)`` (optional) returns a dev record. ``args`` supplies ``log_every``,
    ``dev_every``, ``checkpoint_every`` and ``max_minutes``."""

    def __init__(self, args, total_steps: int, records: list[dict], history_path: os.PathLike | str,
                 history_config: dict, save, dev_record=None):
        import time

        self._clock = time.time
        self.args, self.total_steps, self.records = args, total_steps, records
        self.history_path, self.history_config = Path(history_path), history_config
        self.save, self.dev_record = save, dev_record
        self.started = self._clock()
        self.window: dict[str, list[float]] = {}

    def add(self, values: dict) -> None:
        for key, value in values.items():
            self.window.setdefault(key, []).append(float(value))

    def end_of_step(self, step: int, **fields) -> bool:
        """Log, evaluate and checkpoint when due (``fields`` go into the train record before the
        loss averages); True when the leg must stop (schedule done or out of time)."""
        import numpy as np

        args = self.args
        out_of_time = bool(args.max_minutes) and (self._clock() - self.started) > args.max_minutes * 60
        finished = step >= self.total_steps or out_of_time
        if step % args.log_every == 0 or finished:
            record = {"step": step, "kind": "train", **fields, "seconds": round(self._clock() - self.started, 1),
                      **{k: round(float(np.mean(v)), 5) for k, v in self.window.items()}}
            self.window = {}
            self.records.append(record)
            print(" ".join(f"{k}={v}" for k, v in record.items() if k != "kind"), flush=True)
        if self.dev_record is not None and (step % args.dev_every == 0 or finished):
            self.records.append(self.dev_record(step))
        if step % args.checkpoint_every == 0 or finished:
            self.save(step)
            write_history(self.history_path, self.history_config, self.records)
        if out_of_time:
            print("stopping: --max-minutes reached", flush=True)
        return finished

    def finish(self, step: int, checkpoint_path: os.PathLike | str) -> None:
        """A leg that ran no step still leaves a checkpoint; the history is written either way."""
        if not Path(checkpoint_path).is_file():
            self.save(step)
        write_history(self.history_path, self.history_config, self.records)


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
