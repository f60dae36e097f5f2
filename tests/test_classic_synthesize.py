"""Label edits (napari_faceedit.label_edits) and classical label-guided synthesis
(faceedit_classic.synthesize) on real CelebAMask-HQ validation faces."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from scipy import ndimage
from skimage import io

from conftest import require_shared
from faceedit_classic.synthesize import ThinPlateSpline, outline_points, render_from_labels, transfer_components
from napari_faceedit.label_edits import (
    EDIT_SCRIPT, enlarge_eyes, move_hairline, raise_eyebrows, swap_component, validate_labels, widen_mouth,
)
from napari_faceedit.vocab import CLASS_INDEX

# Two frontal val faces with brows, eyes, lips and a forehead hairline; the third is the donor.
FACE_PREFIXES = ("0a82f5", "126ba6", "1554cd")
LEFT_RIGHT = ((CLASS_INDEX["l_eye"], CLASS_INDEX["r_eye"]), (CLASS_INDEX["l_brow"], CLASS_INDEX["r_brow"]))
LIPS = (CLASS_INDEX["u_lip"], CLASS_INDEX["l_lip"])


@lru_cache(maxsize=None)
def _load(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    folder = require_shared("data", "celebamask_hq", "val")
    image_path = next((folder / "images").glob(prefix + "*.jpg"))
    return io.imread(image_path), io.imread(folder / "masks" / (image_path.stem + ".png"))


def face(index: int) -> tuple[np.ndarray, np.ndarray]:
    image, labels = _load(FACE_PREFIXES[index])
    return image.copy(), labels.copy()


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b) ** 2)[where].mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def centre_col(labels: np.ndarray, c: int) -> float:
    return float(np.nonzero(labels == c)[1].mean())


# ---------------------------------------------------------------- label edits


@pytest.mark.parametrize("index", [0, 1])
def test_every_scripted_edit_keeps_background_and_sides(index):
    _, labels = face(index)
    _, donor = face(2)
    for edit in EDIT_SCRIPT:
        edited = edit.apply(labels, donor)
        assert edited.shape == labels.shape and edited.dtype == np.uint8
        assert np.array_equal(edited == 0, labels == 0), f"{edit.name} touched the background"
        assert (edited != labels).any(), f"{edit.name} changed nothing"
        for left, right in LEFT_RIGHT:  # the subject's left stays on the image's right
            assert centre_col(edited, left) > centre_col(edited, right), edit.name


def test_enlarge_eyes_grows_each_eye_by_factor_squared_about_its_centre():
    _, labels = face(0)
    edited = enlarge_eyes(labels, 1.3)
    for c in (CLASS_INDEX["l_eye"], CLASS_INDEX["r_eye"]):
        assert (edited == c).sum() / (labels == c).sum() == pytest.approx(1.69, rel=0.1)
        before = np.array(ndimage.center_of_mass(labels == c))
        after = np.array(ndimage.center_of_mass(edited == c))
        assert np.abs(after - before).max() < 1.0


def test_widen_mouth_stretches_only_horizontally():
    _, labels = face(1)
    mouth = np.isin(labels, (10,) + LIPS)
    edited = np.isin(widen_mouth(labels, 1.3), (10,) + LIPS)
    rows, cols = np.nonzero(mouth)
    new_rows, new_cols = np.nonzero(edited)
    assert np.ptp(new_cols) / np.ptp(cols) == pytest.approx(1.3, abs=0.05)
    assert np.ptp(new_rows) == np.ptp(rows)


def test_raise_eyebrows_moves_brows_up_and_leaves_skin_behind():
    _, labels = face(0)
    edited = raise_eyebrows(labels, 6)
    for c in (CLASS_INDEX["l_brow"], CLASS_INDEX["r_brow"]):
        shift = ndimage.center_of_mass(edited == c)[0] - ndimage.center_of_mass(labels == c)[0]
        assert shift == pytest.approx(-6, abs=0.6)
        vacated = (labels == c) & (edited != c)
        assert (edited[vacated] == CLASS_INDEX["skin"]).all()


def test_move_hairline_recedes_and_lowers_above_the_brows_only():
    _, labels = face(0)
    hair, skin = CLASS_INDEX["hair"], CLASS_INDEX["skin"]
    brow_top = np.nonzero(np.isin(labels, [6, 7]))[0].min()
    receded = move_hairline(labels, -12)
    lowered = move_hairline(labels, 12)
    assert set(np.unique(labels[receded != labels])) == {hair}
    assert set(np.unique(receded[receded != labels])) == {skin}
    assert set(np.unique(lowered[lowered != labels])) == {hair}
    for edited in (receded, lowered):
        changed_rows = np.nonzero(edited != labels)[0]
        assert changed_rows.max() < brow_top
        assert (edited != labels).sum() > 12 * 30  # a real forehead's worth, not a few strands


def test_swap_component_takes_the_donors_eye_shapes_at_the_faces_own_eye_positions():
    _, labels = face(0)
    _, donor = face(2)
    edited = swap_component(labels, donor, "eyes")
    for c in (CLASS_INDEX["l_eye"], CLASS_INDEX["r_eye"]):
        assert (edited == c).sum() == pytest.approx((donor == c).sum(), rel=0.1)
        own_centre = np.array(ndimage.center_of_mass(labels == c))
        assert np.abs(np.array(ndimage.center_of_mass(edited == c)) - own_centre).max() < 1.5


def test_label_edits_reject_bad_input_clearly():
    _, labels = face(0)
    with pytest.raises(ValueError, match="0..18"):
        widen_mouth(np.where(labels == 1, 19, labels))
    with pytest.raises(ValueError, match="0..18"):
        enlarge_eyes(labels.astype(np.int32) - 1)
    with pytest.raises(ValueError, match="2-D"):
        validate_labels(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="integer"):
        validate_labels(np.full((4, 4), 1.5))
    with pytest.raises(ValueError, match="shape"):
        swap_component(labels, labels[:100], "eyes")
    with pytest.raises(ValueError, match="unknown face component"):
        swap_component(labels, labels, "beard")
    with pytest.raises(ValueError, match="donor"):
        next(e for e in EDIT_SCRIPT if e.needs_donor).apply(labels)


# ---------------------------------------------------------------- synthesis


def test_thin_plate_spline_reproduces_an_affine_map_and_outlines_correspond():
    mask = np.zeros((64, 64), bool)
    mask[20:30, 10:40] = True
    points = outline_points(mask)
    moved = outline_points(np.roll(mask, (5, 7), axis=(0, 1)))
    assert np.allclose(moved - points, [5, 7], atol=1e-6)  # same start point and direction
    spline = ThinPlateSpline(points, points * [1.0, 1.3] + [2.0, -3.0])
    grid = np.stack(np.meshgrid(np.arange(0, 64, 7.0), np.arange(0, 64, 7.0)), -1).reshape(-1, 2)
    assert np.allclose(spline(grid), grid * [1.0, 1.3] + [2.0, -3.0], atol=1e-6)


def test_identity_labels_return_the_input():
    image, labels = face(0)
    out, changed = render_from_labels(image, labels, labels)
    assert psnr(out, image, labels != 0) > 35
    assert np.array_equal(out, image) and not changed.any()
    # A face taking its components from itself is itself too.
    out, new_labels = transfer_components(image, labels, image, labels, ["eyes", "brows", "nose", "mouth"])
    assert np.array_equal(new_labels, labels)
    assert psnr(out, image, labels != 0) > 35


@pytest.mark.parametrize("edit", EDIT_SCRIPT, ids=lambda e: e.name)
def test_each_scripted_edit_changes_only_its_region_and_never_the_background(edit):
    image, labels = face(0)
    donor_image, donor_labels = face(2)
    if edit.needs_donor:
        out, edited = transfer_components(image, labels, donor_image, donor_labels, edit.params["component"])
        assert np.array_equal(edited, edit.apply(labels, donor_labels))
        changed = np.any(out != image, axis=2)
    else:
        edited = edit.apply(labels)
        out, region = render_from_labels(image, labels, edited)
        assert np.array_equal(out[~region], image[~region])
        assert region[edited != labels].all()
        changed = np.any(out != image, axis=2)
        assert not (changed & ~region).any()
    both_background = (labels == 0) & (edited == 0)
    assert not (changed & both_background).any()
    assert changed[edited != labels].mean() > 0.5


@pytest.mark.parametrize("index", [0, 1])
def test_widened_mouth_is_drawn_with_lip_color(index):
    image, labels = face(index)
    edited = widen_mouth(labels, 1.3)
    out, _ = render_from_labels(image, labels, edited)
    new_lips = np.isin(edited, LIPS) & (labels == CLASS_INDEX["skin"])
    assert new_lips.sum() > 50
    lip_color = image[np.isin(labels, LIPS)].mean(axis=0)
    skin_color = np.median(image[labels == CLASS_INDEX["skin"]], axis=0)
    drawn = out[new_lips].astype(np.float64).mean(axis=0)
    before = image[new_lips].astype(np.float64).mean(axis=0)
    assert np.linalg.norm(drawn - lip_color) < 0.5 * np.linalg.norm(drawn - skin_color)
    assert np.linalg.norm(drawn - skin_color) > 1.5 * np.linalg.norm(before - skin_color)


def test_transferred_eyes_look_like_the_donors():
    image, labels = face(0)
    donor_image, donor_labels = face(2)
    out, edited = transfer_components(image, labels, donor_image, donor_labels, "eyes")
    for c in (CLASS_INDEX["l_eye"], CLASS_INDEX["r_eye"]):
        # The donor's eye moved to where the new eye is (swap_component centres it on the face's own).
        shift = np.rint(np.array(ndimage.center_of_mass(edited == c))
                        - ndimage.center_of_mass(donor_labels == c)).astype(int)
        donor_moved = np.roll(donor_image, tuple(shift), axis=(0, 1)).astype(np.float64)
        eye = (edited == c) & (np.roll(donor_labels == c, tuple(shift), axis=(0, 1)))

        def structure_error(reference):  # brightness-independent: Poisson blending shifts the mean
            a = out[eye].astype(np.float64)
            b = reference[eye].astype(np.float64)
            return np.abs((a - a.mean(0)) - (b - b.mean(0))).mean()

        assert structure_error(donor_moved) < 0.7 * structure_error(image)


def test_synthesis_rejects_bad_input_clearly():
    image, labels = face(0)
    with pytest.raises(ValueError, match="shape"):
        render_from_labels(image, labels[:128], labels[:128])
    with pytest.raises(ValueError, match="target labels"):
        render_from_labels(image, labels, labels[:, :128])
    with pytest.raises(ValueError, match="0..18"):
        render_from_labels(image, labels, np.where(labels == 1, 25, labels))
    with pytest.raises(ValueError, match="same framing"):
        transfer_components(image, labels, image[:128, :128], labels[:128, :128], "eyes")
    with pytest.raises(ValueError, match="unknown face component"):
        transfer_components(image, labels, image, labels, ["eyes", "beard"])
