"""Our compact mask-guided model: training (a few steps of a tiny network on a few shared faces),
checkpoint and exact resume, export, the backend rendering through the core pipeline, and a crafted
checkpoint refused unread."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require_shared

# A tiny network so a step takes well under a second at 256 px on one CPU thread.
TINY = ["--ngf", "4", "--n-blocks", "1", "--feature-channels", "4", "--code-size", "8", "--encoder-width", "4",
        "--disc-width", "4", "--batch", "2", "--limit", "6", "--dev-limit", "2", "--threads", "1",
        "--log-every", "1", "--checkpoint-every", "1", "--dev-every", "100", "--decay", "0"]


def data_root():
    return require_shared("data", "celebamask_hq")


def val_pair(index: int) -> tuple[np.ndarray, np.ndarray]:
    folder = data_root() / "val"
    image_path = sorted((folder / "images").iterdir())[index]
    return (np.asarray(Image.open(image_path).convert("RGB")),
            np.asarray(Image.open(folder / "masks" / (image_path.stem + ".png"))))


def checkpoint(run):
    from faceedit_maskguided.train import CHECKPOINT_NAME

    return torch.load(run / CHECKPOINT_NAME, map_location="cpu", weights_only=True)


def test_train_resume_export_and_render_through_the_pipeline(tmp_path, capsys):
    from faceedit_maskguided.compact_backend import LearnedMaskGuided
    from faceedit_maskguided.learned import load_exported
    from faceedit_maskguided.train import BEST_NAME, HISTORY_NAME, main

    from napari_faceedit.label_edits import widen_mouth
    from napari_faceedit.runner import execute
    from napari_faceedit.tasks import SynthesizeRequest

    data = str(data_root())
    straight, legs = tmp_path / "straight", tmp_path / "legs"
    assert main(["--data", data, "--out", str(straight), "--steps", "3", *TINY]) == 0
    assert main(["--data", data, "--out", str(legs), "--steps", "2", *TINY]) == 0
    assert checkpoint(legs)["step"] == 2
    capsys.readouterr()
    exported = tmp_path / "maskguided_compact.pt"
    assert main(["--data", data, "--out", str(legs), "--steps", "3", "--resume", "--export", str(exported), *TINY]) == 0
    assert "resumed at step 2" in capsys.readouterr().out

    # The resumed run continues where it stopped and repeats the uninterrupted run exactly.
    resumed, uninterrupted = checkpoint(legs), checkpoint(straight)
    assert resumed["step"] == 3
    for key, value in uninterrupted["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    history = json.loads((legs / HISTORY_NAME).read_text())
    assert [r["step"] for r in history["records"] if r["kind"] == "train"] == [1, 2, 3]
    dev = [r for r in history["records"] if r["kind"] == "dev"]
    assert dev and all(np.isfinite(r["dev_psnr_face"]) and 0 <= r["dev_miou_major_edit"] <= 1 for r in dev)
    assert (legs / BEST_NAME).is_file()

    # The export is float16, weights-only, without the training-only variance heads.
    state = torch.load(exported, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert not any(".logvar." in k for k in state)
    model, _ = load_exported(exported)
    assert model.config["ngf"] == 4

    image, labels = val_pair(0)
    edited = widen_mouth(labels, 1.3)
    backend = LearnedMaskGuided.from_file(exported)
    result = execute(backend, SynthesizeRequest(image=image, labels=labels, target_labels=edited))
    assert result.image.shape == image.shape and result.image.dtype == np.uint8
    changed = np.any(result.image != image, axis=2)
    assert changed.any()
    # redraw="changed" (the default): far from the edited mouth the photo is untouched, bit for bit.
    touched = edited != labels
    ys, xs = np.nonzero(touched)
    far = np.ones_like(touched)
    far[max(0, ys.min() - 40):ys.max() + 40, max(0, xs.min() - 40):xs.max() + 40] = False
    assert not changed[far].any()
    assert result.extras["rendered_labels"].shape == (1, 256, 256)

    donor, _ = val_pair(1)
    swapped = execute(backend, SynthesizeRequest(image=image, labels=labels, donor_image=donor, components=("eyes",)))
    assert np.any(swapped.image != image)
    with pytest.raises(ValueError, match="cannot take \\['brows'\\] alone"):
        execute(backend, SynthesizeRequest(image=image, labels=labels, donor_image=donor, components=("brows",)))


def test_render_modes_and_identity():
    from faceedit_maskguided.learned import CompactMaskGuided, render

    from napari_faceedit.label_edits import enlarge_eyes

    torch.manual_seed(0)
    model = CompactMaskGuided(ngf=4, n_blocks=1, feature_channels=4, code_size=8, encoder_width=4).eval()
    image, labels = val_pair(2)
    whole = render(model, image, labels, labels, "face")
    assert whole.shape == image.shape and np.any(whole != image)  # the model's own render of every pixel
    np.testing.assert_array_equal(render(model, image, labels, labels, "changed"), image)
    edited = enlarge_eyes(labels, 1.3)
    out = render(model, image, labels, edited, "changed")
    from scipy import ndimage

    near = ndimage.distance_transform_edt(edited == labels) <= 12
    assert np.any(out[near] != image[near]) and np.array_equal(out[~near], image[~near])
    with pytest.raises(ValueError, match="redraw must be one of"):
        render(model, image, labels, labels, "everything")


def test_crafted_pickle_given_to_resume_is_refused_unread(tmp_path, capsys):
    from faceedit_maskguided.train import CHECKPOINT_NAME, main

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"step": Payload(), "model": {}}, run / CHECKPOINT_NAME)
    assert main(["--data", str(data_root()), "--out", str(run), "--resume", *TINY]) == 2
    assert not marker.exists()
    assert "not a weights-only checkpoint" in capsys.readouterr().err


def test_the_test_split_is_refused_and_the_bundled_file_is_reported_when_missing():
    from faceedit_maskguided.compact_backend import COMPACT_FILE, LearnedMaskGuided
    from napari_faceedit.training import celebamask_training_folder

    with pytest.raises(ValueError, match="test set"):
        celebamask_training_folder(data_root() / "val")
    ready, why = LearnedMaskGuided.ready()
    assert ready or COMPACT_FILE in why


def test_shipped_model_widens_a_real_mouth():
    """The bundled maskguided-compact (trained here) on a held-out face: the render follows a widened
    mouth (the parse of the render shows more mouth), and pixels far from the changed labels are the
    input's, bit for bit."""
    from scipy import ndimage

    from napari_faceedit.label_edits import widen_mouth
    from napari_faceedit.registry import get_registry
    from napari_faceedit.runner import execute
    from napari_faceedit.tasks import ParseRequest, SynthesizeRequest

    registry = get_registry()
    assert registry.get("maskguided-compact").ready()[0]
    folder = require_shared() / "data" / "celebamask_hq" / "val"
    name = sorted(p.stem for p in (folder / "images").glob("*.jpg"))[3]
    image = np.asarray(Image.open(folder / "images" / f"{name}.jpg").convert("RGB"))
    labels = np.asarray(Image.open(folder / "masks" / f"{name}.png"))
    edited = widen_mouth(labels, 1.4)
    out = execute(registry.get("maskguided-compact")(), SynthesizeRequest(image=image, labels=labels,
                                                                         target_labels=edited)).image
    changed = labels != edited
    far = ndimage.distance_transform_edt(~changed) > 24  # re-drawn: 12 px of the crop around the change
    assert np.array_equal(out[far], image[far])
    assert np.abs(out[changed].astype(int) - image[changed].astype(int)).mean() > 5

    parser = registry.get("faceparse-compact")()
    mouth = (10, 11, 12)

    def mouth_width(picture):
        parsed = execute(parser, ParseRequest(image=picture)).labels
        columns = np.nonzero(np.isin(parsed, mouth).any(axis=0))[0]
        return columns.max() - columns.min()

    assert mouth_width(out) > mouth_width(image) + 3
