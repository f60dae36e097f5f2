"""Label-guided face synthesis without a learned model: warp the source's own texture into the
edited label map, then blend in the gradient domain.

Every class of the target map gets a texture layer sampled from a source face through a warp:

* inner features (each eye, each brow, each ear, the nose, the lips with the mouth interior) are
  warped by a thin-plate spline fitted to corresponding points on their source and target outlines;
* surface regions (skin, hair, neck, background, ...) move with their changed borders: each border
  pixel is matched to the nearest source border of the same class, and the displacement is spread
  over the region harmonically, fading to zero where nothing changed.

A layer pixel whose warped sample lands on another class has no texture; it is filled smoothly
(e.g. skin where a feature shrank). The layers are composited by the target labels and merged by one
Poisson solve over the changed region: within a class the guidance is that layer's gradient, across a
border it is the gradient of the layer that lies on top (hair over brows over skin, ...), which keeps
each feature's real edge while colours meet without seams; the face's own features are also pulled
towards their own colour (screened Poisson). Pixels outside the changed region - including all
background that is background in both maps - are the input's, bit for bit.

Transfers from a donor face use the same machinery: the donor's features are warped onto their new
shapes with a thin band of the donor's surroundings and relit to the face; hair and skin keep the
face's own texture and take the donor's colour statistics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np
from scipy import ndimage  # the core imports it anyway; skimage and scipy.sparse load where used (listing backends)

from napari_faceedit.label_edits import COMPONENT_PARTS, COMPONENTS, swap_component, validate_labels
from napari_faceedit.poisson import grid_edges, solve_on_grid
from napari_faceedit.synthesis import LabelSynthesisBackend
from napari_faceedit.tasks import as_rgb_uint8
from napari_faceedit.vocab import CLASS_INDEX, N_CLASSES

Progress = Optional[Callable[[int, int, str], None]]

# Back to front: a class later in this order is drawn over (occludes) the classes before it.
OCCLUSION_ORDER = tuple(CLASS_INDEX[name] for name in (
    "background", "cloth", "neck", "neck_l", "skin", "l_ear", "r_ear", "ear_r", "nose", "l_brow", "r_brow",
    "l_eye", "r_eye", "mouth", "u_lip", "l_lip", "eye_g", "hair", "hat",
))
# Parts warped as one rigid-ish shape by a thin-plate spline (lips and mouth interior move together).
FEATURE_PARTS: tuple[tuple[int, ...], ...] = tuple(
    part for component in ("eyes", "brows", "nose", "mouth", "ears") for part in COMPONENT_PARTS[component]
)
_FEATURE_CLASSES = frozenset(c for part in FEATURE_PARTS for c in part)
_FEATURE_LIST = sorted(_FEATURE_CLASSES)
SKIN = CLASS_INDEX["skin"]
_SKIN_SURFACES = [SKIN, CLASS_INDEX["eye_g"]]
# Points sampled along each outline for the spline.
CONTOUR_POINTS = 48
# Spline smoothing (in units of the part's normalised size): tolerates small outline mismatches.
TPS_SMOOTHING = 0.02
# A surface border pixel farther than this (px) from a source border of its class gets no correspondence.
MAX_BORDER_SHIFT = 40.0
# Changed region = label changes grown by 8 px plus twice their thickness, at most this much (px).
MAX_MARGIN = 32
# Surfaces re-synthesise this many px around a feature that was replaced (its label is a little tight).
STALE_MARGIN = 2
# Surfaces stay put this many px around an unchanged feature.
PIN_MARGIN = 3
# Screened-Poisson weights pulling textured feature pixels towards their warped colour: strong for the
# face's own features (their colour is right), weak for a donor's (its lighting must adapt to the face).
OWN_FEATURE_ANCHOR = 0.3
DONOR_FEATURE_ANCHOR = 0.05
# A donor's feature is relit by at most this factor per channel.
MAX_RELIGHT_GAIN = 1.3
# A donor's feature is cloned with this many px of its surroundings.
DONOR_MARGIN = 3
# Mean colours for classes with no texture anywhere in the source (RGB), e.g. a newly painted open mouth.
DEFAULT_COLORS = {
    CLASS_INDEX["mouth"]: (95, 40, 45), CLASS_INDEX["u_lip"]: (170, 95, 95), CLASS_INDEX["l_lip"]: (180, 100, 100),
    CLASS_INDEX["l_eye"]: (120, 95, 85), CLASS_INDEX["r_eye"]: (120, 95, 85), CLASS_INDEX["l_brow"]: (70, 50, 40),
    CLASS_INDEX["r_brow"]: (70, 50, 40), CLASS_INDEX["hair"]: (60, 45, 35), CLASS_INDEX["skin"]: (200, 160, 140),
}


@dataclass(frozen=True)
class _Texture:
    """Where a class's pixels come from: an image and its labels (same framing as the output)."""

    image: np.ndarray  # (H, W, 3) float64
    labels: np.ndarray  # (H, W) uint8


@dataclass
class _Layer:
    """A warp group's texture on the output grid: values where sampled, and which pixels hold real texture."""

    classes: tuple[int, ...]
    values: np.ndarray  # (H, W, 3) float64
    valid: np.ndarray  # (H, W) bool: sampled inside the same class of the source
    owns: Optional[np.ndarray] = None  # skin pixels around the part that it draws too (a donor's lids)


def _report(progress: Progress, step: int, total: int, message: str) -> None:
    if progress is not None:
        progress(step, total, message)


def _check_face(image, labels, what: str) -> tuple[np.ndarray, np.ndarray]:
    image = as_rgb_uint8(image)
    labels = validate_labels(labels, what)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"{what} have shape {labels.shape}, but the image is {image.shape[:2]}")
    return image, labels


# Components whose texture stays the face's own and whose colour statistics come from the donor:
# name -> (class the statistics are measured on, classes recoloured).
RECOLORED = {
    "hair": (CLASS_INDEX["hair"], (CLASS_INDEX["hair"],)),
    "skin": (CLASS_INDEX["skin"], tuple(CLASS_INDEX[n] for n in ("skin", "nose", "l_ear", "r_ear", "neck"))),
}


@dataclass(frozen=True)
class LabColorTransfer:
    """Colour statistics matching in CIELAB after Reinhard et al. (2001): means moved, lightness spread
    matched within limits."""

    source_mean: np.ndarray
    source_std: np.ndarray
    target_mean: np.ndarray
    target_std: np.ndarray

    @classmethod
    def between(cls, source_rgb: np.ndarray, target_rgb: np.ndarray) -> Optional["LabColorTransfer"]:
        """Transfer taking ``source_rgb`` pixels' statistics (N, 3; 0..255) to ``target_rgb``'s; None
        when either has too few pixels to measure."""
        if len(source_rgb) < 50 or len(target_rgb) < 50:
            return None
        source, target = _to_lab(source_rgb), _to_lab(target_rgb)
        return cls(source.mean(0), source.std(0) + 1e-3, target.mean(0), target.std(0) + 1e-3)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from skimage.color import lab2rgb

        # Lightness contrast is matched (within limits); chroma is only shifted, because scaling it
        # swings shadowed pixels far from the class mean into odd hues.
        ratio = np.clip(self.target_std[0] / self.source_std[0], 2.0 / 3.0, 1.5)
        lab = _to_lab(rgb)
        # Shadows carry little chroma: shift them proportionally less.
        darkness = np.clip(lab[:, :1] / max(self.source_mean[0], 1.0), 0.0, 1.0)
        lab[:, 1:] += darkness * (self.target_mean[1:] - self.source_mean[1:])
        lab[:, 0] = (lab[:, 0] - self.source_mean[0]) * ratio + self.target_mean[0]
        lab[:, 0] = np.clip(lab[:, 0], 0, 100)
        return lab2rgb(lab[None])[0] * 255.0


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(np.clip(rgb, 0, 255)[None] / 255.0)[0]


# ---------------------------------------------------------------- thin-plate spline


def _tps_kernel(distance: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        value = distance ** 2 * np.log(distance)
    return np.nan_to_num(value)


class ThinPlateSpline:
    """2-D thin-plate spline ``f: R^2 -> R^2`` through control points (with optional smoothing).

    Solves [[K + s I, P], [P^T, 0]] [w; a] = [y; 0] with K = r^2 log r and P = [1, x, y]
    (Bookstein 1989); coordinates are normalised so ``smoothing`` does not depend on the scale.
    """

    def __init__(self, source_points: np.ndarray, target_points: np.ndarray, smoothing: float = 0.0):
        source_points = np.asarray(source_points, dtype=np.float64)
        target_points = np.asarray(target_points, dtype=np.float64)
        self.centre = source_points.mean(axis=0)
        self.scale = max(float(np.abs(source_points - self.centre).max()), 1e-6)
        self.points = (source_points - self.centre) / self.scale
        n = len(self.points)
        kernel = _tps_kernel(np.linalg.norm(self.points[:, None] - self.points[None], axis=2))
        affine = np.hstack([np.ones((n, 1)), self.points])
        system = np.zeros((n + 3, n + 3))
        system[:n, :n] = kernel + smoothing * np.eye(n)
        system[:n, n:] = affine
        system[n:, :n] = affine.T
        rhs = np.zeros((n + 3, 2))
        rhs[:n] = target_points
        self.coefficients = np.linalg.lstsq(system, rhs, rcond=None)[0]

    def __call__(self, points: np.ndarray) -> np.ndarray:
        points = (np.asarray(points, dtype=np.float64) - self.centre) / self.scale
        kernel = _tps_kernel(np.linalg.norm(points[:, None] - self.points[None], axis=2))
        n = len(self.points)
        return kernel @ self.coefficients[:n] + self.coefficients[n] + points @ self.coefficients[n + 1:]


def outline_points(mask: np.ndarray, count: int = CONTOUR_POINTS) -> Optional[np.ndarray]:
    """``count`` (row, col) points evenly spaced along the outline of the mask's largest blob,
    counter-clockwise on screen, starting level with its centre on the image-right side, so that two
    similar shapes get corresponding points. None if the mask is empty."""
    from skimage.measure import find_contours

    blobs, n = ndimage.label(mask)
    if n == 0:
        return None
    largest = blobs == (np.argmax(np.bincount(blobs.ravel())[1:]) + 1)
    contours = find_contours(np.pad(largest, 1).astype(np.float64), 0.5)
    contour = max(contours, key=len) - 1.0
    if len(contour) < 4:
        return None
    rows, cols = contour[:, 0], contour[:, 1]
    signed_area = 0.5 * np.sum(cols[:-1] * rows[1:] - cols[1:] * rows[:-1])
    if signed_area > 0:  # screen rows grow downward: negative area is counter-clockwise on screen
        contour = contour[::-1]
    contour = contour[:-1]  # find_contours closes the loop by repeating the first point
    centre = contour.mean(axis=0)
    angle = np.arctan2(-(contour[:, 0] - centre[0]), contour[:, 1] - centre[1])
    contour = np.roll(contour, -int(np.argmin(np.abs(angle))), axis=0)
    closed = np.vstack([contour, contour[:1]])
    arclength = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    wanted = np.linspace(0.0, arclength[-1], count, endpoint=False)
    return np.stack([np.interp(wanted, arclength, closed[:, 0]), np.interp(wanted, arclength, closed[:, 1])], 1)


def feature_warp(source_mask: np.ndarray, target_mask: np.ndarray) -> Optional[ThinPlateSpline]:
    """Spline mapping target-grid (row, col) points into the source so the source part lands on the
    target part's shape; None when either part is missing."""
    source_outline = outline_points(source_mask)
    target_outline = outline_points(target_mask)
    if source_outline is None or target_outline is None:
        return None
    source_points = np.vstack([source_outline, np.array(ndimage.center_of_mass(source_mask))[None]])
    target_points = np.vstack([target_outline, np.array(ndimage.center_of_mass(target_mask))[None]])
    return ThinPlateSpline(target_points, source_points, smoothing=TPS_SMOOTHING)


# ---------------------------------------------------------------- surface regions


def _inner_border(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=1)


def _harmonic_fill(known: np.ndarray, known_values: np.ndarray, domain: np.ndarray) -> np.ndarray:
    """Values on ``domain`` that equal ``known_values`` on ``known`` pixels and are harmonic elsewhere
    (4-neighbour Laplace equation inside ``domain``; edges leaving it are free). (H, W, C) out."""
    out = np.zeros(known_values.shape, dtype=np.float64)
    out[known] = known_values[known]
    unknown = domain & ~known
    if not unknown.any():
        return out
    rows, cols, index, edges = grid_edges(unknown, domain)
    rhs = np.zeros((len(rows), known_values.shape[2]))
    for me, neighbour_rows, neighbour_cols in edges:
        fixed = index[neighbour_rows, neighbour_cols] < 0
        rhs[me[fixed]] += out[neighbour_rows[fixed], neighbour_cols[fixed]]
    # The tiny diagonal keeps blobs that touch no known pixel solvable (they settle at 0).
    out[unknown] = solve_on_grid(index, edges, rhs, np.full(len(rows), 1e-6))
    return out


def region_displacement(source_mask: np.ndarray, target_mask: np.ndarray, region: np.ndarray,
                        fixed: np.ndarray, fixed_values: np.ndarray, free: np.ndarray,
                        source_free: np.ndarray) -> np.ndarray:
    """(H, W, 2) backward displacement (target pixel -> source point) for a surface class.

    ``fixed`` pixels take ``fixed_values`` (zero beside unchanged features, the feature's own warp
    beside a moved one); the class pixels outside ``region`` stay put. The other border pixels of the
    class inside ``region``, unless ``free``, take the offset to the nearest source border pixel of the
    class outside ``source_free`` (when closer than MAX_BORDER_SHIFT). The rest is harmonic.
    """
    source_border = _inner_border(source_mask) & ~source_free
    displacement = np.where(fixed[..., None], fixed_values, 0.0)
    known = fixed | (target_mask & ~region)
    if source_border.any():
        distance, (near_rows, near_cols) = ndimage.distance_transform_edt(~source_border, return_indices=True)
        matched = _inner_border(target_mask) & region & ~free & ~known & (distance <= MAX_BORDER_SHIFT)
        rows, cols = np.nonzero(matched)
        displacement[rows, cols, 0] = near_rows[rows, cols] - rows
        displacement[rows, cols, 1] = near_cols[rows, cols] - cols
        known |= matched
    return _harmonic_fill(known, displacement, target_mask)


# ---------------------------------------------------------------- layers


def _sample(texture: _Texture, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear colours and nearest labels of ``texture`` at float (row, col) points (clamped to the image)."""
    height, width = texture.labels.shape
    rows = np.clip(rows, 0, height - 1)
    cols = np.clip(cols, 0, width - 1)
    colours = np.stack([ndimage.map_coordinates(texture.image[..., k], [rows, cols], order=1, mode="nearest")
                        for k in range(3)], axis=1)
    labels = texture.labels[np.rint(rows).astype(int), np.rint(cols).astype(int)]
    return colours, labels


def _class_means(texture: _Texture) -> np.ndarray:
    """(19, 3) median colour of each class in a texture (NaN where absent)."""
    means = np.full((N_CLASSES, 3), np.nan)
    for c in np.unique(texture.labels):
        means[c] = np.median(texture.image[texture.labels == c], axis=0)
    return means


class _Synthesizer:
    """Renders ``target_labels`` over ``base`` (image + labels); each class takes its texture from
    ``textures[class]`` (default: the base itself). ``redraw`` marks pixels whose texture must be
    re-sampled even where the label did not change (components taken from a donor)."""

    def __init__(self, base_image: np.ndarray, base_labels: np.ndarray, target_labels: np.ndarray,
                 textures: Optional[dict[int, _Texture]] = None, redraw: Optional[np.ndarray] = None,
                 color_shift: Optional[dict[int, np.ndarray]] = None,
                 recolor: Optional[dict[int, "LabColorTransfer"]] = None):
        self.base = _Texture(base_image.astype(np.float64), base_labels)
        self.target = target_labels
        self.textures = {c: (textures or {}).get(c, self.base) for c in range(N_CLASSES)}
        self.redraw = np.zeros(target_labels.shape, bool) if redraw is None else redraw
        self.color_shift = color_shift or {}
        self.recolor = recolor or {}
        self.shape = target_labels.shape

    # -- where to work
    def changed_region(self) -> np.ndarray:
        changed = (self.base.labels != self.target) | self.redraw
        recoloured = np.isin(self.target, list(self.recolor)) | np.isin(self.base.labels, list(self.recolor))
        if SKIN in self.recolor:  # the features on recoloured skin move with it (keeping their contrast)
            recoloured |= np.isin(self.target, _FEATURE_LIST) | np.isin(self.base.labels, _FEATURE_LIST)
        if not changed.any():
            return recoloured
        thickness = 2.0 * ndimage.distance_transform_edt(changed).max()
        margin = min(MAX_MARGIN, 8.0 + 2.0 * thickness)
        region = ndimage.distance_transform_edt(~changed) <= margin
        for part in FEATURE_PARTS:
            source = np.isin(self._texture_of(part).labels, part)
            target = np.isin(self.target, part)
            if self._part_changed(part, source, target):
                region |= ndimage.binary_dilation(source | target, iterations=4)
        both_background = (self.base.labels == 0) & (self.target == 0)
        return (region & ~both_background) | recoloured

    def _texture_of(self, classes: Iterable[int]) -> _Texture:
        return self.textures[next(iter(classes))]

    def _part_changed(self, part, source_mask, target_mask) -> bool:
        return (self._texture_of(part) is not self.base or not np.array_equal(source_mask, target_mask)
                or bool((self.redraw & target_mask).any()))

    # -- layers
    def feature_layer(self, part: tuple[int, ...], needed: np.ndarray) -> _Layer:
        texture = self._texture_of(part)
        target = np.isin(self.target, part)
        values = self.base.image.copy()
        valid = np.zeros(self.shape, bool)
        if part not in self.part_warps:  # unchanged: the base's own pixels
            valid[target] = True
            return _Layer(part, values, valid)
        warp = self.part_warps[part]
        if warp is None:
            return self._with_fallback(part, values, valid, target)
        owns = outside = None
        if texture is not self.base:
            # A donor's part comes with a thin band of its surroundings (lashes, lid, lip line), cloned
            # over the face's skin: the part's labels are a little tight.
            owns = ndimage.binary_dilation(target, iterations=DONOR_MARGIN) & ~target & (self.target == SKIN)
            # The face's skin just outside the band (seen through glasses too), to match the donor's lighting on.
            outside = (ndimage.binary_dilation(target, iterations=DONOR_MARGIN + 6) & ~owns & ~target
                       & np.isin(self.base.labels, _SKIN_SURFACES) & np.isin(self.target, _SKIN_SURFACES))
            needed = needed | ndimage.binary_dilation(owns) | outside
        rows, cols = np.nonzero(needed)
        mapped = warp(np.stack([rows, cols], axis=1).astype(np.float64))
        colours, labels = _sample(texture, mapped[:, 0], mapped[:, 1])
        values[rows, cols] = colours
        valid[rows, cols] = np.isin(labels, part) & target[rows, cols]
        if outside is not None:
            donor_skin = np.zeros(self.shape, bool)
            donor_skin[rows, cols] = np.isin(labels, _SKIN_SURFACES)
            outside &= donor_skin
            if outside.sum() >= 10:
                # Relight the donor's part so its skin around the part matches the face's skin there;
                # light multiplies, so a gain (an offset would wash out a dark iris).
                gain = np.median(self.base.image[outside], axis=0) / np.maximum(np.median(values[outside], axis=0), 1.0)
                values[rows, cols] *= np.clip(gain, 1.0 / MAX_RELIGHT_GAIN, MAX_RELIGHT_GAIN)
        layer = self._with_fallback(part, values, valid, target)
        if owns is not None:
            layer.valid |= owns
            layer.owns = owns
        return layer

    def surface_layer(self, c: int, region: np.ndarray, needed: np.ndarray) -> _Layer:
        texture = self.textures[c]
        source = texture.labels == c
        target = self.target == c
        values = self.base.image.copy()
        valid = np.zeros(self.shape, bool)
        if texture is self.base and np.array_equal(source & region, target & region) and not (self.redraw & target).any():
            valid[target] = True
            return _Layer((c,), values, valid)
        if not source.any():
            return self._with_fallback((c,), values, valid, target)
        # Beside a feature the surface follows it: it stays put next to an unchanged feature, moves with
        # the feature's own warp next to a moved one (skin stretches under a raised brow), and is left
        # free next to a feature that came from elsewhere (the gap is filled). Source pixels around
        # features that did not move with the surface are not sampled (stray brow hairs lie outside the label).
        fixed = np.zeros(self.shape, bool)
        fixed_values = np.zeros(self.shape + (2,))
        free = np.zeros(self.shape, bool)
        stale = np.zeros(self.shape, bool)
        for part in FEATURE_PARTS:
            beside = target & ndimage.binary_dilation(np.isin(self.target, part) | np.isin(self.base.labels, part))
            if not beside.any():
                continue
            if part not in self.part_warps:
                # A few px, not one: eyelashes and lid creases lie outside the eye label but belong to it.
                fixed |= target & ndimage.binary_dilation(np.isin(self.target, part), iterations=PIN_MARGIN)
                continue
            warp = self.part_warps[part]
            if warp is not None and self._texture_of(part) is texture:
                free |= beside  # where the part was: no constraint...
                beside = target & ndimage.binary_dilation(np.isin(self.target, part))  # ...where it is now: follow
                rows, cols = np.nonzero(beside)
                fixed_values[rows, cols] = warp(np.stack([rows, cols], axis=1).astype(np.float64)) - np.stack([rows, cols], 1)
                fixed |= beside
                free &= ~beside
            else:
                free |= beside
                stale |= ndimage.binary_dilation(np.isin(texture.labels, part), iterations=STALE_MARGIN)
        source_free = source & ndimage.binary_dilation(np.isin(texture.labels, _FEATURE_LIST))
        displacement = region_displacement(source, target, region, fixed, fixed_values, free & ~fixed, source_free)
        # Extend the displacement beyond the class by nearest value, for the context pixels.
        _, (near_rows, near_cols) = ndimage.distance_transform_edt(~target, return_indices=True)
        rows, cols = np.nonzero(needed)
        shift = displacement[near_rows[rows, cols], near_cols[rows, cols]]
        height, width = self.shape
        sample_rows = np.clip(rows + shift[:, 0], 0, height - 1)
        sample_cols = np.clip(cols + shift[:, 1], 0, width - 1)
        colours, labels = _sample(texture, sample_rows, sample_cols)
        values[rows, cols] = colours
        landed_on_stale = stale[np.rint(sample_rows).astype(int), np.rint(sample_cols).astype(int)]
        valid[rows, cols] = (labels == c) & target[rows, cols] & ~landed_on_stale
        return self._with_fallback((c,), values, valid, target)

    def _with_fallback(self, classes, values, valid, target) -> _Layer:
        """Pixels without texture from a donor take the base face's own texture of that class, shifted to
        the donor's colour, where the base has that class."""
        c = classes[0]
        if self.textures[c] is not self.base:
            own = target & ~valid & np.isin(self.base.labels, classes)
            values[own] = self.base.image[own] + self.color_shift.get(c, 0.0)
            valid |= own
        return _Layer(classes, values, valid)

    # -- blending
    def render(self, progress: Progress = None) -> tuple[np.ndarray, np.ndarray]:
        total = 3
        _report(progress, 0, total, "finding the changed region")
        region = self.changed_region()
        base_uint8 = np.clip(np.rint(self.base.image), 0, 255).astype(np.uint8)
        if not region.any():
            _report(progress, total, total, "nothing to change")
            return base_uint8, region
        ring = ndimage.binary_dilation(region) & ~region
        needed_area = region | ring
        _report(progress, 1, total, "warping components")

        # A warp for each feature part that changed (None when it has no source or no target shape).
        self.part_warps = {}
        groups: list[tuple[int, ...]] = []
        for part in FEATURE_PARTS:
            source = np.isin(self._texture_of(part).labels, part)
            target = np.isin(self.target, part)
            if self._part_changed(part, source, target):
                self.part_warps[part] = feature_warp(source, target)
            if (target & needed_area).any():
                groups.append(part)
        present = set(np.unique(self.target[needed_area]).tolist())
        groups += [(c,) for c in range(N_CLASSES) if c not in _FEATURE_CLASSES and c in present]

        layers: list[_Layer] = []
        for classes in groups:
            target = np.isin(self.target, classes)
            needed = ndimage.binary_dilation(target & needed_area) & needed_area
            if classes in FEATURE_PARTS:
                layers.append(self.feature_layer(classes, needed))
            else:
                layers.append(self.surface_layer(classes[0], region, needed))
        for layer in layers:
            self.apply_recolor(layer)
        _report(progress, 2, total, "blending")
        out = self.blend(layers, region)
        _report(progress, total, total, "done")
        return out, region

    def apply_recolor(self, layer: _Layer) -> None:
        """Recolour a recoloured class's layer, on its own pixels and on context pixels of recoloured
        classes: the guidance then holds the new colour against other classes (skin against
        background), while layers drawn over it (brows on recoloured skin) keep their contrast to it."""
        if not set(layer.classes) <= set(self.recolor):
            return
        for c, transfer in self.recolor.items():
            pixels = self.target == c
            if pixels.any():
                layer.values[pixels] = transfer(layer.values[pixels])

    def class_means(self) -> np.ndarray:
        means = _class_means(self.base)
        for c, texture in self.textures.items():
            if texture is not self.base:
                means[c] = _class_means(texture)[c]
        for c, colour in DEFAULT_COLORS.items():
            if np.isnan(means[c]).any():
                means[c] = colour
        return np.nan_to_num(means, nan=128.0)

    def anchor_weight(self, layer: _Layer) -> float:
        """How strongly a layer's textured pixels keep their own colour in the blend."""
        if layer.classes not in FEATURE_PARTS:
            return 0.0
        if self._texture_of(layer.classes) is not self.base:
            return DONOR_FEATURE_ANCHOR
        # Under a new skin tone the face's own features keep their contrast to the skin, not their colour.
        return 0.0 if self.recolor else OWN_FEATURE_ANCHOR

    def blend(self, layers: list[_Layer], region: np.ndarray) -> np.ndarray:
        """Poisson solve over ``region``: the composite's guidance gradients, the base image on its border."""
        group_of_class = np.zeros(N_CLASSES, dtype=np.int64)
        rank_of_class = np.empty(N_CLASSES, dtype=np.int64)
        rank_of_class[list(OCCLUSION_ORDER)] = np.arange(N_CLASSES)
        for g, layer in enumerate(layers):
            group_of_class[list(layer.classes)] = g
        group_rank = np.array([rank_of_class[list(layer.classes)].max() for layer in layers])
        recolored_group = np.array([set(layer.classes) <= set(self.recolor) for layer in layers])
        feature_group = np.array([layer.classes in FEATURE_PARTS for layer in layers])
        has_texture = np.array([layer.valid.any() for layer in layers])
        values = np.stack([layer.values for layer in layers])  # (G, H, W, 3)
        valid = np.stack([layer.valid for layer in layers])
        means = self.class_means()

        owner = group_of_class[self.target]
        for g, layer in enumerate(layers):
            if layer.owns is not None:
                owner[layer.owns] = g
        rows, cols, index, edges = grid_edges(region, np.ones(self.shape, bool))
        rhs = np.zeros((len(rows), 3))
        for me, qr, qc in edges:
            pr, pc = rows[me], cols[me]
            gp, gq = owner[pr, pc], owner[qr, qc]
            top = np.where(group_rank[gp] >= group_rank[gq], gp, gq)
            # A recoloured surface holds its new colour against other surfaces (skin against hair),
            # whichever is on top; features drawn on it keep their own contrast.
            p_wins = recolored_group[gp] & ~recolored_group[gq] & ~feature_group[gq]
            q_wins = recolored_group[gq] & ~recolored_group[gp] & ~feature_group[gp]
            top = np.where(p_wins, gp, np.where(q_wins, gq, top))
            top_row = np.where(top == gp, pr, qr)
            top_col = np.where(top == gp, pc, qc)
            textured = valid[top, top_row, top_col]
            same = gp == gq
            textured &= ~same | valid[gp, qr, qc]  # inside one class: both ends must hold texture
            guidance = values[top, pr, pc] - values[top, qr, qc]
            # Untextured pixels continue smoothly, except where a class with no texture at all (say a
            # newly painted open mouth) meets another: there the mean class contrast draws the border.
            contrast = means[self.target[pr, pc]] - means[self.target[qr, qc]]
            new_class = ~same & ~(has_texture[gp] & has_texture[gq])
            rhs[me] += np.where(textured[:, None], guidance, np.where(new_class[:, None], contrast, 0.0))
            fixed = index[qr, qc] < 0
            rhs[me[fixed]] += self.base.image[qr[fixed], qc[fixed]]
        # Textured feature pixels are pulled towards their own colour (screened Poisson): a thin brow
        # moved into brighter skin keeps its darkness instead of inheriting the guidance's drift. A tiny
        # pull everywhere keeps every connected piece of the region solvable.
        composite = values[owner[rows, cols], rows, cols]
        anchor = np.array([self.anchor_weight(layer) for layer in layers])
        in_own_class = group_of_class[self.target[rows, cols]] == owner[rows, cols]  # not a donor's band
        tether = 1e-4 + anchor[owner[rows, cols]] * valid[owner[rows, cols], rows, cols] * in_own_class
        solved = solve_on_grid(index, edges, rhs + tether[:, None] * composite, tether)
        out = np.clip(np.rint(self.base.image), 0, 255).astype(np.uint8)
        out[rows, cols] = np.clip(np.rint(solved), 0, 255).astype(np.uint8)
        return out


def render_from_labels(image, source_labels, target_labels, *, progress: Progress = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Re-render ``image`` (an aligned face, labelled ``source_labels``) so that it follows the edited
    ``target_labels``, with the source's own texture. Returns (image, changed_region): pixels outside
    ``changed_region`` are the input's, bit for bit; identical label maps return the input unchanged."""
    image, source_labels = _check_face(image, source_labels, "source labels")
    target_labels = validate_labels(target_labels, "target labels")
    if target_labels.shape != source_labels.shape:
        raise ValueError(f"target labels have shape {target_labels.shape}, but the source labels are "
                         f"{source_labels.shape}")
    return _Synthesizer(image, source_labels, target_labels).render(progress)


def transfer_components(image, labels, donor_image, donor_labels, components, *, progress: Progress = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Take ``components`` from a donor face aligned to the same framing; returns (image, labels).

    The label map takes the donor's shapes (``label_edits.swap_component``). Inner features ('eyes',
    'brows', 'nose', 'mouth', 'ears') take the donor's texture, warped to fit and cloned with a thin
    band of the donor's surroundings. 'hair' takes the donor's hairline and hair colour, 'skin' the
    donor's face outline and skin tone (also on nose, ears and neck); their texture stays the face's
    own, because a donor's hair or skin rarely lines up with another head. Everything else is the
    face's own.
    """
    image, labels = _check_face(image, labels, "labels")
    donor_image, donor_labels = _check_face(donor_image, donor_labels, "donor labels")
    if donor_image.shape != image.shape:
        raise ValueError(f"the donor image is {donor_image.shape[:2]} but the face is {image.shape[:2]}: "
                         "align both to the same framing first")
    components = (components,) if isinstance(components, str) else tuple(components)
    if not components:
        raise ValueError(f"no component given; choose from {', '.join(COMPONENTS)}")
    for name in components:
        if name not in COMPONENTS:
            raise ValueError(f"unknown face component {name!r}; choose from {', '.join(COMPONENTS)}")
    new_labels = labels
    for name in components:
        if name != "skin":  # the skin keeps its outline and takes the donor's tone only
            new_labels = swap_component(new_labels, donor_labels, name)
    donor = _Texture(donor_image.astype(np.float64), donor_labels)
    own = _Texture(image.astype(np.float64), labels)
    textured = sorted({c for name in components if name not in RECOLORED for c in COMPONENTS[name]})
    recolor = {}
    for name in components:
        if name in RECOLORED:
            measured_on, applied_to = RECOLORED[name]
            transfer = LabColorTransfer.between(own.image[labels == measured_on],
                                                 donor.image[donor_labels == measured_on])
            if transfer is not None:
                recolor.update({c: transfer for c in applied_to})
    own_means, donor_means = _class_means(own), _class_means(donor)
    color_shift = {c: np.nan_to_num(donor_means[c] - own_means[c]) for c in textured}
    redraw = np.isin(new_labels, textured) | np.isin(labels, textured)
    synthesizer = _Synthesizer(image, labels, new_labels, textures={c: donor for c in textured},
                               redraw=redraw, color_shift=color_shift, recolor=recolor)
    out, _ = synthesizer.render(progress)
    return out, new_labels


class ClassicSynthesis(LabelSynthesisBackend):
    """Label-guided editing and component transfer with no model (the embedded default)."""

    name = "classic-synthesize"
    version = "0.1.0"
    description = ("Re-draws the face to follow your edited labels by warping its own texture (thin-plate "
                   "splines per feature) and blending in the gradient domain; takes eyes, brows, nose, mouth, "
                   "ears from another face. No model, no download.")
    limitations = ("Re-uses the face's own pixels: it can move, stretch and reshape parts, and take features "
                   "from another face, but cannot invent content: teeth where the mouth was closed, or a large "
                   "area vacated by a part that shrank, are filled smoothly and look flat. Taking hair or skin "
                   "from a donor changes only the hairline and the colours, not the hair style.")

    def render(self, image, labels, target_labels, ctx):
        rendered, _ = render_from_labels(image, labels, target_labels)
        return rendered

    def transfer(self, image, labels, donor_image, donor_labels, components, ctx):
        return transfer_components(image, labels, donor_image, donor_labels, components)
