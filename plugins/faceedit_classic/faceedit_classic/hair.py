"""Classical hair recoloring inside the hair label, in CIELAB, with soft edges."""
from __future__ import annotations

import numpy as np
from scipy import ndimage  # the core imports it anyway; skimage loads where used (listing backends)

from napari_faceedit.backend import Backend, RunContext
from napari_faceedit.tasks import EditAttributesRequest, Result, Task
from napari_faceedit.vocab import CLASS_INDEX, HAIR_COLOR_ATTRIBUTES, check_attributes

# Target hair colour as (mean L*, a*, b*, lightness contrast factor), measured by eye on typical
# CelebA hair of each class; the contrast factor keeps strand texture (dark hair shows less of it).
HAIR_TARGETS: dict[str, tuple[float, float, float, float]] = {
    "Black_Hair": (14.0, 1.0, 1.0, 0.45),
    "Brown_Hair": (32.0, 9.0, 18.0, 0.8),
    "Blond_Hair": (68.0, 4.0, 30.0, 0.9),
    "Gray_Hair": (62.0, 0.0, 2.0, 0.9),
}
HAIR = CLASS_INDEX["hair"]


def target_hair_color(attributes: dict[str, float]) -> str:
    """The one hair colour the request asks for (value > 0.5); anything else is ambiguous."""
    wanted = [name for name, value in attributes.items() if float(value) > 0.5]
    if len(wanted) != 1:
        raise ValueError(
            "choose exactly one target hair colour (set one of "
            f"{', '.join(HAIR_COLOR_ATTRIBUTES)} to 1); got {attributes}"
        )
    return wanted[0]


def recolor_hair(image: np.ndarray, hair_mask: np.ndarray, target: str, strength: float = 1.0,
                 feather: float = 2.0) -> np.ndarray:
    """Recolour the pixels of ``hair_mask``: L* is shifted/scaled to the target mean (texture kept),
    a*/b* move to the target chroma with the original chroma variation damped. Blended by a
    feathered mask times ``strength``; pixels outside the feathered mask are untouched."""
    from skimage.color import lab2rgb, rgb2lab

    mean_l, mean_a, mean_b, contrast = HAIR_TARGETS[target]
    lab = rgb2lab(image)
    hair = hair_mask.astype(bool)
    lightness = lab[..., 0]
    hair_l = lightness[hair]
    new = lab.copy()
    new[..., 0] = np.clip((lightness - hair_l.mean()) * contrast + mean_l, 0, 100)
    new[..., 1] = mean_a + 0.25 * (lab[..., 1] - lab[..., 1][hair].mean())
    new[..., 2] = mean_b + 0.25 * (lab[..., 2] - lab[..., 2][hair].mean())
    recolored = lab2rgb(new) * 255.0
    # Soft edge: blur the mask but never let it grow outside a small dilation of the hair region.
    alpha = ndimage.gaussian_filter(hair.astype(np.float64), feather) if feather > 0 else hair.astype(float)
    alpha = np.where(ndimage.binary_dilation(hair, iterations=int(np.ceil(feather))), alpha, 0.0)
    alpha = np.maximum(alpha, hair * 0.5) * float(strength)
    out = image.astype(np.float64) * (1 - alpha[..., None]) + recolored * alpha[..., None]
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    untouched = alpha == 0
    out[untouched] = image[untouched]
    return out


class ClassicHairColor(Backend):
    name = "classic-hair"
    version = "0.1.0"
    tasks = frozenset({Task.EDIT_ATTRIBUTES})
    description = ("Recolours the hair region (label 'hair') to black, brown, blond or gray in CIELAB, "
                   "keeping strand texture, with feathered edges.")
    limitations = ("Only hair colour; no other attribute. Needs a hair label: painted by you or from an "
                   "installed face parser. Cannot change hair shape, and very dark hair turned blond "
                   "looks flat.")
    supported_attributes = HAIR_COLOR_ATTRIBUTES

    # Works on the whole photo (long hair reaches far beyond an aligned face crop); the face index
    # chooses whose hair when the labels come from the parse service.
    per_face = True

    def run(self, request: EditAttributesRequest, ctx: RunContext) -> Result:
        check_attributes(request.attributes, self.supported_attributes, self.name)
        target = target_hair_color(request.attributes)
        labels = request.labels
        if labels is not None and (request.face_index is not None or request.landmarks is not None):
            raise ValueError("hair labels were given: a face index or landmarks do not apply (the labels say where the hair is)")
        if labels is None:
            ctx.progress(0, 2, "parsing the face")
            try:
                labels = ctx.parse(request.image, face_index=request.face_index)
            except LookupError:
                raise ValueError("no hair labels given and no face parser is installed: paint the hair "
                                 "label (13 'hair') in a Face labels layer and select it") from None
            ctx.note("hair from an automatic face parse")
        else:
            ctx.note("hair from the given label map")
        hair = labels == HAIR
        if not hair.any():
            raise ValueError("the label map has no hair pixels (label 13 'hair'): paint the hair first")
        ctx.check()
        ctx.progress(1, 2, f"recoloring hair to {target}")
        out = recolor_hair(request.image, hair, target, request.strength)
        ctx.progress(2, 2, "done")
        ctx.note(f"target {target}")
        return Result(image=out)
