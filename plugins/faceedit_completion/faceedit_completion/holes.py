"""Training holes: random rectangles, free-form brush strokes, and face components from a label map.

All functions take a ``numpy.random.Generator`` and return a (size, size) bool array, True = hole.
Sizes scale with ``size`` so the same mix of shapes is drawn at every resolution.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_faceedit.vocab import CLASS_INDEX

# Face parts a user typically asks to complete (CelebAMask-HQ class names), grouped as a user would
# select them: both eyes, both brows, the nose, the whole mouth, the hair; single eyes/brows too.
COMPONENT_GROUPS: dict[str, tuple[str, ...]] = {
    "eyes": ("l_eye", "r_eye"),
    "left_eye": ("l_eye",),
    "right_eye": ("r_eye",),
    "brows": ("l_brow", "r_brow"),
    "eyes_and_brows": ("l_eye", "r_eye", "l_brow", "r_brow", "eye_g"),
    "nose": ("nose",),
    "mouth": ("mouth", "u_lip", "l_lip"),
    "hair": ("hair",),
}
MAX_HOLE_FRACTION = 0.6  # larger holes leave too little context to learn from


def random_rectangle(rng: np.random.Generator, size: int, min_fraction: float = 0.15,
                     max_fraction: float = 0.5) -> np.ndarray:
    """One axis-aligned box with sides in [min_fraction, max_fraction] * size, anywhere in the image."""
    hole = np.zeros((size, size), bool)
    h = max(1, int(round(size * rng.uniform(min_fraction, max_fraction))))
    w = max(1, int(round(size * rng.uniform(min_fraction, max_fraction))))
    top = int(rng.integers(0, size - h + 1))
    left = int(rng.integers(0, size - w + 1))
    hole[top:top + h, left:left + w] = True
    return hole


def random_strokes(rng: np.random.Generator, size: int, max_strokes: int = 4, max_vertices: int = 8,
                   thickness: tuple[float, float] = (0.02, 0.07)) -> np.ndarray:
    """Free-form brush strokes: each a random walk of straight segments (random heading changes and
    lengths) drawn with a round brush whose radius is a random fraction of ``size``."""
    points = np.zeros((size, size), bool)
    hole = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, max_strokes + 1))):
        points[:] = False
        y, x = rng.uniform(0.1, 0.9, 2) * size
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(2, max_vertices + 1))):
            heading += rng.normal(0, 0.9)
            length = rng.uniform(0.05, 0.25) * size
            y_end = float(np.clip(y + length * np.sin(heading), 0, size - 1))
            x_end = float(np.clip(x + length * np.cos(heading), 0, size - 1))
            steps = int(max(abs(y_end - y), abs(x_end - x))) + 2
            ys = np.linspace(y, y_end, steps).round().astype(int)
            xs = np.linspace(x, x_end, steps).round().astype(int)
            points[ys, xs] = True
            y, x = y_end, x_end
        radius = max(1.0, rng.uniform(*thickness) * size)
        hole |= ndimage.distance_transform_edt(~points) <= radius
    return hole


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a square (H, W) label map to (size, size)."""
    labels = np.asarray(labels)
    if labels.shape == (size, size):
        return labels
    rows = (np.arange(size) * labels.shape[0] / size).astype(int)
    cols = (np.arange(size) * labels.shape[1] / size).astype(int)
    return labels[rows][:, cols]


def component_hole(rng: np.random.Generator, labels: np.ndarray, size: int,
                   groups: tuple[str, ...] | None = None, dilation: float = 0.03) -> np.ndarray | None:
    """Cover one face component (a random group present in ``labels``, a 19-class CelebAMask-HQ map),
    dilated by ``dilation * size`` pixels (at least 1) so the hole also takes the part's rim, as a
    user's selection would. None when no group of ``groups`` is present."""
    small = resize_labels(labels, size)
    names = list(groups or COMPONENT_GROUPS)
    present = [g for g in names if np.isin(small, [CLASS_INDEX[c] for c in COMPONENT_GROUPS[g]]).any()]
    if not present:
        return None
    group = present[int(rng.integers(len(present)))]
    hole = np.isin(small, [CLASS_INDEX[c] for c in COMPONENT_GROUPS[group]])
    radius = max(1, int(round(dilation * size * rng.uniform(0.7, 1.5))))
    return ndimage.distance_transform_edt(~hole) <= radius


def random_hole(rng: np.random.Generator, size: int, labels: np.ndarray | None = None) -> np.ndarray:
    """A training hole: with a label map, usually a face component (sometimes with extra strokes);
    otherwise (or when no component is found) a rectangle, brush strokes, or both. Never empty,
    never more than ``MAX_HOLE_FRACTION`` of the image."""
    hole = None
    if labels is not None and rng.random() < 0.6:
        hole = component_hole(rng, labels, size)
        if hole is not None and rng.random() < 0.25:
            hole |= random_strokes(rng, size, max_strokes=2)
    if hole is None:
        kind = rng.random()
        if kind < 0.4:
            hole = random_rectangle(rng, size)
        elif kind < 0.85:
            hole = random_strokes(rng, size)
        else:
            hole = random_rectangle(rng, size, 0.1, 0.3) | random_strokes(rng, size, max_strokes=2)
    if hole.mean() > MAX_HOLE_FRACTION:
        hole = random_rectangle(rng, size)  # at most 0.5 x 0.5 of the image
    if not hole.any():
        hole[size // 2, size // 2] = True
    return hole
