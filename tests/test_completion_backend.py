"""The learned completion backend on the core pipeline, component holes, and completion from the CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require_shared
from faceedit_completion.backend import ProgressiveCompletion
from faceedit_completion.model import CompletionGenerator
from napari_faceedit.label_edits import component_region
from napari_faceedit.runner import execute
from napari_faceedit.tasks import CompleteRequest
from napari_faceedit.vocab import CLASS_INDEX


def val_pair(index: int = 0):
    folder = require_shared("data", "celebamask_hq", "val")
    path = sorted((folder / "images").iterdir())[index]
    return np.asarray(Image.open(path).convert("RGB")), np.asarray(Image.open(folder / "masks" / (path.stem + ".png")))


def small_generator() -> CompletionGenerator:
    torch.manual_seed(0)
    model = CompletionGenerator(max_resolution=32)
    model.set_trained_stage(32, 1.0) if hasattr(model, "set_trained_stage") else None
    return model


def test_component_hole_and_attributes_change_only_the_hole():
    image, labels = val_pair(0)
    backend = ProgressiveCompletion(model=small_generator())
    smiling = execute(backend, CompleteRequest(image=image, labels=labels, components=("mouth",),
                                               attributes={"Smiling": 1.0}))
    hole = component_region(labels, ("mouth",))
    assert hole[labels == CLASS_INDEX["u_lip"]].all()
    changed = np.any(smiling.image != image, axis=2)
    assert changed.any() and not changed[~hole].any()  # outside the hole: bit for bit
    serious = execute(backend, CompleteRequest(image=image, labels=labels, components=("mouth",),
                                               attributes={"Smiling": 0.0}))
    assert np.any(serious.image != smiling.image)  # the attribute reaches the generator
    assert "hole: mouth from the given labels" in smiling.provenance.notes


def test_unsupported_attributes_and_components_are_clear_errors():
    image, labels = val_pair(1)
    backend = ProgressiveCompletion(model=small_generator())
    with pytest.raises(ValueError, match="Wavy_Hair.*Smiling"):
        execute(backend, CompleteRequest(image=image, labels=labels, components=("mouth",), attributes={"Wavy_Hair": 1.0}))
    with pytest.raises(ValueError, match="unknown face component"):
        CompleteRequest(image=image, components=("wings",))
    with pytest.raises(ValueError, match="no hole"):
        CompleteRequest(image=image)
    with pytest.raises(ValueError, match="cannot steer|does not support"):
        from faceedit_classic.complete import ClassicCompletion

        execute(ClassicCompletion, CompleteRequest(image=image, labels=labels, components=("eyes",),
                                                   attributes={"Eyeglasses": 1.0}))


def test_cli_completes_parsed_components_with_the_classical_backend(tmp_path):
    from napari_faceedit.cli import main

    image, _ = val_pair(2)
    Image.fromarray(image).save(tmp_path / "face.png")
    out = tmp_path / "done.png"
    assert main(["run", "complete", "--backend", "classic-complete", "--input", str(tmp_path / "face.png"),
                 "--components", "mouth", "--output", str(out), "--quiet"]) == 0
    done = np.asarray(Image.open(out))
    changed = np.any(done != image, axis=2)
    ys, xs = np.nonzero(changed)
    assert changed.any() and 150 < ys.mean() < 230 and 90 < xs.mean() < 170  # the mouth, in the lower middle


def test_classical_detail_keeps_thin_holes_classical_and_large_holes_learned():
    from faceedit_completion.backend import with_classical_detail
    from napari_faceedit.face.align import AlignedFace
    from napari_faceedit.face.pipeline import FaceRun
    from napari_faceedit.tasks import Result

    rng = np.random.default_rng(0)
    classical = rng.integers(60, 160, (256, 256, 3)).astype(np.uint8)
    hole = np.zeros((256, 256), bool)
    hole[40:43, 20:230] = True  # a 3 px brush stroke
    hole[110:210, 70:170] = True  # a large square
    learned = classical.copy()
    learned[hole] += 80  # the generator's fill differs from the classical one by +80 everywhere
    aligned = AlignedFace(crop=np.zeros((128, 128, 3), np.uint8), matrix=np.array([[0.5, 0, 0], [0, 0.5, 0]]),
                          size=128, template="celebamask")  # crop pixel = 2 photo pixels
    run = FaceRun(result=Result(image=learned.copy()), aligned=[aligned])
    out = with_classical_detail(run, classical, hole, generator_pixel=2.0).astype(int)
    shift = out - classical
    assert np.array_equal(out[~hole], learned[~hole])  # outside the hole: bit for bit
    assert shift[41, 50:200].mean() < 30  # across the stroke, mostly the classical fill (80 would be the generator's)
    assert np.all(shift[140:180, 100:140] >= 78)  # the square's interior: the generator's content (80)
    assert 0 < shift[110, 120].mean() < 60  # its edge: blended


def test_learned_completion_takes_its_fine_detail_from_the_classical_fill():
    image, labels = val_pair(3)
    backend = ProgressiveCompletion(model=small_generator())
    request = dict(image=image, labels=labels, components=("mouth",))
    alone = execute(backend, CompleteRequest(**request, params={"detail": "none"}))
    detailed = execute(backend, CompleteRequest(**request))
    hole = component_region(labels, ("mouth",))
    assert np.array_equal(detailed.image[~hole], image[~hole])
    assert np.any(detailed.image[hole] != alone.image[hole])
    assert "complete by classic-complete" in detailed.provenance.notes  # the delegated run is named
    assert "from classic-complete" in detailed.provenance.notes
    # With attributes the attribute-blind classical fill stays out (auto): the generator's fill alone.
    steered = execute(backend, CompleteRequest(**request, attributes={"Smiling": 1.0}))
    steered_alone = execute(backend, CompleteRequest(**request, attributes={"Smiling": 1.0}, params={"detail": "none"}))
    assert np.array_equal(steered.image, steered_alone.image)
    assert "classic-complete" not in steered.provenance.notes


def test_without_a_face_the_hole_is_filled_classically_unless_attributes_are_asked():
    from napari_faceedit.face.pipeline import NoFaceFound

    rng = np.random.default_rng(1)
    picture = np.clip(rng.normal(120, 6, (96, 128, 3)), 0, 255).astype(np.uint8)  # no face in it
    hole = np.zeros(picture.shape[:2], bool)
    hole[30:50, 40:70] = True
    backend = ProgressiveCompletion(model=small_generator())
    filled = execute(backend, CompleteRequest(image=picture, mask=hole))
    changed = np.any(filled.image != picture, axis=2)
    assert changed[hole].mean() > 0.5 and not changed[~hole].any()
    assert "no face found: the hole is filled by classic-complete alone" in filled.provenance.notes
    with pytest.raises(NoFaceFound):
        execute(backend, CompleteRequest(image=picture, mask=hole, attributes={"Smiling": 1.0}))
