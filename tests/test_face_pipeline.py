"""The one face pipeline, the run context and typed parameters (CLI and API)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_faceedit.backend import CropResult, FaceBackend, Paste
from napari_faceedit.face import detect
from napari_faceedit.face.pipeline import FaceIndexError, NoFaceFound
from napari_faceedit.model_cache import ModelCache
from napari_faceedit.params import Param, parse_assignments, resolve
from napari_faceedit.runner import execute
from napari_faceedit.tasks import CompleteRequest, EditAttributesRequest, ParseRequest, RestoreRequest, Task

REPO = Path(__file__).resolve().parents[1]
# Two faces placed by hand (eyes, nose, mouth corners), so these tests need no detector.
FACE_A = np.array([[70, 100], [100, 100], [85, 118], [73, 135], [97, 135]], dtype=np.float64)
FACE_B = FACE_A + [120, 10]


def photo(size=(240, 320)) -> np.ndarray:
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    return np.stack([(xx * 0.7) % 256, (yy * 0.9) % 256, ((xx + yy) * 0.4) % 256], axis=2).astype(np.uint8)


class Invert(FaceBackend):
    name = "invert"
    tasks = frozenset({Task.RESTORE, Task.COMPLETE})
    crop_size = 64
    parameters = (Param("amount", 255, "what the crop is subtracted from", min=0, max=255),)

    def process_crop(self, face, ctx):
        return (ctx.params["amount"] - face.image.astype(int)).clip(0, 255).astype(np.uint8)


class InvertHole(Invert):
    name = "invert-hole"
    paste = Paste.HOLE


class LabelEverything(FaceBackend):
    name = "label-everything"
    tasks = frozenset({Task.PARSE})
    crop_size = 32
    paste = Paste.LABELS
    face_layers = True

    def process_crop(self, face, ctx):
        return CropResult(labels=np.full((32, 32), 1 + face.index, np.int32))


@pytest.fixture
def no_detector(monkeypatch):
    calls = []

    def none_found(image, *args, **kwargs):
        calls.append(image.shape)
        return []

    monkeypatch.setattr(detect, "detect_faces", none_found)
    return calls


# -- the no-face rule, face selection, several faces ---------------------------------------------------
def test_no_face_is_one_clear_error_or_a_stated_pass_through(no_detector):
    wide = photo((120, 300))
    with pytest.raises(NoFaceFound, match="no face found in the 300x120 image"):
        execute(Invert, RestoreRequest(image=wide))
    with pytest.raises(NoFaceFound):  # the same rule for every task
        execute(LabelEverything, ParseRequest(image=wide))
    passed = execute(Invert, RestoreRequest(image=wide), allow_no_face=True)
    np.testing.assert_array_equal(passed.image, wide)
    assert "passed through unchanged" in passed.passed_through and "passed through" in passed.provenance.notes
    parsed = execute(LabelEverything, ParseRequest(image=wide), allow_no_face=True)
    assert parsed.image is None and not parsed.labels.any()
    square = photo((200, 200))  # square, but nothing face-like: still an error, never edited as a face
    with pytest.raises(NoFaceFound, match="set whole_image"):
        execute(Invert, RestoreRequest(image=square))
    result = execute(Invert, RestoreRequest(image=square, params={"whole_image": True}))  # the user says so
    assert np.any(result.image != square)


def test_noise_and_flat_images_are_not_parsed_as_faces():
    from faceedit_parsing.backend import CompactParserBackend

    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    for image in (noise, np.full((256, 256, 3), 128, np.uint8)):
        with pytest.raises(NoFaceFound):
            execute(CompactParserBackend, ParseRequest(image=image))


def test_a_weak_face_candidate_is_used_and_said(monkeypatch):
    weak = detect.DetectedFace(box=[50, 80, 120, 150], score=0.6, landmarks=FACE_A)
    monkeypatch.setattr(detect, "detect_faces", lambda image, *a, **k: [weak])
    result = execute(Invert, RestoreRequest(image=photo()))
    assert "weak candidate (detector score 0.60)" in result.provenance.notes


def test_face_index_out_of_range_names_how_many_were_found():
    with pytest.raises(FaceIndexError, match="face_index 2 is out of range: 2 face"):
        execute(Invert, RestoreRequest(image=photo(), landmarks=[FACE_A, FACE_B], face_index=2))
    with pytest.raises(ValueError, match="face_index must be a whole number"):
        RestoreRequest(image=photo(), face_index=-1)


def test_several_faces_each_edited_and_the_rest_bit_identical():
    image = photo()
    both = execute(Invert, RestoreRequest(image=image, landmarks=[FACE_A, FACE_B]))
    second = execute(Invert, RestoreRequest(image=image, landmarks=[FACE_A, FACE_B], face_index=1))
    changed_both = np.any(both.image != image, axis=2)
    changed_second = np.any(second.image != image, axis=2)
    for face in (FACE_A, FACE_B):
        cx, cy = face[2].astype(int)
        assert changed_both[cy, cx]
    ax, ay = FACE_A[2].astype(int)
    bx, by = FACE_B[2].astype(int)
    assert not changed_second[ay, ax] and changed_second[by, bx]
    assert not changed_both[both.extras["paste_weights"] == 0].any()
    assert changed_both[:, 300:].sum() == 0 and changed_both[200:].sum() == 0
    assert "2 of 2 face(s) processed" in both.provenance.notes


def test_grayscale_photo_stays_grayscale():
    gray = np.repeat(photo()[..., :1], 3, axis=2)

    class Tint(Invert):
        def process_crop(self, face, ctx):
            out = face.image.copy()
            out[..., 0] = 255  # a strongly coloured edit
            return out

    result = execute(Tint, RestoreRequest(image=gray, landmarks=[FACE_A]))
    out = result.image.astype(int)
    assert np.abs(out - gray).max() > 20 and (out.max(axis=2) - out.min(axis=2)).max() == 0


def test_hole_paste_changes_the_hole_and_nothing_else():
    image = photo()
    hole = np.zeros(image.shape[:2], bool)
    hole[110:125, 75:95] = True
    result = execute(InvertHole, CompleteRequest(image=image, mask=hole, landmarks=[FACE_A]))
    changed = np.any(result.image != image, axis=2)
    assert changed[hole].mean() > 0.9 and not changed[~hole].any()


def test_labels_are_warped_back_and_faces_returned():
    result = execute(LabelEverything, ParseRequest(image=photo(), landmarks=[FACE_A, FACE_B]))
    cx, cy = FACE_A[2].astype(int)
    assert result.labels[cy, cx] == 1 and result.labels[FACE_B[2][1].astype(int), FACE_B[2][0].astype(int)] == 2
    assert result.extras["landmarks"].shape == (2, 5, 2) and result.extras["boxes"].shape == (2, 4)


def test_cancel_between_faces_returns_nothing():
    asked = []

    def cancel_on_second_face():
        asked.append(1)
        return len(asked) > 2

    assert execute(Invert, RestoreRequest(image=photo(), landmarks=[FACE_A, FACE_B]),
                   cancelled=cancel_on_second_face) is None


# -- run context: detection once, the parse service, the model cache -----------------------------------
def test_detection_runs_once_per_image_per_run_and_the_parse_service_reuses_it(monkeypatch):
    from faceedit_classic.hair import ClassicHairColor

    calls = []
    found = detect.DetectedFace(box=[50, 80, 120, 150], score=0.99, landmarks=FACE_A)

    def counting(image, *args, **kwargs):
        calls.append(image.shape)
        return [found]

    class HairEverywhere(LabelEverything):
        def process_crop(self, face, ctx):
            return CropResult(labels=np.full((32, 32), 13, np.int32))

    monkeypatch.setattr(detect, "detect_faces", counting)
    image = photo()
    result = execute(ClassicHairColor, EditAttributesRequest(image=image, attributes={"Blond_Hair": 1.0}),
                     parser=HairEverywhere)
    assert len(calls) == 1 and np.any(result.image != image)
    assert "face parse by label-everything" in result.provenance.notes


def test_model_cache_switches_model_sets_and_invalidates():
    cache = ModelCache(max_owners=2)
    loads = []
    for owner in ("a", "b", "a", "c"):
        cache.get(owner, ("w", "sha1", "cpu"), lambda: loads.append(owner) or owner, weights_id=f"{owner}-weights")
    assert loads == ["a", "b", "c"]  # "a" was cached the second time
    assert cache.owners() == ["a", "c"]  # loading a third set unloaded the least recently used ("b")
    cache.invalidate("c-weights")
    assert cache.owners() == ["a"]
    cache.get("a", ("w", "sha2", "cpu"), lambda: "a2")  # a new file hash is a new model
    assert cache.loads == 4


def test_a_reimported_weights_file_takes_effect_without_restart(tmp_path):
    torch = pytest.importorskip("torch")
    from faceedit_stargan.backend import StarGAN256Backend
    from faceedit_stargan.model import Generator

    from napari_faceedit import weights

    def checkpoint(seed: int) -> Path:
        torch.manual_seed(seed)
        path = tmp_path / f"G{seed}.ckpt"
        torch.save(Generator(64, 5, 6).state_dict(), path)
        return path

    weights.set_cache_dir(tmp_path / "cache")
    weights.set_weights_dir(tmp_path / "empty")
    weights.set_offline(True)
    cache = ModelCache()
    request = EditAttributesRequest(image=photo(), attributes={"Male": 1.0}, landmarks=[FACE_A],
                                    params={"source_attributes": "Black_Hair=1,Blond_Hair=0,Brown_Hair=0,Male=0,Young=1"})
    try:
        weights.import_file("stargan-celeba-256", checkpoint(1))  # an entry without a published hash
        first = execute(StarGAN256Backend, request, cache=cache)
        weights.unpin("stargan-celeba-256")  # the user replaces the file they imported
        weights.import_file("stargan-celeba-256", checkpoint(2))
        second = execute(StarGAN256Backend, request, cache=cache)
    finally:
        weights.reset_settings()
    assert first.provenance.weights_sha256 != second.provenance.weights_sha256
    assert np.any(first.image != second.image)
    assert cache.loads == 2


def test_no_backend_imports_the_registry():
    offenders = [str(path.relative_to(REPO)) for path in (REPO / "plugins").rglob("*.py")
                 if "napari_faceedit.registry" in path.read_text() or "get_registry" in path.read_text()]
    assert offenders == []


# -- typed parameters ----------------------------------------------------------------------------------
def test_parameters_parse_strictly():
    declared = (Param("steps", 200, "n", min=1, max=1000), Param("whole_image", False, "b"),
                Param("lr", 0.1, "x", min=0.0), Param("layers", "all", "c", choices=("coarse", "fine", "all")))
    given = parse_assignments(["steps=300", "whole_image=no", "lr=1e-3", "layers=fine"])
    assert resolve(declared, given) == {"steps": 300, "whole_image": False, "lr": 0.001, "layers": "fine"}
    assert resolve(declared, {})["steps"] == 200
    for bad, message in ((["stepz=3"], "no parameter 'stepz'.*valid: layers, lr, steps, whole_image"),
                         (["whole_image=maybe"], "yes/no"), (["steps=1.5"], "whole number"),
                         (["steps=0"], r"lie in \[1, 1000\]"), (["lr=nan"], "finite"),
                         (["layers=middle"], "one of coarse, fine, all"), (["steps"], "NAME=VALUE")):
        with pytest.raises(ValueError, match=message):
            resolve(declared, parse_assignments(bad))
    with pytest.raises(ValueError, match="yes/no"):
        resolve(declared, {"whole_image": 2})
    with pytest.raises(ValueError, match="no parameter 'amount2'"):
        execute(Invert, RestoreRequest(image=photo(), landmarks=[FACE_A], params={"amount2": 3}))


def test_cli_validates_params_and_refuses_options_that_do_not_apply(tmp_path, capsys):
    from PIL import Image

    from napari_faceedit.cli import main

    face = tmp_path / "face.png"
    Image.fromarray(photo((128, 128))).save(face)
    out = tmp_path / "out.png"
    cases = [
        (["run", "restore", "--backend", "classic-restore", "--param", "sharpen=lots"], "must be a number"),
        (["run", "restore", "--backend", "classic-restore", "--param", "unknown=1"], "no parameter 'unknown'.*sharpen"),
        (["run", "restore", "--backend", "classic-restore", "--attr", "Male=1"], "--attr does not apply to 'restore'"),
        (["run", "parse", "--mask", str(face)], "--mask does not apply to 'parse'"),
        (["run", "restore", "--backend", "classic-restore", "--face-index", "0"], "--face-index does not apply"),
        (["run", "restore", "--backend", "classic-restore", "--strength", "0.5"], "--strength does not apply"),
        (["run", "parse", "--backend", "classic-restore"], "does not do 'parse'"),
    ]
    for argv, message in cases:
        code = main([*argv, "--input", str(face), "--output", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and re_search(message, err), (argv, err)
        assert not out.exists()
    assert main(["backends", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    by_name = {row["name"]: row for row in listing["backends"]}
    assert {"name": "sharpen", "type": "float", "default": 0.8, "min": 0.0, "max": 3.0,
            "help": "unsharp-mask amount on luminance after denoising"} in by_name["classic-restore"]["parameters"]
    tta = next(p for p in by_name["faceparse-compact"]["parameters"] if p["name"] == "tta")
    assert tta["choices"] == ["none", "flip", "multiscale"] and by_name["faceparse-compact"]["per_face"]


def test_cli_allow_no_face_passes_images_through_and_says_so(tmp_path, capsys, no_detector):
    from PIL import Image

    from napari_faceedit.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo((100, 300))).save(folder / "wide.png")
    out = tmp_path / "out"
    assert main(["run", "restore", "--backend", "restore-compact", "--input", str(folder), "--output", str(out),
                 "--quiet"]) == 1
    assert "no face found in the 300x100 image" in capsys.readouterr().err
    assert main(["run", "restore", "--backend", "restore-compact", "--input", str(folder), "--output", str(out),
                 "--allow-no-face", "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "passed through unchanged" in summary[0]["passed_through"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "wide.png")), photo((100, 300)))


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_hole_pixels_outside_every_face_crop_are_left_and_said():
    image = photo()
    hole = np.zeros(image.shape[:2], bool)
    hole[110:125, 75:95] = True  # on the face
    hole[5:10, 300:315] = True  # far from it, beyond the crop
    result = execute(InvertHole, CompleteRequest(image=image, mask=hole, landmarks=[FACE_A]))
    np.testing.assert_array_equal(result.image[5:10, 300:315], image[5:10, 300:315])
    assert "75 hole pixels" in result.provenance.notes and "outside every face crop" in result.provenance.notes
