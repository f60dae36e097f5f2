"""Parity models for TediGAN's StyleGAN generator and encoder (``shared/parity/tedigan_*_ffhq256/``).

Every array of both fixture variants is reproduced and compared, the CLIP loss path included: the
fixture's CLIP arrays (TediGAN's resampling of the image for CLIP, the token ids of the prompts,
the logits and the loss) are computed with our CLIP carrying the synthetic ``clip_vit_b32``
weights, read from the CLIP fixture folder beside this one.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

from napari_faceedit.parity import ParityModel

from .clip import tedigan_clip_input, tedigan_clip_loss
from .encoder import StyleGANEncoder
from .encoder import prepare_for_inference as prepare_encoder_for_inference
from .parity_clip import exact_integers
from .stylegan import StyleGANGenerator, prepare_for_inference

CLIP_DEPENDENT_ARRAYS = ("clip_logits_per_image", "clip_loss", "clip_token_ids")
STYLEGAN_INPUTS = ("z", "clip_prompts")
STYLEGAN_REQUIRED = ("z", "w", "wp", "wp_trunc", "image",
                     *(f"mapping_dense{i}_out" for i in range(8)), *(f"style{i:02d}" for i in range(14)))
ENCODER_REQUIRED = ("image_input", "latent_flat", "latent_wp")


def _numpy(trace: dict) -> dict:
    return {name: value.detach().cpu().numpy() for name, value in trace.items()}


@functools.lru_cache(maxsize=1)
def synthetic_clip(clip_folder: str):
    """Our CLIP with the CLIP fixture's synthetic weights, and its tokenizer (built once: 151 M weights)."""
    from napari_faceedit.parity import read_keys, synth_state_dict

    from .parity_clip import build as build_clip

    folder = Path(clip_folder)
    config = json.loads((folder / "config.json").read_text())
    config["fixture_dir"] = str(folder)
    model = build_clip(config)
    model.load_state_dict(synth_state_dict(read_keys(folder / "keys.tsv"), model), strict=True)
    return model.eval(), model.fixture_tokenizer


def build_generator(config: dict) -> StyleGANGenerator:
    model = StyleGANGenerator.from_official_config(config["constructor"]).eval()
    model.fixture_clip_folder = str(Path(config.get("fixture_dir", ".")).parent / "clip_vit_b32")
    return model


def generator_outputs(model: StyleGANGenerator, arrays: dict) -> dict:
    z = torch.from_numpy(np.asarray(arrays["z"], dtype=np.float32))
    trace: dict = {"z": z}
    w = model.mapping_forward(z, trace)
    wp = model.mapping_to_wp(w)
    wp_trunc = model.truncate(wp)
    trace.update(w=w, wp=wp, wp_trunc=wp_trunc)
    trace["image"] = model.synthesize(wp, trace)
    if "image_trunc" in arrays:
        trace["image_trunc"] = model.synthesize(wp_trunc)
    if "clip_input_224" in arrays:
        trace["clip_input_224"] = tedigan_clip_input(trace["image"])
    produced = _numpy(trace)
    if "clip_prompts" in arrays:
        clip, tokenizer = synthetic_clip(model.fixture_clip_folder)
        token_ids = tokenizer.tokenize([str(p) for p in arrays["clip_prompts"]], context_length=clip.context_length)
        text_features = clip.encode_text(torch.from_numpy(token_ids))
        image_features = clip.encode_image(tedigan_clip_input(trace["image"]))
        produced["clip_token_ids"] = token_ids
        produced["clip_logits_per_image"] = clip.similarity_logits(image_features, text_features).numpy()
        produced["clip_loss"] = tedigan_clip_loss(clip, trace["image"], text_features=text_features).numpy()
    return produced


def build_encoder(config: dict) -> StyleGANEncoder:
    return StyleGANEncoder.from_official_config(config["constructor"]).eval()


def encoder_outputs(model: StyleGANEncoder, arrays: dict) -> dict:
    image = torch.from_numpy(np.asarray(arrays["image_input"], dtype=np.float32))
    flat = model.forward_flat(image)
    return _numpy({"image_input": image, "latent_flat": flat, "latent_wp": model.flat_to_wp(flat)})


STYLEGAN_PARITY = ParityModel("tedigan_stylegan_ffhq256", build_generator, generator_outputs,
                              required=STYLEGAN_REQUIRED, inputs=STYLEGAN_INPUTS,
                              compare={"clip_token_ids": exact_integers}, optimise=prepare_for_inference)
ENCODER_PARITY = ParityModel("tedigan_encoder_ffhq256", build_encoder, encoder_outputs, required=ENCODER_REQUIRED,
                             inputs=(), optimise=prepare_encoder_for_inference)
