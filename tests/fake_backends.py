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
