"""Classical region completion: biharmonic inpainting, plus a mirror fill across the face's
symmetry axis for holes too large for diffusion alone."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage  # the core imports it anyway; skimage loads where used (listing backends)

from napari_faceedit.backend import Backend, RunContext
from napari_faceedit.tasks import CompleteRequest, Result, Task
from napari_faceedit.vocab import CLASS_INDEX, check_attributes

# Holes whose deepest point is this far (px) from known pixels are "large": diffusion alone blurs them.
LARGE_HOLE_DEPTH = 6.0
# Biharmonic inpainting is solved on a crop around each hole with this margin (px).
CONTEXT_MARGIN = 12
# Mean grey-level difference between a hole's surroundings and their mirror above which mirroring is not used.
MAX_MIRROR_ERROR = 35.0
# Mirror only when at least this share of the hole has a known mirror pixel.
MIN_MIRRORED_FRACTION = 0.6


@dataclass(frozen=True)
class MirrorAxis:
    """A symmetry line through ``point`` (x, y) along unit ``direction`` (dx, dy), and how it was found."""

    point: tuple[float, float]
    direction: tuple[float, float]
    source: str

    def reflect(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cx, cy = self.point
        dx, dy = self.direction
        along = (xs - cx) * dx + (ys - cy) * dy
        return 2 * (cx + along * dx) - xs, 2 * (cy + along * dy) - ys


def _axis_through(top: np.ndarray, bottom: np.ndarray, source: str) -> MirrorAxis:
    direction = bottom - top
    direction = direction / max(np.linalg.norm(direction), 1e-6)
    return MirrorAxis((float(top[0]), float(top[1])), (float(direction[0]), float(direction[1])), source)


def axis_from_labels(labels: np.ndarray | None) -> MirrorAxis | None:
    """Face midline through the midpoint of the eyes (or brows) and the centre of the lips/nose."""
    if labels is None:
        return None

    def centre(*names):
        ys, xs = np.nonzero(np.isin(labels, [CLASS_INDEX[n] for n in names]))
        return np.array([xs.mean(), ys.mean()]) if len(xs) else None

    for left, right in (("l_eye", "r_eye"), ("l_brow", "r_brow")):
        a, b = centre(left), centre(right)
        low = centre("u_lip", "l_lip", "mouth")
        if low is None:
            low = centre("nose")
        if a is not None and b is not None and low is not None:
            return _axis_through((a + b) / 2, low, "face labels")
    return None


def axis_from_detector(image: np.ndarray, hole: np.ndarray, detect) -> MirrorAxis | None:
    """Midline from the 5 landmarks of the detected face nearest to the hole, when a detector is installed."""
    try:
        faces = detect(image)
    except Exception:  # noqa: BLE001 - no detector (or no face): fall back to searching
        return None
    if not faces:
        return None
    ys, xs = np.nonzero(hole)
    centre = np.array([xs.mean(), ys.mean()])
    face = min(faces, key=lambda f: np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre))
    eyes = face.landmarks[:2].mean(axis=0)
    mouth = face.landmarks[3:].mean(axis=0)
    return _axis_through(eyes, mouth, "face landmarks")


def axis_by_search(image: np.ndarray, known: np.ndarray, hole: np.ndarray) -> MirrorAxis:
    """Vertical line that best maps known pixels near the hole onto each other (no face information)."""
    ys, xs = np.nonzero(hole)
    pad = int(max(np.ptp(ys), np.ptp(xs)) * 1.5) + 8
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, image.shape[0])
    gray = image[y0:y1].astype(np.float32).mean(axis=2)
    ok = known[y0:y1]
    w = gray.shape[1]
    cols = np.arange(w)
    best_c, best_err = w / 2.0, np.inf
    for doubled in range(2 * (xs.min() - pad), 2 * (xs.max() + pad) + 1):
        mirror = doubled - cols
        inside = (mirror >= 0) & (mirror < w) & (np.abs(mirror - cols) > 2)
        both = ok[:, cols[inside]] & ok[:, mirror[inside]]
        if both.sum() < 0.25 * hole.sum():
            continue
        err = float(np.abs(gray[:, cols[inside]] - gray[:, mirror[inside]])[both].mean())
        if err < best_err:
            best_c, best_err = doubled / 2.0, err
    return MirrorAxis((best_c, 0.0), (0.0, 1.0), "symmetry search")


def mirror_error(image: np.ndarray, known: np.ndarray, hole: np.ndarray, axis: MirrorAxis) -> float:
    """Mean absolute grey-level difference between known pixels near the hole and their mirror."""
    near = ndimage.binary_dilation(hole, iterations=max(8, int(np.sqrt(hole.sum()) // 2))) & known
    ys, xs = np.nonzero(near)
    mx, my = axis.reflect(xs.astype(float), ys.astype(float))
    gray = image.astype(np.float32).mean(axis=2)
    h, w = gray.shape
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    if inside.sum() < 20:
        return float("inf")
    mirrored_known = ndimage.map_coordinates(known.astype(np.float32), [my[inside], mx[inside]], order=0) > 0
    if mirrored_known.sum() < 20:
        return float("inf")
    values = ndimage.map_coordinates(gray, [my[inside], mx[inside]], order=1)
    return float(np.abs(gray[ys[inside], xs[inside]] - values)[mirrored_known].mean())


def biharmonic_fill(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Biharmonic inpainting of ``hole`` solved per hole, on a crop with context around it."""
    from skimage.restoration import inpaint_biharmonic

    out = image.astype(np.float64) / 255.0
    regions, count = ndimage.label(hole)
    for region in ndimage.find_objects(regions):
        y0 = max(region[0].start - CONTEXT_MARGIN, 0)
        y1 = min(region[0].stop + CONTEXT_MARGIN, image.shape[0])
        x0 = max(region[1].start - CONTEXT_MARGIN, 0)
        x1 = min(region[1].stop + CONTEXT_MARGIN, image.shape[1])
        crop_hole = hole[y0:y1, x0:x1]
        out[y0:y1, x0:x1] = inpaint_biharmonic(out[y0:y1, x0:x1], crop_hole, channel_axis=-1)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def spread_inward(values: np.ndarray, known: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Smoothly extend ``values`` (H, W, C) from ``known`` pixels to ``target`` pixels.

    Normalised convolution, fine to coarse: each target pixel takes the estimate at the smallest
    scale at which enough known pixels are near it.
    """
    out = np.zeros_like(values)
    done = ~target
    weight = known.astype(np.float64)
    weighted = values * weight[..., None]
    for sigma in (2, 4, 8, 16, 32, 64, 128):
        den = ndimage.gaussian_filter(weight, sigma)
        ok = (den > 0.05) & ~done
        if ok.any():
            num = ndimage.gaussian_filter(weighted, (sigma, sigma, 0))
            out[ok] = num[ok] / den[ok][:, None]
            done |= ok
        if done.all():
            break
    return out


def mirror_fill(image: np.ndarray, hole: np.ndarray, axis: MirrorAxis) -> tuple[np.ndarray, np.ndarray]:
    """Fill hole pixels from their mirror image across ``axis``, corrected for lighting.

    The mirror copy is shifted by a smooth offset field that matches the real pixels around the
    hole (measured on a ring around the hole and spread inward), so the lit and shaded halves of a
    face leave no seam. Returns (filled image, pixels that were mirrored).
    """
    h, w = hole.shape
    region = ndimage.binary_dilation(hole, iterations=6)
    ys, xs = np.nonzero(region)
    mx, my = axis.reflect(xs.astype(float), ys.astype(float))
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    source = image.astype(np.float64)
    flipped = np.zeros((len(ys), 3))
    for c in range(3):
        flipped[inside, c] = ndimage.map_coordinates(source[..., c], [my[inside], mx[inside]], order=1)
    mirror_in_hole = np.ones(len(ys), bool)
    mirror_in_hole[inside] = ndimage.map_coordinates(hole.astype(np.float32), [my[inside], mx[inside]], order=0) > 0
    usable = inside & ~mirror_in_hole
    flipped_image = np.zeros_like(source)
    flipped_image[ys, xs] = flipped
    mirrored = np.zeros_like(hole)
    mirrored[ys[usable], xs[usable]] = True
    ring = region & ~hole & mirrored
    mirrored &= hole
    if not mirrored.any():
        return image.copy(), mirrored
    smooth = spread_inward(source - flipped_image, ring, mirrored)
    out = source.copy()
    out[mirrored] = flipped_image[mirrored] + smooth[mirrored]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mirrored


class ClassicCompletion(Backend):
    name = "classic-complete"
    version = "0.1.0"
    tasks = frozenset({Task.COMPLETE})
    description = ("Fills the drawn region by biharmonic inpainting; large holes on a face are first "
                   "filled from the mirror side across the detected symmetry axis, lighting-corrected.")
    limitations = ("No learned prior: it cannot invent content absent from the rest of the image "
                   "(a hole over both eyes, or an off-axis profile, falls back to smooth inpainting), "
                   "and it cannot steer attributes.")
    supported_attributes = ()

    def run(self, request: CompleteRequest, ctx: RunContext) -> Result:
        check_attributes(request.attributes, self.supported_attributes, self.name)
        image, hole = request.image, request.mask
        progress = ctx.progress
        progress(0, 3, "measuring the hole")
        depth = ndimage.distance_transform_edt(hole).max()
        work = image
        notes = "biharmonic inpainting"
        mirrored = np.zeros_like(hole)
        if depth > LARGE_HOLE_DEPTH:
            axis = (axis_from_labels(request.labels) or axis_from_detector(image, hole, ctx.detect)
                    or axis_by_search(image, ~hole, hole))
            error = mirror_error(image, ~hole, hole, axis)
            ctx.check()
            # Only trust the mirror when the surroundings of the hole really look like their mirror image.
            if error < MAX_MIRROR_ERROR:
                filled, mirrored = mirror_fill(image, hole, axis)
                # A hole on the midline (nose, mouth) mirrors onto itself: diffusion does better there.
                if mirrored.sum() >= MIN_MIRRORED_FRACTION * hole.sum():
                    work = filled
                    notes = (f"mirror fill across the face midline ({axis.source}, mirror error {error:.1f}) "
                             "+ biharmonic inpainting")
                else:
                    mirrored = np.zeros_like(hole)
                    notes = "biharmonic inpainting (the hole lies on the face midline)"
            else:
                notes = f"biharmonic inpainting (no trustworthy symmetry: mirror error {error:.1f})"
        ctx.check()
        progress(1, 3, "inpainting")
        remaining = hole & ~mirrored
        if remaining.any():
            work = biharmonic_fill(work, remaining)
        ctx.check()
        if mirrored.any():
            # Soften the seam between mirrored and diffused content with a light blur inside the hole only.
            blurred = ndimage.gaussian_filter(work.astype(np.float64), sigma=(1.0, 1.0, 0))
            edge = ndimage.binary_dilation(remaining, iterations=2) & hole
            work = work.copy()
            work[edge] = np.clip(np.rint(blurred[edge]), 0, 255).astype(np.uint8)
        progress(2, 3, "compositing")
        out = image.copy()
        out[hole] = work[hole]  # pixels outside the hole are the input's, bit for bit
        progress(3, 3, "done")
        ctx.note(notes)
        return Result(image=out)
