"""5-point face alignment, paste-back and label warping.

A face is aligned by the similarity transform (rotation, uniform scale, translation; no reflection)
that maps its 5 landmarks onto a template in least squares (Umeyama 1991). All coordinates are
pixel-centre coordinates: pixel ``[row, col]`` is the point ``(x=col, y=row)``, so a crop of ``size``
spans ``-0.5 .. size-0.5``. ``AlignedFace.matrix`` (2x3) maps photo points to crop points.

Templates (5 points: image-left eye, image-right eye, nose tip, image-left / image-right mouth corner):

* ``"ffhq"``: the FFHQ-style 5-point template that face restorers (GPEN and others) align to at 512 px.
* ``"celeba"``: the framing of aligned CelebA (``img_align_celeba``, 178x218) centre-cropped to 178x178,
  as StarGAN and most CelebA attribute editors preprocess it.
* ``"celebamask"``: the framing of CelebAMask-HQ images (what our face parser is trained on).

Every template is scaled to the requested ``size`` (its numbers are given at a reference size).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from ..tasks import LUMA_WEIGHTS as _LUMA, to_uint8

# name -> (reference size in px, 5x2 points (x, y) at that size)
_TEMPLATES: dict[str, tuple[int, np.ndarray]] = {
    # The standard 512 px FFHQ 5-point template used by GPEN-style restorers.
    "ffhq": (512, np.array([
        [192.98138, 239.94708],
        [318.90277, 240.19360],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ])),
    # Derived by benchmarks/derive_face_templates.py: our MTCNN on the 5000 aligned CelebA images of
    # ../shared/data/celeba/images (89x109, i.e. 178x218 halved): largest face with score >= 0.95 (found
    # in 4969), images more than 4 robust SDs from the median dropped (4771 kept), mean landmarks mapped
    # back to 178x218 and shifted up by the 20-row centre crop to 178x178. Per-point SD 1.3-5.8 px.
    "celeba": (178, np.array([
        [70.03, 92.26],
        [108.96, 92.24],
        [88.96, 116.13],
        [71.82, 133.38],
        [106.93, 133.35],
    ])),
    # Derived by benchmarks/derive_face_templates.py: our MTCNN on the 750 CelebAMask-HQ train images
    # (256x256) of ../shared/data/celebamask_hq/train/images: largest face with score >= 0.95 (found in
    # 749), 4-robust-SD outliers dropped (716 kept), mean landmarks. Per-point SD 1.6-8.1 px.
    "celebamask": (256, np.array([
        [96.34, 121.34],
        [159.88, 121.44],
        [127.21, 160.91],
        [99.41, 187.77],
        [156.46, 187.77],
    ])),
}
TEMPLATES = tuple(_TEMPLATES)



def template_points(template: str, size: int) -> np.ndarray:
    """The template's 5 points (x, y) for a ``size`` x ``size`` crop."""
    if template not in _TEMPLATES:
        raise ValueError(f"unknown face template {template!r}; choose one of {', '.join(TEMPLATES)}")
    if int(size) < 8:
        raise ValueError(f"crop size must be at least 8 px, got {size}")
    reference, points = _TEMPLATES[template]
    # Scale pixel-centre coordinates: the crop's outer edge (-0.5 .. ref-0.5) maps to (-0.5 .. size-0.5).
    return (points + 0.5) * (float(size) / reference) - 0.5


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama) mapping ``source`` points onto ``target``; 2x3 matrix."""
    source = np.asarray(source, dtype=np.float64).reshape(-1, 2)
    target = np.asarray(target, dtype=np.float64).reshape(-1, 2)
    if source.shape != target.shape or len(source) < 2:
        raise ValueError("need at least two matching points")
    if not (np.isfinite(source).all() and np.isfinite(target).all()):
        raise ValueError("landmarks must be finite")
    mean_s, mean_t = source.mean(0), target.mean(0)
    centred_s, centred_t = source - mean_s, target - mean_t
    variance_s = (centred_s ** 2).sum() / len(source)
    if variance_s <= 1e-12:
        raise ValueError("landmarks are degenerate (all at one point)")
    covariance = centred_t.T @ centred_s / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    flip = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])  # no reflections
    rotation = u @ flip @ vt
    scale = np.trace(np.diag(singular) @ flip) / variance_s
    translation = mean_t - scale * rotation @ mean_s
    return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.inv(_homogeneous(matrix))[:2]


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 matrix of ``outer(inner(p))``."""
    return (_homogeneous(outer) @ _homogeneous(inner))[:2]


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return points @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


@dataclass(frozen=True)
class AlignedFace:
    """An aligned crop and how it maps to the photo.

    ``matrix`` (2x3) maps photo (x, y) to crop (x, y); ``photo_shape`` is (H, W) of the source photo.
    """

    crop: np.ndarray
    matrix: np.ndarray
    size: int
    template: str
    landmarks: Optional[np.ndarray] = None  # the photo landmarks it was aligned from
    photo_shape: Optional[tuple[int, int]] = field(default=None)

    @property
    def inverse(self) -> np.ndarray:
        """2x3 matrix mapping crop (x, y) to photo (x, y)."""
        return invert_affine(self.matrix)

    @property
    def scale(self) -> float:
        """Crop pixels per photo pixel."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))


_PAD_MODES = {"reflect": "symmetric", "edge": "edge", "constant": "constant"}


def _as_uint8_photo(photo: np.ndarray) -> np.ndarray:
    photo = np.asarray(photo)
    if photo.ndim == 3 and photo.shape[2] == 1:
        photo = photo[..., 0]
    if not (photo.ndim == 2 or (photo.ndim == 3 and photo.shape[2] in (3, 4))):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {photo.shape}")
    return photo if photo.dtype == np.uint8 else to_uint8(photo)


def _footprint_box(inverse: np.ndarray, size: int, margin: int = 2) -> tuple[int, int, int, int]:
    """Integer photo box (x0, y0, x1, y1), exclusive end, covering the crop square plus a margin."""
    corners = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    mapped = apply_affine(inverse, corners)
    x0, y0 = np.floor(mapped.min(0)).astype(int) - margin
    x1, y1 = np.ceil(mapped.max(0)).astype(int) + margin + 1
    return int(x0), int(y0), int(x1), int(y1)


def _footprint(inverse: np.ndarray, size: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Photo rows/cols slices covering the crop square, clipped to the photo (may be empty)."""
    x0, y0, x1, y1 = _footprint_box(inverse, size)
    height, width = shape
    return slice(max(y0, 0), max(min(y1, height), 0)), slice(max(x0, 0), max(min(x1, width), 0))


def _antialias_sigma(shrink: float) -> float:
    """Gaussian pre-blur (in pixels) before resampling by ``shrink`` (< 1: fewer output pixels)."""
    return max(0.0, (1.0 / shrink - 1.0) / 2.0) if shrink < 1.0 else 0.0


def _affine_sample(source: np.ndarray, to_source: np.ndarray, out_shape: tuple[int, int], mode: str) -> np.ndarray:
    """Bilinear samples of (H, W[, C]) ``source`` on an output grid; ``to_source`` (2x3) maps output
    (x, y) to source (x, y). ``mode``: ``"edge"`` (clamp) or ``"zeros"`` (0 outside, fading over the
    last half pixel). Returns float32 of ``out_shape`` (+ C)."""
    import torch
    import torch.nn.functional as F

    height, width = source.shape[:2]
    rows, cols = out_shape
    to_source = np.asarray(to_source, dtype=np.float64)
    # Source positions of the output pixel centres, as grid_sample's normalised coordinates
    # (align_corners=False: -1 and 1 are the outer edges of the outer pixels).
    ys, xs = np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64)
    grid_x = to_source[0, 0] * xs[None, :] + to_source[0, 1] * ys[:, None] + to_source[0, 2]
    grid_y = to_source[1, 0] * xs[None, :] + to_source[1, 1] * ys[:, None] + to_source[1, 2]
    grid = np.stack([(2.0 * grid_x + 1.0) / width - 1.0, (2.0 * grid_y + 1.0) / height - 1.0], axis=-1)
    planes = source[..., None] if source.ndim == 2 else source
    tensor = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32)).permute(2, 0, 1)[None]
    sampled = F.grid_sample(tensor, torch.from_numpy(grid.astype(np.float32))[None], mode="bilinear",
                            padding_mode="border" if mode == "edge" else "zeros", align_corners=False)
    sampled = sampled[0].permute(1, 2, 0).numpy()
    return sampled[..., 0] if source.ndim == 2 else sampled


def _block_average(region: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` blocks of a uint8 (H, W, C) array (edge-padded to whole blocks)."""
    from PIL import Image

    height, width = region.shape[:2]
    pad = ((0, -height % factor), (0, -width % factor))
    planes = []
    for channel in range(region.shape[2]):
        plane = np.pad(region[..., channel], pad, mode="edge")
        planes.append(np.asarray(Image.fromarray(plane).reduce(factor)))  # C box average, uint8
    return np.stack(planes, axis=-1)


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    size: int,
    template: str = "ffhq",
    border: str = "reflect",
) -> AlignedFace:
    """Warp the face with these 5 landmarks onto ``template`` at ``size`` px (bilinear).

    Grayscale photos give a grey RGB crop. ``border``: ``"reflect"`` (default; mirror the photo
    where the crop reaches past its edge), ``"edge"`` (repeat edge pixels) or ``"constant"`` (black).
    Shrinking is anti-aliased (block averaging, then a Gaussian for the remaining fraction), and only
    the part of the photo the crop covers is read, so crops of 12 MP photos stay cheap.
    """
    photo = _as_uint8_photo(image)
    if border not in _PAD_MODES:
        raise ValueError(f"border must be one of {', '.join(_PAD_MODES)}, got {border!r}")
    size = int(size)
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    matrix = similarity_transform(landmarks, template_points(template, size))
    inverse = invert_affine(matrix)
    rgb = photo[..., None] if photo.ndim == 2 else photo[..., :3]
    height, width = photo.shape[:2]
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))  # crop px per photo px

    x0, y0, x1, y1 = _footprint_box(inverse, size)
    cx0, cy0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    cx1, cy1 = max(min(x1, width), cx0 + 1), max(min(y1, height), cy0 + 1)
    region = rgb[cy0:cy1, cx0:cx1]
    # Strong shrinking: average whole blocks first; region pixel r then covers photo f*r .. f*r+f-1.
    factor = max(1, int(1.0 / scale)) if scale < 0.5 else 1
    if factor > 1:
        region = _block_average(region, factor)
    # Pad where the crop reaches past the photo, as ``border`` says (reflection about the photo edge).
    before_x, before_y = -(-(cx0 - x0) // factor), -(-(cy0 - y0) // factor)
    after_x, after_y = max(0, -(-(x1 - cx1) // factor)), max(0, -(-(y1 - cy1) // factor))
    before_x, before_y = max(0, before_x), max(0, before_y)
    if before_x or before_y or after_x or after_y:
        region = np.pad(region, [(before_y, after_y), (before_x, after_x), (0, 0)], mode=_PAD_MODES[border])
    region = region.astype(np.float32)
    sigma = _antialias_sigma(scale * factor)
    if sigma > 0:
        region = ndimage.gaussian_filter(region, sigma=(sigma, sigma, 0), mode="nearest")
    photo_to_region = np.array([
        [1.0 / factor, 0.0, -(cx0 + (factor - 1) / 2.0) / factor + before_x],
        [0.0, 1.0 / factor, -(cy0 + (factor - 1) / 2.0) / factor + before_y],
    ])
    crop = _affine_sample(region, compose_affine(photo_to_region, inverse), (size, size), mode="edge")
    if crop.shape[2] == 1:
        crop = np.repeat(crop, 3, axis=2)
    crop = np.clip(np.rint(crop), 0, 255).astype(np.uint8)
    return AlignedFace(crop=crop, matrix=matrix, size=size, template=template, landmarks=landmarks,
                       photo_shape=(height, width))


def soft_box(size: int, feather: float = 0.1) -> np.ndarray:
    """A (size, size) float mask: 1 in the middle, easing to 0 at the crop's border (rounded corners).

    ``feather`` is the width of the soft edge as a fraction of ``size``; the outermost pixel ring is 0,
    so the pasted crop never leaves a seam at its edge.
    """
    size = int(size)
    centres = np.arange(size) + 0.5
    # Distance of each pixel centre from the crop edge, less one pixel: the outer pixel ring gets 0.
    distance = np.minimum(centres, size - centres) - 1.0
    width = max(float(feather) * size, 1.0)
    ramp = np.clip(distance / width, 0.0, 1.0)
    ramp = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no visible edge where the ramp ends
    return np.outer(ramp, ramp)


def _paste_weights(weights: Optional[np.ndarray], size: int, feather: float) -> np.ndarray:
    box = soft_box(size, feather)
    if weights is None:
        return box
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim == 3:
        weights = weights[..., 0]
    if weights.shape != (size, size):
        raise ValueError(f"paste weights must be ({size}, {size}), got {weights.shape}")
    if weights.max(initial=0) > 1.0:
        weights = weights / 255.0
    weights = np.clip(weights, 0.0, 1.0)
    sigma = float(feather) * size / 4.0
    soft = ndimage.gaussian_filter(weights, sigma) if sigma > 0 else weights
    # Also fade at the crop border, so a mask touching the crop's edge leaves no seam.
    return soft * soft_box(size, min(float(feather), 0.05))


def _match_colors(pasted: np.ndarray, original: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Shift ``pasted``'s Lab mean (weighted by ``weight``) to ``original``'s. Only the mean: matching
    the spread too would undo part of a restorer's sharpening or an editor's added contrast."""
    from skimage import color

    w = weight[..., None] / max(float(weight.sum()), 1e-9)
    grey = pasted.ndim == 2
    if grey:
        a, b = pasted[..., None], original[..., None]
    else:
        a = color.rgb2lab(np.clip(pasted, 0, 255) / 255.0)
        b = color.rgb2lab(original / 255.0)
    matched = a + ((b * w).sum((0, 1)) - (a * w).sum((0, 1)))
    if grey:
        return matched[..., 0]
    return color.lab2rgb(matched) * 255.0


def paste_back(
    photo: np.ndarray,
    crop: np.ndarray,
    aligned: AlignedFace,
    weights: Optional[np.ndarray] = None,
    feather: float = 0.1,
    color_match: bool = False,
) -> np.ndarray:
    """A new photo with ``crop`` (an edited ``aligned.crop``) warped back in; ``photo`` is not modified.

    ``weights``: optional crop-sized paste weights 0..1 (e.g. from the face parser), softened by ``feather``;
    default: a soft box easing to 0 over the outer ``feather`` fraction of the crop. Where the warped
    weights are 0 the photo is left exactly as it was. ``color_match`` shifts the pasted face's
    Lab mean to the photo's under the weights. Grayscale (H, W) photos stay (H, W) (the crop is
    converted to luma); an alpha channel is kept as it was.
    """
    source = _as_uint8_photo(photo)
    out = source.copy()
    size = int(aligned.size)
    crop = np.asarray(crop)
    if crop.ndim == 2:
        crop = np.repeat(crop[..., None], 3, axis=2)
    if crop.shape[:2] != (size, size):
        raise ValueError(f"crop must be {size}x{size} (the aligned size), got {crop.shape[:2]}")
    crop = _as_uint8_photo(crop)
    crop = (crop[..., None] if crop.ndim == 2 else crop[..., :3]).astype(np.float32)
    if crop.shape[2] == 1:
        crop = np.repeat(crop, 3, axis=2)
    crop_weights = _paste_weights(weights, size, feather).astype(np.float32)

    height, width = source.shape[:2]
    rows, cols = _footprint(aligned.inverse, size, (height, width))
    if rows.stop <= rows.start or cols.stop <= cols.start:
        return out
    # Crop -> photo may shrink (big crop, small face): blur the crop first, as align_face does.
    sigma = _antialias_sigma(1.0 / max(aligned.scale, 1e-9))
    if sigma > 0:
        crop = ndimage.gaussian_filter(crop, sigma=(sigma, sigma, 0), mode="nearest")
    region_shape = (rows.stop - rows.start, cols.stop - cols.start)
    # region (x, y) -> photo (x, y) -> crop (x, y)
    to_crop = compose_affine(aligned.matrix, np.array([[1.0, 0.0, cols.start], [0.0, 1.0, rows.start]]))
    weight = np.clip(_affine_sample(crop_weights, to_crop, region_shape, mode="zeros"), 0.0, 1.0)
    weight = weight.astype(np.float64)
    inside = weight > 0
    if not inside.any():
        return out
    pasted = _affine_sample(crop, to_crop, region_shape, mode="edge").astype(np.float64)

    original = source[rows, cols].astype(np.float64)
    colour = original if original.ndim == 2 else original[..., :3]
    if colour.ndim == 2:
        pasted = pasted @ _LUMA
    if color_match:
        pasted = _match_colors(pasted, colour, weight)
    w = weight if colour.ndim == 2 else weight[..., None]
    blended = np.clip(np.rint(colour * (1.0 - w) + pasted * w), 0, 255).astype(np.uint8)
    region = out[rows, cols]  # a view: writes go into ``out``
    if region.ndim == 3:
        region[..., :3][inside] = blended[inside]
    else:
        region[inside] = blended[inside]
    return out


def paste_weights_in_photo(aligned: AlignedFace, photo_shape, weights: Optional[np.ndarray] = None,
                           feather: float = 0.1) -> np.ndarray:
    """The (H, W) blend weights ``paste_back`` uses (0 where the photo stays untouched)."""
    height, width = int(photo_shape[0]), int(photo_shape[1])
    out = np.zeros((height, width), dtype=np.float64)
    size = int(aligned.size)
    rows, cols = _footprint(aligned.inverse, size, (height, width))
    if rows.stop <= rows.start or cols.stop <= cols.start:
        return out
    crop_weights = _paste_weights(weights, size, feather).astype(np.float32)
    to_crop = compose_affine(aligned.matrix, np.array([[1.0, 0.0, cols.start], [0.0, 1.0, rows.start]]))
    region_shape = (rows.stop - rows.start, cols.stop - cols.start)
    out[rows, cols] = np.clip(_affine_sample(crop_weights, to_crop, region_shape, mode="zeros"), 0.0, 1.0)
    return out


def crop_footprint(aligned: AlignedFace, photo_shape) -> np.ndarray:
    """(H, W) bool: the photo pixels the aligned crop covers (where a hole paste can reach)."""
    return paste_weights_in_photo(aligned, photo_shape, np.ones((aligned.size,) * 2, np.float32), 0.0) > 0


def warp_labels_back(labels_crop: np.ndarray, aligned: AlignedFace, photo_shape) -> np.ndarray:
    """Labels of the crop carried to the photo (nearest neighbour); (H, W) int32, 0 outside the crop."""
    labels_crop = np.asarray(labels_crop)
    size = int(aligned.size)
    if labels_crop.shape != (size, size):
        raise ValueError(f"label crop must be ({size}, {size}), got {labels_crop.shape}")
    height, width = int(photo_shape[0]), int(photo_shape[1])
    out = np.zeros((height, width), dtype=np.int32)
    rows, cols = _footprint(aligned.inverse, size, (height, width))
    if rows.stop <= rows.start or cols.stop <= cols.start:
        return out
    grid_y, grid_x = np.mgrid[rows, cols]
    points = apply_affine(aligned.matrix, np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).astype(np.float64))
    us = np.floor(points[:, 0] + 0.5).astype(np.int64).reshape(grid_x.shape)
    vs = np.floor(points[:, 1] + 0.5).astype(np.int64).reshape(grid_x.shape)
    valid = (us >= 0) & (us < size) & (vs >= 0) & (vs < size)
    region = out[rows, cols]
    region[valid] = labels_crop[vs[valid], us[valid]]
    return out


def warp_labels_to_crop(labels: np.ndarray, aligned: AlignedFace) -> np.ndarray:
    """A photo-sized label map or mask sampled into the crop (nearest neighbour); 0 outside the photo."""
    labels = np.asarray(labels)
    height, width = labels.shape[:2]
    size = int(aligned.size)
    grid_y, grid_x = np.mgrid[0:size, 0:size]
    points = apply_affine(aligned.inverse, np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).astype(np.float64))
    xs = np.floor(points[:, 0] + 0.5).astype(np.int64).reshape(size, size)
    ys = np.floor(points[:, 1] + 0.5).astype(np.int64).reshape(size, size)
    valid = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    out = np.zeros((size, size), dtype=labels.dtype)
    out[valid] = labels[ys[valid], xs[valid]]
    return out
