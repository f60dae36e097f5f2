"""Parity model for ``python -m napari_faceedit.parity stargan shared/parity/stargan``."""
from __future__ import annotations

import numpy as np
import torch

from napari_faceedit.parity import ParityModel

from .model import Generator, prepare_for_inference

MODE_SUFFIX = {"instance": "train", "running": "eval"}  # fixture naming: official train()/eval()


def build(config: dict) -> Generator:
    return Generator(**config["fixture_constructor"])


def outputs(model: Generator, arrays: dict) -> dict:
    x = torch.from_numpy(np.asarray(arrays["input"], dtype=np.float32))
    c = torch.from_numpy(np.asarray(arrays["labels"], dtype=np.float32))
    produced = {}
    for mode, suffix in MODE_SUFFIX.items():
        model.norm_mode = mode
        with torch.inference_mode():
            y, features = model.forward_with_features(x, c)
        produced[f"output_{suffix}"] = y.numpy()
        for name, value in features.items():
            produced[f"{name}_{suffix}"] = value.numpy()
    model.norm_mode = "instance"
    return produced


PARITY_MODEL = ParityModel(
    "stargan",
    build=build,
    outputs=outputs,
    inputs=("input", "labels"),
    optimise=prepare_for_inference,
    required=tuple(f"{kind}_{suffix}" for suffix in MODE_SUFFIX.values()
                   for kind in ("output", "pre_tanh", "feat_down", "feat_bottleneck")),
)
