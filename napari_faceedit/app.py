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


def launch(screenshot: Optional[Path] = None, sample: bool = True) -> int:
    import napari

    from .context import configure_torch_threads

    configure_torch_threads()
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
