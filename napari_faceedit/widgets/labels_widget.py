"""Face labels: a Labels layer with the 19 named classes, a class list for the brush, Auto-parse."""
from __future__ import annotations

import numpy as np
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QCheckBox, QFormLayout, QGridLayout, QLabel, QListWidget, QListWidgetItem, QPushButton, QSpinBox,
    QVBoxLayout, QWidget,
)

from ..tasks import ParseRequest, SynthesizeRequest, Task
from ..vocab import FACE_CLASSES, FACE_COMPONENTS
from ._layers import PARSED_LABELS_KEY, InputInfo, face_labels_kwargs, image_array, labels_array
from ._pickers import LayerPicker
from ._run_panel import RunPanel
from ._scroll import scrolling_layout


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
        layout = scrolling_layout(self)
        layout.addLayout(form)
        layout.addWidget(QLabel("Automatic parse (adds a new Labels layer):"))
        layout.addWidget(self.parse_panel)

        # Render a face that follows the (painted) labels, optionally taking components from another face.
        self.donor_picker = LayerPicker(napari_viewer, ("image",), none_text="(none)")
        self.donor_picker.setToolTip("Another face to take the checked components from")
        self.component_boxes = {name: QCheckBox(name) for name in FACE_COMPONENTS}
        components = QGridLayout()
        for i, box in enumerate(self.component_boxes.values()):
            components.addWidget(box, i // 4, i % 4)
        render_form = QFormLayout()
        render_form.addRow("Component source", self.donor_picker)
        render_form.addRow("Take", components)
        self.render_panel = RunPanel(napari_viewer, Task.SYNTHESIZE, self._render_request, run_text="Render from labels")
        layout.addWidget(QLabel("Render a face that follows the labels (adds a new image layer):"))
        layout.addLayout(render_form)
        layout.addWidget(self.render_panel)
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

    def _render_request(self, device):
        """The image, the edited labels layer (and the labels it was parsed as, when known), a donor."""
        layer = self.image_picker.layer()
        image = image_array(layer)
        labels_layer = self.labels_picker.layer()
        components = tuple(name for name, box in self.component_boxes.items() if box.isChecked())
        donor_layer = self.donor_picker.layer()
        if components and donor_layer is None:
            raise ValueError("choose the component source: another face's image layer")
        if donor_layer is not None and not components:
            raise ValueError("check the components to take from the component source")
        if labels_layer is None and not components:
            raise ValueError("choose the edited face labels layer (Auto-parse, then paint), or components to take")
        target = labels_array(labels_layer, image.shape[:2]) if labels_layer is not None else None
        parsed = labels_layer.metadata.get(PARSED_LABELS_KEY) if labels_layer is not None else None
        request = SynthesizeRequest(
            image=image, target_labels=target, labels=parsed,
            donor_image=image_array(donor_layer) if components else None, components=components,
            device=device, params=self.render_panel.parameter_values())
        return request, InputInfo.of(layer)

    def _parse_request(self, device):
        layer = self.image_picker.layer()
        return (ParseRequest(image=image_array(layer), device=device, params=self.parse_panel.parameter_values()),
                InputInfo.of(layer))
