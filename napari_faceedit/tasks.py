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


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Pixel values as a fresh uint8 array, any shape: floats in [0, 1] are scaled by 255 (floats
    beyond 1 and integers are taken as 0..255 and clipped)."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels.copy()
    if not np.issubdtype(pixels.dtype, np.number) or np.issubdtype(pixels.dtype, np.complexfloating):
        raise ValueError(f"unsupported image dtype {pixels.dtype}")
    data = pixels.astype(np.float64)
    if not np.isfinite(data).all():
        raise ValueError("image contains NaN or infinite values")
    scale = 255.0 if data.max(initial=0) <= 1.0 and np.issubdtype(pixels.dtype, np.floating) else 1.0
    return np.clip(np.rint(data * scale), 0, 255).astype(np.uint8)


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


def as_rgb_uint8(image: np.ndarray, min_size: int = 8) -> np.ndarray:
    """Validate an image and return a fresh (H, W, 3) uint8 copy.

    Accepts uint8, floats in [0, 1] (or [0, 255] when the maximum exceeds 1), grayscale (H, W) or
    (H, W, 1) and RGBA (alpha dropped).
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got shape {image.shape}")
    image = image[..., :3]
    if image.shape[0] < min_size or image.shape[1] < min_size:
        raise ValueError(f"image is too small ({image.shape[1]}x{image.shape[0]} px)")
    return to_uint8(image)


def as_mask(mask: np.ndarray, shape: tuple[int, int], what: str = "mask") -> np.ndarray:
    """Validate a 2-D mask/label map of the image's size and return an integer copy."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] in (3, 4):  # an RGB(A) drawing: any non-black pixel counts
        mask = mask[..., :3].max(axis=2)
    if mask.shape != tuple(shape):
        raise ValueError(f"{what} has shape {mask.shape}, but the image is {tuple(shape)}")
    if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        if not np.all(np.mod(mask, 1) == 0):
            raise ValueError(f"{what} must hold integers, got dtype {mask.dtype}")
    return mask.astype(np.int32)


def as_label_map(labels: np.ndarray, shape: tuple[int, int], what: str = "labels") -> np.ndarray:
    """A (H, W) map of the 19 CelebAMask-HQ class indices, checked: the image's size, whole numbers 0..18."""
    from .vocab import N_CLASSES

    if np.ndim(labels) == 3 and np.shape(labels)[2] != 1:
        raise ValueError(f"{what} must be a 2-D map of class indices, got shape {np.shape(labels)} "
                         "(a colour picture of labels must be read back to classes first)")
    labels = as_mask(np.asarray(labels)[..., 0] if np.ndim(labels) == 3 else labels, shape, what)
    if labels.size and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise ValueError(f"{what} hold class {int(labels.min()) if labels.min() < 0 else int(labels.max())}, "
                         f"outside the {N_CLASSES} face classes 0..{N_CLASSES - 1}")
    return labels


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
        mask = as_mask(self.mask, shape, "hole mask") != 0
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
            object.__setattr__(self, "labels", as_mask(self.labels, self.image.shape[:2], "labels"))


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
