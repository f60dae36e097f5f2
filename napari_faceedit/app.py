"""The main job: napari with every face-editing widget docked and a sample portrait loaded."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

WIDGETS = ("Face labels", "Complete region", "Attributes", "Text edit", "Restore")


def open_viewer(sample: bool = True, show: bool = True):
    import napari

    viewer = napari.Viewer(title="napari-faceedit", show=show)
    if sample:
        viewer.open_sample("napari-faceedit", "astronaut")
    docked = []
    for name in WIDGETS:
        _, widget = viewer.window.add_plugin_dock_widget("napari-faceedit", name, tabify=True)
        docked.append(widget)
    return viewer, docked


def settle_startup_objects() -> None:
    """Load what every session uses (napari, torch, the backends), then hide the objects alive now from
    Python's cyclic garbage collector (``gc.freeze``). A full collection scans every tracked object:
    with ~370k of them one pass froze the window for 250-400 ms (benchmarks/ui_stall_probe.py);
    start-up objects live until exit anyway, so passes need only scan what the session creates.
    Call before any viewer exists: a frozen viewer could never be freed."""
    import gc

    import napari  # noqa: F401
    import torch  # noqa: F401

    from .registry import get_registry

    get_registry().backends  # imports every plugin's backend module
    gc.collect()
    gc.freeze()


def launch(screenshot: Optional[Path] = None, sample: bool = True) -> int:
    import napari

    from .context import configure_torch_threads

    configure_torch_threads()
    settle_startup_objects()
    viewer, docked = open_viewer(sample=sample)
    if screenshot is not None:
        _screenshot(viewer, docked, screenshot)
        viewer.close()
        return 0
    napari.run()
    return 0


def _screenshot(viewer, docked, path: Path) -> None:
    """Auto-parse the sample face, show the Face labels widget, and save the whole window."""
    import time

    from qtpy.QtWidgets import QApplication

    labels_widget = docked[0]
    labels_widget.parse_panel.start()
    deadline = time.monotonic() + 300
    while (labels_widget.parse_panel.worker is None or labels_widget.parse_panel.running) and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.05)
    labels_widget.select_class(13)
    labels_widget.parent().raise_()  # bring the Face labels tab to the front
    viewer.window._qt_window.resize(1500, 950)
    for _ in range(30):
        QApplication.processEvents()
    viewer.screenshot(str(path), canvas_only=False)
