"""The dock widgets: thin views that turn layers into requests and results into new layers."""
from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox, QFormLayout, QGridLayout, QLabel, QPlainTextEdit, QPushButton, QSlider, QSpinBox, QVBoxLayout,
    QWidget,
)
from qtpy.QtCore import Qt

from ..tasks import (
    CompleteRequest, EditAttributesRequest, EditTextRequest, RestoreRequest, Task,
)
from ..vocab import FACE_COMPONENTS
from ._layers import InputInfo, image_array, labels_array, mask_array
from ._pickers import AttributeControls, LayerPicker
from ._run_panel import RunPanel
from ._scroll import scrolling_layout


class _TaskWidget(QWidget):
    """Form rows for the inputs, then the shared run panel."""

    task: Task

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.form = QFormLayout()
        self.image_picker = LayerPicker(napari_viewer, ("image",), none_text=self.image_none_text())
        self.form.addRow("Image", self.image_picker)
        self.face_index = QSpinBox()
        self.face_index.setRange(-1, 99)
        self.face_index.setValue(-1)
        self.face_index.setSpecialValueText("all faces")
        self.face_index.setToolTip("Which detected face to edit (0 = largest); 'all faces' edits every face.")
        self.build_inputs()
        self.panel = RunPanel(napari_viewer, self.task, self.make_request)
        layout = scrolling_layout(self)
        layout.addLayout(self.form)
        layout.addWidget(self.panel)
        layout.addStretch(1)
        self.panel.backend_changed.connect(self.on_backend_changed)
        self.on_backend_changed(self.panel.backend())

    def image_none_text(self):
        return None

    def build_inputs(self) -> None:
        pass

    def on_backend_changed(self, backend) -> None:
        """Keep backend-specific inputs (e.g. the attributes offered) in step with the chosen backend."""
        if hasattr(self, "attributes"):
            self.attributes.set_attributes(tuple(getattr(backend, "supported_attributes", ())))

    def common(self, device: str) -> dict:
        """Device, face choice and the backend parameter form's values: read when Run is pressed."""
        index = self.face_index.value()
        backend = self.panel.backend()
        per_face = backend is not None and backend.per_face
        return dict(device=device, face_index=None if index < 0 or not per_face else index,
                    params=self.panel.parameter_values())

    def source_image(self):
        layer = self.image_picker.layer()
        return layer, image_array(layer)


class CompleteWidget(_TaskWidget):
    """Complete a region drawn as shapes or painted as labels."""

    task = Task.COMPLETE

    def build_inputs(self):
        self.region_picker = LayerPicker(self.viewer, ("shapes", "labels"), none_text="(none: the components below)")
        self.region_picker.setToolTip("Shapes (filled polygons/rectangles/ellipses) or Labels (non-zero = hole)")
        self.form.addRow("Region", self.region_picker)
        # "Complete the mouth": the hole is these face components of the face labels (or of a parse).
        self.component_boxes = {name: QCheckBox(name) for name in FACE_COMPONENTS}
        grid = QGridLayout()
        for i, box in enumerate(self.component_boxes.values()):
            grid.addWidget(box, i // 4, i % 4)
        self.form.addRow("or components", grid)
        self.labels_picker = LayerPicker(self.viewer, ("labels",), none_text="(none: parse automatically)")
        self.form.addRow("Face labels", self.labels_picker)
        self.form.addRow("Face", self.face_index)
        self.attributes = AttributeControls()
        self.form.addRow(self.attributes)

    def make_request(self, device):
        layer, image = self.source_image()
        components = tuple(name for name, box in self.component_boxes.items() if box.isChecked())
        region = self.region_picker.layer()
        if region is None and not components:
            raise ValueError("draw the region to complete (Shapes or Labels), or check the face components to complete")
        mask = mask_array(region, image.shape[:2]) if region is not None else None
        labels_layer = self.labels_picker.layer()
        labels = labels_array(labels_layer, image.shape[:2]) if labels_layer is not None and components else None
        request = CompleteRequest(image=image, mask=mask, components=components if mask is None else (),
                                  labels=labels, attributes=self.attributes.values(), **self.common(device))
        return request, InputInfo.of(layer)


class AttributesWidget(_TaskWidget):
    """Edit attributes (hair colour, gender, age, …) the chosen backend supports."""

    task = Task.EDIT_ATTRIBUTES

    def build_inputs(self):
        self.labels_picker = LayerPicker(self.viewer, ("labels",), none_text="(none: parse automatically)")
        self.form.addRow("Face labels", self.labels_picker)
        self.form.addRow("Face", self.face_index)
        self.attributes = AttributeControls()
        self.form.addRow(self.attributes)
        self.strength = QSlider(Qt.Horizontal)
        self.strength.setRange(0, 100)
        self.strength.setValue(100)
        self.strength_label = QLabel("100 %")
        self.strength.valueChanged.connect(lambda v: self.strength_label.setText(f"{v} %"))
        self.form.addRow("Strength", self.strength)
        self.form.addRow("", self.strength_label)

    def make_request(self, device):
        layer, image = self.source_image()
        labels_layer = self.labels_picker.layer()
        labels = labels_array(labels_layer, image.shape[:2]) if labels_layer is not None else None
        request = EditAttributesRequest(image=image, attributes=self.attributes.values(), labels=labels,
                                        strength=self.strength.value() / 100.0, **self.common(device))
        return request, InputInfo.of(layer)


class TextEditWidget(_TaskWidget):
    """Generate or manipulate a face from a text instruction."""

    task = Task.EDIT_TEXT

    def image_none_text(self):
        return "(none: generate a new face)"

    def build_inputs(self):
        from ._edit_editor import StructuredEditEditor

        self.text = QPlainTextEdit()
        self.text.setPlaceholderText("e.g. 'she has blond wavy hair and is smiling'")
        self.text.setMaximumHeight(80)
        self.form.addRow("Text", self.text)
        self.form.addRow("Face", self.face_index)
        # Backends that read text into a structured edit show it here first, for checking and adjusting.
        self.interpret_button = QPushButton("Interpret")
        self.interpret_button.setToolTip("Show how the text will be read; untick or adjust before running")
        self.interpret_button.clicked.connect(self.interpret)
        self.edit_editor = StructuredEditEditor()
        self.form.addRow(self.interpret_button)
        self.form.addRow(self.edit_editor)
        self._interpreted_text: str | None = None
        self.text.textChanged.connect(lambda: self.edit_editor.set_edit(None))

    def on_backend_changed(self, backend) -> None:
        reads_text = backend is not None and hasattr(backend, "interpret")
        for widget in (self.interpret_button, self.edit_editor):
            widget.setVisible(reads_text)
        self.edit_editor.set_edit(None)

    def interpret(self) -> None:
        from napari.utils.notifications import show_error

        backend = self.panel.backend()
        try:
            edit = backend.interpret(self.text.toPlainText())
        except Exception as exc:  # noqa: BLE001 - e.g. empty text: tell the user, change nothing
            self.edit_editor.set_edit(None)
            self.edit_editor.message.setText(f"Cannot read the text: {exc}")
            show_error(f"napari-faceedit: {exc}")
            return
        self._interpreted_text = self.text.toPlainText()
        self.edit_editor.set_edit(edit)

    def make_request(self, device):
        layer = self.image_picker.layer()
        image = image_array(layer) if layer is not None else None
        backend = self.panel.backend()
        edit = None
        if backend is not None and hasattr(backend, "interpret"):
            if self.edit_editor.edit() is None:
                self.interpret()  # Run without Interpret: read it now, and run what is shown
            edit = self.edit_editor.edit()
        request = EditTextRequest(text=self.text.toPlainText(), image=image, edit=edit, **self.common(device))
        source = InputInfo.of(layer) if layer is not None else InputInfo("generated", (1.0, 1.0), (0.0, 0.0))
        return request, source


class RestoreWidget(_TaskWidget):
    """Restore a degraded photo (noise, blur, compression)."""

    task = Task.RESTORE

    def build_inputs(self):
        self.form.addRow("Face", self.face_index)

    def make_request(self, device):
        layer, image = self.source_image()
        return RestoreRequest(image=image, **self.common(device)), InputInfo.of(layer)
