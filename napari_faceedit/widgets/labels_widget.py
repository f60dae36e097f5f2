"""Face labels: a Labels layer with the 19 named classes, a class list for the brush, Auto-parse."""
from __future__ import annotations

import numpy as np
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QFormLayout, QLabel, QListWidget, QListWidgetItem, QPushButton, QSpinBox, QVBoxLayout, QWidget,
)

from ..tasks import ParseRequest, Task
from ..vocab import FACE_CLASSES
from ._layers import InputInfo, face_labels_kwargs, image_array
from ._pickers import LayerPicker
from ._run_panel import RunPanel


class FaceLabelsWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.image_picker = LayerPicker(napari_viewer, ("image",))
        self.labels_picker = LayerPicker(napari_viewer, ("labels",))
        self.new_button = QPushButton("New face labels layer")
        self.new_button.setToolTip("An empty Labels layer over the image with the 19 CelebAMask-HQ classes")
        self.class_list = QListWidget()
        for face_class in FACE_CLASSES:
            swatch = QPixmap(14, 14)
            swatch.fill(QColor(*face_class.color))
            item = QListWidgetItem(QIcon(swatch), f"{face_class.index:2d}  {face_class.description}")
            item.setData(256, face_class.index)  # Qt.UserRole
            self.class_list.addItem(item)
        self.class_list.setMaximumHeight(220)
        self.brush_size = QSpinBox()
        self.brush_size.setRange(1, 200)
        self.brush_size.setValue(10)
        self.parse_panel = RunPanel(napari_viewer, Task.PARSE, self._parse_request, run_text="Auto-parse")
        if self.parse_panel.backend() is None:
            self.parse_panel.run_button.setToolTip(
                "No face parser is installed yet: install a parse backend (e.g. napari-faceedit-parsing).")

        form = QFormLayout()
        form.addRow("Image", self.image_picker)
        form.addRow("Labels", self.labels_picker)
        form.addRow(self.new_button)
        form.addRow(QLabel("Brush label (click to paint):"))
        form.addRow(self.class_list)
        form.addRow("Brush size", self.brush_size)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(QLabel("Automatic parse (adds a new Labels layer):"))
        layout.addWidget(self.parse_panel)
        layout.addStretch(1)

        self.new_button.clicked.connect(self.new_labels_layer)
        self.class_list.currentItemChanged.connect(self._apply_brush)
        self.brush_size.valueChanged.connect(self._apply_brush)

    def new_labels_layer(self):
        image_layer = self.image_picker.layer()
        image = image_array(image_layer)
        layer = self.viewer.add_labels(np.zeros(image.shape[:2], dtype=np.uint8),
                                       **face_labels_kwargs(f"{image_layer.name} face labels", like=image_layer))
        self.labels_picker.select(layer.name)
        self._apply_brush()
        return layer

    def select_class(self, index: int) -> None:
        self.class_list.setCurrentRow(index)

    def _apply_brush(self, *_):
        layer = self.labels_picker.layer()
        item = self.class_list.currentItem()
        if layer is None:
            return
        if item is not None:
            layer.selected_label = int(item.data(256))
            layer.mode = "paint"
        layer.brush_size = self.brush_size.value()

    def _parse_request(self, device):
        layer = self.image_picker.layer()
        return (ParseRequest(image=image_array(layer), device=device, params=self.parse_panel.parameter_values()),
                InputInfo.of(layer))
