"""Requests and results as plain dataclasses: what the widgets and the CLI hand to a backend.

A request never carries a napari layer or a Qt object; arrays are copied in so that a run
cannot touch the caller's data.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np


class Task(str, enum.Enum):
    PARSE = "parse"
    SYNTHESIZE = "synthesize"
    COMPLETE = "complete"
    EDIT_ATTRIBUTES = "edit-attributes"
    EDIT_TEXT = "edit-text"
    RESTORE = "restore"


# The largest image any task accepts (CLI and API alike): 40 megapixels, e.g. 7746 x 5164. Beyond it
# a run would need several GB for paste-back and colour matching; a clear refusal is better.
MAX_IMAGE_PIXELS = 40_000_000


def check_image_size(width: int, height: int, what: str = "image") -> None:
    """Refuse images beyond :data:`MAX_IMAGE_PIXELS` (callers check headers before decoding)."""
    if int(width) * int(height) > MAX_IMAGE_PIXELS:
        raise ValueError(f"{what} is {width}x{height} px ({width * height / 1e6:.1f} Mpx), beyond the supported "
                         f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx: downscale it first")


def _check_numeric(array: np.ndarray, what: str, allow_bool: bool = False) -> None:
    """ValueError (never AttributeError/TypeError later on) for arrays no pixel rule can read."""
    if array.dtype == bool and not allow_bool:
        raise ValueError(f"{what} is a boolean array, expected numbers (pixel values or class indices)")
    if array.dtype != bool and (not np.issubdtype(array.dtype, np.number)
                                or np.issubdtype(array.dtype, np.complexfloating)):
        raise ValueError(f"{what} has unsupported dtype {array.dtype} (expected integers or floats)")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(f"{what} contains NaN or infinite values")


def _as_array(values, what: str) -> np.ndarray:
    if values is None:
        raise ValueError(f"no {what} given")
    try:
        return np.asarray(values)
    except (ValueError, TypeError) as error:  # ragged nested lists and the like
        raise ValueError(f"{what} is not an array: {error}") from None


def to_uint8(pixels: np.ndarray, what: str = "image") -> np.ndarray:
    """Pixel values as a fresh uint8 array (any shape), by one rule per dtype:

    - uint8: copied as is;
    - uint16 (16-bit scans): scaled by the full 16-bit range, v / 257 rounded (65535 -> 255);
    - other integers: taken as 0..255; a value outside that is an error (it has no 8-bit meaning);
    - floats: 0..1 when the maximum is <= 1 (scaled by 255), else 0..255; values more than half a
      grey level outside that range are an error (e.g. 0..65535 floats), never clipped to white;
    - bool, complex, object, NaN/inf: errors.
    """
    pixels = _as_array(pixels, what)
    _check_numeric(pixels, what)
    if pixels.dtype == np.uint8:
        return pixels.copy()
    if pixels.size == 0:
        return np.zeros(pixels.shape, np.uint8)
    if pixels.dtype == np.uint16:
        # (v + 128) // 257 is v / 257 rounded to nearest, in exact integer arithmetic.
        return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    low, high = pixels.min(), pixels.max()
    if np.issubdtype(pixels.dtype, np.integer):
        if low < 0 or high > 255:
            raise ValueError(f"{what} ({pixels.dtype}) holds values {low}..{high}, outside 0..255: "
                             "give uint8, uint16 (scaled by 257) or floats in 0..1")
        return pixels.astype(np.uint8)
    scale = 255.0 if high <= 1.0 else 1.0
    if low * scale < -0.5 or high * scale > 255.5:
        raise ValueError(f"{what} holds float values {float(low):g}..{float(high):g}: expected 0..1 or 0..255")
    data = pixels.astype(np.float32) * np.float32(scale)
    np.rint(data, out=data)
    return np.clip(data, 0, 255, out=data).astype(np.uint8)


# ITU-R BT.601 luma weights: a grey RGB pixel (r == g == b) maps to exactly that grey.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
GRAY_TOLERANCE = 2  # grey levels of channel spread still counted as grayscale (JPEG chroma noise)


def is_grayscale(image: np.ndarray, tolerance: int = GRAY_TOLERANCE) -> bool:
    """Whether an (H, W, 3) image is grey: 99 % of pixels have channels within ``tolerance``."""
    spread = image.max(axis=2).astype(np.int16) - image.min(axis=2).astype(np.int16)
    return bool(np.percentile(spread, 99) <= tolerance)


def to_gray(image: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 image with every channel set to its luma."""
    luma = image.astype(np.float32) @ LUMA_WEIGHTS.astype(np.float32)
    return np.repeat(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _channels(array: np.ndarray, what: str) -> np.ndarray:
    """(H, W) or (H, W, C) with C in 1..4 (gray, gray + alpha, RGB, RGBA); a ValueError naming the shape otherwise."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (2, 3, 4))):
        raise ValueError(f"{what} must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    return array


def as_rgb_uint8(image: np.ndarray, min_size: int = 8) -> np.ndarray:
    """Validate an image and return a fresh (H, W, 3) uint8 copy.

    Accepts grayscale (H, W) / (H, W, 1), gray + alpha (H, W, 2), RGB and RGBA; alpha is dropped
    (transparent pixels keep their stored colour). Pixel values follow :func:`to_uint8` (uint16
    scaled by 257, floats in 0..1 or 0..255). At most :data:`MAX_IMAGE_PIXELS` pixels.
    """
    image = _channels(_as_array(image, "image"), "image")
    if image.ndim == 3:
        image = image[..., :1] if image.shape[2] == 2 else image[..., :3]
        image = image[..., 0] if image.shape[2] == 1 else image
    height, width = image.shape[:2]
    if height < min_size or width < min_size:
        raise ValueError(f"image is too small ({width}x{height} px)")
    check_image_size(width, height)
    pixels = to_uint8(image)  # before expanding gray to 3 channels: a third of the work
    return pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)


def _check_shape(array: np.ndarray, shape: tuple[int, int], what: str) -> None:
    if array.shape[:2] != tuple(shape):
        raise ValueError(f"{what} has shape {array.shape}, but the image is {tuple(shape)}")


def as_mask(mask: np.ndarray, shape: tuple[int, int], what: str = "mask") -> np.ndarray:
    """A (H, W) boolean mask of the image's size: True wherever the given pixel is not black.

    The one rule for hole masks, in the API and the CLI alike: any non-zero value of a gray mask,
    any non-black pixel of an RGB drawing; an RGBA (or gray + alpha) drawing is seen over black, so
    a fully transparent pixel is never set.
    """
    mask = _channels(_as_array(mask, what), what)
    _check_numeric(mask, what, allow_bool=True)
    _check_shape(mask, shape, what)
    if mask.ndim == 2:
        return mask != 0
    has_alpha = mask.shape[2] in (2, 4)
    colour = mask[..., :-1] if has_alpha else mask
    set_pixels = (colour != 0).any(axis=2)
    return set_pixels & (mask[..., -1] != 0) if has_alpha else set_pixels


def labels_from_colors(colors: np.ndarray, what: str = "labels") -> np.ndarray:
    """(H, W) class indices of a colour picture of labels in our palette (``vocab.PALETTE``).

    A picture whose pixels are all gray (r == g == b) is an index map saved as RGB and read as the
    indices (only background is black in the palette, so the two never clash). Any other colour
    not in the palette is an error naming it."""
    from .vocab import PALETTE

    colors = np.asarray(colors)[..., :3]
    if colors.dtype != np.uint8:
        if not np.issubdtype(colors.dtype, np.integer) or colors.min(initial=0) < 0 or colors.max(initial=0) > 255:
            raise ValueError(f"{what}: a colour label map must hold 8-bit colours, got dtype {colors.dtype}")
        colors = colors.astype(np.uint8)
    if (colors[..., 0] == colors[..., 1]).all() and (colors[..., 1] == colors[..., 2]).all():
        return colors[..., 0].astype(np.int32)
    codes = (colors[..., 0].astype(np.int32) << 16) | (colors[..., 1].astype(np.int32) << 8) | colors[..., 2]
    palette_codes = (PALETTE[:, 0].astype(np.int32) << 16) | (PALETTE[:, 1].astype(np.int32) << 8) | PALETTE[:, 2]
    order = np.argsort(palette_codes)
    slots = np.clip(np.searchsorted(palette_codes[order], codes), 0, len(order) - 1)
    classes = order[slots].astype(np.int32)
    unknown = palette_codes[classes] != codes
    if unknown.any():
        y, x = (int(v[0]) for v in np.nonzero(unknown))
        raise ValueError(f"{what}: colour {tuple(int(c) for c in colors[y, x])} at x={x}, y={y} is not one of the "
                         f"{len(PALETTE)} class colours (a colour label map must use our palette)")
    return classes


def as_label_map(labels: np.ndarray, shape: tuple[int, int], what: str = "labels") -> np.ndarray:
    """A (H, W) int32 map of the 19 CelebAMask-HQ class indices, checked: the image's size, whole
    numbers 0..18. An (H, W, 3) or (H, W, 4) uint8 picture in our palette is read back as classes
    (alpha ignored); see :func:`labels_from_colors`."""
    from .vocab import N_CLASSES

    labels = _as_array(labels, what)
    if labels.ndim == 3 and labels.shape[2] == 2:
        labels = labels[..., 0]  # gray + alpha: the gray values are the indices
    labels = _channels(labels, what)
    _check_numeric(labels, what)
    _check_shape(labels, shape, what)
    if labels.ndim == 3:
        return labels_from_colors(labels, what)
    if np.issubdtype(labels.dtype, np.floating) and labels.size and not (np.mod(labels, 1) == 0).all():
        raise ValueError(f"{what} must hold whole class numbers, got fractional values ({labels.dtype})")
    outside = (labels < 0) | (labels >= N_CLASSES)
    if outside.any():
        y, x = (int(v[0]) for v in np.nonzero(outside))
        value = labels[y, x]
        raise ValueError(f"{what} hold class {int(value) if float(value).is_integer() else float(value)} "
                         f"(at x={x}, y={y}), outside the {N_CLASSES} face classes 0..{N_CLASSES - 1}")
    return labels.astype(np.int32)


@dataclass(frozen=True, kw_only=True)
class Request:
    """Fields every task shares. ``face_index`` picks one face of a photo (None = all faces)."""

    task: ClassVar[Task]
    device: str = "cpu"
    seed: int = 0
    face_index: Optional[int] = None
    # (N, 5, 2) landmarks (x, y) of the faces to edit, largest first: skips detection when given.
    landmarks: Optional[np.ndarray] = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.landmarks is not None:
            points = np.asarray(self.landmarks, dtype=np.float64)
            if points.ndim == 2:
                points = points[None]
            if points.ndim != 3 or points.shape[1:] != (5, 2) or not np.isfinite(points).all():
                raise ValueError(f"landmarks must be (faces, 5, 2) finite (x, y) points, got shape {points.shape}")
            object.__setattr__(self, "landmarks", points)
        if self.face_index is not None and (isinstance(self.face_index, bool) or int(self.face_index) != self.face_index
                                            or self.face_index < 0):
            raise ValueError(f"face_index must be a whole number >= 0 (0 = largest face), got {self.face_index!r}")

    def parameters(self) -> dict[str, Any]:
        """Everything but arrays: what provenance records."""
        out: dict[str, Any] = {}
        for name, value in vars(self).items():
            if isinstance(value, np.ndarray):
                out[name] = f"array{list(value.shape)}"
            else:
                out[name] = value
        return out


@dataclass(frozen=True, kw_only=True)
class ParseRequest(Request):
    task: ClassVar[Task] = Task.PARSE
    image: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "image", as_rgb_uint8(self.image))


@dataclass(frozen=True, kw_only=True)
class SynthesizeRequest(Request):
    """Render the face so it follows an edited label map and/or takes components from a donor face.

    ``target_labels``: the edited 19-class map; ``labels``: the face's own, unedited map (None: the
    parse service parses the image); ``donor_image`` + ``components`` (e.g. ("eyes", "mouth")): take
    those components from the donor's largest face."""

    task: ClassVar[Task] = Task.SYNTHESIZE
    image: np.ndarray = None  # type: ignore[assignment]
    target_labels: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    donor_image: Optional[np.ndarray] = None
    components: tuple[str, ...] = ()

    def __post_init__(self):
        super().__post_init__()
        from .vocab import FACE_COMPONENTS

        object.__setattr__(self, "image", as_rgb_uint8(self.image))
        shape = self.image.shape[:2]
        for name, what in (("target_labels", "edited labels"), ("labels", "labels")):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, as_label_map(getattr(self, name), shape, what))
        components = (self.components,) if isinstance(self.components, str) else tuple(self.components)
        unknown = [c for c in components if c not in FACE_COMPONENTS]
        if unknown:
            raise ValueError(f"unknown face component(s) {unknown}; choose from {', '.join(FACE_COMPONENTS)}")
        object.__setattr__(self, "components", components)
        if self.donor_image is not None:
            object.__setattr__(self, "donor_image", as_rgb_uint8(self.donor_image))
        if bool(components) != (self.donor_image is not None):
            raise ValueError("taking components needs both a donor face and the components to take")
        if self.target_labels is None and not components:
            raise ValueError("nothing to render: give the edited labels, or a donor face and the components to take")


@dataclass(frozen=True, kw_only=True)
class CompleteRequest(Request):
    """Fill the hole of an image, optionally steering attributes. The hole is ``mask`` (non-zero =
    hole), or face ``components`` (e.g. ("mouth",)) found in ``labels`` (None: parsed at run time)."""

    task: ClassVar[Task] = Task.COMPLETE
    image: np.ndarray = None  # type: ignore[assignment]
    mask: Optional[np.ndarray] = None
    attributes: dict[str, float] = field(default_factory=dict)
    labels: Optional[np.ndarray] = None
    components: tuple[str, ...] = ()

    def __post_init__(self):
        super().__post_init__()
        from .vocab import FACE_COMPONENTS

        object.__setattr__(self, "image", as_rgb_uint8(self.image))
        shape = self.image.shape[:2]
        components = (self.components,) if isinstance(self.components, str) else tuple(self.components)
        unknown = [c for c in components if c not in FACE_COMPONENTS]
        if unknown:
            raise ValueError(f"unknown face component(s) {unknown}; choose from {', '.join(FACE_COMPONENTS)}")
        object.__setattr__(self, "components", components)
        if self.labels is not None:
            object.__setattr__(self, "labels", as_label_map(self.labels, shape, "labels"))
        if self.mask is None:
            if not components:
                raise ValueError("no hole: draw the region to complete, or name the face components to complete")
            return
        mask = as_mask(self.mask, shape, "hole mask")
        if not mask.any():
            raise ValueError("the hole mask is empty: draw the region to complete first")
        if mask.all():
            raise ValueError("the hole mask covers the whole image: nothing is left to complete from")
        object.__setattr__(self, "mask", mask)


@dataclass(frozen=True, kw_only=True)
class EditAttributesRequest(Request):
    """Target attribute values (CelebA names; 1 = has, 0 = has not); ``strength`` in [0, 1]."""

    task: ClassVar[Task] = Task.EDIT_ATTRIBUTES
    image: np.ndarray = None  # type: ignore[assignment]
    attributes: dict[str, float] = field(default_factory=dict)
    labels: Optional[np.ndarray] = None
    strength: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "image", as_rgb_uint8(self.image))
        if not self.attributes:
            raise ValueError("no target attribute given")
        if not 0.0 <= float(self.strength) <= 1.0:
            raise ValueError(f"strength must lie in [0, 1], got {self.strength}")
        if self.labels is not None:
            object.__setattr__(self, "labels", as_label_map(self.labels, self.image.shape[:2], "labels"))


@dataclass(frozen=True, kw_only=True)
class EditTextRequest(Request):
    """Generate (image None) or manipulate an image following a text instruction."""

    task: ClassVar[Task] = Task.EDIT_TEXT
    text: str = ""
    image: Optional[np.ndarray] = None
    # The structured edit the text was read as, when the user has seen and adjusted it (backends
    # that interpret text read it themselves otherwise).
    edit: Optional[dict] = None

    def __post_init__(self):
        super().__post_init__()
        if not self.text or not self.text.strip():
            raise ValueError("the text instruction is empty")
        if self.image is not None:
            object.__setattr__(self, "image", as_rgb_uint8(self.image))


@dataclass(frozen=True, kw_only=True)
class RestoreRequest(Request):
    task: ClassVar[Task] = Task.RESTORE
    image: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "image", as_rgb_uint8(self.image))


REQUEST_TYPES: dict[Task, type[Request]] = {
    cls.task: cls
    for cls in (ParseRequest, SynthesizeRequest, CompleteRequest, EditAttributesRequest,
                EditTextRequest, RestoreRequest)
}


@dataclass
class Provenance:
    """Where a result came from. Backends may pre-fill ``weights_*`` and ``notes``; the runner fills the rest."""

    backend: str = ""
    backend_version: str = ""
    task: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "cpu"
    wall_time_s: float = 0.0
    weights_id: Optional[str] = None
    weights_sha256: Optional[str] = None
    models: list[dict[str, str]] = field(default_factory=list)  # every weights file the run loaded
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class Result:
    """Output arrays of one run. ``image`` (H, W, 3) uint8 and/or ``labels`` (H, W) int (CelebAMask-HQ order);
    ``extras`` holds further named arrays (e.g. aligned crops); ``provenance`` is filled in by the runner."""

    image: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    provenance: Optional[Provenance] = None
    # Set when the input was passed through unchanged (e.g. no face found in batch mode): why.
    passed_through: Optional[str] = None
