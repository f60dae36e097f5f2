"""TediGAN's StyleGAN generator and encoder: parity with the official networks (both weight variants),
the official key layout, layer-restricted editing of the W+ code, and clear errors for wrong checkpoints."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import require_shared  # noqa: E402
from faceedit_tedigan.encoder import StyleGANEncoder  # noqa: E402
from faceedit_tedigan.parity_stylegan import (CLIP_DEPENDENT_ARRAYS, ENCODER_PARITY,  # noqa: E402
                                              STYLEGAN_PARITY)
from faceedit_tedigan.stylegan import (LAYER_GROUPS, StyleGANGenerator, resolve_layers,  # noqa: E402
                                       restrict_layers)
from napari_faceedit.parity import check_folder, read_keys  # noqa: E402

GENERATOR_FOLDER = ("parity", "tedigan_stylegan_ffhq256")
ENCODER_FOLDER = ("parity", "tedigan_encoder_ffhq256")


def _float_arrays(path) -> list[str]:
    with np.load(path) as arrays:
        return [name for name in arrays.files if arrays[name].dtype.kind == "f"]


def _check_every_array(spec, folder, skip=()):
    log = io.StringIO()
    ok = check_folder(spec, folder, out=log)
    text = log.getvalue()
    assert ok, text
    fixtures = sorted(p.name for p in folder.glob("fixture*.npz"))
    assert fixtures == ["fixture.npz", "fixture_rescaled.npz"]
    compared = {line.split(": max|diff|")[0] for line in text.splitlines() if line.endswith(" ok")}
    for fixture in fixtures:
        for name in _float_arrays(folder / fixture):
            if name in skip:
                continue
            assert f"{fixture}:{name}" in compared, f"{fixture}:{name} was not produced and compared\n{text}"
    return text


# ------------------------------------------------------------------------------------------ parity
def test_generator_parity_every_array_both_variants():
    folder = require_shared(*GENERATOR_FOLDER)
    text = _check_every_array(STYLEGAN_PARITY, folder)
    # variant-specific arrays and the CLIP loss path (our CLIP with synthetic weights) are among them
    assert "fixture.npz:clip_input_224:" in text and "fixture_rescaled.npz:image_trunc:" in text
    for fixture in ("fixture.npz", "fixture_rescaled.npz"):
        for name in CLIP_DEPENDENT_ARRAYS:
            assert f"{fixture}:{name}:" in text


def test_encoder_parity_every_array_both_variants():
    _check_every_array(ENCODER_PARITY, require_shared(*ENCODER_FOLDER))


# ------------------------------------------------------------------------------------- key layout
def _meta_state(rows):
    return {r.name: torch.empty(r.shape, dtype=getattr(torch, r.dtype), device="meta") for r in rows}


@pytest.mark.parametrize("folder_parts,build", [
    (GENERATOR_FOLDER, StyleGANGenerator.from_official_config),
    (ENCODER_FOLDER, StyleGANEncoder.from_official_config),
])
def test_official_keys_load_strict(folder_parts, build):
    folder = require_shared(*folder_parts)
    config = json.loads((folder / "config.json").read_text())
    rows = read_keys(folder / "keys.tsv")
    with torch.device("meta"):
        model = build(config["constructor"])
    state = model.state_dict()
    assert list(state) == [r.name for r in rows]  # same keys, same order
    assert {n: tuple(v.shape) for n, v in state.items()} == {r.name: r.shape for r in rows}
    assert len(state) == config["state_dict"]["n_keys"]
    assert sum(v.numel() for v in state.values()) == config["state_dict"]["n_params"]
    model.load_state_dict(_meta_state(rows), strict=True, assign=True)


def test_published_sizes_without_shared_data():
    with torch.device("meta"):
        generator = StyleGANGenerator()
        encoder = StyleGANEncoder()
    assert generator.num_layers == 14
    assert sum(v.numel() for v in generator.state_dict().values()) == 29693892
    assert sum(v.numel() for v in encoder.state_dict().values()) == 165359122
    assert len(generator.state_dict()) == 123 and len(encoder.state_dict()) == 120


@pytest.mark.parametrize("folder_parts,build", [
    (GENERATOR_FOLDER, StyleGANGenerator.from_official_config),
    (ENCODER_FOLDER, StyleGANEncoder.from_official_config),
])
def test_wrong_key_or_shape_is_a_clear_error(folder_parts, build):
    folder = require_shared(*folder_parts)
    config = json.loads((folder / "config.json").read_text())
    rows = read_keys(folder / "keys.tsv")
    with torch.device("meta"):
        model = build(config["constructor"])
    state = _meta_state(rows)
    victim = next(r.name for r in rows if r.name.endswith("conv1.weight") or r.name.endswith("layer3.conv.weight"))
    state[victim + "s"] = state.pop(victim)
    with pytest.raises(KeyError) as error:
        model.load_official_state_dict(state)
    message = str(error.value)
    assert f"missing keys: {victim}" in message and f"unexpected keys: {victim}s" in message

    state = _meta_state(rows)
    state[victim] = torch.empty(1, 2, 3, device="meta")
    with pytest.raises(KeyError, match=f"shape mismatches: {victim}: checkpoint \\(1, 2, 3\\)"):
        model.load_official_state_dict(state)


def test_encoder_tolerates_checkpoints_without_num_batches_tracked():
    torch.manual_seed(0)
    encoder = StyleGANEncoder(resolution=16, w_dim=8, channels_base=4, channels_max=8).eval()
    state = {k: v.clone() for k, v in encoder.state_dict().items() if not k.endswith("num_batches_tracked")}
    encoder.load_official_state_dict(state)
    assert encoder(torch.zeros(1, 3, 16, 16)).shape == (1, 6, 8)


def test_truncation_factors_are_rebuilt_after_load():
    generator = StyleGANGenerator(resolution=16, z_dim=8, w_dim=8, fmaps_base=64, fmaps_max=8)
    state = generator.state_dict()
    state["truncation.truncation"] = torch.full_like(state["truncation.truncation"], 0.25)
    state["truncation.w_avg"] = torch.arange(8, dtype=torch.float32)
    generator.load_state_dict(state, strict=True)
    expected = torch.tensor([0.7] * 6).view(1, 6, 1)  # 16 px: 6 layers, all within the first 8
    assert torch.equal(generator.truncation.truncation, expected)
    wp = torch.randn(2, 6, 8)
    w_avg = torch.arange(8, dtype=torch.float32)
    torch.testing.assert_close(generator.truncate(wp), w_avg + (wp - w_avg) * 0.7)
    torch.testing.assert_close(generator.truncate(wp, psi=1.0), wp)


def test_default_truncation_is_psi_07_on_layers_0_to_7():
    generator = StyleGANGenerator()
    assert generator.truncation.truncation.view(-1).tolist() == pytest.approx([0.7] * 8 + [1.0] * 6)


# ----------------------------------------------------------------------------------- layer groups
def test_layer_groups_split_by_resolution():
    with torch.device("meta"):
        synthesis = StyleGANGenerator().synthesis
    resolution = [synthesis.layer(i).epilogue.apply_noise.noise.shape[-1] for i in range(14)]
    assert resolution == [4, 4, 8, 8, 16, 16, 32, 32, 64, 64, 128, 128, 256, 256]
    assert {resolution[i] for i in LAYER_GROUPS["coarse"]} == {4, 8}
    assert {resolution[i] for i in LAYER_GROUPS["middle"]} == {16, 32}
    assert {resolution[i] for i in LAYER_GROUPS["fine"]} == {64, 128, 256}
    assert sorted(sum(LAYER_GROUPS.values(), ())) == list(range(14))
    assert resolve_layers(["coarse", 9]) == [0, 1, 2, 3, 9]
    with pytest.raises(ValueError, match="unknown layer group"):
        resolve_layers("hair")
    with pytest.raises(ValueError, match="outside 0..13"):
        resolve_layers(14)


def test_fine_layer_edit_leaves_coarse_and_middle_styles_unchanged():
    torch.manual_seed(0)
    with torch.no_grad():  # full 256 px layout, random weights; styles only (cheap)
        generator = StyleGANGenerator().eval()
        wp = torch.randn(1, 14, 512)
        edited = restrict_layers(wp, wp + torch.randn_like(wp), "fine")
        before, after = generator.styles(wp), generator.styles(edited)
    for layer in LAYER_GROUPS["coarse"] + LAYER_GROUPS["middle"]:
        assert torch.equal(before[layer], after[layer]), layer
    for layer in LAYER_GROUPS["fine"]:
        assert not torch.equal(before[layer], after[layer]), layer


def test_layer_restricted_optimisation_only_moves_selected_rows():
    torch.manual_seed(0)
    # 64 px: 10 layers, coarse 0-3, middle 4-7, fine 8-9; small channels keep it fast
    generator = StyleGANGenerator(resolution=64, z_dim=32, w_dim=32, fmaps_base=256, fmaps_max=32).eval()
    with torch.no_grad():
        for layer in range(generator.num_layers):  # let the noise matter, as in a trained model
            generator.synthesis.layer(layer).epilogue.apply_noise.weight.fill_(0.1)
    wp = generator.map(torch.randn(1, 32)).detach()
    free = wp.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([free], lr=0.1)
    target = torch.zeros(1, 3, 64, 64)
    for _ in range(3):
        optimiser.zero_grad()
        image = generator.synthesize(restrict_layers(wp, free, ["middle", "fine"]))
        (image - target).square().mean().backward()
        assert torch.all(free.grad[:, :4] == 0) and torch.all(free.grad[:, 4:].abs().sum(dim=2) > 0)
        optimiser.step()
    assert torch.equal(free[:, :4], wp[:, :4]) and not torch.equal(free[:, 4:], wp[:, 4:])
    assert image.shape == (1, 3, 64, 64) and image.abs().max() <= 1


def test_synthesis_rejects_a_wrong_code_shape():
    with torch.device("meta"):
        generator = StyleGANGenerator()
    with pytest.raises(ValueError, match=r"\(N, 14, 512\)"):
        generator.synthesize(torch.zeros(1, 18, 512, device="meta"))
