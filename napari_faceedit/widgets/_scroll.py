"""Dock widgets scroll instead of squeezing their rows when napari gives them little height."""
from __future__ import annotations

from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget


def scrolling_layout(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a scroll area and return the layout to fill inside it."""
    inner = QWidget()
    content = QVBoxLayout(inner)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.NoFrame)
    scroll.setWidget(inner)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    return content
