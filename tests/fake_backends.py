"""Backends defined by the tests (registered through the same pluggy hook a plugin uses)."""
from __future__ import annotations

import threading
import time

import numpy as np

from napari_faceedit.backend import Backend
from napari_faceedit.hookspecs import hookimpl
from napari_faceedit.params import Param
from napari_faceedit.tasks import Result, Task

# Set by a test to let a GatedRestore run finish; cleared before each run.
GATE = threading.Event()
STARTED = threading.Event()


class GatedRestore(Backend):
    """Waits (polling for cancellation) until the test opens the gate, then brightens the image."""

    name = "test-gated"
    version = "1.0"
    tasks = frozenset({Task.RESTORE})
    description = "test backend that waits for a gate"

    def run(self, request, ctx):
        STARTED.set()
        for step in range(10_000):
            ctx.check()
            if GATE.is_set():
                break
            ctx.progress(step % 10, 10, "waiting")
            time.sleep(0.01)
        return Result(image=np.clip(request.image.astype(int) + 40, 0, 255).astype(np.uint8))


class TextStamp(Backend):
    """Edit-by-text stand-in: darkens the image (or draws a grey square when generating) by the text length."""

    name = "test-text"
    version = "1.0"
    tasks = frozenset({Task.EDIT_TEXT})
    description = "test backend for the text widget"
    parameters = (Param("darkness", 2, "divide the image by this", min=1, max=8),
                  Param("mode", "divide", "how to darken", choices=("divide", "invert")))

    def run(self, request, ctx):
        if request.image is None:
            image = np.full((64, 64, 3), 128, np.uint8)
        elif ctx.params["mode"] == "invert":
            image = 255 - request.image
        else:
            image = (request.image // ctx.params["darkness"]).astype(np.uint8)
        ctx.progress(1, 1, request.text)
        return Result(image=image)


@hookimpl
def faceedit_backends():
    return [GatedRestore, TextStamp]


# -- probe backends: the bad-input matrix (test_bad_input_matrix.py) and the Dask batch tests --------
# One per task; each records the request it was given and returns a simple function of its input
# (``probe_result``), so a test knows the exact expected output. ``PROBE_FAILURE["mode"]`` makes every
# probe fail the way a real backend can: at model load, mid-run, out of memory, a lazy import, Ctrl-C
# ("load", "mid-run", "memory", "torch-oom", "lazy-import", "interrupt"), or wait for a cancel ("hold").
from napari_faceedit.backend import FaceBackend  # noqa: E402
from napari_faceedit.model_cache import ModelCache  # noqa: E402

PROBE_REQUESTS: dict = {}  # Task -> the last request a probe ran
PROBE_FAILURE = {"mode": None}
PROBE_MODEL_LOADS = {"n": 0}
# The probes' "models" live in a cache of their own (the same class as the shared one), so they never
# evict the real backends' models from the shared cache between tests.
PROBE_CACHE = ModelCache(max_owners=len(Task) + 2)
PROBE_STARTED = threading.Event()
PROBE_RELEASE = threading.Event()


def probe_result(request) -> Result:
    """What a probe returns for ``request``: labels by brightness for parse, an inverted image
    (only the hole for complete) otherwise, a grey square when generating."""
    if request.task is Task.PARSE:
        return Result(labels=(request.image.mean(axis=2) > 127).astype(np.int32))
    if request.image is None:
        return Result(image=np.full((32, 32, 3), 128, np.uint8))
    inverted = 255 - request.image
    if request.task is Task.COMPLETE and request.mask is not None:
        return Result(image=np.where(request.mask[..., None], inverted, request.image))
    return Result(image=inverted)


def _load_probe_model():
    PROBE_MODEL_LOADS["n"] += 1
    if PROBE_FAILURE["mode"] == "load":
        raise OSError("cannot read the probe's model file: simulated load failure")
    return object()


class ProbeBackend(Backend):
    version = "1.0"
    description = "test backend: records its request and returns a simple function of the input"

    def run(self, request, ctx):
        mode = PROBE_FAILURE["mode"]
        ctx.progress(0, 2, "loading the probe model")
        PROBE_CACHE.get(self.name, ("probe-model",), _load_probe_model)
        if mode == "lazy-import":
            import napari_faceedit_probe_missing_dependency  # noqa: F401 - a dependency missing at run time
        ctx.progress(1, 2, "running the probe")
        if mode == "hold":  # until the test releases it, checking for cancel as a real backend does
            PROBE_STARTED.set()
            while not PROBE_RELEASE.wait(0.01):
                ctx.check()
        if mode == "mid-run":
            raise RuntimeError("probe failed mid-run: simulated backend error")
        if mode == "memory":
            raise MemoryError()
        if mode == "torch-oom":
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if mode == "interrupt":
            raise KeyboardInterrupt
        PROBE_REQUESTS[request.task] = request
        ctx.progress(2, 2, "probe done")
        return probe_result(request)


def _probe_for(task: Task, **attributes) -> type[Backend]:
    name = f"probe-{task.value}"
    return type(name.title().replace("-", ""), (ProbeBackend,), {"name": name, "tasks": frozenset({task}),
                                                                 **attributes})


PROBES = {
    Task.PARSE: _probe_for(Task.PARSE),
    Task.COMPLETE: _probe_for(Task.COMPLETE, supported_attributes=("Smiling",)),
    Task.EDIT_ATTRIBUTES: _probe_for(Task.EDIT_ATTRIBUTES, supported_attributes=("Blond_Hair", "Male")),
    Task.EDIT_TEXT: _probe_for(Task.EDIT_TEXT),
    Task.RESTORE: _probe_for(Task.RESTORE),
    Task.SYNTHESIZE: _probe_for(Task.SYNTHESIZE),
}


# Faces the face probe processed, in order; it raises Ctrl-C at face INTERRUPT_AT_FACE (1-based,
# 0: never), and with HOLD_AFTER_FIRST_FACE set it signals FIRST_FACE_DONE and waits for RELEASE_FACES.
FACES_SEEN: list[int] = []
INTERRUPT_AT_FACE = {"n": 0}
HOLD_AFTER_FIRST_FACE = threading.Event()
FIRST_FACE_DONE = threading.Event()
RELEASE_FACES = threading.Event()


class ProbeFaces(FaceBackend):
    """A face backend through the real face pipeline (detection, alignment, paste-back): inverts each crop."""

    name = "probe-faces"
    version = "1.0"
    tasks = frozenset({Task.RESTORE})
    description = "test face backend: inverts every face crop"
    crop_size = 64

    def process_crop(self, face, ctx):
        FACES_SEEN.append(face.index)
        if INTERRUPT_AT_FACE["n"] == len(FACES_SEEN):
            raise KeyboardInterrupt
        if HOLD_AFTER_FIRST_FACE.is_set() and len(FACES_SEEN) == 1:
            FIRST_FACE_DONE.set()
            RELEASE_FACES.wait(30)
        return 255 - face.image


class ProbeNeedsWeights(ProbeBackend):
    """A restore probe that needs the catalogue entry 'probe-tiny' (a TinyNet, see test_weights.py)."""

    name = "probe-weights"
    tasks = frozenset({Task.RESTORE})
    weights = ("probe-tiny",)

    def run(self, request, ctx):
        from test_weights import TinyNet

        ctx.load_weights("probe-tiny", lambda config: TinyNet(**config))
        return probe_result(request)


def reset_probes() -> None:
    PROBE_REQUESTS.clear()
    PROBE_FAILURE["mode"] = None
    PROBE_MODEL_LOADS["n"] = 0
    PROBE_CACHE.invalidate()
    FACES_SEEN.clear()
    INTERRUPT_AT_FACE["n"] = 0
    for event in (HOLD_AFTER_FIRST_FACE, FIRST_FACE_DONE, RELEASE_FACES, PROBE_STARTED, PROBE_RELEASE):
        event.clear()


class ProbePlugin:
    """The probes as one plugin object (registered beside this module's own backends)."""

    @hookimpl
    def faceedit_backends(self):
        return [*PROBES.values(), ProbeFaces, ProbeNeedsWeights]


PROBE_PLUGIN = ProbePlugin()
