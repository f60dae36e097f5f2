"""Face detection (MTCNN), 5-point alignment, paste-back, label warping and the per-face pipeline.

Synthetic tests always run; tests on real photos skip without ``../shared`` and without the detector
weights (``pip install --no-deps facenet-pytorch==2.6.0``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from napari_faceedit.face import align as align_module
from napari_faceedit.face.align import (
    TEMPLATES,
    align_face,
    paste_back,
    paste_weights_in_photo,
    similarity_transform,
    template_points,
    warp_labels_back,
)
from napari_faceedit.face.detect import WeightsMissing, detect_faces, faces_from_json, faces_to_json, mtcnn_available
from napari_faceedit.tasks import Task

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not available")
needs_weights = pytest.mark.skipif(
    not mtcnn_available(), reason="MTCNN weights missing: pip install --no-deps facenet-pytorch==2.6.0"
)
SOLVAY = SHARED / "degraded" / "old_photos" / "Solvay_conference_1927.png"


def load(path: Path) -> np.ndarray:
    from napari_faceedit.face.cli import read_image

    return read_image(path)


def smooth_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A textured but band-limited RGB test photo (bilinear resampling of it is nearly exact)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(height // 8 + 2, width // 8 + 2, 3))
    from scipy import ndimage

    fine = ndimage.zoom(coarse, (8, 8, 1), order=3)[:height, :width]
    return np.clip(fine, 0, 255).astype(np.uint8)


def similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


# ---------------------------------------------------------------------------------------------
# Synthetic (no data, no weights)
# ---------------------------------------------------------------------------------------------


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(1)
    for _ in range(20):
        truth = similarity(rng.uniform(-np.pi, np.pi), rng.uniform(0.1, 8), *rng.uniform(-500, 500, 2))
        source = rng.uniform(0, 400, size=(5, 2))
        target = source @ truth[:, :2].T + truth[:, 2]
        np.testing.assert_allclose(similarity_transform(source, target), truth, atol=1e-7)
        # with landmark noise the fit stays close, and it never reflects
        noisy = similarity_transform(source + rng.normal(0, 0.5, source.shape), target)
        assert np.linalg.det(noisy[:, :2]) > 0
        scale = np.sqrt(np.linalg.det(truth[:, :2]))
        np.testing.assert_allclose(noisy[:, :2], truth[:, :2], atol=0.05 * scale)
    mirrored = np.array([[-1.0, 0.0], [0.0, 1.0]])
    points = template_points("ffhq", 256)
    fit = similarity_transform(points @ mirrored.T, points)  # best proper fit of a mirror image
    assert np.linalg.det(fit[:, :2]) > 0


def test_template_points_scale_and_order():
    for name in TEMPLATES:
        points = template_points(name, 256)
        left_eye, right_eye, nose, mouth_left, mouth_right = points
        assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
        assert abs((left_eye[0] + right_eye[0]) / 2 - 127.5) < 10  # horizontally centred
        # scaling keeps the framing: the same points relative to the crop size
        np.testing.assert_allclose((template_points(name, 1024) + 0.5) / 1024, (points + 0.5) / 256)
    with pytest.raises(ValueError, match="unknown face template"):
        template_points("nope", 256)


def test_align_face_integer_translation_is_an_exact_crop():
    photo = smooth_photo(300, 400)
    size, dx, dy = 128, 57, 81
    landmarks = template_points("ffhq", size) + [dx, dy]
    aligned = align_face(photo, landmarks, size, "ffhq")
    assert aligned.crop.shape == (size, size, 3) and aligned.crop.dtype == np.uint8
    np.testing.assert_array_equal(aligned.crop, photo[dy:dy + size, dx:dx + size])
    np.testing.assert_allclose(aligned.matrix, [[1, 0, -dx], [0, 1, -dy]], atol=1e-9)


def test_align_face_rotated_scaled_photo_recovers_the_crop():
    # Build a photo as a known similarity warp of a crop, then align it back.
    size = 128
    crop = smooth_photo(size, size, seed=3)
    to_crop = similarity(0.4, 0.8, 0.0, 0.0)  # photo -> crop; photo point (150, 130) -> crop centre
    to_crop[:, 2] = [63.5, 63.5] - to_crop[:, :2] @ [150.0, 130.0]
    aligned_truth = align_module.AlignedFace(crop=crop, matrix=to_crop, size=size, template="ffhq")
    photo = paste_back(np.zeros((260, 300, 3), np.uint8), crop, aligned_truth, feather=0.0001)
    landmarks = (template_points("ffhq", size) - to_crop[:, 2]) @ np.linalg.inv(to_crop[:, :2]).T
    again = align_face(photo, landmarks, size, "ffhq")
    np.testing.assert_allclose(again.matrix, to_crop, atol=1e-6)
    inner = slice(16, size - 16)
    error = np.abs(again.crop[inner, inner].astype(int) - crop[inner, inner].astype(int))
    assert error.mean() < 2.0, error.mean()


def test_align_face_borders_and_grayscale():
    photo = smooth_photo(100, 100)
    landmarks = template_points("ffhq", 128) - 40  # the crop reaches past the photo's top-left
    constant = align_face(photo, landmarks, 128, border="constant").crop
    assert (constant[:30, :30] == 0).all()
    reflected = align_face(photo, landmarks, 128, border="reflect").crop
    # reflection about the top-left corner: crop pixel (39 - k) mirrors photo pixel k
    np.testing.assert_array_equal(reflected[39 - 5, 45], photo[5, 5])
    edge = align_face(photo, landmarks, 128, border="edge").crop
    np.testing.assert_array_equal(edge[0, 45], photo[0, 5])
    grey = photo[..., 0]
    crop = align_face(grey, template_points("ffhq", 64) + 10, 64).crop
    assert crop.shape == (64, 64, 3) and (crop[..., 0] == crop[..., 2]).all()
    with pytest.raises(ValueError, match="border"):
        align_face(photo, landmarks, 128, border="wrap")


def test_paste_back_copy_exactness_and_mask():
    photo = smooth_photo(240, 320)
    before = photo.copy()
    aligned = align_face(photo, template_points("ffhq", 128) + [100, 60], 128)
    white = np.full_like(aligned.crop, 255)
    out = paste_back(photo, white, aligned)
    np.testing.assert_array_equal(photo, before)  # input untouched
    assert out is not photo and out.shape == photo.shape and out.dtype == np.uint8
    weights = paste_weights_in_photo(aligned, photo.shape)
    outside = weights == 0
    np.testing.assert_array_equal(out[outside], photo[outside])
    assert (out[weights > 0.999] == 255).all()
    assert outside[:60].all() and outside[:, :100].all() and outside[189:].all()
    # a caller mask restricts the paste further
    mask = np.zeros((128, 128))
    mask[40:90, 40:90] = 1
    masked = paste_back(photo, white, aligned, weights=mask, feather=0.05)
    changed = np.any(masked != photo, axis=2)
    rows, cols = np.nonzero(changed)
    assert 60 + 25 <= rows.min() and rows.max() <= 60 + 105 and 100 + 25 <= cols.min() and cols.max() <= 100 + 105
    # grayscale photos stay grayscale; RGBA keeps its alpha
    grey = photo[..., 1]
    out_grey = paste_back(grey, white, aligned)
    assert out_grey.shape == grey.shape and (out_grey[weights > 0.999] == 255).all()
    rgba = np.dstack([photo, np.full(photo.shape[:2], 7, np.uint8)])
    out_rgba = paste_back(rgba, white, aligned)
    assert (out_rgba[..., 3] == 7).all() and (out_rgba[..., :3][weights > 0.999] == 255).all()


def test_paste_back_color_match_pulls_towards_photo_colors():
    photo = smooth_photo(200, 200, seed=5)
    aligned = align_face(photo, template_points("ffhq", 128) + [30, 30], 128)
    tinted = np.clip(aligned.crop.astype(int) + [60, -40, 0], 0, 255).astype(np.uint8)
    weights = paste_weights_in_photo(aligned, photo.shape) > 0.999
    plain = paste_back(photo, tinted, aligned)
    matched = paste_back(photo, tinted, aligned, color_match=True)
    err_plain = np.abs(plain[weights].astype(int) - photo[weights]).mean()
    err_matched = np.abs(matched[weights].astype(int) - photo[weights]).mean()
    assert err_matched < 0.5 * err_plain, (err_matched, err_plain)


def test_warp_labels_back_nearest_and_zero_outside():
    size = 64
    labels = np.arange(size * size).reshape(size, size) % 19
    aligned = align_face(smooth_photo(120, 150), template_points("celebamask", size) + [30, 20], size, "celebamask")
    back = warp_labels_back(labels, aligned, (120, 150))
    assert back.shape == (120, 150) and np.issubdtype(back.dtype, np.integer)
    np.testing.assert_array_equal(back[20:20 + size, 30:30 + size], labels)
    back[20:20 + size, 30:30 + size] = 0
    assert (back == 0).all()
    # a rotated crop only produces labels that exist in the crop
    rotated = align_module.AlignedFace(crop=aligned.crop, matrix=similarity(0.3, 0.5, 10, 5), size=size, template="x")
    warped = warp_labels_back(labels, rotated, (200, 200))
    assert set(np.unique(warped)) <= set(np.unique(labels)) | {0}


def test_missing_weights_message(monkeypatch):
    from napari_faceedit.face import detect

    monkeypatch.setattr(detect.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsMissing, match=r"pip install --no-deps facenet-pytorch==2\.6\.0"):
        detect.mtcnn_weights_dir()


def test_faces_json_round_trip():
    from napari_faceedit.face.detect import DetectedFace

    face = DetectedFace(box=[1, 2, 30, 40], score=0.99, landmarks=np.arange(10).reshape(5, 2))
    records = json.loads(json.dumps(faces_to_json([face])))
    assert records[0]["box"] == [1, 2, 30, 40] and len(records[0]["landmarks"]) == 5
    again = faces_from_json(records)[0]
    np.testing.assert_allclose(again.landmarks, face.landmarks)


# ---------------------------------------------------------------------------------------------
# Real photos (need ../shared and the weights)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def solvay():
    if not (SHARED.is_dir() and mtcnn_available()):
        pytest.skip("needs ../shared and the MTCNN weights")
    from napari_faceedit.face.detect import detect_faces

    photo = load(SOLVAY)
    start = time.perf_counter()
    faces = detect_faces(photo)
    return photo, faces, time.perf_counter() - start


def assert_plausible(face, image_shape):
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    eye_distance = np.linalg.norm(right_eye - left_eye)
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < min(mouth_left[1], mouth_right[1])
    assert left_eye[0] - 0.3 * eye_distance < nose[0] < right_eye[0] + 0.3 * eye_distance
    x0, y0, x1, y1 = face.box
    assert x0 < x1 and y0 < y1 and 0.5 < (x1 - x0) / (y1 - y0) < 1.5
    margin = 0.1 * (x1 - x0)
    assert ((face.landmarks >= [x0 - margin, y0 - margin]) & (face.landmarks <= [x1 + margin, y1 + margin])).all()
    assert 0 <= face.score <= 1


@needs_shared
@needs_weights
def test_detect_one_face_on_aligned_photos():
    from napari_faceedit.face.detect import detect_faces

    template = template_points("ffhq", 512)
    paths = sorted((SHARED / "ffhq" / "512").glob("*.png"))[:3]
    paths += sorted((SHARED / "celebamask_hq" / "train" / "images").glob("*.jpg"))[:3]
    for path in paths:
        image = load(path)
        faces = detect_faces(image)
        assert len(faces) >= 1, path.name
        assert faces[0].box[2] - faces[0].box[0] > 0.25 * image.shape[1]  # the portrait's face, not a speck
        assert_plausible(faces[0], image.shape)
        if image.shape[0] == 512:  # FFHQ is aligned close to the ffhq template
            assert np.abs(faces[0].landmarks[:2] - template[:2]).max() < 20, path.name
        assert all(f.area <= faces[0].area for f in faces)  # largest first


@needs_shared
@needs_weights
def test_detect_many_faces(solvay):
    from napari_faceedit.face.detect import detect_faces

    photo, faces, seconds = solvay
    assert 25 <= len(faces) <= 31, len(faces)  # 29 people are visible (one cut off at the edge)
    for face in faces:
        assert_plausible(face, photo.shape)
    boxes = np.array([f.box for f in faces])
    assert (boxes[:, 3] < photo.shape[0] * 0.6).all()  # all in the upper part: nobody's knees
    expected = {"00.jpg": 4, "01.jpg": 4, "02.png": 4}
    for name, count in expected.items():
        image = load(SHARED / "degraded" / "whole_imgs" / name)
        found = detect_faces(image)
        assert count <= len(found) <= count + 1, (name, len(found))
        for face in found[:count]:
            assert_plausible(face, image.shape)


@needs_shared
@needs_weights
def test_large_exif_selfie_is_detected_upright_and_fast():
    from napari_faceedit.face.detect import detect_faces

    image = load(SHARED / "degraded" / "selfies" / "20200320.101220.jpg")
    assert image.shape[:2] == (4032, 3024)  # EXIF orientation applied
    start = time.perf_counter()
    faces = detect_faces(image)
    seconds = time.perf_counter() - start
    assert len(faces) >= 1 and faces[0].box[2] - faces[0].box[0] > 1000
    assert_plausible(faces[0], image.shape)
    assert seconds < 30, seconds  # about 2 s on one core; a whole-resolution pyramid would take minutes
    aligned = align_face(image, faces[0].landmarks, 256, "ffhq")
    assert aligned.crop.std() > 10  # a real, non-empty crop


def round_trip_errors(photo, faces, size, template):
    """Paste back every unmodified crop; errors inside the full-weight region, and exactness outside."""
    out = photo
    full = np.zeros(photo.shape[:2], bool)
    touched = np.zeros(photo.shape[:2], bool)
    for face in faces:
        aligned = align_face(photo, face.landmarks, size, template)
        out = paste_back(out, aligned.crop, aligned)
        weights = paste_weights_in_photo(aligned, photo.shape)
        full |= weights > 0.999
        touched |= weights > 0
    np.testing.assert_array_equal(out[~touched], photo[~touched])
    error = np.abs(out[full].astype(int) - photo[full].astype(int))
    return error.mean(), np.percentile(error, 99), full.mean()


@needs_shared
@needs_weights
def test_round_trip_one_face():
    from napari_faceedit.face.detect import detect_faces

    photo = load(SHARED / "ffhq" / "512" / "00000.png")
    faces = detect_faces(photo)
    mean, p99, covered = round_trip_errors(photo, faces[:1], 512, "ffhq")
    assert covered > 0.3 and mean < 3.0 and p99 < 25, (mean, p99, covered)


@needs_shared
@needs_weights
def test_round_trip_many_faces(solvay):
    photo, faces, _ = solvay
    mean, p99, covered = round_trip_errors(photo, faces, 256, "celebamask")
    assert covered > 0.05 and mean < 3.0 and p99 < 25, (mean, p99, covered)


@needs_shared
@needs_weights
def test_face_pipeline_on_a_group_photo():
    from napari_faceedit.backend import FaceBackend
    from napari_faceedit.runner import execute
    from napari_faceedit.tasks import RestoreRequest

    class Invert(FaceBackend):
        name = "invert"
        tasks = frozenset({Task.RESTORE})
        crop_size = 128

        def process_crop(self, face, ctx):
            return 255 - face.image

    photo = load(SHARED / "degraded" / "whole_imgs" / "00.jpg")
    before = photo.copy()
    calls = []
    result = execute(Invert, RestoreRequest(image=photo, params={"return_crops": True}),
                     progress=lambda step, total, msg: calls.append((step, total)))
    np.testing.assert_array_equal(photo, before)
    crops = result.extras["crops_after"]
    assert len(crops) >= 4 and crops.shape[1:] == (128, 128, 3)
    assert calls[-1][0] == calls[-1][1] and [s for s, _ in calls] == sorted(s for s, _ in calls)
    changed = np.any(result.image != photo, axis=2)
    faces = detect_faces(photo)
    for face in faces:  # every face centre was changed (inverted)
        cx, cy = face.landmarks[2].round().astype(int)
        assert changed[cy, cx]
    assert not changed[:, :20].any()  # the left margin has no face
    one = execute(Invert, RestoreRequest(image=photo, face_index=1))
    changed_one = np.any(one.image != photo, axis=2)
    cx, cy = faces[1].landmarks[2].round().astype(int)
    assert changed_one[cy, cx] and changed_one.sum() < changed.sum() / 2


@needs_shared
@needs_weights
def test_detect_cli(tmp_path):
    from PIL import Image

    from napari_faceedit.face.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(SHARED / "degraded" / "whole_imgs" / "04.jpg").save(folder / "a.png")
    Image.open(SHARED / "degraded" / "whole_imgs" / "02.png").save(folder / "b.png")  # RGBA
    (folder / "notes.txt").write_text("not an image")
    output = tmp_path / "faces.json"
    assert main(["detect", "--input", str(folder), "--output", str(output), "--quiet"]) == 0
    document = json.loads(output.read_text())
    counts = {Path(item["file"]).name: len(item["faces"]) for item in document["images"]}
    assert counts["a.png"] == 1 and counts["b.png"] >= 4 and "notes.txt" not in counts
    face = document["images"][0]["faces"][0]
    assert len(face["box"]) == 4 and len(face["landmarks"]) == 5 and 0 < face["score"] <= 1
    assert main(["detect", "--input", str(tmp_path / "missing"), "--output", str(output)]) == 2
