"""How a run panel turns a result into layers: data prepared in the worker, layers added one per
event-loop turn (napari spends 50-100 ms on each), the run "running" until the last one is added."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np

from napari_faceedit.backend import Backend
from napari_faceedit.hookspecs import hookimpl
from napari_faceedit.tasks import Result, Task

TIMEOUT_MS = 60_000
BUILT_IN = []  # the thread each result's layer data was built in


class ImageLandmarksBoxes(Backend):
    """A restore result shown as three layers: the image, the landmarks and the face boxes."""

    name = "test-three-layers"
    version = "1.0"
    tasks = frozenset({Task.RESTORE})

    def run(self, request, ctx):
        return Result(image=255 - request.image, extras={
            "landmarks": np.array([[[30, 40], [60, 40], [45, 55], [35, 70], [55, 70]]], np.float32),
            "boxes": np.array([[10, 20, 80, 90]], np.float32)})


def test_result_layers_added_one_per_event_loop_turn(make_napari_viewer, qtbot, portrait, fresh_registry,
                                                      monkeypatch):
    from napari_faceedit.widgets import _layers, _run_panel
    from napari_faceedit.widgets.task_widgets import RestoreWidget

    fresh_registry().register(SimpleNamespace(faceedit_backends=hookimpl(lambda: [ImageLandmarksBoxes])),
                              "tests.three_layers")

    def specs_recording_thread(*args):
        BUILT_IN.append(threading.current_thread())
        return _layers.result_layer_specs(*args)

    monkeypatch.setattr(_run_panel, "result_layer_specs", specs_recording_thread)
    viewer = make_napari_viewer()
    viewer.add_image(portrait, name="face")
    widget = RestoreWidget(viewer)
    panel = widget.panel
    panel.select_backend("test-three-layers")
    in_first_turn, running_at_insert, finished = [], [], []
    original = panel._on_returned

    def on_returned(*args):
        original(*args)
        in_first_turn.append([layer.name for layer in viewer.layers])

    panel._on_returned = on_returned
    viewer.layers.events.inserted.connect(lambda event: running_at_insert.append(panel.running))
    panel.run_finished.connect(lambda result: finished.append(len(viewer.layers)))
    panel.start()
    qtbot.waitUntil(lambda: panel.worker is not None and not panel.running, timeout=TIMEOUT_MS)

    base = "face · restore · test-three-layers"
    assert [layer.name for layer in viewer.layers] == ["face", base, f"{base} landmarks", f"{base} faces"]
    assert in_first_turn == [["face", base]]  # the others came in later turns of the event loop
    assert running_at_insert == [True, True, True]  # not running means every layer is there
    assert finished == [4]
    assert BUILT_IN and BUILT_IN[-1] is not threading.main_thread()
    assert panel.last_error is None and "added" in panel.status.text()
    assert np.array_equal(viewer.layers[base].data, 255 - portrait)
