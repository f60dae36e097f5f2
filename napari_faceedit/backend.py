"""The small base classes every generator backend subclasses (one file per model, IOPaint-style).

* :class:`Backend`: a whole-image backend implements ``run(request, ctx)``.
* :class:`FaceBackend`: a face backend declares its template, crop size and paste policy and
  implements ``process_crop(face, ctx)``; the core face pipeline does detection, face selection,
  alignment, progress/cancel and paste-back (``napari_faceedit.face.pipeline``).

Backends never import the registry, napari or Qt: what they need at run time (device, seed, their
parameters, progress, cancel, models, a face parse) comes through the :class:`RunContext`.
"""
from __future__ import annotations

import enum
import functools
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import numpy as np

from .context import CancelledCallback, ProgressCallback, RunCancelled, RunContext  # noqa: F401 (re-exported)
from .params import Param
from .tasks import Request, Result, Task

if TYPE_CHECKING:
    from .face.align import AlignedFace


class Backend:
    """A generator backend: class attributes describe it, :meth:`run` does the work."""

    name: ClassVar[str]
    version: ClassVar[str] = "0"
    tasks: ClassVar[frozenset[Task]] = frozenset()
    # What the backend can and cannot do, in a sentence or two shown to the user.
    description: ClassVar[str] = ""
    limitations: ClassVar[str] = ""
    # CelebA attribute names this backend can edit/condition on (see vocab.CELEBA_ATTRIBUTES).
    supported_attributes: ClassVar[tuple[str, ...]] = ()
    # Ids in the weights catalogue (any plugin's) that must be present before the backend can run.
    weights: ClassVar[tuple[str, ...]] = ()
    # Our own small models shipped inside a plugin package (file names; see weights.bundled_path).
    bundled: ClassVar[tuple[str, ...]] = ()
    # Higher wins when the CLI picks "the best available backend" for a task.
    priority: ClassVar[int] = 0
    uses_torch: ClassVar[bool] = False
    # The backend's options: validated for the CLI and the API, rendered as a form in the widgets.
    parameters: ClassVar[tuple[Param, ...]] = ()
    # Whether ``face_index`` means something to this backend (face backends: yes).
    per_face: ClassVar[bool] = False

    @classmethod
    def declared_parameters(cls) -> tuple[Param, ...]:
        return tuple(cls.parameters)

    @classmethod
    def devices(cls) -> list[str]:
        """Devices this backend can run on here; cpu is always first."""
        if not cls.uses_torch:
            return ["cpu"]
        return available_torch_devices()

    @classmethod
    def ready(cls) -> tuple[bool, str]:
        """(ready, why not): names each missing or corrupt file and how to get it. Never raises."""
        if not (cls.weights or cls.bundled):
            return True, "ready"
        try:
            return _weights_ready(cls.weights, cls.bundled)
        except Exception as exc:  # noqa: BLE001 - a broken cache must not break the backend list
            return False, f"weights check failed: {exc}"

    def run(self, request: Request, ctx: RunContext) -> Result:
        raise NotImplementedError


def _weights_ready(weights_ids, bundled) -> tuple[bool, str]:
    from . import weights

    problems = []
    for name in bundled:
        try:
            weights.bundled_path(name)
        except weights.WeightsError as error:  # not shipped by any installed plugin, or by two
            problems.append(str(error))
    for weights_id in weights_ids:
        try:
            found = weights.check(weights_id)
        except weights.UnknownWeightsError as error:
            problems.append(str(error))
            continue
        if found.state == weights.CORRUPT:
            problems.append(f"weights '{weights_id}' are corrupt: {found.message}; "
                            f"run faceedit weights download {weights_id} --force, or import a good copy")
        elif found.state != weights.PRESENT:
            problems.append(found.message)
    return (False, "; ".join(problems)) if problems else (True, "ready")


# ------------------------------------------------------------------------------------------ faces
class Paste(str, enum.Enum):
    """How an edited crop goes back into the photo."""

    SOFT_BOX = "soft-box"  # the whole crop, easing to 0 at its border
    FACE_REGION = "face-region"  # the face region the parse service finds in the edited crop (soft box without a parser)
    HOLE = "hole"  # only the user's hole: every pixel outside it stays bit-for-bit
    REGION = "region"  # crop-sized weights returned by process_crop (CropResult.region)
    LABELS = "labels"  # a label map is warped back (parsers); no image is pasted


@dataclass
class FaceCrop:
    """One aligned face and its context, as ``process_crop`` receives it."""

    image: np.ndarray  # (S, S, 3) uint8, aligned to the backend's template
    aligned: "AlignedFace"  # how the crop maps to the photo
    index: int  # the face's index among the detected faces (0 = largest)
    request: Request
    labels: Optional[np.ndarray] = None  # the request's label map, warped into the crop (nearest)
    target_labels: Optional[np.ndarray] = None  # synthesize: the edited labels, warped into the crop
    hole: Optional[np.ndarray] = None  # complete: the hole, warped into the crop (bool)

    @property
    def size(self) -> int:
        return int(self.image.shape[0])


@dataclass
class CropResult:
    """What ``process_crop`` returns: an edited crop and/or crop labels; ``region`` for Paste.REGION;
    ``extras`` are per-face arrays the pipeline stacks over faces (e.g. a label vector)."""

    image: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    region: Optional[np.ndarray] = None
    extras: dict[str, Any] = field(default_factory=dict)


# Options every face backend has (the pipeline reads them); appended to the backend's own.
FACE_PARAMETERS = (
    Param("whole_image", False, "the image is already an aligned face crop: skip detection and edit it whole"),
    Param("return_crops", False, "also return the aligned face crops before and after the edit"),
)


class FaceBackend(Backend):
    """A backend that edits aligned face crops. Declare the framing and paste policy; implement
    :meth:`process_crop`. Override :meth:`prepare` to load models once per run, :meth:`paste_weights`
    for a custom paste shape, and :meth:`finish` to post-process the whole result."""

    per_face = True
    template: ClassVar[str] = "ffhq"  # "ffhq" | "celeba" | "celebamask" (napari_faceedit.face.align)
    crop_size: ClassVar[int] = 256
    paste: ClassVar[Paste] = Paste.SOFT_BOX
    color_match: ClassVar[bool] = False  # shift the pasted face's Lab mean to the photo's
    feather: ClassVar[float] = 0.1  # soft edge of the paste weights, as a fraction of the crop
    face_layers: ClassVar[bool] = False  # return the faces' landmarks and boxes (shown as layers)

    @classmethod
    def declared_parameters(cls) -> tuple[Param, ...]:
        own = tuple(cls.parameters)
        names = {p.name for p in own}
        return own + tuple(p for p in FACE_PARAMETERS if p.name not in names)

    def crop_size_for(self, landmarks: Optional[np.ndarray], ctx: RunContext) -> int:
        """Crop size for one face (fixed by default; a backend may follow the face's size in the photo)."""
        return int(self.crop_size)

    def prepare(self, request: Request, ctx: RunContext) -> None:
        """Called once per run after the faces are found, before the first crop (load models here)."""

    def process_crop(self, face: FaceCrop, ctx: RunContext) -> CropResult | np.ndarray:
        raise NotImplementedError

    def paste_policy(self, ctx: RunContext) -> Paste:
        """The backend's paste policy, or the user's choice when the backend declares a ``paste`` parameter."""
        return Paste(ctx.params.get("paste", self.paste))

    def paste_weights(self, face: FaceCrop, edited: CropResult, ctx: RunContext) -> Optional[np.ndarray]:
        """Crop-sized weights 0..1 for pasting ``edited.image`` (None = the soft box)."""
        from .face.pipeline import face_region_weights

        policy = self.paste_policy(ctx)
        if policy is Paste.FACE_REGION:
            return face_region_weights(edited.image, ctx)
        if policy is Paste.REGION:
            if edited.region is None:
                raise RuntimeError(f"backend '{self.name}' pastes a region but returned none")
            return edited.region
        return None

    def finish(self, run, ctx: RunContext) -> Result:
        """Turn the pipeline's :class:`~napari_faceedit.face.pipeline.FaceRun` into the result."""
        return run.result

    def run(self, request: Request, ctx: RunContext) -> Result:
        from .face.pipeline import run_face_pipeline

        return self.finish(run_face_pipeline(self, request, ctx), ctx)


def available_torch_devices() -> list[str]:
    if "torch" not in sys.modules and _torch_is_cpu_only_build():
        return ["cpu"]  # nothing to ask torch: spare listing backends its ~1 s import
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but stay usable without it
        return ["cpu"]
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


@functools.lru_cache(maxsize=None)
def _torch_is_cpu_only_build() -> bool:
    """True when the installed torch can only see the CPU here: built without CUDA and ROCm
    (its version.py, read without importing torch) and not on macOS (MPS). False when unsure."""
    if sys.platform == "darwin":
        return False
    try:
        spec = importlib.util.find_spec("torch")
        folder = next(iter(spec.submodule_search_locations or ())) if spec else None
        text = (Path(folder) / "version.py").read_text(encoding="utf-8") if folder else ""
    except (OSError, ImportError, ValueError):
        return False
    values = dict(re.findall(r"^(cuda|hip)\b[^=\n]*=\s*(\S.*?)\s*$", text, re.MULTILINE))
    return values.get("cuda") == "None" and values.get("hip") == "None"
