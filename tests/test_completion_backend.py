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
