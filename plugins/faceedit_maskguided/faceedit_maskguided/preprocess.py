"""Test-time preprocessing of Mask-Guided Portrait Editing (Gu et al. 2019), as pure numpy functions.

Everything here reproduces the authors' test-time data pipeline bit for bit (checked against the
parity fixture): Helen labels from our CelebAMask-HQ labels, component centres, the 10 % enlargement
of eyes and mouth in the label map, the [-1, 1] image, the eye/mouth crops and masked skin/hair images.

Arrays are channel-first float32 (3, H, W) images in [-1, 1] and (H, W) uint8 Helen label maps; the
model works at 256x256 only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_faceedit import vocab

IMAGE_SIZE = 256
HELEN_CLASSES: tuple[str, ...] = vocab.HELEN_ORDER
N_HELEN = len(HELEN_CLASSES)
BACKGROUND, SKIN, L_BROW, R_BROW, L_EYE, R_EYE, NOSE, U_LIP, MOUTH, L_LIP, HAIR = range(N_HELEN)

# Component classes and test-time geometry.
EYE_CLASSES = {"left_eye": (L_EYE,), "right_eye": (R_EYE,)}
MOUTH_CLASSES = (U_LIP, MOUTH, L_LIP)
SKIN_CLASSES = (SKIN, L_BROW, R_BROW, NOSE)  # brows and nose count as skin; eyes and lips do not
HAIR_CLASSES = (HAIR,)
EYE_CROP = (32, 48)
MOUTH_CROP = (80, 144)
FALLBACK_CENTRES = {"left_eye": (116, 96), "right_eye": (116, 160), "mouth": (184, 128)}
# The authors assert these open bounds, so every crop and feature placement stays inside the image.
CENTRE_BOUNDS = {"left_eye": ((16, 240), (24, 232)), "right_eye": ((16, 240), (24, 232)),
                 "mouth": ((40, 216), (72, 184))}
PART_CLASSES = {"left_eye": (L_EYE,), "right_eye": (R_EYE,), "mouth": MOUTH_CLASSES}
PARTS = ("left_eye", "right_eye", "mouth")  # order of the centre list [y_le, x_le, y_re, x_re, y_m, x_m]
ENLARGE_FACTOR = 1.1
FEATURE_STRIDE = 4  # G's label encoder downsamples 256 -> 64


def celebamask_to_helen(labels19: np.ndarray) -> np.ndarray:
    """Our 19 CelebAMask-HQ classes -> the model's 11 Helen classes (image-side convention, see above)."""
    return vocab.remap(np.asarray(labels19), vocab.CELEBAMASK_TO_HELEN)


def helen_to_celebamask(labels11: np.ndarray) -> np.ndarray:
    """The model's Helen classes -> our 19 CelebAMask-HQ classes (inverse of :func:`celebamask_to_helen`
    on the classes Helen has)."""
    return vocab.remap(np.asarray(labels11), vocab.HELEN_TO_CELEBAMASK)


def check_labels(labels11: np.ndarray) -> np.ndarray:
    labels11 = np.asarray(labels11)
    if labels11.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"Helen label map must be {IMAGE_SIZE}x{IMAGE_SIZE}, got shape {labels11.shape}")
    if labels11.size and (labels11.min() < 0 or labels11.max() >= N_HELEN):
        raise ValueError(f"Helen labels must lie in 0..{N_HELEN - 1}, got {labels11.min()}..{labels11.max()}")
    return labels11.astype(np.uint8)


def normalize_image(image_u8: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in [-1, 1], rounded exactly as the authors' pipeline."""
    image_u8 = np.asarray(image_u8)
    if image_u8.dtype != np.uint8 or image_u8.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"image must be uint8 {IMAGE_SIZE}x{IMAGE_SIZE}x3, got {image_u8.dtype} {image_u8.shape}")
    unit = image_u8.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    return (unit - np.float32(0.5)) / np.float32(0.5)


def to_uint8_image(image: np.ndarray) -> np.ndarray:
    """(3, H, W) output in [-1, 1] -> (H, W, 3) uint8, as the authors display it (truncating)."""
    rgb = (np.asarray(image, dtype=np.float32).transpose(1, 2, 0) + 1) / 2.0 * 255.0
    return np.clip(rgb, 0, 255).astype(np.uint8)


def part_centre(labels11: np.ndarray, part: str) -> tuple[int, int]:
    """Centre (y, x) of a part's bounding box (inclusive bounds, floored), or the authors' fallback."""
    ys, xs = np.nonzero(np.isin(labels11, PART_CLASSES[part]))
    if ys.size == 0:
        return FALLBACK_CENTRES[part]
    return int(ys.min() + ys.max()) // 2, int(xs.min() + xs.max()) // 2


def component_centres(labels11: np.ndarray, check: bool = True) -> np.ndarray:
    """``[y_le, x_le, y_re, x_re, y_mouth, x_mouth]`` (int64) from the un-enlarged label map.

    ``check`` raises ValueError where the authors' code asserts (a part too close to the border)."""
    labels11 = check_labels(labels11)
    centres = []
    for part in PARTS:
        y, x = part_centre(labels11, part)
        if check:
            (y_lo, y_hi), (x_lo, x_hi) = CENTRE_BOUNDS[part]
            if not (y_lo < y < y_hi and x_lo < x < x_hi):
                raise ValueError(f"{part} centre (y={y}, x={x}) is too close to the border: the model needs "
                                 f"{y_lo} < y < {y_hi} and {x_lo} < x < {x_hi} on the 256x256 aligned face")
        centres += [y, x]
    return np.array(centres, dtype=np.int64)


def part_centres(centres: np.ndarray) -> dict[str, tuple[int, int]]:
    centres = [int(v) for v in np.asarray(centres).reshape(-1)]
    return {part: (centres[2 * i], centres[2 * i + 1]) for i, part in enumerate(PARTS)}


def pillow_nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source indices of Pillow's nearest-neighbour resize n_in -> n_out: floor(i*s + s/2), s = n_in/n_out
    in float64 (differs from floor((i + 0.5)*s) at some indices, e.g. i=140 for 256 -> 281)."""
    scale = n_in / n_out
    return np.floor(np.arange(n_out, dtype=np.float64) * scale + scale / 2).astype(np.int64)


def enlarge_components(labels11: np.ndarray, centres: np.ndarray, factor: float = ENLARGE_FACTOR) -> np.ndarray:
    """Grow eyes and mouth by ``factor`` about their centres, as the authors' test data does.

    The label map is resized to int(factor*256) (nearest); for each part with centre c, the 256x256
    window of the big map starting at int(int(factor*c) - c) overwrites the label where the window
    holds that part's classes. Other labels are kept except where a grown part covers them."""
    labels11 = check_labels(labels11)
    size = labels11.shape[0]
    big_size = int(factor * size)
    index = pillow_nearest_indices(size, big_size)
    big = labels11[index][:, index]
    out = labels11.copy()
    for part, (y, x) in part_centres(centres).items():
        dy, dx = int(int(factor * y) - y), int(int(factor * x) - x)
        window = big[dy:dy + size, dx:dx + size]
        grown = np.isin(window, PART_CLASSES[part])
        out[grown] = window[grown]
    return out


def one_hot(labels11: np.ndarray) -> np.ndarray:
    """(H, W) Helen labels -> (11, H, W) float32 one-hot."""
    labels11 = check_labels(labels11)
    return (np.arange(N_HELEN, dtype=np.uint8)[:, None, None] == labels11[None]).astype(np.float32)


def class_mask(labels11: np.ndarray, classes) -> np.ndarray:
    """(H, W) float32 1/0 where the label is one of ``classes``."""
    return np.isin(labels11, classes).astype(np.float32)


def crop(array: np.ndarray, centre: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Window of ``size`` (even) centred at ``centre`` from a (..., H, W) array."""
    (y, x), (h, w) = centre, size
    top, left = y - h // 2, x - w // 2
    if top < 0 or left < 0 or top + h > array.shape[-2] or left + w > array.shape[-1]:
        raise ValueError(f"{h}x{w} crop at centre {centre} leaves the {array.shape[-2]}x{array.shape[-1]} image")
    return array[..., top:top + h, left:left + w]


def component_inputs(image: np.ndarray, labels11: np.ndarray, centres: np.ndarray) -> dict[str, np.ndarray]:
    """Encoder inputs (3, h, w) float32, all from ``image`` ([-1, 1], channel-first) and its enlarged labels:
    raw eye crops (32x48, not masked), the mouth crop (80x144) times the lips/mouth mask, and the
    full image masked to skin (with brows and nose) and to hair."""
    centre = part_centres(centres)
    mouth_mask = class_mask(crop(labels11, centre["mouth"], MOUTH_CROP), MOUTH_CLASSES)
    return {
        "left_eye": np.ascontiguousarray(crop(image, centre["left_eye"], EYE_CROP)),
        "right_eye": np.ascontiguousarray(crop(image, centre["right_eye"], EYE_CROP)),
        "skin": image * class_mask(labels11, SKIN_CLASSES),
        "hair": image * class_mask(labels11, HAIR_CLASSES),
        "mouth": crop(image, centre["mouth"], MOUTH_CROP) * mouth_mask,
    }


def feature_centre(y: int, x: int) -> tuple[int, int]:
    """Image centre -> centre on the 64x64 feature map: y/4 rounded half up."""
    return int(y / FEATURE_STRIDE + 0.5), int(x / FEATURE_STRIDE + 0.5)


def background_mask(labels11: np.ndarray) -> np.ndarray:
    return class_mask(labels11, (BACKGROUND,))


@dataclass(frozen=True)
class PreparedLayout:
    """A Helen label map ready for the model: raw, enlarged (the network input) and part centres."""

    labels_raw: np.ndarray  # (256, 256) uint8
    labels: np.ndarray  # (256, 256) uint8, eyes and mouth grown 10 %
    centres: np.ndarray  # (6,) int64 [y_le, x_le, y_re, x_re, y_mouth, x_mouth]


@dataclass(frozen=True)
class PreparedFace:
    """A photo with its layout: the style source (components) and/or the background source."""

    image: np.ndarray  # (3, 256, 256) float32 in [-1, 1]
    layout: PreparedLayout


def prepare_layout(labels11: np.ndarray) -> PreparedLayout:
    labels_raw = check_labels(labels11)
    centres = component_centres(labels_raw)
    return PreparedLayout(labels_raw, enlarge_components(labels_raw, centres), centres)


def prepare_face(image_u8: np.ndarray, labels11: np.ndarray) -> PreparedFace:
    return PreparedFace(normalize_image(image_u8), prepare_layout(labels11))
