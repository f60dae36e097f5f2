"""Small Qt pickers kept in sync with the viewer's layer list."""
from __future__ import annotations

import weakref
from typing import Optional

from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QWidget

from ..vocab import HAIR_COLOR_ATTRIBUTES


class LayerPicker(QComboBox):
    """Combo box of the viewer's layers of the given kinds ("image", "labels", "shapes").

    It follows layers being added, removed, moved and renamed; the chosen layer stays chosen under
    a new name (each picker listens to every layer itself, so several docked widgets stay in step)."""

    def __init__(self, viewer, kinds: tuple[str, ...], none_text: Optional[str] = None, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.kinds = kinds
        self.none_text = none_text
        self._renames_followed: weakref.WeakSet = weakref.WeakSet()
        self._chosen_id: Optional[int] = None  # id() of the chosen layer: survives renames
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.moved, events.changed):
            event.connect(self.refresh)
        self.currentIndexChanged.connect(self._remember_choice)
        self.refresh()

    def _layers(self) -> list:
        return [layer for layer in self.viewer.layers if layer._type_string in self.kinds]

    def _remember_choice(self, *_):
        layer = self.layer()
        self._chosen_id = id(layer) if layer is not None else None

    def refresh(self, *_):
        layers = self._layers()
        self.blockSignals(True)
        self.clear()
        if self.none_text is not None:
            self.addItem(self.none_text)
        for layer in self.viewer.layers:
            if layer not in self._renames_followed:
                layer.events.name.connect(self.refresh)
                self._renames_followed.add(layer)
        for layer in layers:
            self.addItem(layer.name)
        chosen = next((layer for layer in layers if id(layer) == self._chosen_id), None)
        if chosen is not None:
            self.setCurrentIndex(self.findText(chosen.name))
        elif self.none_text is None and layers:
            self.setCurrentIndex(self.count() - 1)  # the newest layer is the usual target
        self.blockSignals(False)
        self._remember_choice()

    def layer(self):
        name = self.currentText()
        if not name or name == self.none_text or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def select(self, name: str) -> None:
        self.refresh()
        index = self.findText(name)
        if index < 0:
            raise KeyError(f"no layer '{name}' of kind {self.kinds}")
        self.setCurrentIndex(index)


class AttributeControls(QWidget):
    """One "keep / yes / no" choice per supported attribute; hair colours as one exclusive choice."""

    KEEP = "keep"

    def __init__(self, parent=None):
        super().__init__(parent)
        self.combos: dict[str, QComboBox] = {}
        self.hair_combo: Optional[QComboBox] = None
        self._layout = QHBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        from qtpy.QtWidgets import QFormLayout

        self._form = QFormLayout()
        self._layout.addLayout(self._form)
        self.empty_label = QLabel("This backend takes no attributes.")
        self._form.addRow(self.empty_label)

    def set_attributes(self, names: tuple[str, ...]) -> None:
        while self._form.rowCount() > 1:
            self._form.removeRow(1)
        self.combos.clear()
        self.hair_combo = None
        hair = [n for n in names if n in HAIR_COLOR_ATTRIBUTES]
        if hair:
            self.hair_combo = QComboBox()
            self.hair_combo.addItem(self.KEEP)
            self.hair_combo.addItems([n.replace("_Hair", "").lower() for n in hair])
            for i, n in enumerate(hair, start=1):
                self.hair_combo.setItemData(i, n)
            self._form.addRow("Hair colour", self.hair_combo)
        for name in names:
            if name in HAIR_COLOR_ATTRIBUTES:
                continue
            combo = QComboBox()
            combo.addItems([self.KEEP, "yes", "no"])
            self.combos[name] = combo
            self._form.addRow(name.replace("_", " "), combo)
        self.empty_label.setVisible(not names)

    def values(self) -> dict[str, float]:
        """Only the attributes the user set: a hair colour (exclusive) and yes=1 / no=0 for the others."""
        out: dict[str, float] = {}
        if self.hair_combo is not None and self.hair_combo.currentIndex() > 0:
            chosen = self.hair_combo.currentData()
            for i in range(1, self.hair_combo.count()):
                name = self.hair_combo.itemData(i)
                out[name] = 1.0 if name == chosen else 0.0
        for name, combo in self.combos.items():
            if combo.currentText() != self.KEEP:
                out[name] = 1.0 if combo.currentText() == "yes" else 0.0
        return out

    def set_value(self, name: str, value: Optional[bool]) -> None:
        """Programmatic setting (tests, scripting): None = keep."""
        if name in HAIR_COLOR_ATTRIBUTES:
            index = 0 if not value else next(i for i in range(1, self.hair_combo.count())
                                             if self.hair_combo.itemData(i) == name)
            self.hair_combo.setCurrentIndex(index)
        else:
            self.combos[name].setCurrentText(self.KEEP if value is None else ("yes" if value else "no"))
