"""Runs one request on one backend: checks, the run context (parameters, services), timing and
provenance (built here, once)."""
from __future__ import annotations

import dataclasses
import time
from typing import Optional

import numpy as np

from .backend import Backend
from .context import CancelledCallback, ProgressCallback, RunCancelled, RunContext
from .model_cache import MODEL_CACHE, ModelCache
from .params import resolve
from .tasks import CompleteRequest, ParseRequest, Provenance, Request, Result, Task

BackendLike = Backend | type[Backend]


def execute(
    backend: BackendLike,
    request: Request,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[CancelledCallback] = None,
    *,
    allow_no_face: bool = False,
    parser: Optional[BackendLike] = None,
    cache: Optional[ModelCache] = None,
) -> Optional[Result]:
    """Run ``request`` on ``backend``; the result with provenance, or None when cancelled.

    ``parser`` is the parse service's backend (default: the best ready parsing backend, looked up
    when first needed); ``allow_no_face`` lets an image without a face pass through unchanged.
    """
    if isinstance(backend, type):
        backend = backend()
    check_request(backend, request)
    params = resolve(backend.declared_parameters(), request.params, f"backend '{backend.name}'")
    ready, why = backend.ready()
    if not ready:
        raise RuntimeError(f"backend '{backend.name}' is not ready: {why}")
    ctx = RunContext(owner=backend.name, device=request.device, seed=request.seed, params=params,
                     progress=progress or (lambda *_: None), cancelled=cancelled or (lambda: False),
                     cache=cache or MODEL_CACHE, parse_service=_parse_service(parser), allow_no_face=allow_no_face,
                     find_service=_find_backend, delegate_service=_delegate)
    start = time.perf_counter()
    try:
        request = with_component_hole(request, ctx)
        result = backend.run(request, ctx)
    except RunCancelled:
        return None
    except ValueError as error:
        # A backend that is not a face pipeline itself (it asked the parse service, or delegated to
        # another backend) reaches "no face" here: with allow_no_face it passes through as well.
        if not (allow_no_face and backend.per_face):
            raise
        from .face.pipeline import NoFaceFound, passed_through  # only when a run lets faceless pictures by

        if not isinstance(error, NoFaceFound):
            raise
        result = passed_through(request.image, error, labels=request.task is Task.PARSE)
    if ctx.cancelled():
        return None
    if result is None or (result.image is None and result.labels is None):
        raise RuntimeError(f"backend '{backend.name}' returned no output")
    image = getattr(request, "image", None)
    if image is not None:
        _check_shape(backend.name, result, image.shape[:2])
    if result.passed_through:
        ctx.note(result.passed_through)
    main_weights = ctx.weights_used[0] if ctx.weights_used else (None, None)
    result.provenance = Provenance(
        backend=backend.name,
        backend_version=backend.version,
        task=request.task.value,
        parameters={**request.parameters(), "params": params},
        seed=request.seed,
        device=request.device,
        wall_time_s=round(time.perf_counter() - start, 4),
        weights_id=main_weights[0],
        weights_sha256=main_weights[1],
        models=[{"weights": w, "sha256": s} for w, s in dict.fromkeys(ctx.weights_used)],
        notes="; ".join(ctx.notes),
    )
    return result


def with_component_hole(request: Request, ctx: RunContext) -> Request:
    """A completion asked for by face components ("complete the mouth") gets its hole here, from the
    given labels or the parse service, so every completion backend sees a plain hole mask."""
    if not isinstance(request, CompleteRequest) or request.mask is not None:
        return request
    from .label_edits import component_region

    ctx.progress(0, 1, "finding the face components to complete")
    labels = request.labels if request.labels is not None else ctx.parse(request.image, request.face_index)
    hole = component_region(labels, request.components)
    ctx.note(f"hole: {', '.join(request.components)} from the {'given' if request.labels is not None else 'parsed'} labels")
    return dataclasses.replace(request, mask=hole)


def check_request(backend: Backend, request: Request) -> None:
    """The request suits the backend: task, device, attributes it can express, and face options only
    for face backends."""
    from .vocab import check_attributes

    if request.task not in backend.tasks:
        raise ValueError(f"backend '{backend.name}' does not support the task '{request.task.value}'")
    # Checked here for every backend: one that forgot to check would ignore the attribute silently.
    attributes = getattr(request, "attributes", None)
    if attributes:
        check_attributes(attributes, tuple(backend.supported_attributes), backend.name)
    devices = backend.devices()
    if request.device not in devices and request.device.split(":")[0] not in devices:
        raise ValueError(f"backend '{backend.name}' cannot run on device '{request.device}' "
                         f"(available: {', '.join(devices)})")
    if not backend.per_face and (request.face_index is not None or request.landmarks is not None):
        raise ValueError(f"backend '{backend.name}' edits the whole image: a face index or landmarks do not apply")


def _parse_service(parser: Optional[BackendLike]):
    def parse(image: np.ndarray, ctx: RunContext, face_index: Optional[int], whole_image: bool) -> np.ndarray:
        chosen = parser if parser is not None else _best_parser()
        backend = chosen() if isinstance(chosen, type) else chosen
        wanted = {"whole_image": whole_image} if whole_image else {}
        params = resolve(backend.declared_parameters(), wanted, f"backend '{backend.name}'")
        # No pass-through inside a service: "no face" goes back to the caller (never empty labels).
        service_ctx = dataclasses.replace(ctx.derived(backend.name, params), allow_no_face=False)
        result = backend.run(ParseRequest(image=image, face_index=face_index, device=ctx.device), service_ctx)
        ctx.note(f"face parse by {backend.name}")
        ctx.weights_used.extend(service_ctx.weights_used)
        return result.labels

    return parse


def _find_backend(task: Task, attributes: tuple[str, ...], exclude: tuple[str, ...]) -> Optional[str]:
    from .registry import get_registry

    for backend in get_registry().for_task(task):
        if (backend.name not in exclude and backend.ready()[0]
                and set(attributes) <= set(backend.supported_attributes)):
            return backend.name
    return None


def _delegate(request: Request, backend_name: str, ctx: RunContext) -> Result:
    """Run ``request`` on another backend as part of the current run (a text edit's steps)."""
    from .registry import get_registry

    backend = get_registry().get(backend_name)()
    check_request(backend, request)
    params = resolve(backend.declared_parameters(), request.params, f"backend '{backend.name}'")
    step_ctx = ctx.derived(backend.name, params, progress=ctx.progress)
    result = backend.run(with_component_hole(request, step_ctx), step_ctx)
    ctx.note(f"{request.task.value} by {backend.name}" + (f" ({'; '.join(step_ctx.notes)})" if step_ctx.notes else ""))
    ctx.weights_used.extend(step_ctx.weights_used)
    return result


def _best_parser() -> Backend:
    from .registry import get_registry

    try:
        return get_registry().best_for(Task.PARSE)
    except LookupError:
        raise LookupError("no ready face parser is installed: paint the labels by hand, or install "
                          "a parsing backend") from None


def _check_shape(name: str, result: Result, shape: tuple[int, int]) -> None:
    if result.image is not None:
        if result.image.shape != (*shape, 3) or result.image.dtype != np.uint8:
            raise RuntimeError(f"backend '{name}' returned an image of shape {result.image.shape} "
                               f"({result.image.dtype}); expected {(*shape, 3)} uint8")
    if result.labels is not None and result.labels.shape != shape:
        raise RuntimeError(f"backend '{name}' returned labels of shape {result.labels.shape}; expected {shape}")


def failure_message(error: BaseException) -> str:
    """One line telling the user what went wrong: the error's own message, its type when the
    message is empty or says nothing on its own, and what to try when memory ran out."""
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":  # torch's, CPU or GPU
        return ("out of memory" + (f" ({text})" if text else "")
                + ": try a smaller image, the CPU instead of a GPU, or fewer runs at once")
    if not text:
        return type(error).__name__
    if isinstance(error, (ValueError, RuntimeError, OSError, LookupError)):
        return text
    return f"{type(error).__name__}: {text}"
