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

    viewer, docked = open_viewer(sample=sample)
    if screenshot is not None:
        from qtpy.QtWidgets import QApplication

        labels_widget = docked[0]
        labels_widget.new_labels_layer()
        labels_widget.select_class(13)
        viewer.window._qt_window.resize(1500, 950)
        for _ in range(20):
            QApplication.processEvents()
        viewer.screenshot(str(screenshot), canvas_only=False)
        viewer.close()
        return 0
    napari.run()
    return 0
