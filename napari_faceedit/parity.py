"""Parity checks against the official networks: ``python -m napari_faceedit.parity MODEL FIXTURE_DIR``.

FIXTURE_DIR has the layout of ``shared/parity/<model>/`` (config.json, keys.tsv or fixture_keys.tsv,
fixture*.npz). Weights are synthesised from the key list with the fixtures' documented formula,
loaded with ``strict=True`` (``kept_from_model`` rows keep our model's own buffers), and every
expected array that our model also produces is compared with
``max|ours - expected| <= 1e-4 * max|expected|``.
Models come from plugins through the ``faceedit_parity_models`` hook.

``--optimised`` checks the backend's inference path instead of the plain modules: the model's
``optimise`` function (e.g. batch norm folded into the convolutions, channels-last weights) is applied
after the weights are loaded, and the same arrays must pass the same tolerance.
"""
from __future__ import annotations

import argparse
import json
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

RELATIVE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ParityModel:
    """How to check one network. ``build(config)`` gets config.json as a dict and returns an
    ``nn.Module`` for the fixture configuration; ``outputs(model, arrays)`` runs it on the fixture's
    arrays and returns ``{name: array}`` for every fixture array it reproduces (at least the main output).
    ``compare`` optionally overrides the comparison of one array name (e.g. label maps only where
    the decision is not a near-tie): ``compare[name](ours, expected, arrays) -> (max_abs_diff, ok)``."""

    name: str
    build: Callable[[dict], object]
    outputs: Callable[[object, dict], dict]
    required: tuple[str, ...] = ()
    compare: dict | None = None
    # Fixture arrays that are inputs (fed to the model, never compared). Every other array of a
    # fixture must be compared, or the check fails: a fixture is never passed with nothing checked.
    inputs: tuple[str, ...] = ("input",)
    # The backend's inference path: ``optimise(model) -> model``, applied after the weights are loaded
    # (folding normalisation changes the state-dict keys). None: the checked path is the only one.
    optimise: Callable[[object], object] | None = None


@dataclass(frozen=True)
class KeyRow:
    name: str
    shape: tuple[int, ...]
    dtype: str
    source: str
    rescaled_mult: float


def read_keys(path: Path) -> list[KeyRow]:
    rows = []
    lines = Path(path).read_text().splitlines()
    header = lines[0].split("\t")
    col = {h: i for i, h in enumerate(header)}
    for line in lines[1:]:
        if not line.strip():
            continue
        cells = line.split("\t")
        rows.append(KeyRow(
            name=cells[0],
            shape=tuple(json.loads(cells[col["shape"]])),
            dtype=cells[col["dtype"]] if "dtype" in col else "float32",
            source=cells[col["source"]] if "source" in col else "synth",
            rescaled_mult=float(cells[col["rescaled_mult"]]) if "rescaled_mult" in col else 1.0,
        ))
    return rows


def synth_tensor(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The fixtures' deterministic weight for one key: a function of its name and shape only."""
    noise = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(shape).astype(np.float32)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return (1.0 + 0.1 * np.abs(noise)).astype(np.float32)
    if leaf == "running_mean":
        return (0.1 * noise).astype(np.float32)
    if leaf == "num_batches_tracked":
        return np.zeros(shape, dtype=np.int64)
    if len(shape) >= 2:
        return (noise / np.sqrt(int(np.prod(shape[1:])))).astype(np.float32)
    if leaf == "weight":
        return (1.0 + 0.1 * noise).astype(np.float32)
    return (0.1 * noise).astype(np.float32)


def synth_state_dict(rows: list[KeyRow], model, rescaled: bool = False) -> dict:
    """Full state dict for ``model``: synthesised rows, plus the model's own ``kept_from_model`` buffers."""
    import torch

    own = model.state_dict()
    state = {}
    for row in rows:
        if row.source == "kept_from_model":
            if row.name not in own:
                raise KeyError(f"kept_from_model key '{row.name}' does not exist in our model")
            state[row.name] = own[row.name]
            continue
        value = np.asarray(synth_tensor(row.name, row.shape))  # 0-d rows (e.g. logit_scale) too
        if rescaled and row.rescaled_mult != 1.0:
            value = (value * np.float32(row.rescaled_mult)).astype(np.float32)
        state[row.name] = torch.from_numpy(value)
    return state


def relative_check(ours: np.ndarray, expected: np.ndarray) -> tuple[float, bool]:
    ours = np.asarray(ours, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if ours.shape != expected.shape:
        return float("inf"), False
    diff = float(np.max(np.abs(ours - expected))) if expected.size else 0.0
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    return diff, diff <= RELATIVE_TOLERANCE * scale


def check_folder(model_spec: ParityModel, folder: Path, out=sys.stdout, optimised: bool = False) -> bool:
    """Check every fixture in ``folder``; ``optimised`` runs the model's inference path (``optimise``)."""
    import torch

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    config.setdefault("fixture_dir", str(folder))  # models that read data files from the fixture (CLIP's BPE)
    keys_file = folder / "fixture_keys.tsv"
    if not keys_file.exists():
        keys_file = folder / "keys.tsv"
    rows = read_keys(keys_file)
    fixtures = sorted(folder.glob("fixture*.npz"))
    if not fixtures:
        raise FileNotFoundError(f"no fixture*.npz in {folder}")
    all_ok = True
    for fixture in fixtures:
        arrays = dict(np.load(fixture))
        model = model_spec.build(config)
        state = synth_state_dict(rows, model, rescaled="rescaled" in fixture.stem)
        model.load_state_dict(state, strict=True)
        if optimised and model_spec.optimise is not None:
            model = model_spec.optimise(model)
        with torch.no_grad():
            produced = model_spec.outputs(model, arrays)
        missing = [n for n in model_spec.required if n not in produced]
        if missing:
            print(f"{fixture.name}: our model did not produce {missing}", file=out)
            all_ok = False
        uncompared = sorted(set(arrays) - set(produced) - set(model_spec.inputs))
        if uncompared:
            print(f"{fixture.name}: expected arrays not compared: {uncompared}", file=out)
            all_ok = False
        absent = [n for n in model_spec.required if n not in arrays]
        if absent or not set(produced) & set(arrays):
            print(f"{fixture.name}: the fixture lacks the expected arrays {absent or list(model_spec.required)}: "
                  "nothing to compare them with", file=out)
            all_ok = False
        for name in sorted(produced):
            if name not in arrays:
                continue
            compare = (model_spec.compare or {}).get(name)
            if compare is not None:
                diff, ok = compare(produced[name], arrays[name], arrays)
            else:
                diff, ok = relative_check(produced[name], arrays[name])
            numeric = arrays[name].dtype.kind in "biuf" and arrays[name].size
            scale = float(np.max(np.abs(arrays[name]))) if numeric else 0.0
            print(f"{fixture.name}:{name}: max|diff|={diff:.3e} (max|expected|={scale:.3e}) "
                  f"{'ok' if ok else 'FAIL'}", file=out)
            all_ok &= ok
    return all_ok


def main(argv: list[str] | None = None) -> int:
    from .registry import get_registry

    parser = argparse.ArgumentParser(prog="python -m napari_faceedit.parity", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="network name, e.g. bisenet, stargan, gpen")
    parser.add_argument("fixture_dir", type=Path)
    parser.add_argument("--optimised", action="store_true",
                        help="check the backend's optimised inference path (folded norms, channels-last, ...)")
    args = parser.parse_args(argv)
    models = get_registry().parity_models()
    if args.model not in models:
        print(f"no parity model '{args.model}' (available: {', '.join(sorted(models)) or 'none'})", file=sys.stderr)
        return 2
    spec = models[args.model]
    if args.optimised and spec.optimise is None:
        print(f"{args.model}: one inference path (nothing separate to optimise); checking it")
    ok = check_folder(spec, args.fixture_dir, optimised=args.optimised)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
