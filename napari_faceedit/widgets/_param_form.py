"""A backend's declared parameters as a magicgui form: a new backend's options appear in its
widget with no widget code."""
from __future__ import annotations

from typing import Sequence

from ..params import Param

# magicgui's spin boxes default to 0..999; an undeclared bound must not clip a valid value.
_OPEN_BOUND = 1e9


def parameter_widget(param: Param):
    from magicgui.widgets import create_widget

    options: dict = {}
    widget_type = None
    if param.choices:
        widget_type = "ComboBox"
        options["choices"] = list(param.choices)
    elif param.type in (int, float):
        options["min"] = param.min if param.min is not None else -_OPEN_BOUND
        options["max"] = param.max if param.max is not None else _OPEN_BOUND
        if param.type is float:
            span = options["max"] - options["min"]
            options["step"] = 0.05 if span <= 10 else 0.5
    widget = create_widget(value=param.default, annotation=None if param.choices else param.type,
                           name=param.name, label=param.name.replace("_", " "),
                           widget_type=widget_type, options=options)
    widget.tooltip = param.help
    return widget


def parameter_form(params: Sequence[Param]):
    from magicgui.widgets import Container

    return Container(widgets=[parameter_widget(p) for p in params], labels=True)
