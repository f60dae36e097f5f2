"""The structured edit a text was read as, shown for checking before a run: one row per change,
each with a checkbox and a strength (attributes) or amount (shapes) slider."""
from __future__ import annotations

import copy
from typing import Optional

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QGridLayout, QLabel, QSlider, QVBoxLayout, QWidget


class StructuredEditEditor(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._edit: Optional[dict] = None
        self.rows: list[tuple[str, int, QCheckBox, QSlider]] = []  # (kind, index, checkbox, slider)
        self._grid = QGridLayout()
        self.message = QLabel()
        self.message.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self._grid)
        layout.addWidget(self.message)
        self.set_edit(None)

    def set_edit(self, edit: Optional[dict]) -> None:
        """Show ``edit`` (a StructuredEdit as a dict), or nothing."""
        while self._grid.count():
            item = self._grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.rows.clear()
        self._edit = copy.deepcopy(edit) if edit is not None else None
        if edit is None:
            self.message.setText("Press Interpret to see how the text will be read.")
            return
        row = 0
        for index, change in enumerate(edit.get("attributes", [])):
            box = QCheckBox(f"{change['attribute'].replace('_', ' ')}: {'yes' if change['value'] else 'no'}")
            box.setToolTip(f"from \"{change.get('phrase', '')}\", confidence {change.get('confidence', 1):.0%}")
            slider = self._slider(0, 100, round(100 * change["strength"]))
            self._add_row("attributes", index, box, slider, row)
            row += 1
        for index, change in enumerate(edit.get("shapes", [])):
            box = QCheckBox(f"{change['component']}: {'bigger / lower' if change['amount'] > 0 else 'smaller / higher'}")
            box.setToolTip(f"from \"{change.get('phrase', '')}\", confidence {change.get('confidence', 1):.0%}")
            slider = self._slider(-100, 100, round(100 * change["amount"]))
            self._add_row("shapes", index, box, slider, row)
            row += 1
        notes = []
        if edit.get("unknown"):
            notes.append("Not understood or not supported: " + ", ".join(f'"{u}"' for u in edit["unknown"]))
        if edit.get("message"):
            notes.append(edit["message"])
        self.message.setText("\n".join(notes) or ("" if self.rows else "No edit found in the text."))

    @staticmethod
    def _slider(low: int, high: int, value: int) -> QSlider:
        slider = QSlider(Qt.Horizontal)
        slider.setRange(low, high)
        slider.setValue(value)
        return slider

    def _add_row(self, kind: str, index: int, box: QCheckBox, slider: QSlider, row: int) -> None:
        box.setChecked(True)
        self._grid.addWidget(box, row, 0)
        self._grid.addWidget(slider, row, 1)
        self.rows.append((kind, index, box, slider))

    def edit(self) -> Optional[dict]:
        """The edit as adjusted: unticked changes dropped, strengths and amounts from the sliders."""
        if self._edit is None:
            return None
        out = copy.deepcopy(self._edit)
        kept: dict[str, list] = {"attributes": [], "shapes": []}
        for kind, index, box, slider in self.rows:
            if not box.isChecked():
                continue
            change = dict(self._edit[kind][index])
            value = slider.value() / 100.0
            if kind == "attributes":
                change["strength"] = max(value, 0.01)
            elif value != 0:
                change["amount"] = value
            else:
                continue
            kept[kind].append(change)
        out.update(kept)
        return out
