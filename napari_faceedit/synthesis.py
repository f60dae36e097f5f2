"""What every label-guided synthesis backend shares (mask-guided editing, Gu et al. 2019, and its
classical counterpart): the face's own labels, the edited labels and a donor face, all in one
aligned framing, and the paste of exactly the region that changed.

A subclass implements ``render`` (re-draw a face so it follows a target label map) and
``transfer`` (take components from a donor face). The order for a request with both edited labels
and a donor: take the donor's components first, then render the edited map with the donor's
component shapes swapped in.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from .backend import CropResult, FaceBackend, FaceCrop, Paste, RunContext
from .face.align import align_face, warp_labels_to_crop
from .tasks import SynthesizeRequest, Task
from .vocab import FACE_COMPONENTS

# Pixels within this distance of a changed pixel are pasted too: the render's seams blend there.
REGION_MARGIN = 2


class LabelSynthesisBackend(FaceBackend):
    tasks = frozenset({Task.SYNTHESIZE})
    template = "celebamask"  # the framing of CelebAMask-HQ, whose labels these backends learn from
    crop_size = 256
    paste = Paste.REGION
    feather = 0.02

    def render(self, image: np.ndarray, labels: np.ndarray, target_labels: np.ndarray, ctx: RunContext) -> np.ndarray:
        """``image`` (aligned, labelled ``labels``) re-drawn to follow ``target_labels``."""
        raise NotImplementedError

    def transfer(self, image: np.ndarray, labels: np.ndarray, donor_image: np.ndarray, donor_labels: np.ndarray,
                 components: tuple[str, ...], ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
        """(image, labels) with ``components`` taken from the donor face (same framing)."""
        raise NotImplementedError

    def load(self, ctx: RunContext) -> None:
        """Load models (called once per run)."""

    def prepare(self, request: SynthesizeRequest, ctx: RunContext) -> None:
        # The face's own labels: given, or parsed once for the whole photo, so that the unedited
        # parts of the edited map and of this one are warped into the crop the same way.
        self.photo_labels = request.labels
        if self.photo_labels is None:
            ctx.progress(1, 3, "parsing the face's own labels")
            self.photo_labels = ctx.parse(request.image)
        self.donor: Optional[tuple[np.ndarray, np.ndarray]] = None
        if request.components:
            self.donor = self._aligned_donor(request.donor_image, ctx)
        self.load(ctx)

    def _aligned_donor(self, donor_image: np.ndarray, ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
        from .face.pipeline import NoFaceFound, find_faces

        try:
            faces = find_faces(donor_image, ctx, self.template)
        except NoFaceFound as exc:
            raise NoFaceFound(f"donor face: {exc}") from None
        aligned = align_face(donor_image, faces[0].landmarks, self.crop_size, self.template)
        return aligned.crop, ctx.parse(aligned.crop, whole_image=True)

    def process_crop(self, face: FaceCrop, ctx: RunContext) -> CropResult:
        request: SynthesizeRequest = face.request
        own = warp_labels_to_crop(self.photo_labels, face.aligned).astype(np.int32)
        image, labels = face.image, own
        target = face.target_labels
        if self.donor is not None:
            donor_image, donor_labels = self.donor
            image, labels = self.transfer(image, own, donor_image, donor_labels, request.components, ctx)
            if target is not None:
                target = with_components(target, donor_labels, request.components)
        if target is not None:
            image = self.render(image, labels, target, ctx)
            labels = target
        changed = np.any(image != face.image, axis=2) | (labels != own)
        region = ndimage.binary_dilation(changed, iterations=REGION_MARGIN) if changed.any() else changed
        # The labels rendered travel as a per-face extra (benchmarks score them); the photo's own
        # label layers stay the user's.
        return CropResult(image=image, region=region.astype(np.float32), extras={"rendered_labels": labels.astype(np.uint8)})


def with_components(target: np.ndarray, donor_labels: np.ndarray, components: tuple[str, ...]) -> np.ndarray:
    """The edited map with the donor's shapes of ``components`` swapped in."""
    from .label_edits import swap_component

    out = np.asarray(target)
    for name in components:
        if name in FACE_COMPONENTS and name != "skin":  # the skin keeps the edited outline
            out = swap_component(out, donor_labels, name)
    return out
