"""Face completion with controllable attributes (Chen et al. 2018) on the core face pipeline.

Each face is aligned to the CelebAMask-HQ framing, the hole warped into the crop is filled in one
forward pass of our progressive U-Net conditioned on the chosen attributes, and only the hole is
pasted back: every pixel outside it stays bit-for-bit.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from napari_faceedit.backend import FaceBackend, FaceCrop, Paste, RunContext
from napari_faceedit.params import Param
from napari_faceedit.tasks import CompleteRequest, Result, Task

from .attributes import SUPPORTED_ATTRIBUTES, check_supported

COMPLETION_FILE = "complete_progressive.pt"
# The full-resolution fill that supplies the detail finer than the generator's pixels.
DETAIL_BACKEND = "classic-complete"
NO_FACE_NOTE = f"no face found: the hole is filled by {DETAIL_BACKEND} alone"
# Low-pass of (learned - classical), in generator pixels: the generator's bands are those coarser than this.
# Chosen on the dev faces (eval_completion.py --split dev, MAE inside the hole over five hole types):
# generator alone 27.0, classical 26.1; sigma 0.25 / 0.5 / 1 / 2 generator pixels: 26.3 / 25.6 / 24.8 / 24.4.
DETAIL_SIGMA = 2.0


class ProgressiveCompletion(FaceBackend):
    name = "completion-progressive"
    version = "1"
    tasks = frozenset({Task.COMPLETE})
    description = ("Our progressive U-Net completion GAN (Chen et al. 2018 design), trained here on CelebA and "
                   "CelebAMask-HQ: fills the hole of each face in one pass, steered by the attributes you choose "
                   "(smiling, mouth open, glasses, gender, age, makeup, eyebrows, eyes).")
    limitations = ("A small model trained on a CPU from 5,000 low-resolution faces; the generator works at 64 px, so "
                   "without attributes the detail finer than that comes from classic-complete's fill, and thin "
                   "brush strokes are still filled a little worse than by classic-complete alone. With attributes "
                   "the generator's fill is used alone (soft): attributes shift it measurably (age, gender) but "
                   "subtly. The hole must lie on a face the detector finds (or an aligned face crop). Pixels "
                   "outside the hole never change.")
    supported_attributes = SUPPORTED_ATTRIBUTES
    bundled = (COMPLETION_FILE,)
    uses_torch = True
    # Above classic-complete (priority 0): on the held-out val faces it fills better on average (MAE inside
    # the hole 23.7 vs 25.2; benchmarks/results/completion_eval.md).
    priority = 10
    template = "celebamask"
    crop_size = 128  # the resolution the generator is trained to
    paste = Paste.HOLE
    parameters = (Param("detail", "auto", "detail finer than the generator's pixels: from the full-resolution "
                        "classical fill (classical), none (the generator's upsampled fill alone), or auto: classical "
                        "unless attributes are chosen (the classical fill cannot follow them)",
                        choices=("auto", "classical", "none")),)

    def __init__(self, model=None):
        self._injected = model
        if model is not None:
            self.ready = lambda: (True, "ready (generator supplied by the caller)")  # type: ignore[method-assign]

    def prepare(self, request: CompleteRequest, ctx: RunContext) -> None:
        from .model import load_generator

        check_supported(request.attributes)
        if self._injected is not None:
            self.model = self._injected.to(ctx.device).eval()
        else:
            self.model = ctx.load_bundled(COMPLETION_FILE, load=lambda path: load_generator(path, ctx.device))
        size, _ = self.model.trained_stage()
        ctx.note(f"generator trained to {size} px; attributes {request.attributes or 'left to the model'}")

    def process_crop(self, face: FaceCrop, ctx: RunContext):
        from .model import complete

        if face.hole is None or not face.hole.any():
            return face.image  # the hole lies outside this face's crop: nothing to do here
        return complete(self.model, face.image, face.hole, face.request.attributes)

    def run(self, request: CompleteRequest, ctx: RunContext) -> Result:
        from napari_faceedit.face.pipeline import NoFaceFound, run_face_pipeline

        try:
            face_run = run_face_pipeline(self, request, ctx)
        except NoFaceFound:
            if request.attributes:  # they would be ignored: an error rather than a fill without them
                raise
            face_run = None
        if face_run is None or not face_run.aligned:  # no face (a batch run passes those through)
            if request.attributes:
                return face_run.result
            ctx.note(NO_FACE_NOTE)
            return self._classical(request, ctx)
        detail = ctx.params["detail"]
        if detail == "auto":
            detail = "none" if request.attributes else "classical"
        outside = face_run.hole_outside_faces
        if detail == "none" and not outside.any():
            return face_run.result
        ctx.check()
        try:
            classical = self._classical(request, ctx).image
        except KeyError as missing:  # the registry's "no backend named ..."
            ctx.note(f"{missing.args[0]}: the generator's fill is used alone")
            return face_run.result
        ctx.check()
        image = face_run.result.image
        if detail == "classical":
            generator_size = self.model.trained_stage()[0]
            image = with_classical_detail(face_run, classical, request.mask, self.crop_size / generator_size)
            ctx.note(f"detail finer than the generator's {generator_size} px from {DETAIL_BACKEND}")
        if outside.any():
            image = image.copy()
            image[outside] = classical[outside]
            ctx.note(f"hole pixels outside every face filled by {DETAIL_BACKEND}"
                     + (" (the attributes apply on faces only)" if request.attributes else ""))
        face_run.result.image = image
        return face_run.result

    @staticmethod
    def _classical(request: CompleteRequest, ctx: RunContext) -> Result:
        return ctx.delegate(dataclasses.replace(request, attributes={}, params={}), DETAIL_BACKEND)


def with_classical_detail(face_run, classical: np.ndarray, hole: np.ndarray, generator_pixel: float) -> np.ndarray:
    """Inside the hole: ``classical + lowpass(learned - classical)``, the low-pass a Gaussian of
    ``DETAIL_SIGMA`` generator pixels (``generator_pixel`` crop pixels each) measured in the photo.

    The generator sees the face at 64 px: it knows what belongs in a large hole, but its fill is soft,
    and in a thin one (a brush stroke) it is worse than interpolating the full-resolution pixels
    around it. The difference of the two fills, zero outside the hole, is low-passed: in a large
    hole's interior it survives, so its content is the generator's with the classical fill's fine
    detail; across a thin hole it is averaged with the zeros around it, so the classical fill stays.
    """
    from scipy import ndimage

    from napari_faceedit.face.align import crop_footprint

    learned = face_run.result.image
    out = learned.copy()
    difference = learned.astype(np.float32) - classical.astype(np.float32)
    for aligned in face_run.aligned:  # in paste order: a later face's pixels win, as in the paste
        sigma = DETAIL_SIGMA * generator_pixel / aligned.scale
        reached = crop_footprint(aligned, hole.shape) & hole
        if not reached.any():
            continue
        rows, cols = np.nonzero(reached)
        margin = int(np.ceil(4 * sigma)) + 1
        box = (slice(max(rows.min() - margin, 0), rows.max() + margin + 1),
               slice(max(cols.min() - margin, 0), cols.max() + margin + 1))
        local = np.where(reached[box][..., None], difference[box], 0.0)  # hole pixels this face filled
        coarse = ndimage.gaussian_filter(local, sigma=(sigma, sigma, 0), mode="constant")
        blended = np.clip(np.rint(classical[box].astype(np.float32) + coarse), 0, 255).astype(learned.dtype)
        out[box][reached[box]] = blended[reached[box]]
    return out

