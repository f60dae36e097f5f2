"""Label-guided synthesis through the core pipeline: the classical backend, requests and the CLI."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import require_shared
from napari_faceedit.label_edits import enlarge_eyes, widen_mouth
from napari_faceedit.runner import execute
from napari_faceedit.tasks import SynthesizeRequest
from napari_faceedit.vocab import CLASS_INDEX


def val_pair(index: int) -> tuple[np.ndarray, np.ndarray]:
    folder = require_shared("data", "celebamask_hq", "val")
    image_path = sorted((folder / "images").iterdir())[index]
    image = np.asarray(Image.open(image_path).convert("RGB"))
    labels = np.asarray(Image.open(folder / "masks" / (image_path.stem + ".png")))
    return image, labels


def classic():
    from faceedit_classic.synthesize import ClassicSynthesis

    return ClassicSynthesis


def test_request_checks_labels_components_and_donor():
    image = np.zeros((64, 64, 3), np.uint8)
    labels = np.zeros((64, 64), np.uint8)
    with pytest.raises(ValueError, match="nothing to render"):
        SynthesizeRequest(image=image)
    with pytest.raises(ValueError, match="outside the 19 face classes"):
        SynthesizeRequest(image=image, target_labels=labels + 19)
    with pytest.raises(ValueError, match="shape"):
        SynthesizeRequest(image=image, target_labels=labels[:10])
    with pytest.raises(ValueError, match="unknown face component"):
        SynthesizeRequest(image=image, donor_image=image, components=("wings",))
    with pytest.raises(ValueError, match="needs both a donor face and the components"):
        SynthesizeRequest(image=image, donor_image=image)


def test_classic_render_follows_the_edited_labels_and_keeps_the_rest():
    image, labels = val_pair(0)
    edited = widen_mouth(labels, 1.3)
    result = execute(classic(), SynthesizeRequest(image=image, labels=labels, target_labels=edited))
    changed = np.any(result.image != image, axis=2)
    assert changed.any()
    # Only around what the edit touched: far from the mouth nothing moves, bit for bit.
    touched = edited != labels
    far = np.ones_like(touched)
    ys, xs = np.nonzero(touched)
    far[max(0, ys.min() - 40):ys.max() + 40, max(0, xs.min() - 40):xs.max() + 40] = False
    assert not changed[far].any()
    # The new lip pixels look like lips, not skin.
    lips = np.isin(labels, [CLASS_INDEX["u_lip"], CLASS_INDEX["l_lip"]])
    new_lips = np.isin(edited, [CLASS_INDEX["u_lip"], CLASS_INDEX["l_lip"]]) & ~lips & (labels == CLASS_INDEX["skin"])
    lip_color = image[lips].mean(0)
    skin_color = image[labels == CLASS_INDEX["skin"]].mean(0)
    rendered = result.image[new_lips].astype(float).mean(0)
    assert np.linalg.norm(rendered - lip_color) < np.linalg.norm(rendered - skin_color)
    assert result.extras["rendered_labels"].shape == (1, 256, 256)


def test_classic_render_without_own_labels_uses_the_parse_service_and_identity_changes_nothing():
    image, labels = val_pair(1)
    from faceedit_parsing.backend import CompactParserBackend

    parsed = execute(CompactParserBackend, __import__("napari_faceedit.tasks", fromlist=["ParseRequest"]).ParseRequest(image=image)).labels
    same = execute(classic(), SynthesizeRequest(image=image, target_labels=parsed))
    np.testing.assert_array_equal(same.image, image)  # the unedited parse renders the input, bit for bit
    assert "face parse by faceparse-compact" in same.provenance.notes


def test_classic_transfer_takes_the_donors_eyes():
    image, labels = val_pair(2)
    donor, donor_labels = val_pair(3)
    result = execute(classic(), SynthesizeRequest(image=image, labels=labels, donor_image=donor, components=("eyes",)))
    eyes = np.isin(result.extras["rendered_labels"][0], [CLASS_INDEX["l_eye"], CLASS_INDEX["r_eye"]])
    assert eyes.any()
    changed = np.any(result.image != image, axis=2)
    assert changed.any() and changed.mean() < 0.2


def test_cli_synthesize_with_edited_labels_and_with_a_donor(tmp_path, capsys):
    from napari_faceedit.cli import main

    image, labels = val_pair(4)
    donor, _ = val_pair(5)
    Image.fromarray(image).save(tmp_path / "face.png")
    Image.fromarray(donor).save(tmp_path / "other.png")
    Image.fromarray(enlarge_eyes(labels, 1.3).astype(np.uint8)).save(tmp_path / "edited.png")
    out = tmp_path / "out.png"
    assert main(["run", "synthesize", "--backend", "classic-synthesize", "--input", str(tmp_path / "face.png"),
                 "--labels", str(tmp_path / "edited.png"), "--output", str(out), "--quiet"]) == 0
    rendered = np.asarray(Image.open(out))
    assert rendered.shape == image.shape and np.any(rendered != image)
    out2 = tmp_path / "out2.png"
    assert main(["run", "synthesize", "--backend", "classic-synthesize", "--input", str(tmp_path / "face.png"),
                 "--source", str(tmp_path / "other.png"), "--components", "eyes,mouth", "--output", str(out2),
                 "--quiet"]) == 0
    assert np.any(np.asarray(Image.open(out2)) != image)
    assert main(["run", "synthesize", "--input", str(tmp_path / "face.png"), "--source", str(tmp_path / "other.png"),
                 "--output", str(tmp_path / "x.png")]) == 2
    assert "--source needs --components" in capsys.readouterr().err


# -- mask-guided (the authors' networks) -------------------------------------------------------------
def _official_layout_checkpoints(folder):
    """The 11 test-time files in the authors' layout, with the parity fixture's synthetic weights."""
    import torch

    from faceedit_maskguided.backend import TEST_TIME_CHECKPOINTS
    from faceedit_maskguided.model import NETWORK_CLASSES, TEST_TIME_LABELS, checkpoint_filename
    from napari_faceedit.parity import read_keys, synth_state_dict

    assert TEST_TIME_CHECKPOINTS == TEST_TIME_LABELS
    parity = require_shared("parity", "maskguided_helen")
    paths = {}
    for label in TEST_TIME_CHECKPOINTS:
        network = NETWORK_CLASSES[label]()
        rows = [row for row in read_keys(parity / "fixture_keys.tsv") if row.name.startswith(label + ".")]
        state = synth_state_dict(rows, network)
        state = {name[len(label) + 1:]: value for name, value in state.items()}
        paths[label] = folder / checkpoint_filename(label)
        torch.save(state, paths[label])
    return paths


def test_maskguided_backend_imports_the_authors_files_and_edits_through_the_pipeline(tmp_path):
    from faceedit_maskguided.backend import MaskGuidedEditing

    from napari_faceedit import weights
    from napari_faceedit.model_cache import ModelCache

    image, labels = val_pair(6)
    weights.set_cache_dir(tmp_path / "cache")
    weights.set_weights_dir(tmp_path / "none")
    weights.set_offline(True)
    try:
        ready, why = MaskGuidedEditing.ready()
        assert not ready and "maskguided-helen-g" in why and "faceedit weights import" in why
        for label, path in _official_layout_checkpoints(tmp_path).items():
            weights.import_file(MaskGuidedEditing.weights[list(MaskGuidedEditing.weights).index(
                "maskguided-helen-" + label.lower().replace("_", "-"))], path)
        assert MaskGuidedEditing.ready() == (True, "ready")
        edited = widen_mouth(labels, 1.3)
        cache = ModelCache()
        result = execute(MaskGuidedEditing, SynthesizeRequest(image=image, labels=labels, target_labels=edited),
                         cache=cache)
        changed = np.any(result.image != image, axis=2)
        weights_map = result.extras["paste_weights"]
        assert changed.any() and not changed[weights_map == 0].any()
        assert len(result.provenance.models) == 11
        with pytest.raises(ValueError, match="cannot take \\['brows'\\] alone"):
            execute(MaskGuidedEditing, SynthesizeRequest(image=image, labels=labels, donor_image=val_pair(7)[0],
                                                         components=("brows",)), cache=cache)
        swapped = execute(MaskGuidedEditing, SynthesizeRequest(image=image, labels=labels, donor_image=val_pair(7)[0],
                                                               components=("eyes",)), cache=cache)
        assert np.any(swapped.image != image)
        assert cache.loads == 2  # the 11 networks built and folded once; the parser once (donor labels)
    finally:
        weights.reset_settings()
