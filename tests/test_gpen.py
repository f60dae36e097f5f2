"""GPEN network parity and key layout, the restoration pipeline, and the compact restorer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from faceedit_gpen import backend as gpen_backend  # noqa: E402
from faceedit_gpen.backend import GPEN512, CompactRestoration, compact_weights_path  # noqa: E402
from faceedit_gpen.model import (BFR_CONFIGS, FullGenerator, fir_filter, fir_upsample2x,  # noqa: E402
                                 make_blur_kernel, parity_model)
from napari_faceedit.runner import execute  # noqa: E402
from napari_faceedit.tasks import RestoreRequest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GPEN_FIXTURES = SHARED / "parity" / "gpen"
CELEBA = SHARED / "data" / "celeba" / "images"

# The astronaut's face (skimage.data.astronaut, 512x512): MTCNN landmarks, fixed so the pipeline
# tests do not depend on the detector's weights.
ASTRONAUT_LANDMARKS = np.array([[204.1, 100.3], [247.2, 103.3], [224.3, 128.5], [201.1, 138.2], [245.3, 141.3]])
ASTRONAUT_BOX = np.array([179.5, 58.2, 268.9, 174.7])
TINY = dict(size=64, style_dim=32, n_mlp=2, channel_multiplier=1, narrow=0.0625)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"../shared not available ({path})")
    return path


@pytest.fixture
def astronaut():
    from skimage import data

    return data.astronaut()


@pytest.fixture
def fixed_faces(monkeypatch):
    """detect_faces -> the astronaut's face, whatever the image (pipeline tests only)."""
    from napari_faceedit.face import detect

    face = detect.DetectedFace(box=ASTRONAUT_BOX, score=0.99, landmarks=ASTRONAUT_LANDMARKS)
    monkeypatch.setattr(detect, "detect_faces", lambda image, *a, **k: [face])
    return face


def tiny_gpen(seed=0):
    torch.manual_seed(seed)
    model = FullGenerator(**TINY)
    with torch.no_grad():  # make the random decoder visibly change the face
        for module in model.modules():
            if hasattr(module, "weight") and isinstance(module.weight, torch.nn.Parameter) and module.weight.ndim == 1:
                module.weight.fill_(0.5)  # noise (encoder feature) injection strength
    return model


# ------------------------------------------------------------------------------------------ network
def test_parity_both_fixtures():
    from napari_faceedit.parity import check_folder

    folder = need(GPEN_FIXTURES)
    assert {p.name for p in folder.glob("fixture*.npz")} >= {"fixture.npz", "fixture_rescaled.npz"}
    import io

    log = io.StringIO()
    assert check_folder(parity_model(), folder, out=log), log.getvalue()
    text = log.getvalue()
    for name in ("output", "latent_w", "style_code", "enc_0", "rgb_4", "rgb_32"):
        assert f"fixture.npz:{name}:" in text and f"fixture_rescaled.npz:{name}:" in text


def test_kept_buffers_equal_fixture():
    config = json.loads((need(GPEN_FIXTURES) / "config.json").read_text())
    kept = np.load(GPEN_FIXTURES / "kept_buffers.npz")
    state = FullGenerator(**config["fixture_constructor"]).state_dict()
    ours = {k: v for k, v in state.items() if k.endswith(".kernel")}
    assert set(ours) == set(kept.files)
    for name in kept.files:
        np.testing.assert_array_equal(ours[name].numpy(), kept[name])


def test_blur_kernels_are_the_documented_values():
    state = FullGenerator(**TINY).state_dict()
    base = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    for name, value in state.items():
        if name.endswith(".kernel"):
            expected = base if name.startswith("ecd") else 4 * base
            np.testing.assert_array_equal(value.numpy(), expected.astype(np.float32), err_msg=name)


@pytest.mark.parametrize("size,keys_file", [(512, "keys_bfr512.tsv"), (256, "keys_bfr256.tsv")])
def test_published_key_lists_load_strict(size, keys_file):
    from napari_faceedit.parity import read_keys

    rows = read_keys(need(GPEN_FIXTURES) / keys_file)
    with torch.device("meta"):
        model = FullGenerator(**BFR_CONFIGS[size])
    assert list(model.state_dict()) == [r.name for r in rows]  # same keys, same order
    state = {r.name: torch.empty(r.shape, device="meta") for r in rows}
    model.load_state_dict(state, strict=True, assign=True)  # raises on any key or shape mismatch


def test_published_sizes_without_shared_data():
    # Element counts of the official state dicts (config.json of the parity folder).
    for size, expected in ((512, 71005559), (256, 18879298)):
        with torch.device("meta"):
            model = FullGenerator(**BFR_CONFIGS[size])
        assert sum(v.numel() for v in model.state_dict().values()) == expected


def _zero_insert_reference(x, kernel, pad):
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, h, 2, w, 2)
    up[:, :, :, 0, :, 0] = x
    up = torch.nn.functional.pad(up.reshape(n, c, 2 * h, 2 * w), (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, (0, 1))[None, None].expand(c, 1, *kernel.shape)
    return torch.nn.functional.conv2d(up, weight, groups=c)


@pytest.mark.parametrize("pad", [(2, 1), (1, 1), (3, 2)])
def test_fir_upsampler_matches_zero_insertion(pad):
    torch.manual_seed(1)
    kernel = torch.rand(4, 4)  # asymmetric on purpose: catches a missing flip
    x = torch.randn(2, 3, 5, 7)
    torch.testing.assert_close(fir_upsample2x(x, kernel, pad), _zero_insert_reference(x, kernel, pad))


def test_fir_filter_is_a_true_convolution():
    # upfirdn2d convolves (flipped kernel): a tap at [0, 0] keeps the image in place with pad (3, 0),
    # a tap at [3, 3] shifts it down-right by 3. A correlation would swap the two.
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    kernel = torch.zeros(4, 4)
    kernel[0, 0] = 1.0
    torch.testing.assert_close(fir_filter(x, kernel, (3, 0)), x)
    kernel = torch.zeros(4, 4)
    kernel[3, 3] = 1.0
    out = fir_filter(x, kernel, (3, 0))
    torch.testing.assert_close(out[0, 0, 3:, 3:], x[0, 0, :2, :2])
    np.testing.assert_array_equal(make_blur_kernel([1, 3, 3, 1]).sum().item(), 1.0)


# ------------------------------------------------------------------------------------------ pipeline
def test_gpen_backend_restores_face_and_keeps_far_background(astronaut, fixed_faces):
    request = RestoreRequest(image=astronaut, params={"paste": "soft-box", "return_crops": True})
    steps = []
    result = execute(GPEN512(model=tiny_gpen()), request, lambda *a: steps.append(a))
    out = result.image
    assert out.shape == astronaut.shape and out.dtype == np.uint8
    x0, y0, x1, y1 = ASTRONAUT_BOX.astype(int)
    face_change = np.abs(out[y0:y1, x0:x1].astype(int) - astronaut[y0:y1, x0:x1]).mean()
    assert face_change > 5.0
    far = np.ones(astronaut.shape[:2], bool)
    far[max(0, y0 - 150):y1 + 150, max(0, x0 - 150):x1 + 150] = False
    np.testing.assert_array_equal(out[far], astronaut[far])
    assert result.extras["crops_before"].shape == (1, 64, 64, 3)
    assert result.extras["crops_after"].shape == (1, 64, 64, 3)
    assert any("face 1 of 1" in s[2] for s in steps)
    assert result.provenance.weights_id is None  # an injected network: no weights file


def test_gpen_backend_grayscale_stays_grayscale(astronaut, fixed_faces):
    from faceedit_gpen.degrade import to_gray

    gray = to_gray(astronaut)
    result = execute(GPEN512(model=tiny_gpen()), RestoreRequest(image=gray, params={"paste": "soft-box"}))
    out = result.image.astype(int)
    assert np.abs(out - gray).max() > 20  # the face was restored...
    assert (out.max(axis=2) - out.min(axis=2)).max() <= 1  # ...and R = G = B everywhere


def test_parser_mask_used_when_available(astronaut, fixed_faces):
    from napari_faceedit.registry import get_registry

    try:
        parser = get_registry().get("faceparse-compact")
    except KeyError:
        pytest.skip("faceparse-compact is not installed")
    if not parser.ready()[0]:
        pytest.skip("faceparse-compact has no weights")
    backend = GPEN512(model=tiny_gpen())
    soft = execute(backend, RestoreRequest(image=astronaut, params={"paste": "soft-box"})).image
    parsed = execute(backend, RestoreRequest(image=astronaut, params={"paste": "face-region"}), parser=parser)
    assert "face parse by faceparse-compact" in parsed.provenance.notes
    assert "faceparse_compact.pt" in [m["weights"] for m in parsed.provenance.models]
    assert np.abs(parsed.image.astype(int) - soft).max() > 10  # a different paste region


def test_face_index_upscale_and_cancel(astronaut, fixed_faces):
    backend = GPEN512(model=tiny_gpen())
    with pytest.raises(ValueError, match="face_index 3"):
        execute(backend, RestoreRequest(image=astronaut, face_index=3))
    result = execute(backend, RestoreRequest(image=astronaut, params={"upscale": 2, "paste": "soft-box"}))
    upscaled = result.extras["upscaled_image"]
    assert upscaled.shape == (1024, 1024, 3)
    # The restored face is pasted at 2x: the upscaled face matches the 1x result, not the plain upsampling.
    x0, y0, x1, y1 = ASTRONAUT_BOX.astype(int)
    half = upscaled[::2, ::2][y0 + 20:y1 - 20, x0 + 20:x1 - 20].astype(int)
    plain = gpen_backend.upsample_photo(astronaut, 2)[::2, ::2][y0 + 20:y1 - 20, x0 + 20:x1 - 20].astype(int)
    one_x = result.image[y0 + 20:y1 - 20, x0 + 20:x1 - 20].astype(int)
    assert np.abs(half - one_x).mean() < np.abs(plain - one_x).mean() / 2
    cancel = {"now": False}

    def progress(step, total, message):
        cancel["now"] = cancel["now"] or message.startswith("face 1 of 1")

    assert execute(backend, RestoreRequest(image=astronaut), progress, lambda: cancel["now"]) is None


def test_no_face_found(astronaut, monkeypatch):
    from napari_faceedit.face import detect
    from napari_faceedit.face.pipeline import NoFaceFound

    monkeypatch.setattr(detect, "detect_faces", lambda image, *a, **k: [])
    backend = GPEN512(model=tiny_gpen())
    wide = astronaut[:120, :480]  # not face-shaped: a clear error, or passed through in batch mode
    with pytest.raises(NoFaceFound, match="no face found in the 480x120 image"):
        execute(backend, RestoreRequest(image=wide))
    result = execute(backend, RestoreRequest(image=wide), allow_no_face=True)
    np.testing.assert_array_equal(result.image, wide)
    assert result.passed_through and "passed through unchanged" in result.provenance.notes
    crop = astronaut[60:180, 170:280]  # a face crop the detector missed: the user says it is one
    with pytest.raises(NoFaceFound):
        execute(backend, RestoreRequest(image=crop))
    result = execute(backend, RestoreRequest(image=crop, params={"whole_image": True}))
    assert result.image.shape == crop.shape and np.abs(result.image.astype(int) - crop).mean() > 5


def test_missing_gpen_weights_name_the_id(astronaut, tmp_path, fixed_faces):
    from napari_faceedit import weights

    weights.set_cache_dir(tmp_path)
    weights.set_weights_dir(tmp_path)
    try:
        ready, why = GPEN512.ready()
        assert not ready and "gpen-bfr-512" in why
        with pytest.raises(RuntimeError, match="gpen-bfr-512"):
            execute(GPEN512, RestoreRequest(image=astronaut))
    finally:
        weights.reset_settings()


# ------------------------------------------------------------------------------------------ compact restorer
def test_compact_backend_on_photo(astronaut, fixed_faces):
    from faceedit_gpen.restore_net import CompactRestorer

    torch.manual_seed(0)
    model = CompactRestorer()
    torch.nn.init.normal_(model.tail.weight, std=0.05)  # the zero-initialised tail would be the identity
    result = execute(CompactRestoration(model=model),
                     RestoreRequest(image=astronaut, params={"paste": "soft-box", "return_crops": True}))
    crop = result.extras["crops_after"]
    assert crop.shape[1] == crop.shape[2] and crop.shape[1] % 4 == 0 and 96 <= crop.shape[1] <= 1024
    x0, y0, x1, y1 = ASTRONAUT_BOX.astype(int)
    assert np.abs(result.image[y0:y1, x0:x1].astype(int) - astronaut[y0:y1, x0:x1]).mean() > 1.0
    np.testing.assert_array_equal(result.image[400:], astronaut[400:])


def test_shipped_compact_weights_improve_psnr():
    from PIL import Image

    from faceedit_gpen.backend import load_compact
    from faceedit_gpen.restore_net import restore_image
    from faceedit_gpen.train import psnr, validation_pairs

    folder = need(CELEBA)
    assert compact_weights_path().exists(), "models/restore_compact.pt must ship in the gpen plugin"
    assert compact_weights_path().stat().st_size < 5_000_000
    files = sorted(folder.glob("*.jpg"))[-8:]  # held out: the last 500 images are never trained on
    pairs = validation_pairs([np.asarray(Image.open(f).convert("RGB")) for f in files], seed=7)
    model, sha = load_compact(None, "cpu")
    assert len(sha) == 64
    before = np.mean([psnr(low, clean) for clean, low in pairs])
    after = np.mean([psnr(restore_image(model, low), clean) for clean, low in pairs])
    assert after > before + 0.5, (before, after)


def test_degradation_model_is_deterministic_and_degrades(astronaut):
    from faceedit_gpen.degrade import degrade
    from faceedit_gpen.train import psnr

    face = astronaut[40:200, 160:290]
    a = degrade(face, np.random.default_rng(3))
    b = degrade(face, np.random.default_rng(3))
    np.testing.assert_array_equal(a[1], b[1])
    scores = [psnr(low, clean) for clean, low in (degrade(face, np.random.default_rng(s)) for s in range(6))]
    assert all(s < 45 for s in scores) and a[1].shape == face.shape


def test_training_two_steps_then_resume(tmp_path, astronaut):
    from PIL import Image

    from faceedit_gpen.train import main

    data = tmp_path / "faces"
    data.mkdir()
    for i in range(8):
        Image.fromarray(astronaut[20 * i:20 * i + 200, 150:280]).resize((44, 52)).save(data / f"{i:03d}.png")
    checkpoint = tmp_path / "ckpt.pt"
    common = ["--data", str(data), "--batch", "2", "--crop", "32", "--val-count", "2", "--val-images", "2",
              "--checkpoint", str(checkpoint), "--width", "8"]
    assert main(common + ["--steps", "2"]) == 0
    assert torch.load(checkpoint, weights_only=True)["step"] == 2
    export = tmp_path / "out.pt"
    assert main(common + ["--steps", "3", "--resume", "--export", str(export)]) == 0
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 3 and state["config"]["width"] == 8
    exported = torch.load(export, weights_only=True)
    assert all(v.dtype == torch.float16 for v in exported.values())


def test_plugin_hooks_register_everything():
    from napari_faceedit.registry import BackendRegistry

    registry = BackendRegistry()
    for name in ("gpen-bfr-256", "gpen-bfr-512", "gpen-bfr-1024", "restore-compact"):
        assert name in registry.backends, registry.failures
    assert "gpen" in registry.parity_models()
    trainers = {}
    for impl in registry.plugin_manager.hook.faceedit_trainers.get_hookimpls():
        trainers.update(impl.function())
    assert "restorer" in trainers
    if "classic-restore" in registry.backends:
        assert CompactRestoration.priority > registry.get("classic-restore").priority
