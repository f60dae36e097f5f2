"""What the runner hands a backend for one run: device, seed, validated parameters, progress and
cancel, the model cache, face detection (once per image per run) and a face-parse service."""
from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .model_cache import MODEL_CACHE, ModelCache

ProgressCallback = Callable[[int, int, str], None]  # (step, total, message)
CancelledCallback = Callable[[], bool]
# (image, ctx, face_index, whole_image) -> (H, W) labels in CelebAMask-HQ order
ParseService = Callable[[np.ndarray, "RunContext", Optional[int], bool], np.ndarray]


THREADS_ENV = "FACEEDIT_TORCH_THREADS"


def configure_torch_threads() -> None:
    """Set torch's CPU thread count once for the process from ``$FACEEDIT_TORCH_THREADS`` (the CLI
    and the napari launcher call this at start). Never toggled per run: the setting is process-wide,
    and changing it from a worker thread would throttle every other run in flight."""
    import os

    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_ENV} must be a whole number >= 1, got {value!r}")
    import torch

    torch.set_num_threads(int(value))


class RunCancelled(Exception):
    """Raised inside a backend when the user cancelled; the runner turns it into "no result"."""


def _no_progress(step: int, total: int, message: str) -> None:
    pass


def _never() -> bool:
    return False


@dataclass
class RunContext:
    owner: str = ""  # the backend this context serves (the model cache's owner)
    device: str = "cpu"
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    progress: ProgressCallback = _no_progress
    cancelled: CancelledCallback = _never
    cache: ModelCache = MODEL_CACHE
    parse_service: Optional[ParseService] = None
    # (task, attributes, exclude) -> the best ready backend's name, or None; and run a request on it.
    find_service: Optional[Callable[..., Optional[str]]] = None
    delegate_service: Optional[Callable[..., Any]] = None
    allow_no_face: bool = False  # batch mode: an image without a face passes through unchanged
    notes: list[str] = field(default_factory=list)
    weights_used: list[tuple[str, str]] = field(default_factory=list)  # (weights id or file, sha256)
    detections: dict = field(default_factory=dict)  # shared with derived contexts: detect once per image

    def check(self) -> None:
        """Raise :class:`RunCancelled` when the user asked to stop."""
        if self.cancelled():
            raise RunCancelled()

    def note(self, text: str) -> None:
        if text and text not in self.notes:
            self.notes.append(text)

    def derived(self, owner: str, params: dict[str, Any], progress: Optional[ProgressCallback] = None) -> "RunContext":
        """A context for a service backend (e.g. the parser): same device, cancel, cache and detections."""
        return dataclasses.replace(self, owner=owner, params=params, progress=progress or _no_progress,
                                   notes=[], weights_used=[])

    # -- faces ------------------------------------------------------------------------------------
    def detect(self, image: np.ndarray, min_score: Optional[float] = None) -> list:
        """Detected faces of ``image`` (largest first) scored at least ``min_score`` (default: the
        detector's), computed once per image per run."""
        from .face.detect import DEFAULT_MIN_SCORE, detect_faces

        image = np.ascontiguousarray(image)
        key = (image.shape, zlib.crc32(image.data))
        if key not in self.detections:
            # Detect once down to the lowest score anyone asks for; callers filter.
            from .face.pipeline import WEAK_FACE_SCORE

            self.detections[key] = detect_faces(image, min_score=WEAK_FACE_SCORE)
        threshold = DEFAULT_MIN_SCORE if min_score is None else min_score
        return [face for face in self.detections[key] if face.score >= threshold]

    def parse(self, image: np.ndarray, face_index: Optional[int] = None, whole_image: bool = False) -> np.ndarray:
        """Face labels of ``image`` from the best ready parser (19 CelebAMask-HQ classes)."""
        if self.parse_service is None:
            raise LookupError("no face parser is installed: paint the labels by hand, or install a parsing backend")
        return self.parse_service(image, self, face_index, whole_image)

    # -- other backends -----------------------------------------------------------------------------
    def find_backend(self, task, attributes=()) -> Optional[str]:
        """The best ready backend (other than this one) for ``task`` that can express ``attributes``."""
        if self.find_service is None:
            return None
        return self.find_service(task, tuple(attributes), (self.owner,))

    def delegate(self, request, backend_name: str):
        """Run ``request`` on another backend within this run (same device, cancel and caches)."""
        if self.delegate_service is None:
            raise LookupError("no other backends are available to this run")
        return self.delegate_service(request, backend_name, self)

    # -- models -----------------------------------------------------------------------------------
    def load_weights(self, weights_id: str, build: Callable[[dict], Any],
                     prepare: Optional[Callable[[Any], Any]] = None) -> Any:
        """``build(config)`` with the catalogue's weights loaded (strict), in eval mode on the device,
        then ``prepare(model)`` (an inference path that needs the loaded weights, e.g. folded norms) once;
        cached by (backend, weights sha256, device), so a re-imported file takes effect at once."""
        from . import weights

        sha = weights.sha256_file(weights.path(weights_id))

        def load():
            model = build(dict(weights.entry(weights_id).config or {}))
            weights.load_state_dict(weights_id, model)
            model = model.eval().to(self.device)
            return prepare(model) if prepare is not None else model

        model = self.cache.get(self.owner, (weights_id, sha, self.device), load, weights_id)
        self.weights_used.append((weights_id, sha))
        return model

    def load_model_set(self, weights_ids: tuple[str, ...], build: Callable[[dict], Any]) -> Any:
        """A model made of several catalogue files: ``build({id: verified path})`` -> model (on the
        device, eval mode), cached by every file's sha256 like ``load_weights``."""
        from . import weights

        paths = {weights_id: weights.path(weights_id) for weights_id in weights_ids}
        shas = tuple(weights.sha256_file(path) for path in paths.values())

        def load():
            return build(paths).eval().to(self.device)

        model = self.cache.get(self.owner, (tuple(weights_ids), shas, self.device), load, weights_ids[0])
        self.weights_used.extend(zip(weights_ids, shas))
        return model

    def load_bundled(self, file_name: str, build: Optional[Callable[[], Any]] = None,
                     load: Optional[Callable[[Any], Any]] = None,
                     prepare: Optional[Callable[[Any], Any]] = None) -> Any:
        """One of our shipped models, cached like ``load_weights``: ``build()`` then the bundled state
        dict loaded strictly, or ``load(path)`` for a model whose file says how to build it; then
        ``prepare(model)`` once, as in ``load_weights``."""
        from . import weights

        path = weights.bundled_path(file_name)
        if not path.is_file():
            weights.load_bundled(file_name, None)  # raises the clear "embedded model is missing" error
        sha = weights.sha256_file(path)

        def load_model():
            if load is not None:
                model = load(path)
            else:
                model = build()
                weights.load_bundled(file_name, model)
            model = model.float().eval().to(self.device)
            return prepare(model) if prepare is not None else model

        model = self.cache.get(self.owner, (file_name, sha, self.device), load_model)
        self.weights_used.append((file_name, sha))
        return model
