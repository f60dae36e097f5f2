"""Detect, align, process and paste back every face of a photo: the loop backends share.

No-face rule: when the detector finds no face, the image is taken as one already-aligned face crop
only if it is nearly square (aspect ratio within 0.8 .. 1.25) and 64 .. ``ASSUMED_CROP_MAX_SIDE``
px on its longer side, the way aligned face datasets (FFHQ, CelebA-HQ, CodeFormer's cropped faces) are
stored; its landmarks are then assumed to be the ``"ffhq"`` template stretched over the image.
Anything else raises :class:`NoFaceFound`.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from ..tasks import as_rgb_uint8
from .align import align_face, paste_back, template_points
from .detect import DEFAULT_MIN_SCORE, DetectedFace, detect_faces

ASSUMED_CROP_MAX_SIDE = 1024
ASSUMED_CROP_ASPECT = (0.8, 1.25)


class NoFaceFound(ValueError):
    """No face was detected and the image does not look like a face crop already."""


class FaceIndexError(IndexError, ValueError):
    """``face_index`` does not name one of the detected faces (a bad request value, hence ValueError too)."""


def assumed_crop_face(image: np.ndarray) -> Optional[DetectedFace]:
    """The whole image as one face (score 0) when it looks like an aligned face crop, else None."""
    height, width = image.shape[:2]
    aspect = width / height
    if not ASSUMED_CROP_ASPECT[0] <= aspect <= ASSUMED_CROP_ASPECT[1]:
        return None
    if not 64 <= max(height, width) <= ASSUMED_CROP_MAX_SIDE:
        return None
    side = 512.0
    points = template_points("ffhq", 512)
    landmarks = np.stack([(points[:, 0] + 0.5) * width / side - 0.5, (points[:, 1] + 0.5) * height / side - 0.5], axis=1)
    return DetectedFace(box=[0, 0, width, height], score=0.0, landmarks=landmarks)


def find_faces(image: np.ndarray, min_score: float = DEFAULT_MIN_SCORE, allow_whole_image: bool = True) -> list[DetectedFace]:
    """Detected faces (largest first), or the whole image as one face per the no-face rule."""
    faces = detect_faces(image, min_score=min_score)
    if faces:
        return faces
    assumed = assumed_crop_face(image) if allow_whole_image else None
    if assumed is None:
        height, width = np.asarray(image).shape[:2]
        raise NoFaceFound(
            f"no face found in the {width}x{height} image (detector score threshold {min_score}); "
            "try a photo where the face is larger, sharper or more frontal, or pass an aligned, square face crop"
        )
    return [assumed]


def select_faces(faces: Sequence[DetectedFace], face_index: Optional[int]) -> list[int]:
    """Indices to process: all (``None``) or the one asked for, with a clear error when out of range."""
    if face_index is None:
        return list(range(len(faces)))
    index = int(face_index)
    if not 0 <= index < len(faces):
        raise FaceIndexError(
            f"face_index {face_index} is out of range: {len(faces)} face(s) found (valid: 0..{len(faces) - 1}, largest first)"
        )
    return [index]


def for_each_face(
    image: np.ndarray,
    size: int,
    template: str,
    process_crop: Callable[[np.ndarray], np.ndarray],
    face_index: Optional[int] = None,
    progress: Optional[Callable[[int, int, str], None]] = None,
    cancelled: Optional[Callable[[], bool]] = None,
    mask_fn: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    color_match: bool = False,
    min_score: float = DEFAULT_MIN_SCORE,
    feather: float = 0.1,
    faces: Optional[Sequence[DetectedFace]] = None,
) -> tuple[np.ndarray, list[DetectedFace], list[np.ndarray]]:
    """Run ``process_crop`` on each aligned face and paste the results back.

    ``process_crop(crop)`` gets a (size, size, 3) uint8 crop in ``template`` framing and returns one
    of the same size. ``mask_fn(processed_crop)``, if given, returns the crop-sized paste weights
    (e.g. a face-parser mask); otherwise a soft box is used. ``progress(step, total, message)`` is
    called around each face; ``cancelled()`` is polled between faces and raises
    :class:`napari_faceedit.backend.RunCancelled`. ``faces`` skips detection (e.g. from the widget).

    Returns ``(photo, faces, crops)``: a new RGB uint8 photo (the input is not modified), the faces
    processed, and their processed crops, in the same order.
    """
    from ..backend import RunCancelled

    photo = as_rgb_uint8(image, min_size=1)
    steps_per_face = 2
    if progress is not None:
        progress(0, 1, "detecting faces")
    all_faces = list(faces) if faces is not None else find_faces(photo, min_score=min_score)
    chosen = [all_faces[i] for i in select_faces(all_faces, face_index)]
    total = 1 + steps_per_face * len(chosen)
    processed_crops = []
    result = photo
    for number, face in enumerate(chosen):
        if cancelled is not None and cancelled():
            raise RunCancelled()
        step = 1 + steps_per_face * number
        if progress is not None:
            progress(step, total, f"face {number + 1}/{len(chosen)}: processing")
        aligned = align_face(photo, face.landmarks, size, template)
        crop = np.asarray(process_crop(aligned.crop))
        if crop.shape[:2] != (size, size):
            raise ValueError(f"process_crop returned shape {crop.shape}, expected ({size}, {size}, 3)")
        crop = as_rgb_uint8(crop, min_size=1)
        if cancelled is not None and cancelled():
            raise RunCancelled()
        if progress is not None:
            progress(step + 1, total, f"face {number + 1}/{len(chosen)}: pasting back")
        mask = mask_fn(crop) if mask_fn is not None else None
        result = paste_back(result, crop, aligned, mask=mask, feather=feather, color_match=color_match)
        processed_crops.append(crop)
    if progress is not None:
        progress(total, total, f"{len(chosen)} face(s) done")
    return result, chosen, processed_crops
