"""Runs one request on one backend: timing, provenance, cancellation, output checks."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from .backend import Backend, CancelledCallback, ProgressCallback, RunCancelled
from .tasks import Provenance, Request, Result


def _no_progress(step: int, total: int, message: str) -> None:
    pass


def execute(
    backend: Backend | type[Backend],
    request: Request,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelledCallback] = None,
) -> Optional[Result]:
    """Run ``request`` on ``backend``; return the result with provenance, or None when cancelled."""
    if isinstance(backend, type):
        backend = backend()
    if request.task not in backend.tasks:
        raise ValueError(f"backend '{backend.name}' does not support the task '{request.task.value}'")
    if request.device not in backend.devices() and request.device.split(":")[0] not in backend.devices():
        raise ValueError(f"backend '{backend.name}' cannot run on device '{request.device}' "
                         f"(available: {', '.join(backend.devices())})")
    ready, why = backend.ready()
    if not ready:
        raise RuntimeError(f"backend '{backend.name}' is not ready: {why}")
    start = time.perf_counter()
    try:
        result = backend.run(request, progress or _no_progress, cancelled or (lambda: False))
    except RunCancelled:
        return None
    if cancelled is not None and cancelled():
        return None
    if result is None or (result.image is None and result.labels is None):
        raise RuntimeError(f"backend '{backend.name}' returned no output")
    image = getattr(request, "image", None)
    if image is not None:
        _check_shape(backend.name, result, image.shape[:2])
    notes = result.provenance.notes if result.provenance else ""
    weights_id, weights_sha = (result.provenance.weights_id, result.provenance.weights_sha256) if result.provenance else (None, None)
    result.provenance = Provenance(
        backend=backend.name,
        backend_version=backend.version,
        task=request.task.value,
        parameters=request.parameters(),
        seed=request.seed,
        device=request.device,
        wall_time_s=round(time.perf_counter() - start, 4),
        weights_id=weights_id,
        weights_sha256=weights_sha,
        notes=notes,
    )
    return result


def _check_shape(name: str, result: Result, shape: tuple[int, int]) -> None:
    if result.image is not None:
        if result.image.shape != (*shape, 3) or result.image.dtype != np.uint8:
            raise RuntimeError(f"backend '{name}' returned an image of shape {result.image.shape} "
                               f"({result.image.dtype}); expected {(*shape, 3)} uint8")
    if result.labels is not None and result.labels.shape != shape:
        raise RuntimeError(f"backend '{name}' returned labels of shape {result.labels.shape}; expected {shape}")
