"""Parity model for ``python -m napari_faceedit.parity clip_vit_b32 shared/parity/clip_vit_b32``.

Every array of the fixture except the input image is reproduced: the image and text features, the
logits, the logit scale, and the tokenizer's side (token ids and EOT positions compared exactly, the
prompts compared as the text decoded from our token ids). Text features come from OUR token ids.

The tokenizer needs the fixture's BPE vocabulary: it is read from ``config["fixture_dir"]`` when
the parity runner passes the folder there, else from the path in ``$FACEEDIT_CLIP_VOCAB``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from napari_faceedit.parity import ParityModel

from .clip import CLIP, prepare_for_inference
from .clip_tokenizer import CLIPTokenizer

VOCAB_ENV = "FACEEDIT_CLIP_VOCAB"
FIXTURE_INPUTS = ("image_input",)  # fed to the model, not produced by it; every other array is compared


def vocab_path(config: dict) -> Path:
    file_name = config.get("tokenizer", {}).get("vocab_file", "bpe_simple_vocab_16e6.txt.gz")
    if config.get("fixture_dir"):
        return Path(config["fixture_dir"]) / file_name
    if os.environ.get(VOCAB_ENV):
        return Path(os.environ[VOCAB_ENV])
    raise FileNotFoundError(f"the CLIP parity check needs {file_name}: pass the fixture folder as "
                            f"config['fixture_dir'] or set {VOCAB_ENV} to the file's path")


def build(config: dict) -> CLIP:
    model = CLIP(**config["constructor"]).eval()
    model.fixture_tokenizer = CLIPTokenizer(vocab_path(config))  # outputs() sees only the model
    return model


def outputs(model: CLIP, arrays: dict) -> dict:
    tokenizer: CLIPTokenizer = model.fixture_tokenizer
    image = torch.from_numpy(np.asarray(arrays["image_input"], dtype=np.float32))
    token_ids = tokenizer.tokenize([str(p) for p in arrays["prompts"]], context_length=model.context_length)
    tokens = torch.from_numpy(token_ids)
    image_features = model.encode_image(image)
    text_features = model.encode_text(tokens)
    return {
        "prompts": np.array([tokenizer.decode(row) for row in token_ids]),
        "token_ids": token_ids,
        "eot_index": model.end_of_text_positions(tokens).numpy(),
        "image_embedding": image_features.numpy(),
        "text_embedding": text_features.numpy(),
        "logits_per_image": model.similarity_logits(image_features, text_features).numpy(),
        "logit_scale": model.logit_scale.detach().numpy(),
    }


def exact_integers(ours, expected, arrays) -> tuple[float, bool]:
    """Token ids and positions: same shape, integer dtype, every value equal."""
    ours = np.asarray(ours)
    if ours.shape != expected.shape or ours.dtype.kind not in "iu":
        return float("inf"), False
    diff = float(np.max(np.abs(ours.astype(np.int64) - expected.astype(np.int64)))) if ours.size else 0.0
    return diff, diff == 0.0


def exact_strings(ours, expected, arrays) -> tuple[float, bool]:
    """Prompts: the number of rows whose decoded text differs."""
    ours = np.asarray(ours)
    if ours.shape != expected.shape:
        return float("inf"), False
    mismatches = float(sum(str(a) != str(b) for a, b in zip(ours, expected)))
    return mismatches, mismatches == 0.0


CLIP_PARITY = ParityModel(
    "clip_vit_b32",
    build=build,
    outputs=outputs,
    required=("prompts", "token_ids", "eot_index", "image_embedding", "text_embedding",
              "logits_per_image", "logit_scale"),
    compare={"token_ids": exact_integers, "eot_index": exact_integers, "prompts": exact_strings},
    inputs=FIXTURE_INPUTS,
    optimise=prepare_for_inference,
)
