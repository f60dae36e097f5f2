"""The one face loop every face backend runs through: find faces -> choose -> align -> edit -> paste back.

No-face rule (the same for every task): faces come from ``request.landmarks`` when given, else from
the detector (once per image per run, through the run context), keeping faces scored at least
``DEFAULT_MIN_SCORE``. When there are none, a weaker candidate (score >= ``WEAK_FACE_SCORE``) is used
and the result says so; a picture with no face-like candidate at all (noise, a flat image, a
landscape) raises :class:`NoFaceFound` — it is never parsed or edited as if it were a face. Every
real face crop we test on (CelebA, CelebAMask-HQ, FFHQ, degraded and grayscale crops) is found at
the normal threshold. ``whole_image=True`` says the image is an aligned face crop and skips
detection. A run that allows it (``--allow-no-face`` in batch mode) passes an image without a face
through unchanged and says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from ..tasks import Result, is_grayscale, to_gray
from .align import (AlignedFace, align_face, crop_footprint, paste_back, paste_weights_in_photo, template_points,
                    warp_labels_back, warp_labels_to_crop)
from .detect import DetectedFace

if TYPE_CHECKING:
    from ..backend import CropResult, FaceBackend, FaceCrop
    from ..context import RunContext
    from ..tasks import Request

WEAK_FACE_SCORE = 0.5  # below the normal threshold, above what MTCNN gives noise or flat images (nothing)
# Parser classes that make up "the face" for Paste.FACE_REGION: skin .. hair (not hat, jewellery, neck, cloth).
FACE_REGION_CLASSES = tuple(range(1, 14))


class NoFaceFound(ValueError):
    """No face was detected and the image does not look like a face crop already."""


class FaceIndexError(IndexError, ValueError):
    """``face_index`` does not name one of the detected faces (a bad request value, hence ValueError too)."""


def whole_image_face(image: np.ndarray, template: str) -> DetectedFace:
    """The whole image as one face aligned to ``template`` (score 0): its landmarks are the template's,
    stretched over the image, so a square image in that framing maps onto the crop by scaling alone."""
    height, width = image.shape[:2]
    reference = 512
    points = template_points(template, reference)
    landmarks = np.stack([(points[:, 0] + 0.5) * width / reference - 0.5,
                          (points[:, 1] + 0.5) * height / reference - 0.5], axis=1)
    return DetectedFace(box=[0, 0, width, height], score=0.0, landmarks=landmarks)


def find_faces(image: np.ndarray, ctx: "RunContext", template: str, whole_image: bool = False,
               landmarks: Optional[np.ndarray] = None) -> list[DetectedFace]:
    """Faces to consider, largest first, by the module's no-face rule."""
    if whole_image:
        return [whole_image_face(image, template)]
    if landmarks is not None:
        return [DetectedFace(box=_box_of(points), score=1.0, landmarks=points) for points in landmarks]
    faces = ctx.detect(image)
    if faces:
        return faces
    weak = ctx.detect(image, min_score=WEAK_FACE_SCORE)
    if weak:
        ctx.note(f"no clear face: used the best weak candidate (detector score {weak[0].score:.2f})")
        return weak[:1]
    height, width = image.shape[:2]
    raise NoFaceFound(f"no face found in the {width}x{height} image; try a photo where the face is larger, "
                      "sharper or more frontal; for an aligned face crop, set whole_image")


def _box_of(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64).reshape(5, 2)
    (x0, y0), (x1, y1) = points.min(0), points.max(0)
    pad = 0.6 * max(x1 - x0, y1 - y0)
    return np.array([x0 - pad, y0 - pad, x1 + pad, y1 + pad])


def select_faces(faces: Sequence, face_index: Optional[int]) -> list[int]:
    """Indices to process: all (``None``) or the one asked for, with a clear error when out of range."""
    if face_index is None:
        return list(range(len(faces)))
    index = int(face_index)
    if not 0 <= index < len(faces):
        raise FaceIndexError(
            f"face_index {face_index} is out of range: {len(faces)} face(s) found (valid: 0..{len(faces) - 1}, largest first)"
        )
    return [index]


def face_region_weights(crop: np.ndarray, ctx: "RunContext") -> Optional[np.ndarray]:
    """Paste weights from the parse service: the face (skin .. hair) of ``crop``, grown a little;
    None (= soft box) without a parser or when the parse finds almost no face."""
    from scipy import ndimage

    try:
        labels = ctx.parse(crop, whole_image=True)
    except LookupError:
        ctx.note("no face parser installed: pasted with a soft box")
        return None
    region = np.isin(labels, FACE_REGION_CLASSES)
    if region.mean() < 0.05:
        ctx.note("the parser found almost no face in a crop: pasted with a soft box")
        return None
    # Grown: paste_back feathers the weights inwards and outwards.
    return ndimage.binary_dilation(region, iterations=max(1, crop.shape[0] // 32)).astype(np.float32)


@dataclass
class FaceRun:
    """What the pipeline did: the result plus, per processed face, its alignment, edit and paste weights."""

    result: Result
    source: Optional[np.ndarray] = None  # the input photo
    faces: list[DetectedFace] = field(default_factory=list)
    aligned: list[AlignedFace] = field(default_factory=list)
    edited: list = field(default_factory=list)  # CropResult per face
    weights: list = field(default_factory=list)  # crop-sized paste weights per face (None = soft box)
    hole_outside_faces: Optional[np.ndarray] = None  # Paste.HOLE: hole pixels no face crop reaches
    grayscale: bool = False

    def paste_all(self, photo: np.ndarray, scale: float, backend: "FaceBackend", ctx: "RunContext") -> np.ndarray:
        """Paste the same edited crops into ``photo`` (e.g. the input upsampled ``scale`` times)."""
        for aligned, edited, weights in zip(self.aligned, self.edited, self.weights):
            if edited.image is None:
                continue
            matrix = aligned.matrix.copy()
            matrix[:, :2] /= scale
            moved = AlignedFace(crop=aligned.crop, matrix=matrix, size=aligned.size, template=aligned.template,
                                landmarks=None if aligned.landmarks is None else aligned.landmarks * scale,
                                photo_shape=photo.shape[:2])
            photo = paste_back(photo, edited.image, moved, weights=weights, feather=backend.feather,
                               color_match=_color_match(backend, ctx) and not self.grayscale)
        return photo


def _color_match(backend: "FaceBackend", ctx: "RunContext") -> bool:
    """The backend's colour-matching default, or the user's choice where the backend declares it."""
    return bool(ctx.params.get("color_match", backend.color_match))


def _as_crop_result(output, size: int, name: str) -> "CropResult":
    from ..backend import CropResult
    from ..tasks import as_rgb_uint8

    edited = output if isinstance(output, CropResult) else CropResult(image=np.asarray(output))
    if edited.image is None and edited.labels is None:
        raise RuntimeError(f"backend '{name}' returned neither an image nor labels for a face")
    if edited.image is not None:
        if np.asarray(edited.image).shape[:2] != (size, size):
            raise RuntimeError(f"backend '{name}' returned a crop of shape {np.asarray(edited.image).shape}, "
                               f"expected ({size}, {size}, 3)")
        edited.image = as_rgb_uint8(edited.image, min_size=1)
    if edited.labels is not None and np.asarray(edited.labels).shape != (size, size):
        raise RuntimeError(f"backend '{name}' returned crop labels of shape {np.asarray(edited.labels).shape}, "
                           f"expected ({size}, {size})")
    return edited


def _crop_inputs(request: "Request", aligned: AlignedFace) -> dict:
    """The request's label map, edited labels and hole, warped into the crop (nearest neighbour)."""
    out = {}
    for field_name, key in (("labels", "labels"), ("target_labels", "target_labels"), ("mask", "hole")):
        value = getattr(request, field_name, None)
        if value is not None:
            warped = warp_labels_to_crop(value, aligned)
            out[key] = warped.astype(bool) if key == "hole" else warped
    return out


def passed_through(image: np.ndarray, reason: BaseException, labels: bool) -> Result:
    """The input unchanged, saying why (a run that lets pictures without a face through): the image,
    or empty labels for a run that labels."""
    why = f"{reason}: passed through unchanged"
    if labels:
        return Result(labels=np.zeros(image.shape[:2], np.int32), passed_through=why)
    return Result(image=image.copy(), passed_through=why)


def run_face_pipeline(backend: "FaceBackend", request: "Request", ctx: "RunContext") -> FaceRun:
    """Run ``backend.process_crop`` on every chosen face of ``request.image`` and paste the results back."""
    from ..backend import FaceCrop, Paste

    image = request.image
    policy = backend.paste_policy(ctx)
    ctx.progress(0, 1, "finding faces")
    try:
        faces = find_faces(image, ctx, backend.template, bool(ctx.params.get("whole_image", False)),
                           getattr(request, "landmarks", None))
    except NoFaceFound as exc:
        if not ctx.allow_no_face:
            raise
        return FaceRun(result=passed_through(image, exc, labels=policy is Paste.LABELS))
    chosen = select_faces(faces, request.face_index)
    total = len(chosen) + 2
    ctx.check()
    ctx.progress(1, total, f"{len(faces)} face(s) found; loading {backend.name}")
    backend.prepare(request, ctx)

    run = FaceRun(result=Result(), source=image, grayscale=is_grayscale(image))
    photo = image.copy()
    labels = np.zeros(image.shape[:2], np.int32) if policy is Paste.LABELS else None
    paste_footprint = np.zeros(image.shape[:2], np.float32)
    hole_photo = getattr(request, "mask", None)
    for number, index in enumerate(chosen):
        ctx.check()
        ctx.progress(2 + number, total, f"face {number + 1} of {len(chosen)}: {backend.name}")
        face = faces[index]
        aligned = align_face(image, face.landmarks, backend.crop_size_for(face.landmarks, ctx), backend.template)
        crop = FaceCrop(image=aligned.crop, aligned=aligned, index=index, request=request,
                        **_crop_inputs(request, aligned))
        edited = _as_crop_result(backend.process_crop(crop, ctx), aligned.size, backend.name)
        weights = None
        if edited.image is not None and run.grayscale:
            edited.image = to_gray(edited.image)
        if edited.image is not None and policy is Paste.HOLE:
            # Only the user's hole changes: the crop is warped back with full weight, then masked.
            whole = paste_back(photo, edited.image, aligned, weights=np.ones((aligned.size,) * 2, np.float32), feather=0.0)
            photo = np.where(hole_photo[..., None], whole, photo)
            paste_footprint = np.maximum(paste_footprint, hole_photo.astype(np.float32))
        elif edited.image is not None and policy is not Paste.LABELS:
            weights = backend.paste_weights(crop, edited, ctx)
            photo = paste_back(photo, edited.image, aligned, weights=weights, feather=backend.feather,
                               color_match=_color_match(backend, ctx) and not run.grayscale)
            footprint = paste_weights_in_photo(aligned, image.shape[:2], weights, backend.feather)
            paste_footprint = np.maximum(paste_footprint, footprint.astype(np.float32))
        if edited.labels is not None and labels is not None:
            face_labels = warp_labels_back(edited.labels, aligned, image.shape[:2])
            free = labels == 0  # an earlier (larger) face keeps its pixels
            labels[free] = face_labels[free]
        run.faces.append(face)
        run.aligned.append(aligned)
        run.edited.append(edited)
        run.weights.append(weights)
    ctx.check()
    if policy is Paste.HOLE and hole_photo is not None:
        reached = np.zeros(image.shape[:2], bool)
        for aligned in run.aligned:
            reached |= crop_footprint(aligned, image.shape[:2])
        run.hole_outside_faces = hole_photo & ~reached
        outside = int(run.hole_outside_faces.sum())
        if outside:
            ctx.note(f"{outside} hole pixels ({outside / max(int(hole_photo.sum()), 1):.0%}) lie outside every face "
                     "crop: the face model did not fill them")
    if run.grayscale and policy is not Paste.LABELS:
        # Resampling and blending must not tint a grayscale photo.
        changed = np.any(photo != image, axis=2)
        photo[changed] = to_gray(photo)[changed]
    ctx.progress(total, total, f"{len(chosen)} face(s) done")
    ctx.note(f"{len(chosen)} of {len(faces)} face(s) processed")
    run.result = Result(image=None if policy is Paste.LABELS else photo, labels=labels,
                        extras=_extras(run, backend, ctx, paste_footprint, policy))
    return run


def _extras(run: FaceRun, backend: "FaceBackend", ctx: "RunContext", footprint: np.ndarray, policy) -> dict:
    from ..backend import Paste

    extras: dict[str, np.ndarray] = {}
    if backend.face_layers:
        extras["landmarks"] = np.stack([f.landmarks for f in run.faces]).astype(np.float32)
        extras["boxes"] = np.stack([f.box for f in run.faces]).astype(np.float32)
    if policy is not Paste.LABELS:
        extras["paste_weights"] = footprint
    if ctx.params.get("return_crops", False):
        size = run.aligned[0].size
        extras["crops_before"] = np.stack([_resized(a.crop, size) for a in run.aligned])
        if all(e.image is not None for e in run.edited):
            extras["crops_after"] = np.stack([_resized(e.image, size) for e in run.edited])
    for key in run.edited[0].extras if run.edited else ():
        extras[key] = np.stack([np.asarray(e.extras[key]) for e in run.edited])
    return extras


def _resized(crop: np.ndarray, size: int) -> np.ndarray:
    if crop.shape[0] == size:
        return crop
    from PIL import Image

    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC))
