"""Deterministic edits of a 19-class CelebAMask-HQ label map, and the fixed edit script.

Label-guided synthesis backends (classical and learned) are scored on the same edits: each face's
label map is edited by ``EDIT_SCRIPT``, the backend renders the edited map, and label fidelity is
measured by parsing the render. Every edit returns a new map and leaves background pixels (label 0)
as they are: components only move into face pixels (``skin`` and the like), never into background,
and nothing becomes background.

Left/right: ``l_*`` classes are the subject's left (image right). Paired components are edited per
side about their own centre, so a left eye always stays on the image's right.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from scipy import ndimage

from .vocab import CLASS_INDEX, FACE_COMPONENTS as COMPONENTS, N_CLASSES

SKIN = CLASS_INDEX["skin"]
HAIR = CLASS_INDEX["hair"]
EYE_GLASSES = CLASS_INDEX["eye_g"]
EYES = (CLASS_INDEX["l_eye"], CLASS_INDEX["r_eye"])
BROWS = (CLASS_INDEX["l_brow"], CLASS_INDEX["r_brow"])
EARS = (CLASS_INDEX["l_ear"], CLASS_INDEX["r_ear"])
NOSE = (CLASS_INDEX["nose"],)
LIPS = (CLASS_INDEX["u_lip"], CLASS_INDEX["l_lip"])
MOUTH = (CLASS_INDEX["mouth"],) + LIPS

# The parts of each face component (vocab.FACE_COMPONENTS) that move independently
# (each eye about its own centre; the lips and mouth interior together).
COMPONENT_PARTS: dict[str, tuple[tuple[int, ...], ...]] = {
    "eyes": tuple((c,) for c in EYES),
    "brows": tuple((c,) for c in BROWS),
    "nose": (NOSE,),
    "mouth": (MOUTH,),
    "ears": tuple((c,) for c in EARS),
    "hair": ((HAIR,),),
    "skin": ((SKIN,),),
}
# Classes a vacated feature pixel can turn back into (whichever is nearest): the surfaces features sit on.
HOST_CLASSES = (SKIN, HAIR, CLASS_INDEX["neck"], CLASS_INDEX["cloth"], CLASS_INDEX["hat"]) + EARS

# A feature moved or grown by an edit may cover these classes (besides its own pixels); hair occludes brows,
# so brows slide under it rather than over it.
_WRITABLE = {
    "eyes": (SKIN, EYE_GLASSES),
    "brows": (SKIN, EYE_GLASSES),
    "nose": (SKIN,),
    "mouth": (SKIN,),
    "ears": (SKIN, HAIR),
}
# Move/recede the hairline only this close to the brows: keep a strip of forehead (px).
_BROW_CLEARANCE = 4
# The hairline shift fades out linearly over this share of the brow span beyond each outer brow end.
_HAIRLINE_TAPER = 0.35
# A hairline taken from a donor moves at most this far (px).
_MAX_HAIRLINE_SHIFT = 24
# Vacated feature pixels become skin when skin is this close (px), else the nearest host class.
_SKIN_REACH = 8
# A hairline change narrower than this (px) is dropped.
_MIN_HAIRLINE_RUN = 6


def validate_labels(labels: Any, what: str = "labels") -> np.ndarray:
    """A 2-D map of CelebAMask-HQ class indices (0..18) as a fresh uint8 array, or a clear ValueError."""
    labels = np.asarray(labels)
    if labels.ndim == 3 and labels.shape[2] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2:
        raise ValueError(f"{what} must be a 2-D map of class indices, got shape {labels.shape}")
    if labels.dtype == bool or not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise ValueError(f"{what} must hold integer class indices, got dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.floating) and not np.all(np.mod(labels, 1) == 0):
        raise ValueError(f"{what} must hold integer class indices, got fractional values")
    if labels.size and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise ValueError(
            f"{what} must hold CelebAMask-HQ class indices 0..{N_CLASSES - 1}, "
            f"got values {labels.min():g}..{labels.max():g}"
        )
    return labels.astype(np.uint8)


def _component_classes(component: str) -> tuple[int, ...]:
    if component not in COMPONENTS:
        raise ValueError(f"unknown face component {component!r}; choose one of {', '.join(COMPONENTS)}")
    return COMPONENTS[component]


def _centroid(mask: np.ndarray) -> np.ndarray:
    """(row, col) centre of a non-empty mask."""
    return np.array(ndimage.center_of_mass(mask))


def _resample_part(part_map: np.ndarray, centre: np.ndarray, scale: tuple[float, float],
                   shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Scale a part's class map (0 = not part) about ``centre`` by (row, col) factors, then shift it;
    nearest neighbour, so the classes stay classes."""
    scale = np.asarray(scale, dtype=np.float64)
    centre = np.asarray(centre, dtype=np.float64)
    # affine_transform maps output coordinates to input ones: in = centre + (out - centre - shift) / scale.
    inverse = 1.0 / scale
    offset = centre - (centre + np.asarray(shift)) * inverse
    return ndimage.affine_transform(part_map, inverse, offset=offset, order=0, mode="constant", cval=0)


def _nearest_host_fill(labels: np.ndarray, vacated: np.ndarray) -> np.ndarray:
    """Give vacated pixels skin when skin is near (features sit on skin; a brow moved away from a
    hair strand must not grow the strand), else the class of the nearest host pixel (hair, neck, ...)."""
    out = labels.copy()
    if not vacated.any():
        return out
    out[vacated] = SKIN
    host = np.isin(labels, HOST_CLASSES) & ~vacated
    skin = (labels == SKIN) & ~vacated
    if not host.any():
        return out
    skin_distance = ndimage.distance_transform_edt(~skin) if skin.any() else np.full(labels.shape, np.inf)
    _, (rows, cols) = ndimage.distance_transform_edt(~host, return_indices=True)
    far_from_skin = vacated & (skin_distance > _SKIN_REACH)
    out[far_from_skin] = labels[rows[far_from_skin], cols[far_from_skin]]
    return out


def _replace_part(labels: np.ndarray, part: tuple[int, ...], new_part_map: np.ndarray,
                  writable: tuple[int, ...]) -> np.ndarray:
    """Remove a part's pixels and paint ``new_part_map`` (its class per pixel, 0 elsewhere) where the
    map is writable; uncovered old pixels take the nearest host class."""
    old = np.isin(labels, part)
    out = labels.copy()
    paint = (new_part_map > 0) & (old | np.isin(labels, writable))
    out[paint] = new_part_map[paint]
    return _nearest_host_fill(out, old & ~paint)


def _scale_parts(labels: Any, component: str, scale: tuple[float, float]) -> np.ndarray:
    labels = validate_labels(labels)
    out = labels
    for part in COMPONENT_PARTS[component]:
        mask = np.isin(out, part)
        if not mask.any():
            continue
        part_map = np.where(mask, out, 0).astype(np.uint8)
        out = _replace_part(out, part, _resample_part(part_map, _centroid(mask), scale), _WRITABLE[component])
    return out


def widen_mouth(labels: Any, factor: float = 1.3) -> np.ndarray:
    """Stretch the lips and mouth interior horizontally by ``factor`` about their centre."""
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor}")
    return _scale_parts(labels, "mouth", (1.0, float(factor)))


def enlarge_eyes(labels: Any, factor: float = 1.3) -> np.ndarray:
    """Scale each eye by ``factor`` about its own centre (area grows by about ``factor**2``)."""
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor}")
    return _scale_parts(labels, "eyes", (float(factor), float(factor)))


def scale_component(labels: Any, component: str, factor: float) -> np.ndarray:
    """A component (e.g. the nose) scaled about its own centre by ``factor`` in both directions."""
    return _scale_parts(labels, component, (float(factor), float(factor)))


def raise_eyebrows(labels: Any, pixels: float = 6) -> np.ndarray:
    """Move both brows up by ``pixels`` (negative lowers them). Hair stays on top of a raised brow."""
    labels = validate_labels(labels)
    out = labels
    for part in COMPONENT_PARTS["brows"]:
        mask = np.isin(out, part)
        if not mask.any():
            continue
        part_map = np.where(mask, out, 0).astype(np.uint8)
        moved = _resample_part(part_map, _centroid(mask), (1.0, 1.0), shift=(-float(pixels), 0.0))
        out = _replace_part(out, part, moved, _WRITABLE["brows"])
    return out


def _forehead_columns(labels: np.ndarray) -> tuple[int, np.ndarray]:
    """The row just above the brows and each column's hairline weight (1 over the brows, tapering to 0
    beyond the outer brow ends). Falls back to the eyes when there are no brows."""
    for anchor in (BROWS, EYES):
        anchor_mask = np.isin(labels, anchor)
        if anchor_mask.any():
            break
    else:
        raise ValueError("move_hairline needs brows or eyes in the label map to find the forehead")
    rows, cols = np.nonzero(anchor_mask)
    left, right = cols.min(), cols.max()
    taper = max(1.0, _HAIRLINE_TAPER * (right - left + 1))
    x = np.arange(labels.shape[1])
    outside = np.maximum(left - x, x - right).clip(min=0)
    weight = np.clip(1.0 - outside / taper, 0.0, 1.0)
    return int(rows.min()) - _BROW_CLEARANCE, weight


def _hairlines(labels: np.ndarray, floor: int) -> np.ndarray:
    """Each column's forehead hairline: the first skin row of the skin run that reaches ``floor``,
    when hair sits right above it; -1 where the column has no such hairline (a fringe reaches the
    brows, or the forehead ends at background or a hat)."""
    rows = np.full(labels.shape[1], -1)
    if floor <= 0:
        return rows
    for x in range(labels.shape[1]):
        column = labels[:floor, x]
        if column[-1] != SKIN:
            continue
        not_skin = np.nonzero(column != SKIN)[0]
        if len(not_skin) and column[not_skin[-1]] == HAIR:
            rows[x] = not_skin[-1] + 1
    return rows


def _shift_hairline(labels: np.ndarray, floor: int, shifts: np.ndarray) -> np.ndarray:
    """Move each column's hairline by ``shifts[x]`` px (positive = down, hair over skin; negative = up,
    skin over hair), never below ``floor``. Changes a few columns wide are dropped (lone strands)."""
    hairlines = _hairlines(labels, floor)
    moved_down = np.zeros(labels.shape, bool)
    moved_up = np.zeros(labels.shape, bool)
    for x in np.nonzero((hairlines >= 0) & (shifts != 0))[0]:
        hairline, shift = hairlines[x], int(shifts[x])
        column = labels[:floor, x]
        if shift > 0:
            rows = np.arange(hairline, min(hairline + shift, floor))
            moved_down[rows[column[rows] == SKIN], x] = True
        else:
            rows = np.arange(max(hairline + shift, 0), hairline)
            moved_up[rows[column[rows] == HAIR], x] = True
    run = np.ones((1, _MIN_HAIRLINE_RUN), bool)
    out = labels.copy()
    out[ndimage.binary_opening(moved_down, structure=run)] = HAIR
    out[ndimage.binary_opening(moved_up, structure=run)] = SKIN
    return out


def move_hairline(labels: Any, pixels: float = -12) -> np.ndarray:
    """Move the forehead hairline vertically: negative recedes it (hair -> skin), positive brings hair
    down onto the forehead (skin -> hair), never closer than a few pixels to the brows.

    Each forehead column's hairline (the top of its skin run above the brows, where hair sits above)
    moves by ``pixels``, fading out beyond the outer brow ends so the temples join smoothly.
    """
    labels = validate_labels(labels)
    floor, weight = _forehead_columns(labels)
    return _shift_hairline(labels, floor, np.rint(float(pixels) * weight).astype(int))


def donor_hairline(labels: Any, donor_labels: Any) -> np.ndarray:
    """The forehead hairline of the donor, placed relative to the face's own brows: each column's
    hairline sits as far above the brows (in units of brow span) as the donor's does at the matching
    column. Columns where either face has no hairline keep theirs; moves are capped."""
    labels = validate_labels(labels)
    donor_labels = validate_labels(donor_labels, "donor labels")
    floor, weight = _forehead_columns(labels)
    donor_floor, _ = _forehead_columns(donor_labels)
    span, centre = _brow_span(labels)
    donor_span, donor_centre = _brow_span(donor_labels)
    scale = donor_span / span
    own = _hairlines(labels, floor)
    donor = _hairlines(donor_labels, donor_floor)
    columns = np.arange(labels.shape[1])
    donor_columns = np.rint(donor_centre + (columns - centre) * scale).astype(int)
    inside = (donor_columns >= 0) & (donor_columns < labels.shape[1])
    wanted = np.full(labels.shape[1], -1.0)
    matched = donor[donor_columns[inside]]
    wanted[inside] = np.where(matched >= 0, floor - (donor_floor - matched) / scale, -1.0)
    shifts = np.where((own >= 0) & (wanted >= 0) & (weight > 0), wanted - own, 0.0)
    shifts = ndimage.median_filter(np.clip(shifts, -_MAX_HAIRLINE_SHIFT, _MAX_HAIRLINE_SHIFT), size=5)
    return _shift_hairline(labels, floor, np.rint(shifts * weight).astype(int))


def _brow_span(labels: np.ndarray) -> tuple[float, float]:
    """Width and centre column of the brows (or eyes) together."""
    for anchor in (BROWS, EYES):
        cols = np.nonzero(np.isin(labels, anchor))[1]
        if len(cols):
            return float(max(cols.max() - cols.min(), 1)), float(cols.mean())
    raise ValueError("the label map has no brows or eyes to place the hairline by")


def swap_component(labels: Any, donor_labels: Any, component: str) -> np.ndarray:
    """The label map with ``component`` shaped like the donor's (both maps in the same framing).

    Inner features ('eyes', 'brows', 'nose', 'mouth', 'ears') take the donor's shape, centred where
    the face's own part is (each side on its own; at the donor's place when the face lacks it).
    'hair' takes the donor's forehead hairline (``donor_hairline``). 'skin' is refused: two heads'
    outlines rarely line up, so a face keeps its own.
    """
    labels = validate_labels(labels)
    donor_labels = validate_labels(donor_labels, "donor labels")
    if donor_labels.shape != labels.shape:
        raise ValueError(f"donor labels have shape {donor_labels.shape}, but the labels are {labels.shape}")
    _component_classes(component)  # unknown names are a clear error
    if component == "hair":
        return donor_hairline(labels, donor_labels)
    if component == "skin":
        raise ValueError("'skin' has no shape to swap: the face outline stays the face's own "
                         "(transfer_components takes the donor's skin tone)")
    out = labels
    for part in COMPONENT_PARTS[component]:
        donor_mask = np.isin(donor_labels, part)
        own_mask = np.isin(out, part)
        if not donor_mask.any():
            continue  # the donor lacks this part (e.g. a hidden ear): keep the face's own
        donor_map = np.where(donor_mask, donor_labels, 0).astype(np.uint8)
        shift = (0.0, 0.0)
        if own_mask.any():
            shift = tuple(np.round(_centroid(own_mask) - _centroid(donor_mask)))
        moved = _resample_part(donor_map, _centroid(donor_mask), (1.0, 1.0), shift=shift)
        out = _replace_part(out, part, moved, _WRITABLE[component])
    return out


@dataclass(frozen=True)
class LabelEdit:
    """One step of the edit script: a function of this module by name, with fixed parameters."""

    name: str
    function: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_donor(self) -> bool:
        return self.function == "swap_component"

    def apply(self, labels: Any, donor_labels: Optional[Any] = None) -> np.ndarray:
        if self.needs_donor:
            if donor_labels is None:
                raise ValueError(f"edit {self.name!r} takes a component from a donor face: pass donor_labels")
            return swap_component(labels, donor_labels, **self.params)
        return _EDIT_FUNCTIONS[self.function](labels, **self.params)


_EDIT_FUNCTIONS = {
    "widen_mouth": widen_mouth,
    "enlarge_eyes": enlarge_eyes,
    "move_hairline": move_hairline,
    "raise_eyebrows": raise_eyebrows,
}

# The fixed edits label fidelity is measured on (256 px faces in the CelebAMask-HQ framing). The swaps
# take the part from a donor face the scorer picks deterministically (e.g. the next face in sorted order).
EDIT_SCRIPT: tuple[LabelEdit, ...] = (
    LabelEdit("widen_mouth_1.3", "widen_mouth", {"factor": 1.3}),
    LabelEdit("enlarge_eyes_1.3", "enlarge_eyes", {"factor": 1.3}),
    LabelEdit("recede_hairline_12px", "move_hairline", {"pixels": -12}),
    LabelEdit("lower_hairline_12px", "move_hairline", {"pixels": 12}),
    LabelEdit("raise_eyebrows_6px", "raise_eyebrows", {"pixels": 6}),
    LabelEdit("swap_mouth", "swap_component", {"component": "mouth"}),
    LabelEdit("swap_eyes", "swap_component", {"component": "eyes"}),
)


def component_region(labels: np.ndarray, components, grow: float = 0.03) -> np.ndarray:
    """The pixels of face ``components`` (names of vocab.FACE_COMPONENTS) in a 19-class map, grown by
    ``grow`` times the face's size (at least 1 px) so the region also takes the part's rim, as a
    user's selection would: the hole for "complete the mouth"."""
    labels = validate_labels(labels)
    components = (components,) if isinstance(components, str) else tuple(components)
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown face component(s) {unknown}; choose from {', '.join(COMPONENTS)}")
    region = np.isin(labels, [c for name in components for c in COMPONENTS[name]])
    if not region.any():
        raise ValueError(f"the face labels hold no {' or '.join(components)}: nothing to complete there")
    face = labels != 0
    face_size = np.sqrt(face.sum()) if face.any() else max(labels.shape)
    radius = max(1.0, grow * face_size)
    return ndimage.distance_transform_edt(~region) <= radius
