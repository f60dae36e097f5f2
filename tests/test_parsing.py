"""Face parsing: BiSeNet parity, our compact parser's shipped weights, augmentation, training, backends."""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_faceedit.parity import ParityModel, check_folder
from napari_faceedit.vocab import CLASS_INDEX, FLIP_PERMUTATION

from faceedit_parsing.parity import BISENET_PARITY

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BISENET_DIR = SHARED / "parity" / "bisenet"
VAL_DIR = SHARED / "data" / "celebamask_hq" / "val"
# Measured with the shipped weights: 0.780 mean per-image major-class mIoU on the first 8 val images (min 0.685).
MIN_PER_IMAGE_MIOU = 0.72

needs_bisenet_fixture = pytest.mark.skipif(not BISENET_DIR.exists(), reason="shared/parity/bisenet absent")
needs_val = pytest.mark.skipif(not VAL_DIR.exists(), reason="shared/data/celebamask_hq/val absent")


def _run_parity_cli(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_faceedit.parity", "bisenet", str(folder)],
                          capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------ BiSeNet parity
@needs_bisenet_fixture
def test_bisenet_parity_every_array():
    buffer = io.StringIO()
    assert check_folder(BISENET_PARITY, BISENET_DIR, out=buffer)
    report = buffer.getvalue()
    for name in ("logits", "logits16", "logits32", "parsing", "feat_res8", "feat_cp8", "feat_cp16", "feat_fuse"):
        assert f"fixture.npz:{name}: max|diff|=" in report
    assert "FAIL" not in report


@needs_bisenet_fixture
def test_bisenet_parity_fails_with_a_corrupted_weight():
    def corrupted_outputs(model, arrays):
        with torch.no_grad():
            model.conv_out.conv_out.weight[3] *= 1.05  # one class's main-head weights, off by 5 %
        return BISENET_PARITY.outputs(model, arrays)

    spec = ParityModel("bisenet", BISENET_PARITY.build, corrupted_outputs, BISENET_PARITY.required,
                       BISENET_PARITY.compare)
    buffer = io.StringIO()
    assert not check_folder(spec, BISENET_DIR, out=buffer)
    report = buffer.getvalue()
    logits_line = next(line for line in report.splitlines() if line.startswith("fixture.npz:logits:"))
    assert logits_line.endswith("FAIL")
    aux_line = next(line for line in report.splitlines() if line.startswith("fixture.npz:logits16:"))
    assert aux_line.endswith("ok")  # the auxiliary head does not use the corrupted weight


@needs_bisenet_fixture
def test_bisenet_parity_cli_exit_codes(tmp_path, capsys):
    ok = _run_parity_cli(BISENET_DIR)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout

    # Same fixture, one weight scaled by 1.1 through the rescaled_mult column: must fail.
    lines = (BISENET_DIR / "keys.tsv").read_text().splitlines()
    rows = [lines[0] + "\trescaled_mult"]
    for line in lines[1:]:
        rows.append(line + ("\t1.1" if line.startswith("ffm.conv2.weight\t") else "\t1.0"))
    (tmp_path / "keys.tsv").write_text("\n".join(rows) + "\n")
    shutil.copy(BISENET_DIR / "config.json", tmp_path / "config.json")
    shutil.copy(BISENET_DIR / "fixture.npz", tmp_path / "fixture_rescaled.npz")
    from napari_faceedit.parity import main as parity_main  # the CLI's entry, in-process to save a start-up

    assert parity_main(["bisenet", str(tmp_path)]) != 0
    assert "FAIL" in capsys.readouterr().out


def test_bisenet_state_dict_matches_the_published_layout():
    from faceedit_parsing.bisenet import BiSeNet

    state = BiSeNet(19).state_dict()
    assert len(state) == 191
    assert tuple(state["cp.resnet.conv1.weight"].shape) == (64, 3, 7, 7)
    assert tuple(state["conv_out.conv_out.weight"].shape) == (19, 256, 1, 1)
    if BISENET_DIR.exists():
        names = [line.split("\t")[0] for line in (BISENET_DIR / "keys.tsv").read_text().splitlines()[1:] if line]
        assert names == list(state)


# ------------------------------------------------------------------ compact parser
def test_flip_augmentation_swaps_left_and_right():
    from faceedit_parsing.train import augment_batch

    size = 32
    image = np.zeros((1, size, size, 3), np.uint8)
    image[0, :, :, 0] = np.arange(size, dtype=np.uint8)[None, :] * 7  # a horizontal ramp
    mask = np.zeros((1, size, size), np.uint8)
    mask[0, 10:14, 22:26] = CLASS_INDEX["l_eye"]  # subject's left eye sits on the image right
    mask[0, 10:14, 6:10] = CLASS_INDEX["r_eye"]
    mask[0, 5:7, 20:28] = CLASS_INDEX["l_brow"]
    mask[0, 20:30, 30:32] = CLASS_INDEX["l_ear"]
    mask[0, 25:30, 10:20] = CLASS_INDEX["u_lip"]
    x, y = augment_batch(torch.from_numpy(image), torch.from_numpy(mask), torch.Generator().manual_seed(0),
                         crop=size, scale=(1.0, 1.0), max_rotation_deg=0, max_shift=0,
                         flip_probability=1.0, color_jitter=0)
    expected_labels = FLIP_PERMUTATION[mask[0, :, ::-1]]
    np.testing.assert_array_equal(y[0].numpy(), expected_labels)
    # The mirrored face's own left eye is again on the image right: the eye that moved left is its r_eye.
    assert (y[0, 10:14, 6:10] == CLASS_INDEX["r_eye"]).all()
    assert (y[0, 10:14, 22:26] == CLASS_INDEX["l_eye"]).all()
    assert (y[0, 5:7, 4:12] == CLASS_INDEX["r_brow"]).all()
    assert (y[0, 20:30, 0:2] == CLASS_INDEX["r_ear"]).all()
    assert (y[0, 25:30, 12:22] == CLASS_INDEX["u_lip"]).all()  # unpaired classes stay
    ramp = (x[0, 0].numpy() * 0.5 + 0.5) * 255
    np.testing.assert_allclose(ramp, image[0, :, ::-1, 0].astype(np.float32), atol=1e-3)

    # Without flipping the labels come through unchanged.
    _, y_same = augment_batch(torch.from_numpy(image), torch.from_numpy(mask), torch.Generator().manual_seed(0),
                              crop=size, scale=(1.0, 1.0), max_rotation_deg=0, max_shift=0,
                              flip_probability=0.0, color_jitter=0)
    np.testing.assert_array_equal(y_same[0].numpy(), mask[0])


def _tiny_dataset(root: Path, n: int = 4, size: int = 64) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        mask[8:56, 12:52] = 1
        mask[20:26, 18:26], mask[20:26, 38:46] = 5, 4
        image = (rng.random((size, size, 3)) * 60 + mask[..., None] * 9).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
    return root


def test_training_runs_and_resumes(tmp_path, capsys):
    from faceedit_parsing.train import CHECKPOINT_NAME, main

    data = _tiny_dataset(tmp_path / "data")
    run = tmp_path / "run"
    common = ["--data", str(data), "--out", str(run), "--batch", "2", "--crop", "64", "--cache", "",
              "--ckpt-every", "1", "--log-every", "1", "--warmup", "1"]
    assert main(common + ["--steps", "2"]) == 0
    first = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    assert first["step"] == 2
    assert main(common + ["--steps", "3", "--resume", "--export", str(run / "half.pt")]) == 0
    out = capsys.readouterr().out
    assert "resumed at step 2" in out and "step 3 loss" in out
    second = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    assert second["step"] == 3
    assert any(not torch.equal(first["model"][k], second["model"][k]) for k in first["model"])
    half = torch.load(run / "half.pt", weights_only=True)
    assert half["head.weight"].dtype == torch.float16


def test_training_holds_out_a_dev_split(tmp_path, capsys):
    from faceedit_parsing.train import CHECKPOINT_NAME, main

    data = _tiny_dataset(tmp_path / "data")
    run = tmp_path / "run"
    common = ["--data", str(data), "--out", str(run), "--batch", "2", "--crop", "64", "--cache", "",
              "--ckpt-every", "1", "--log-every", "1", "--warmup", "1", "--steps", "1"]
    total = len(list((data / "images").iterdir()))
    assert main(common + ["--dev", "2"]) == 0
    assert f"{total - 2} training pairs" in capsys.readouterr().out
    record = torch.load(run / CHECKPOINT_NAME, weights_only=True)["history"][-1]
    assert set(record) >= {"dev_major_miou", "dev_all_miou"} and "val_major_miou" not in record
    assert main(common + ["--dev", str(total)]) == 2  # nothing left to train on
    assert "pairs" in capsys.readouterr().err


def test_parser_trainer_is_exposed_through_the_hook():
    from faceedit_parsing import hooks

    assert "parser" in hooks.faceedit_trainers()
    assert [m.name for m in hooks.faceedit_parity_models()] == ["bisenet"]


def test_compact_weights_ship_and_load():
    from faceedit_parsing.backend import compact_weights_path, load_compact

    path = compact_weights_path()
    assert path.exists(), path
    assert path.stat().st_size < 4_000_000
    model, sha = load_compact(str(path))
    assert len(sha) == 64
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 19, 64, 64)


@needs_val
def test_compact_parser_val_quality():
    from faceedit_parsing.backend import load_compact
    from faceedit_parsing.compact import predict
    from faceedit_parsing.train import confusion, iou_from_confusion, load_pairs, major_miou

    model, _ = load_compact(None)
    images, masks = load_pairs(VAL_DIR)
    scores = [major_miou(iou_from_confusion(confusion(predict(model, im), m))) for im, m in zip(images[:8], masks[:8])]
    assert np.mean(scores) >= MIN_PER_IMAGE_MIOU, scores
    assert min(scores) > 0.6, scores


@needs_val
def test_test_time_augmentation_keeps_labels_aligned_and_helps():
    """Mirrored passes must swap left/right classes back and rescaled passes must land on the same
    pixels: a mistake in either costs far more than the small gain asserted here."""
    from faceedit_parsing.backend import load_compact
    from faceedit_parsing.compact import TTA_MODES, predict
    from faceedit_parsing.train import confusion, iou_from_confusion, load_pairs, major_miou

    model, _ = load_compact(None)
    images, masks = load_pairs(VAL_DIR)
    matrices = {mode: sum(confusion(predict(model, im, **kw), m) for im, m in zip(images[:16], masks[:16]))
                for mode, kw in TTA_MODES.items()}
    score = {mode: major_miou(iou_from_confusion(matrix)) for mode, matrix in matrices.items()}
    assert score["flip"] > score["none"] - 0.002 and score["multiscale"] > score["none"], score
    with pytest.raises(ValueError, match="multiples of 32"):
        predict(model, images[0], sizes=(250,))


# ------------------------------------------------------------------ backends
@needs_val
def test_compact_backend_parses_a_face_crop_through_the_runner():
    from PIL import Image

    from faceedit_parsing.backend import CompactParserBackend
    from faceedit_parsing.train import confusion, iou_from_confusion, major_miou
    from napari_faceedit.runner import execute
    from napari_faceedit.tasks import ParseRequest

    first = sorted((VAL_DIR / "images").iterdir())[0]
    image = np.asarray(Image.open(first).convert("RGB"))[:, 16:-16]  # a non-square crop: resized in and out
    truth = np.asarray(Image.open(VAL_DIR / "masks" / (first.stem + ".png")))[:, 16:-16]
    steps = []
    result = execute(CompactParserBackend(), ParseRequest(image=image, params={"whole_image": True}),
                     lambda s, t, m: steps.append((s, t, m)), lambda: False)
    assert result is not None and result.labels.shape == image.shape[:2]
    assert np.issubdtype(result.labels.dtype, np.integer)
    assert major_miou(iou_from_confusion(confusion(result.labels, truth))) > 0.6
    assert result.provenance.weights_sha256 and steps
    assert result.provenance.parameters["params"] == {"tta": "multiscale", "whole_image": True, "return_crops": False}


def test_compact_backend_cancels_before_parsing():
    from faceedit_parsing.backend import CompactParserBackend
    from napari_faceedit.runner import execute
    from napari_faceedit.tasks import ParseRequest

    image = np.full((64, 64, 3), 128, np.uint8)
    result = execute(CompactParserBackend(), ParseRequest(image=image, params={"whole_image": True}),
                     lambda *a: None, lambda: True)
    assert result is None


def test_bisenet_backend_reports_missing_weights():
    from faceedit_parsing.backend import BiSeNetParser
    from napari_faceedit import weights

    if not weights.missing(["bisenet-79999"]):
        pytest.skip("bisenet-79999 is installed here")
    ready, message = BiSeNetParser.ready()
    assert not ready and "bisenet-79999" in message


def test_bisenet_crop_preprocessing_maps_to_our_classes():
    """A network that always answers BiSeNet class 17 (hair) must give CelebAMask-HQ hair (13) at crop size."""
    from faceedit_parsing.backend import bisenet_parse_crop

    seen = {}

    class ConstantHair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            seen["shape"], seen["mean"] = tuple(x.shape), x.mean((0, 2, 3))
            logits = torch.zeros(x.shape[0], 19, *x.shape[-2:])
            logits[:, 17] = 1
            return logits, logits, logits

    labels = bisenet_parse_crop(ConstantHair(), np.zeros((40, 30, 3), np.uint8))
    assert labels.shape == (40, 30) and (labels == CLASS_INDEX["hair"]).all()
    assert seen["shape"] == (1, 3, 512, 512)  # official preprocessing: 512 px, ImageNet normalisation
    np.testing.assert_allclose(seen["mean"].numpy(), [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], rtol=1e-5)


def test_compact_backend_parses_a_whole_photo_through_detection():
    from skimage.data import astronaut

    from faceedit_parsing.backend import CompactParserBackend
    from napari_faceedit.runner import execute
    from napari_faceedit.tasks import ParseRequest

    from napari_faceedit.face import detect

    photo = astronaut()  # 512x512, one face around x 180..270, y 60..175
    try:
        if not detect.detect_faces(photo):
            pytest.skip("detector found no face")
    except detect.WeightsMissing:
        pytest.skip("face detector weights not installed")
    result = execute(CompactParserBackend(), ParseRequest(image=photo), lambda *a: None, lambda: False)
    labels = result.labels
    assert labels.shape == photo.shape[:2]
    assert "1 of 1 face(s) processed" in result.provenance.notes
    assert result.extras["landmarks"].shape == (1, 5, 2)
    face = np.isin(labels, [CLASS_INDEX[n] for n in ("skin", "nose", "l_eye", "r_eye")])
    ys, xs = np.nonzero(face)
    assert 150 < xs.mean() < 300 and 60 < ys.mean() < 180
    assert (labels[:, 400:] == 0).all()  # nothing outside the aligned crop's footprint on the far right
    nose_x = np.nonzero(labels == CLASS_INDEX["nose"])[1].mean()
    assert np.nonzero(labels == CLASS_INDEX["l_eye"])[1].mean() > nose_x  # subject's left = image right
    assert np.nonzero(labels == CLASS_INDEX["r_eye"])[1].mean() < nose_x
