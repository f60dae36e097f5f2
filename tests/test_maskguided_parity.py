"""Mask-Guided Portrait Editing (Gu et al. 2019): the 17 networks key for key, the authors' test-time
preprocessing, and parity of the whole edit (every fixture array) with the official inference."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if os.environ.get("CI") != "true":  # on CI the plugin must be installed (scripts/setup.sh)
    pytest.importorskip("faceedit_maskguided")

from conftest import require_shared  # noqa: E402
from faceedit_maskguided import preprocess as pp  # noqa: E402
from faceedit_maskguided.inference import (edit, edit_celebamask, generator_input,  # noqa: E402
                                           prepare_for_inference)
from faceedit_maskguided.model import (NETWORK_CLASSES, TEST_TIME_LABELS, EditingNetworks,  # noqa: E402
                                       EyeFeatureDecoder, load_network_state)
from faceedit_maskguided.parity import (PARITY_MODEL, RAW_INPUTS, fixture_image_to_uint8,  # noqa: E402
                                        fixture_labels)

from napari_faceedit import vocab  # noqa: E402
from napari_faceedit.folding import fold_batchnorm  # noqa: E402
from napari_faceedit.parity import read_keys, relative_check, synth_state_dict  # noqa: E402

FIXTURE = ("parity", "maskguided_helen")
STYLE_FACE = "1ec3dfeacbb34eab91372ac761fb9774"
CONTENT_FACE = "736c6e82f32f4b8098006e0d88b4052a"


def shared(*parts: str) -> Path:
    """../shared path; skipped when absent, but a failure on CI (CI=true), where it must be present."""
    if os.environ.get("CI") == "true":
        path = Path(__file__).resolve().parents[1].parent / "shared" / Path(*parts)
        assert path.exists(), f"CI=true but ../shared is incomplete: {path} is missing"
    return require_shared(*parts)


def fixture_networks(variant: str) -> tuple[EditingNetworks, dict]:
    folder = shared(*FIXTURE)
    networks = PARITY_MODEL.build(json.loads((folder / "config.json").read_text()))
    state = synth_state_dict(read_keys(folder / "fixture_keys.tsv"), networks, rescaled="rescaled" in variant)
    networks.load_state_dict(state, strict=True)
    return networks, dict(np.load(folder / f"{variant}.npz"))


# -- parity: every array of both fixtures ------------------------------------------------------------
@pytest.mark.parametrize("variant,fast", [("fixture", True), ("fixture_rescaled", True), ("fixture_rescaled", False)])
def test_parity_every_fixture_array(variant, fast):
    """``fast``: the backend's path (folded BatchNorm, channels-last); otherwise the checkpoint's layers."""
    networks, arrays = fixture_networks(variant)
    produced = PARITY_MODEL.outputs(networks, arrays, fast=fast)
    # Every stored array is produced except the two raw label maps, which are inputs (checked against the
    # CelebAMask-HQ masks in test_raw_labels_are_our_celebamask_mapping).
    assert set(arrays) - set(produced) == set(RAW_INPUTS) == set(PARITY_MODEL.inputs)
    assert set(PARITY_MODEL.required) == set(arrays) - set(RAW_INPUTS)
    failures = {}
    for name in sorted(set(arrays) - set(RAW_INPUTS)):
        assert np.issubdtype(arrays[name].dtype, np.floating), name
        diff, ok = relative_check(produced[name], arrays[name])
        if not ok:
            failures[name] = diff
    assert not failures, f"{variant} (fast={fast}): arrays outside 1e-4*max|expected|: {failures}"


def test_parity_harness_passes_both_variants():
    import io

    from napari_faceedit.parity import check_folder

    report = io.StringIO()
    assert check_folder(PARITY_MODEL, shared(*FIXTURE), out=report), report.getvalue()
    assert report.getvalue().count(" ok\n") == 2 * len(PARITY_MODEL.required)


def test_public_edit_matches_fixture_output():
    """``edit`` from uint8 photos and raw Helen labels gives the fixture's edit (within display rounding)."""
    networks, arrays = fixture_networks("fixture_rescaled")
    prepare_for_inference(networks)
    record: dict = {}
    ours = edit(networks, fixture_image_to_uint8(arrays["image"]), fixture_labels(arrays["label_raw"]),
                fixture_labels(arrays["label2_raw"]), content_image=fixture_image_to_uint8(arrays["content_image"]),
                record=record)
    expected = pp.to_uint8_image(arrays["output_content"][0])
    assert ours.shape == (256, 256, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1
    assert "output_style_s4" not in record and "g_out_style_chmean" not in record  # no reconstruction pass
    for name in ("mu_mouth", "dec_skin_chsum", "g_in_content_placed", "bgfeat_content_chmean"):
        assert relative_check(record[name], arrays[name])[1], name


def test_raw_labels_are_our_celebamask_mapping():
    from PIL import Image

    arrays = dict(np.load(shared(*FIXTURE, "fixture.npz")))
    val = shared("data", "celebamask_hq", "val")
    for face, label_name, image_name in ((STYLE_FACE, "label_raw", "image"),
                                         (CONTENT_FACE, "label2_raw", "content_image")):
        labels19 = np.array(Image.open(val / "masks" / f"{face}.png"))
        assert np.array_equal(pp.celebamask_to_helen(labels19), fixture_labels(arrays[label_name]))
        photo = np.array(Image.open(val / "images" / f"{face}.jpg").convert("RGB"))
        assert np.abs(pp.normalize_image(photo)[None] - arrays[image_name]).max() <= 2 * 2 / 255  # JPEG decoder


def test_parity_model_is_registered_by_the_hook():
    from faceedit_maskguided import hooks

    assert [m.name for m in hooks.faceedit_parity_models()] == ["maskguided_helen"]


# -- key layouts -------------------------------------------------------------------------------------
def zeros_state(rows) -> dict:
    return {r.name: torch.zeros(r.shape, dtype=torch.int64 if r.dtype == "int64" else torch.float32) for r in rows}


@pytest.mark.parametrize("label", sorted(NETWORK_CLASSES))
def test_official_checkpoint_layout_loads_strictly(label):
    rows = read_keys(shared(*FIXTURE, f"keys_{label}.tsv"))
    network = NETWORK_CLASSES[label]()
    assert list(network.state_dict()) == [r.name for r in rows]  # same keys, same order
    load_network_state(network, zeros_state(rows), label)
    assert all(tuple(v.shape) == r.shape for r, v in zip(rows, network.state_dict().values()))


def test_fixture_keys_cover_the_test_time_networks():
    rows = read_keys(shared(*FIXTURE, "fixture_keys.tsv"))
    assert {r.name.split(".", 1)[0] for r in rows} == set(TEST_TIME_LABELS)
    assert set(EditingNetworks().state_dict()) == {r.name for r in rows}


def test_missing_or_wrong_key_is_a_clear_error():
    network = EyeFeatureDecoder()
    state = {k: v.clone() for k, v in network.state_dict().items()}
    missing = dict(state)
    del missing["conv.1.conv.1.running_var"]
    with pytest.raises(KeyError, match=r"'decoder_left_eye'.*missing \['conv.1.conv.1.running_var'\]"):
        load_network_state(network, missing, "decoder_left_eye")
    renamed = dict(state)
    renamed["fc.0.bias"] = torch.zeros(3072)  # the eye decoders' Linear has no bias
    with pytest.raises(KeyError, match=r"unexpected \['fc.0.bias'\]"):
        load_network_state(network, renamed, "decoder_left_eye")
    wrong_shape = dict(state)
    wrong_shape["fc.0.weight"] = torch.zeros(2048, 512)
    with pytest.raises(RuntimeError, match="size mismatch for fc.0.weight"):
        load_network_state(network, wrong_shape, "decoder_left_eye")


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="latest_net_G.pth"):
        EditingNetworks.from_checkpoints(tmp_path)


def test_fold_batchnorm_keeps_the_function_and_refuses_train_mode():
    torch.manual_seed(0)
    network = EyeFeatureDecoder()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
    with pytest.raises(RuntimeError, match="eval"):
        fold_batchnorm(network)
    network.eval()
    code = torch.randn(2, 512)
    expected = network(code)
    fold_batchnorm(network)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())
    assert torch.allclose(network(code), expected, atol=1e-5)


# -- preprocessing -----------------------------------------------------------------------------------
def synthetic_layout(shift: int = 0) -> np.ndarray:
    """A frontal face in Helen classes: image-left eye/brow are Helen l_eye/l_brow."""
    labels = np.zeros((256, 256), np.uint8)
    yy, xx = np.mgrid[:256, :256]
    labels[((yy - 40) / 70.0) ** 2 + ((xx - 128) / 100.0) ** 2 < 1] = pp.HAIR
    labels[((yy - 140) / 90.0) ** 2 + ((xx - 128) / 70.0) ** 2 < 1] = pp.SKIN
    labels[100:106, 80 + shift:112 + shift] = pp.L_BROW
    labels[100:106, 144 + shift:176 + shift] = pp.R_BROW
    labels[112:124, 84 + shift:108 + shift] = pp.L_EYE
    labels[112:124, 148 + shift:172 + shift] = pp.R_EYE
    labels[130:160, 118:138] = pp.NOSE
    labels[176:184, 104:152] = pp.U_LIP
    labels[184:188, 108:148] = pp.MOUTH
    labels[188:196, 104:152] = pp.L_LIP
    return labels


def test_celebamask_mapping_swaps_sides_and_drops_ears_and_neck():
    as_helen = {name: pp.HELEN_CLASSES[pp.celebamask_to_helen(np.array([vocab.CLASS_INDEX[name]]))[0]]
                for name in vocab.CLASS_NAMES}
    # CelebAMask-HQ l_* = subject's left (image right); Helen l_* = image left.
    assert as_helen["l_eye"] == "r_eye" and as_helen["r_eye"] == "l_eye"
    assert as_helen["l_brow"] == "r_brow" and as_helen["r_brow"] == "l_brow"
    assert as_helen["eye_g"] == "face_skin" and as_helen["skin"] == "face_skin"
    assert all(as_helen[n] == "background" for n in ("l_ear", "r_ear", "hat", "ear_r", "neck_l", "neck", "cloth"))
    assert [as_helen[n] for n in ("nose", "u_lip", "mouth", "l_lip", "hair")] == ["nose", "u_lip", "mouth", "l_lip",
                                                                                "hair"]
    # A frontal face: the subject's left eye lies on the image right; the model's left eye on the image left.
    labels19 = np.zeros((256, 256), np.uint8)
    labels19[110:120, 150:170] = vocab.CLASS_INDEX["l_eye"]
    labels19[110:120, 86:106] = vocab.CLASS_INDEX["r_eye"]
    centres = pp.part_centres(pp.component_centres(pp.celebamask_to_helen(labels19)))
    assert centres["left_eye"][1] < 128 < centres["right_eye"][1]


def test_centres_use_inclusive_boxes_and_fallbacks():
    labels = synthetic_layout()
    assert pp.component_centres(labels).tolist() == [117, 95, 117, 159, 185, 127]
    no_mouth = labels.copy()
    no_mouth[np.isin(no_mouth, pp.MOUTH_CLASSES)] = pp.SKIN
    assert pp.component_centres(no_mouth).tolist()[4:] == list(pp.FALLBACK_CENTRES["mouth"])
    near_border = labels.copy()
    near_border[np.isin(near_border, pp.MOUTH_CLASSES)] = pp.SKIN
    near_border[220:240, 100:150] = pp.U_LIP
    with pytest.raises(ValueError, match="mouth centre .* too close to the border"):
        pp.component_centres(near_border)


def test_enlargement_grows_eyes_and_mouth_about_ten_percent_and_keeps_the_rest():
    labels = synthetic_layout()
    grown = pp.enlarge_components(labels, pp.component_centres(labels))
    for classes in ((pp.L_EYE,), (pp.R_EYE,), pp.MOUTH_CLASSES):
        before, after = np.isin(labels, classes), np.isin(grown, classes)
        assert after[before].all()  # nothing of the part is lost
        ys, xs = np.nonzero(before)
        ys2, xs2 = np.nonzero(after)
        for extent, extent2 in ((np.ptp(ys) + 1, np.ptp(ys2) + 1), (np.ptp(xs) + 1, np.ptp(xs2) + 1)):
            assert 1.0 <= extent2 / extent <= 1.2
        assert 1.1 <= after.sum() / before.sum() <= 1.35  # ~1.1^2 in area
    changed = grown != labels
    assert changed.any() and np.isin(grown[changed], (pp.L_EYE, pp.R_EYE) + pp.MOUTH_CLASSES).all()
    for other in (pp.BACKGROUND, pp.L_BROW, pp.R_BROW, pp.NOSE, pp.HAIR):
        assert np.array_equal(grown == other, (labels == other) & ~changed)


def test_enlargement_and_centres_reproduce_the_fixture():
    arrays = dict(np.load(shared(*FIXTURE, "fixture.npz")))
    for raw, enlarged, centres in (("label_raw", "label", "mask_list"), ("label2_raw", "label2", "mask2_list")):
        layout = pp.prepare_layout(fixture_labels(arrays[raw]))
        assert layout.centres.tolist() == arrays[centres][0].astype(int).tolist()
        assert np.array_equal(layout.labels, fixture_labels(arrays[enlarged]))


def test_pillow_nearest_index_rule():
    index = pp.pillow_nearest_indices(256, 281)
    naive = np.floor((np.arange(281) + 0.5) * 256 / 281).astype(int)
    assert np.flatnonzero(index != naive).tolist() == [140]
    image = pytest.importorskip("PIL.Image")
    ramp = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    resized = np.array(image.fromarray(ramp).resize((281, 281), image.NEAREST))
    assert np.array_equal(resized[0], index)


def test_component_inputs_shapes_and_masks():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    face = pp.prepare_face(photo, synthetic_layout())
    inputs = pp.component_inputs(face.image, face.layout.labels, face.layout.centres)
    assert {k: v.shape for k, v in inputs.items()} == {
        "left_eye": (3, 32, 48), "right_eye": (3, 32, 48), "mouth": (3, 80, 144), "skin": (3, 256, 256),
        "hair": (3, 256, 256)}
    assert all(v.dtype == np.float32 for v in inputs.values())
    centre = pp.part_centres(face.layout.centres)
    y, x = centre["left_eye"]
    assert np.array_equal(inputs["left_eye"], face.image[:, y - 16:y + 16, x - 24:x + 24])  # not masked
    y, x = centre["mouth"]
    lips = np.isin(face.layout.labels[y - 40:y + 40, x - 72:x + 72], pp.MOUTH_CLASSES)
    assert np.array_equal(inputs["mouth"][:, lips], face.image[:, y - 40:y + 40, x - 72:x + 72][:, lips])
    assert not inputs["mouth"][:, ~lips].any()
    skin = np.isin(face.layout.labels, (pp.SKIN, pp.L_BROW, pp.R_BROW, pp.NOSE))
    assert np.array_equal(inputs["skin"] != 0, np.broadcast_to(skin, (3, 256, 256)) & (face.image != 0))
    assert not inputs["skin"][:, face.layout.labels == pp.L_EYE].any()
    assert not inputs["hair"][:, face.layout.labels != pp.HAIR].any()


def test_image_normalisation_one_hot_and_display():
    photo = np.arange(256 * 256 * 3, dtype=np.int64).reshape(256, 256, 3).astype(np.uint8)
    image = pp.normalize_image(photo)
    assert image.shape == (3, 256, 256) and image.dtype == np.float32 and image.min() == -1 and image.max() == 1
    lost = photo.astype(int) - pp.to_uint8_image(image)  # the authors' display truncates
    assert lost.min() == 0 and lost.max() <= 1
    with pytest.raises(ValueError, match="uint8 256x256x3"):
        pp.normalize_image(photo[:128])
    hot = pp.one_hot(synthetic_layout())
    assert hot.shape == (11, 256, 256) and np.array_equal(hot.sum(0), np.ones((256, 256)))
    assert np.array_equal(hot.argmax(0), synthetic_layout())
    with pytest.raises(ValueError, match="0..10"):
        pp.one_hot(np.full((256, 256), 11))


def test_feature_placement_rounds_half_up():
    assert pp.feature_centre(118, 94) == (30, 24)  # 29.5 -> 30, 23.5 -> 24
    assert pp.feature_centre(117, 93) == (29, 23)
    features = {c: torch.full((1, 256, *s), float(i + 1)) for i, (c, s) in enumerate(
        (("left_eye", (8, 12)), ("right_eye", (8, 12)), ("skin", (64, 64)), ("hair", (64, 64)), ("mouth", (20, 36))))}
    label_feature = torch.full((1, 256, 64, 64), -1.0)
    g_input = generator_input(label_feature, features, np.array([118, 94, 117, 160, 184, 128]))
    assert g_input.shape == (1, 1536, 64, 64)
    blocks = g_input[0, ::256]  # first channel of [label, left eye, right eye, skin, hair, mouth]
    assert (blocks[0] == -1).all() and (blocks[3] == 3).all() and (blocks[4] == 4).all()
    for index, box in ((1, (26, 33, 18, 29)), (5, (36, 55, 14, 49))):
        rows, cols = torch.nonzero(blocks[index], as_tuple=True)
        assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == box
        assert blocks[index].sum() == index * (box[1] - box[0] + 1) * (box[3] - box[2] + 1)
    cl = generator_input(label_feature.contiguous(memory_format=torch.channels_last), features,
                         np.array([118, 94, 117, 160, 184, 128]))
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, g_input)
    with pytest.raises(ValueError, match="mouth feature .* leaves"):
        generator_input(label_feature, features, np.array([118, 94, 117, 160, 238, 128]))


def test_helen_to_celebamask_inverts_the_mapping():
    helen = np.arange(pp.N_HELEN, dtype=np.uint8)
    assert np.array_equal(pp.celebamask_to_helen(pp.helen_to_celebamask(helen)), helen)
    assert pp.helen_to_celebamask(np.array([pp.L_EYE]))[0] == vocab.CLASS_INDEX["r_eye"]


def test_edit_celebamask_runs_end_to_end():
    torch.manual_seed(0)
    networks = prepare_for_inference(EditingNetworks())
    photo = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    source19 = pp.helen_to_celebamask(synthetic_layout())
    target19 = pp.helen_to_celebamask(synthetic_layout(shift=6))
    out = edit_celebamask(networks, photo, source19, target19)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert np.array_equal(out, edit(networks, photo, synthetic_layout(), synthetic_layout(shift=6)))
