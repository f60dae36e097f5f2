"""TediGAN's faithful path end to end on small synthetic networks: CLIP loss falls, only the chosen
layers change, the edit is pasted back; text-to-image from the mean latent."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import require_shared
from faceedit_tedigan.backend import TediGANBackend
from faceedit_tedigan.clip import CLIP
from faceedit_tedigan.clip_tokenizer import CLIPTokenizer
from faceedit_tedigan.encoder import StyleGANEncoder
from faceedit_tedigan.stylegan import StyleGANGenerator
from napari_faceedit.runner import execute
from napari_faceedit.tasks import EditTextRequest

# A face placed by hand (eyes, nose, mouth corners) in a 96x96 picture: no detector needed.
FACE = np.array([[38, 42], [58, 42], [48, 54], [40, 64], [56, 64]], dtype=np.float64)


def small_networks():
    torch.manual_seed(0)
    generator = StyleGANGenerator(resolution=64, z_dim=32, w_dim=32, num_mapping_layers=2, fmaps_base=256, fmaps_max=32)
    encoder = StyleGANEncoder(resolution=64, w_dim=32, channels_base=8, channels_max=32)
    clip = CLIP(embed_dim=16, image_resolution=224, vision_layers=1, vision_width=64, vision_patch_size=32,
                context_length=77, vocab_size=49408, transformer_width=32, transformer_heads=2, transformer_layers=1)
    tokenizer = CLIPTokenizer(require_shared("parity", "clip_vit_b32", "bpe_simple_vocab_16e6.txt.gz"))
    return generator, encoder, clip.eval(), tokenizer


def photo() -> np.ndarray:
    yy, xx = np.mgrid[0:96, 0:96]
    return np.stack([(xx * 2) % 256, (yy * 3) % 256, ((xx + yy) * 2) % 256], axis=2).astype(np.uint8)


def test_manipulation_lowers_the_clip_loss_changes_only_chosen_layers_and_pastes_back():
    backend = TediGANBackend(networks=small_networks())
    image = photo()
    steps = []
    request = EditTextRequest(text="a smiling woman with blond hair", image=image, landmarks=[FACE],
                              params={"steps": 25, "learning_rate": 0.05, "layers": "fine", "latent_weight": 0.0,
                                      "reconstruction_weight": 0.0})
    result = execute(backend, request, progress=lambda *a: steps.append(a))
    losses = result.extras["clip_loss"][0]
    assert len(losses) == 26 and losses[-1] < losses[0]
    latent, start = result.extras["latent"][0], result.extras["latent_start"][0]
    changed_rows = [i for i in range(latent.shape[0]) if not np.array_equal(latent[i], start[i])]
    assert changed_rows == [8, 9]  # a 64 px generator has 10 layers; "fine" is the 64 px pair
    changed = np.any(result.image != image, axis=2)
    assert changed.any() and not changed[result.extras["paste_weights"] == 0].any()
    assert any("CLIP loss" in message for _, _, message in steps)


def test_text_to_image_starts_from_the_mean_latent_and_cancel_returns_nothing():
    backend = TediGANBackend(networks=small_networks())
    generated = execute(backend, EditTextRequest(text="an old man with glasses", params={"steps": 5}))
    assert generated.image.shape == (64, 64, 3) and generated.image.std() > 0
    assert "generated from the mean latent" in generated.provenance.notes
    assert execute(backend, EditTextRequest(text="x", params={"steps": 5}), cancelled=lambda: True) is None
    with pytest.raises(ValueError, match="layers.*one of"):
        execute(backend, EditTextRequest(text="x", params={"layers": "hair"}))


def test_missing_weights_name_every_file():
    ready, why = TediGANBackend.ready()
    if ready:
        pytest.skip("the TediGAN weights are installed here")
    assert "tedigan-ffhq256-generator" in why and "clip-vit-b32" in why
