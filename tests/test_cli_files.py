"""The CLI's file safety (nothing lost, nothing silent) and input handling (issue 16).

Every data-loss case of the issue has its own test: the run is refused with one line naming the
paths, exit 2, and no file is written or changed. Inputs in unusual formats (16-bit, float,
palette, CMYK, RGBA, colour label maps, huge images) become the right 8-bit pixels or a clear error.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_dist
from napari_faceedit import vocab
from napari_faceedit.backend import Backend
from napari_faceedit.cli import main
from napari_faceedit.hookspecs import hookimpl
from napari_faceedit.io import (read_image, read_label_map, read_mask, write_atomically, write_image)
from napari_faceedit.tasks import (MAX_IMAGE_PIXELS, CompleteRequest, RestoreRequest, Result, Task, as_label_map,
                                   as_mask, as_rgb_uint8, to_uint8)

# -- backends for these tests (registered through the same hook a plugin uses) ---------------------
INTERRUPT_AT_CALL = {"n": 0}  # the run number at which FakeInvert raises KeyboardInterrupt (0: never)
CALLS = {"n": 0}


class FakeInvert(Backend):
    """Restore stand-in: inverts the image; raises KeyboardInterrupt on a chosen call, as Ctrl-C would."""

    name = "files-invert"
    version = "1.0"
    tasks = frozenset({Task.RESTORE})
    description = "test backend: inverts the image"

    def run(self, request, ctx):
        CALLS["n"] += 1
        if CALLS["n"] == INTERRUPT_AT_CALL["n"]:
            raise KeyboardInterrupt
        return Result(image=255 - request.image)


class FakeIdentity(Backend):
    name = "files-identity"
    version = "1.0"
    tasks = frozenset({Task.RESTORE})
    description = "test backend: returns the image as it came in (after the request's conversion)"

    def run(self, request, ctx):
        return Result(image=request.image.copy())


class FakeParse(Backend):
    """Parse stand-in: skin (1) where the image is bright, background elsewhere."""

    name = "files-parse"
    version = "1.0"
    tasks = frozenset({Task.PARSE})
    description = "test backend: thresholds the image into two classes"

    def run(self, request, ctx):
        return Result(labels=(request.image.mean(axis=2) > 127).astype(np.int32))


@hookimpl
def faceedit_backends():
    return [FakeInvert, FakeIdentity, FakeParse]


@pytest.fixture(autouse=True)
def file_backends(fresh_registry):
    registry = fresh_registry()
    registry.register(sys.modules[__name__], "tests.cli_files_backends")
    INTERRUPT_AT_CALL["n"], CALLS["n"] = 0, 0
    yield registry


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its hash: proof that nothing was written or changed."""
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def noise(height: int = 48, width: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def run(*argv: str) -> int:
    return main(["run", *argv, "--quiet"])


def refused(capsys, code: int, *names: str) -> str:
    """Assert a one-line refusal (exit 2) that names ``names``; return the line."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    for name in names:
        assert str(name) in err, err
    return err


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for index, name in enumerate(("a.png", "b.png", "c.png")):
        Image.fromarray(noise(seed=index)).save(folder / name)
    return folder


# -- the six ways to lose data ---------------------------------------------------------------------
def test_output_equal_to_the_input_file_is_refused(tmp_path, capsys):
    photo = tmp_path / "face.png"
    Image.fromarray(noise()).save(photo)
    before = tree(tmp_path)
    refused(capsys, run("restore", "--backend", "files-invert", "--input", str(photo), "--output", str(photo)),
            photo)
    # Also when spelt differently (a '..' detour).
    detour = tmp_path / "sub" / ".." / "face.png"
    (tmp_path / "sub").mkdir()
    refused(capsys, run("restore", "--backend", "files-invert", "--input", str(photo), "--output", str(detour)),
            "replace input")
    assert tree(tmp_path) == before


def test_a_mask_or_label_map_is_an_input_too(tmp_path, capsys):
    photo, mask = tmp_path / "face.png", tmp_path / "hole.png"
    Image.fromarray(noise()).save(photo)
    hole = np.zeros((48, 48), np.uint8)
    hole[10:20, 10:20] = 255
    Image.fromarray(hole).save(mask)
    before = tree(tmp_path)
    refused(capsys, run("complete", "--input", str(photo), "--mask", str(mask), "--output", str(mask)), mask)
    assert tree(tmp_path) == before


def test_output_folder_equal_to_the_input_folder_is_refused(photos, capsys, monkeypatch):
    before = tree(photos)
    refused(capsys, run("restore", "--backend", "files-invert", "--input", str(photos), "--output", str(photos)),
            photos, "input folder")
    refused(capsys, run("restore", "--backend", "files-invert", "--input", str(photos),
                        "--output", str(photos) + os.sep), "input folder")
    monkeypatch.chdir(photos)
    refused(capsys, run("restore", "--backend", "files-invert", "--input", ".", "--output", "."), "input folder")
    assert tree(photos) == before


def test_two_inputs_mapping_to_one_output_are_refused(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(noise(seed=1)).save(folder / "a.png")
    Image.fromarray(noise(seed=2)).save(folder / "a.jpg")
    out = tmp_path / "out"
    refused(capsys, run("restore", "--backend", "files-invert", "--input", str(folder), "--output", str(out)),
            folder / "a.jpg", folder / "a.png", out / "a.png")
    assert not out.exists()


def test_empty_output_is_refused(tmp_path, capsys, monkeypatch):
    photo = tmp_path / "in" / "a.png"
    photo.parent.mkdir()
    Image.fromarray(noise()).save(photo)
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.png").write_bytes(b"an unrelated file that must survive")
    monkeypatch.chdir(work)
    before = tree(tmp_path)
    refused(capsys, run("restore", "--backend", "files-invert", "--input", str(photo), "--output", ""),
            "--output is empty")
    refused(capsys, run("restore", "--backend", "files-invert", "--input", str(photo.parent), "--output", "  "),
            "--output is empty")
    assert tree(tmp_path) == before


def test_existing_output_needs_overwrite(tmp_path, photos, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"earlier result")
    before = tree(tmp_path)
    refused(capsys, run("restore", "--backend", "files-invert", "--input", str(photos), "--output", str(out)),
            out / "b.png", "--overwrite")
    assert tree(tmp_path) == before  # a.png and c.png were not written either: refused before any work
    single = tmp_path / "single.png"
    single.write_bytes(b"keep me")
    refused(capsys, run("restore", "--backend", "files-invert", "--input", str(photos / "a.png"),
                        "--output", str(single)), single)
    assert single.read_bytes() == b"keep me"

    assert run("restore", "--backend", "files-invert", "--input", str(photos), "--output", str(out),
               "--overwrite") == 0
    for name in ("a", "b", "c"):
        assert np.array_equal(read_image(out / f"{name}.png"), 255 - read_image(photos / f"{name}.png"))
    assert run("restore", "--backend", "files-invert", "--input", str(photos / "a.png"), "--output", str(single),
               "--overwrite") == 0
    assert np.array_equal(read_image(single), 255 - read_image(photos / "a.png"))


def test_detect_refuses_to_write_json_over_a_photo(tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(noise()).save(photo)
    other = tmp_path / "other.jpg"
    Image.fromarray(noise(seed=3)).save(other)
    before = tree(tmp_path)
    for output in (photo, other, tmp_path / "faces", ""):
        code = main(["detect", "--input", str(photo), "--output", str(output), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert (".json" in err) if output != "" else ("empty" in err)
    existing = tmp_path / "faces.json"
    existing.write_text("{}")
    before = tree(tmp_path)
    assert main(["detect", "--input", str(photo), "--output", str(existing), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert tree(tmp_path) == before


def test_detect_writes_its_json_atomically_with_the_umask(tmp_path, monkeypatch, umask):
    from napari_faceedit.face import detect

    monkeypatch.setattr(detect, "detect_faces", lambda image, min_score: [])  # no weights needed
    photo = tmp_path / "photo.png"
    Image.fromarray(noise()).save(photo)
    output = tmp_path / "faces.json"
    output.write_text("old")
    os.chmod(output, 0o600)
    umask(0o022)
    assert main(["detect", "--input", str(photo), "--output", str(output), "--quiet", "--overwrite"]) == 0
    assert json.loads(output.read_text())["images"][0]["faces"] == []
    assert output.stat().st_mode & 0o777 == 0o644
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


# -- modes, formats, folders ------------------------------------------------------------------------
@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


def test_outputs_get_the_users_umask(tmp_path, photos, umask):
    umask(0o022)
    out = tmp_path / "new.png"
    assert run("restore", "--backend", "files-invert", "--input", str(photos / "a.png"), "--output", str(out)) == 0
    assert out.stat().st_mode & 0o777 == 0o644
    # An overwritten file takes the umask's mode too (mkstemp's 0600 never leaks out).
    os.chmod(out, 0o600)
    umask(0o027)
    assert run("restore", "--backend", "files-invert", "--input", str(photos / "a.png"), "--output", str(out),
               "--overwrite") == 0
    assert out.stat().st_mode & 0o777 == 0o640


def test_the_extension_sets_the_format(tmp_path, photos, capsys):
    source = photos / "a.png"
    jpeg = tmp_path / "out.jpg"
    assert run("restore", "--backend", "files-invert", "--input", str(source), "--output", str(jpeg)) == 0
    assert jpeg.read_bytes()[:3] == b"\xff\xd8\xff"
    with Image.open(jpeg) as picture:
        assert picture.format == "JPEG"
    small = tmp_path / "small.JPEG"
    assert run("restore", "--backend", "files-invert", "--input", str(source), "--output", str(small),
               "--jpeg-quality", "20") == 0
    assert small.read_bytes()[:3] == b"\xff\xd8\xff" and small.stat().st_size < jpeg.stat().st_size
    tiff = tmp_path / "out.tiff"
    assert run("restore", "--backend", "files-invert", "--input", str(source), "--output", str(tiff)) == 0
    assert tiff.read_bytes()[:4] in (b"II*\x00", b"MM\x00*")
    assert np.array_equal(read_image(tiff), 255 - read_image(source))  # TIFF is lossless
    for bad in ("out.gif", "out.xyz", "noextension"):
        refused(capsys, run("restore", "--backend", "files-invert", "--input", str(source),
                            "--output", str(tmp_path / bad)), bad)
        assert not (tmp_path / bad).exists()
    refused(capsys, run("restore", "--backend", "files-invert", "--input", str(source), "--output",
                        str(tmp_path / "x.png"), "--jpeg-quality", "80"), "--jpeg-quality")


def test_label_maps_are_never_jpeg(tmp_path, photos, capsys):
    refused(capsys, run("parse", "--backend", "files-parse", "--input", str(photos / "a.png"),
                        "--output", str(tmp_path / "labels.jpg")), "labels.jpg", "PNG or TIFF")
    refused(capsys, run("parse", "--backend", "files-parse", "--input", str(photos), "--output",
                        str(tmp_path / "labels"), "--format", "jpg"), "PNG or TIFF")
    assert not (tmp_path / "labels.jpg").exists() and not (tmp_path / "labels").exists()
    assert run("parse", "--backend", "files-parse", "--input", str(photos), "--output", str(tmp_path / "labels"),
               "--format", "tif") == 0
    labels = read_label_map(tmp_path / "labels" / "a.tif")
    expected = (read_image(photos / "a.png").mean(axis=2) > 127).astype(np.int32)
    assert np.array_equal(labels, expected)


def test_a_folder_output_is_a_folder_whatever_its_name(tmp_path, photos):
    dotted = tmp_path / "results.v2"
    assert run("restore", "--backend", "files-invert", "--input", str(photos), "--output", str(dotted),
               "--format", "jpg") == 0
    assert sorted(p.name for p in dotted.iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]
    existing = tmp_path / "existing.d"
    existing.mkdir()
    assert run("restore", "--backend", "files-invert", "--input", str(photos / "a.png"), "--output",
               str(existing)) == 0
    assert (existing / "a.png").is_file()
    slash = str(tmp_path / "made.d") + os.sep
    assert run("restore", "--backend", "files-invert", "--input", str(photos / "b.png"), "--output", slash) == 0
    assert (tmp_path / "made.d" / "b.png").is_file()


def test_format_applies_to_folders_only(tmp_path, photos, capsys):
    refused(capsys, run("restore", "--backend", "files-invert", "--input", str(photos / "a.png"), "--output",
                        str(tmp_path / "x.png"), "--format", "jpg"), "--format")


# -- interrupts -------------------------------------------------------------------------------------
def test_ctrl_c_mid_batch_reports_and_keeps_what_was_written(tmp_path, photos, capsys):
    INTERRUPT_AT_CALL["n"] = 2
    out = tmp_path / "out"
    code = main(["run", "restore", "--backend", "files-invert", "--input", str(photos), "--output", str(out),
                 "--json", "--quiet"])
    captured = capsys.readouterr()
    assert code == 130
    assert "interrupted: 1 of 3 written" in captured.err and "Traceback" not in captured.err
    summary = json.loads(captured.out)
    assert [entry.get("outputs") for entry in summary] == [[str(out / "a.png")], None, None]
    assert [entry.get("skipped") for entry in summary] == [None, "interrupted", "interrupted"]
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]  # no temporary files left


def test_an_interrupted_write_leaves_no_temporary_file_and_the_old_file(tmp_path):
    target = tmp_path / "result.png"
    target.write_bytes(b"previous result")

    def write_then_interrupt(handle):
        handle.write(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, write_then_interrupt)
    assert target.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["result.png"]


SLOW_PLUGIN = '''
    import os
    import numpy as np
    from pathlib import Path
    from napari_faceedit.backend import Backend
    from napari_faceedit.hookspecs import hookimpl
    from napari_faceedit.tasks import Result, Task

    class BigNoise(Backend):
        """Returns noise: encoding a large noise PNG takes long enough to be caught mid-write."""
        name = "slow-noise"
        tasks = frozenset({Task.RESTORE})
        description = "test backend"

        def run(self, request, ctx):
            return Result(image=np.random.default_rng(0).integers(0, 256, request.image.shape, dtype=np.uint8))

    @hookimpl
    def faceedit_backends():
        return [BigNoise]
'''


def test_sigterm_mid_write_leaves_no_temporary_files(tmp_path):
    plugin_root = tmp_path / "site"
    plugin_root.mkdir()
    write_dist(plugin_root, "slow-noise-plugin", "slow_noise_backend", SLOW_PLUGIN)
    photos = tmp_path / "in"
    photos.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (2500, 2500), (90, 60, 30)).save(photos / f"{name}.png")  # large, quick to read
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_root), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "napari_faceedit", "run", "restore", "--backend", "slow-noise",
                                "--input", str(photos), "--output", str(out), "--json", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 180
    try:
        while not (out.is_dir() and list(out.glob(".*.tmp"))):  # a write is in progress
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no write started"
            time.sleep(0.002)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    assert "interrupted:" in stderr and "of 3 written" in stderr and "Traceback" not in stderr
    assert len(json.loads(stdout)) == 3
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


# -- input handling: files --------------------------------------------------------------------------
def test_16_bit_gray_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 40000, 64 * 64).reshape(64, 64).astype(np.uint16)  # a dark-ish 16-bit scan
    path = tmp_path / "scan16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as picture:
        assert picture.mode.startswith("I")  # really a 16-bit file
    image = read_image(path)
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    assert image.shape == (64, 64, 3) and np.array_equal(image[..., 0], expected)
    assert image.max() == round(40000 / 257) and (image == 255).mean() == 0  # not clipped to white
    out = tmp_path / "out.png"
    assert run("restore", "--backend", "files-identity", "--input", str(path), "--output", str(out)) == 0
    assert np.array_equal(read_image(out)[..., 1], expected)


def test_float_tiff_is_scaled(tmp_path):
    unit = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    path = tmp_path / "float.tif"
    Image.fromarray(unit).save(path)
    assert np.array_equal(read_image(path)[..., 2], np.rint(unit * 255).astype(np.uint8))
    Image.fromarray(unit * 1000).save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match="0..1 or 0..255"):
        read_image(tmp_path / "wide.tif")


def test_palette_cmyk_rgba_and_gray_alpha_become_rgb(tmp_path):
    rgb = noise(16, 16)
    palette = Image.fromarray(rgb).quantize(colors=16)
    palette.save(tmp_path / "p.png")
    assert np.array_equal(read_image(tmp_path / "p.png"), np.asarray(palette.convert("RGB")))

    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")  # pure red ink
    assert (read_image(tmp_path / "cmyk.tif") == (255, 0, 0)).all()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    assert np.abs(read_image(tmp_path / "cmyk.jpg").astype(int) - (255, 0, 0)).max() <= 3

    rgba = np.dstack([rgb, np.zeros((16, 16), np.uint8)])  # fully transparent: alpha is dropped, colours kept
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)

    Image.new("LA", (16, 16), (90, 0)).save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png") == 90).all()


def test_a_colour_label_map_in_our_palette_round_trips(tmp_path, photos):
    labels = (np.arange(48 * 48).reshape(48, 48) % vocab.N_CLASSES).astype(np.uint8)
    Image.fromarray(vocab.colorize(labels)).save(tmp_path / "colour.png")
    assert np.array_equal(read_label_map(tmp_path / "colour.png"), labels)
    indexed = Image.frombytes("P", (48, 48), labels.tobytes())
    indexed.putpalette(vocab.PALETTE.ravel().tolist())
    indexed.save(tmp_path / "palette.png")
    assert np.array_equal(read_label_map(tmp_path / "palette.png"), labels)
    Image.fromarray(np.repeat(labels[..., None], 3, axis=2)).save(tmp_path / "gray_rgb.png")  # indices saved as RGB
    assert np.array_equal(read_label_map(tmp_path / "gray_rgb.png"), labels)
    Image.fromarray(labels).save(tmp_path / "index.png")
    assert np.array_equal(read_label_map(tmp_path / "index.png"), labels)
    # The CLI takes the colour picture as labels (classic-hair recolours class 13, hair).
    hair = np.where(np.arange(48)[:, None] < 20, 13, 1).repeat(48, axis=1).astype(np.uint8)
    Image.fromarray(vocab.colorize(hair)).save(tmp_path / "hair.png")
    out = tmp_path / "blond.png"
    assert run("edit-attributes", "--backend", "classic-hair", "--input", str(photos / "a.png"), "--labels",
               str(tmp_path / "hair.png"), "--attr", "Blond_Hair=1", "--output", str(out)) == 0
    changed = np.any(read_image(out) != read_image(photos / "a.png"), axis=2)
    assert changed[hair == 13].mean() > 0.5 and not changed[30:].any()  # hair changed; skin away from its edge not


def test_label_maps_outside_the_classes_are_errors(tmp_path, photos, capsys):
    labels = np.zeros((48, 48), np.uint8)
    labels[5, 7] = 25
    Image.fromarray(labels).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"class 25 \(at x=7, y=5\)"):
        read_label_map(tmp_path / "bad.png")
    colours = vocab.colorize(np.zeros((48, 48), np.uint8))
    colours[3, 4] = (1, 2, 3)
    Image.fromarray(colours).save(tmp_path / "off_palette.png")
    with pytest.raises(ValueError, match=r"colour \(1, 2, 3\) at x=4, y=3"):
        read_label_map(tmp_path / "off_palette.png")
    out = tmp_path / "out.png"
    assert run("edit-attributes", "--backend", "classic-hair", "--input", str(photos / "a.png"), "--labels",
               str(tmp_path / "bad.png"), "--attr", "Blond_Hair=1", "--output", str(out)) == 1
    assert "class 25" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ValueError, match="class 19"):
        as_label_map(np.full((4, 4), 19), (4, 4))
    with pytest.raises(ValueError, match="class -1"):
        as_label_map(np.full((4, 4), -1), (4, 4))
    with pytest.raises(ValueError, match="whole class numbers"):
        as_label_map(np.full((4, 4), 1.5), (4, 4))


def test_masks_any_non_black_pixel_is_the_hole_in_files_and_arrays(tmp_path):
    drawing = np.zeros((16, 16, 4), np.uint8)
    drawing[..., :3] = 255  # white everywhere ...
    drawing[4:8, 4:8, 3] = 255  # ... but opaque only here: transparent pixels are not the hole
    drawing[10, 10] = (1, 0, 0, 255)  # a barely red pixel is still non-black
    Image.fromarray(drawing).save(tmp_path / "mask.png")
    expected = np.zeros((16, 16), bool)
    expected[4:8, 4:8] = True
    expected[10, 10] = True
    assert np.array_equal(read_mask(tmp_path / "mask.png"), expected)
    assert np.array_equal(as_mask(drawing, (16, 16)), expected)  # the API reads the array the same way
    gray = np.zeros((16, 16), np.uint16)
    gray[2, 3] = 1
    assert np.array_equal(as_mask(gray, (16, 16)), gray != 0)


def huge_png(path: Path, width: int, height: int) -> None:
    """A PNG whose header says width x height; its pixel data is not valid, so decoding it would fail."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_images_beyond_40_megapixels_are_refused_before_decoding(tmp_path, capsys):
    huge_png(tmp_path / "41mpx.png", 6500, 6308)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="beyond the supported 40 Mpx"):
        read_image(tmp_path / "41mpx.png")
    assert time.perf_counter() - start < 1.0
    huge_png(tmp_path / "bomb.png", 20000, 20000)  # past Pillow's own limit: still our clear message
    with pytest.raises(ValueError, match="beyond the supported 40 Mpx"):
        read_image(tmp_path / "bomb.png")
    out = tmp_path / "out"
    assert run("restore", "--backend", "files-invert", "--input", str(tmp_path / "41mpx.png"), "--output",
               str(out / "x.png")) == 1
    assert "40 Mpx" in capsys.readouterr().err and not out.exists()
    # The API has the same limit; a broadcast view costs no memory.
    with pytest.raises(ValueError, match="40 Mpx"):
        RestoreRequest(image=np.broadcast_to(np.uint8(0), (6500, 6308, 3)))
    assert 6500 * 6308 > MAX_IMAGE_PIXELS >= 6000 * 6000


# -- input handling: arrays given to the Python API -------------------------------------------------
@pytest.mark.parametrize("image, message", [
    (np.zeros((16, 16, 3), complex), "dtype complex"),
    (np.zeros((16, 16, 3), object), "dtype object"),
    (np.zeros((16, 16, 3), bool), "boolean"),
    (np.zeros((2, 16, 16, 3), np.uint8), "shape"),
    (np.zeros((16, 16, 5), np.uint8), "shape"),
    (np.zeros((0, 16, 3), np.uint8), "too small"),
    (np.zeros((0,), np.uint8), "shape"),
    (np.full((16, 16, 3), np.nan), "NaN"),
    (np.full((16, 16, 3), np.inf, np.float32), "NaN or infinite"),
    (np.full((16, 16, 3), 300, np.int64), "outside 0..255"),
    (np.full((16, 16, 3), 1000.0), "0..1 or 0..255"),
    (np.full((16, 16, 3), -0.2), "0..1 or 0..255"),
    (None, "no image"),
    ("a string", "shape"),
])
def test_bad_image_arrays_are_value_errors(image, message):
    with pytest.raises(ValueError, match=message):
        RestoreRequest(image=image)


@pytest.mark.parametrize("mask, message", [
    (np.zeros((16, 16), complex), "dtype complex"),
    (np.zeros((16, 16), object), "dtype object"),
    (np.full((16, 16), np.nan), "NaN"),
    (np.zeros((1, 16, 16, 1), np.uint8), "shape"),
    (np.zeros((8, 8), np.uint8), "shape"),
])
def test_bad_masks_and_label_maps_are_value_errors(mask, message):
    image = noise(16, 16)
    with pytest.raises(ValueError, match=message):
        CompleteRequest(image=image, mask=mask)
    with pytest.raises(ValueError, match=message):
        CompleteRequest(image=image, labels=mask, components=("mouth",))
    with pytest.raises(ValueError, match="boolean"):
        as_label_map(np.zeros((16, 16), bool), (16, 16))


def test_to_uint8_rule():
    assert to_uint8(np.array([0, 128, 129, 257, 65535], np.uint16)).tolist() == [0, 0, 1, 1, 255]
    assert to_uint8(np.array([0.0, 0.5, 1.0])).tolist() == [0, 128, 255]
    assert to_uint8(np.array([0.0, 2.0, 255.0])).tolist() == [0, 2, 255]  # max > 1: already 0..255
    assert to_uint8(np.array([-0.4, 255.4])).tolist() == [0, 255]  # rounding noise is fine
    assert to_uint8(np.array([3, 250], np.int64)).tolist() == [3, 250]
    assert as_rgb_uint8(np.zeros((8, 8, 2), np.uint16)).shape == (8, 8, 3)  # gray + alpha
    gray16 = np.full((8, 8), 65535, np.uint16)
    assert (as_rgb_uint8(gray16) == 255).all()


def test_write_image_refuses_unknown_extensions(tmp_path):
    with pytest.raises(ValueError, match=r"extension '\.bmp'"):
        write_image(tmp_path / "x.bmp", noise())
    assert not list(tmp_path.iterdir())


def test_a_finished_output_matches_the_input_as_read_with_its_exif_rotation(tmp_path):
    from PIL import Image

    from napari_faceedit.cli import finished_output

    photo = Image.new("RGB", (40, 30), "gray")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown (and read) as a 30x40 portrait
    photo.save(tmp_path / "turned.jpg", exif=exif)
    Image.new("RGB", (30, 40)).save(tmp_path / "portrait.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "landscape.png")
    assert finished_output(tmp_path / "portrait.png", tmp_path / "turned.jpg")
    assert not finished_output(tmp_path / "landscape.png", tmp_path / "turned.jpg")
