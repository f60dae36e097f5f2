"""The faceedit CLI end to end, in-process and as a console script."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from napari_faceedit.cli import main
from napari_faceedit.io import read_image, read_index_map


@pytest.fixture
def photo_dir(tmp_path, portrait):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(portrait[:160, 150:310]).save(folder / "a.png")
    Image.fromarray(portrait[40:200, 160:320]).save(folder / "b.jpg")
    return folder


def test_backends_lists_tasks_and_load_errors(capsys, third_party_plugins):
    assert main(["backends", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    names = {b["name"]: b for b in listing["backends"]}
    assert names["classic-complete"]["tasks"] == ["complete"]
    assert "thirdparty-invert" in names
    assert any(e["plugin"] == "thirdparty-broken" and "broken on purpose" in e["error"] for e in listing["load_errors"])
    assert main(["backends"]) == 0
    assert "[failed plugin] thirdparty-broken" in capsys.readouterr().out


def test_run_restore_on_a_folder_writes_pngs_and_provenance(tmp_path, photo_dir, capsys):
    out = tmp_path / "out"
    code = main(["run", "restore", "--input", str(photo_dir), "--output", str(out), "--backend", "classic-restore",
                 "--json", "--quiet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert [s["provenance"]["backend"] for s in summary] == ["classic-restore"] * 2
    for name in ("a", "b"):
        restored = read_image(out / f"{name}.png")
        assert restored.shape == (160, 160, 3)


def test_run_complete_with_mask_changes_only_the_hole(tmp_path, portrait):
    image = portrait[:200, 100:300]
    Image.fromarray(image).save(tmp_path / "face.png")
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[120:140, 20:50] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "done.png"
    assert main(["run", "complete", "--input", str(tmp_path / "face.png"), "--mask", str(tmp_path / "mask.png"),
                 "--output", str(out), "--quiet"]) == 0
    result = read_image(out)
    changed = np.any(result != image, axis=2)
    assert changed[mask > 0].mean() > 0.5 and not changed[mask == 0].any()


def test_run_edit_attributes_with_labels(tmp_path, portrait):
    image = portrait[:200, 100:300]
    Image.fromarray(image).save(tmp_path / "face.png")
    labels = np.zeros(image.shape[:2], np.uint8)
    labels[20:80, 60:180] = 13
    Image.fromarray(labels).save(tmp_path / "labels.png")
    out = tmp_path / "blond.png"
    assert main(["run", "edit-attributes", "--input", str(tmp_path / "face.png"), "--labels",
                 str(tmp_path / "labels.png"), "--attr", "Blond_Hair=1", "--output", str(out), "--quiet",
                 "--backend", "classic-hair"]) == 0
    changed = np.any(read_image(out) != image, axis=2)
    assert changed[labels == 13].mean() > 0.9
    # Unsupported attribute: clear message, non-zero exit, no file written.
    bad = tmp_path / "male.png"
    assert main(["run", "edit-attributes", "--input", str(tmp_path / "face.png"), "--labels",
                 str(tmp_path / "labels.png"), "--attr", "Male=1", "--output", str(bad), "--quiet",
                 "--backend", "classic-hair"]) == 1
    assert not bad.exists()


def test_run_edit_text_and_parse_with_plugin_backends(tmp_path, portrait, fresh_registry, capsys):
    import fake_backends

    fresh_registry().register(fake_backends, "tests.fake_backends")
    out = tmp_path / "gen.png"
    assert main(["run", "edit-text", "--backend", "test-text", "--text", "a smiling face", "--output", str(out),
                 "--quiet"]) == 0
    assert read_image(out).shape == (64, 64, 3)


def test_run_parse_writes_index_pngs_of_input_size(tmp_path, photo_dir, fresh_registry):
    registry = fresh_registry()
    from napari_faceedit.tasks import Task

    if not any(backend.ready()[0] for backend in registry.for_task(Task.PARSE)):
        pytest.skip("no ready parse backend installed")
    out = tmp_path / "labels"
    assert main(["run", "parse", "--input", str(photo_dir), "--output", str(out), "--quiet"]) == 0
    for name in ("a", "b"):
        labels = read_index_map(out / f"{name}.png")
        assert labels.shape == (160, 160) and labels.ndim == 2 and labels.max() <= 18


def test_errors_are_clear_and_non_zero(tmp_path, capsys):
    assert main(["run", "restore", "--input", str(tmp_path / "missing.png"), "--output", str(tmp_path / "o.png"),
                 "--quiet"]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert main(["run", "restore", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--backend", "nope"]) == 2
    assert "no backend named 'nope'" in capsys.readouterr().err
    assert main(["run", "edit-attributes", "--input", str(tmp_path), "--output", "x", "--attr", "Male"]) != 0


def test_console_script_is_installed(tmp_path):
    done = subprocess.run([sys.executable, "-m", "napari_faceedit", "backends", "--json"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "classic-restore" in done.stdout


def test_train_passes_every_argument_to_the_trainer(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "parser", "--help"])
    assert exit_info.value.code == 0
    assert "--data" in capsys.readouterr().out
    assert main(["train", "no-such-model"]) == 2


def test_run_writes_image_extras_next_to_the_output(tmp_path, portrait):
    from napari_faceedit.face.detect import WeightsMissing, detect_faces

    try:
        detect_faces(portrait)
    except WeightsMissing:
        pytest.skip("face detector weights (facenet-pytorch) not installed")
    Image.fromarray(portrait).save(tmp_path / "astronaut.png")
    out = tmp_path / "restored.png"
    assert main(["run", "restore", "--input", str(tmp_path / "astronaut.png"), "--output", str(out),
                 "--backend", "restore-compact", "--param", "return_crops=true", "--quiet"]) == 0
    assert read_image(out).shape == portrait.shape
    before, after = read_image(tmp_path / "restored_crops_before.png"), read_image(tmp_path / "restored_crops_after.png")
    assert before.shape == after.shape and not np.array_equal(before, after)


def test_npe2_manifest_validates():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-faceedit")
    assert manifest.name == "napari-faceedit"
    assert {w.display_name for w in manifest.contributions.widgets} == {
        "Face labels", "Complete region", "Attributes", "Text edit", "Restore"}
    done = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-faceedit"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = subprocess.run([sys.executable, "-m", "npe2", "list", "--format", "json"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert listed.returncode == 0, listed.stderr
    plugins = {entry["name"]: entry for entry in json.loads(listed.stdout)}
    assert plugins["napari-faceedit"]["npe2"] is True
    assert plugins["napari-faceedit"]["contributions"]["widgets"] == 5
