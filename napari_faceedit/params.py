"""Typed backend parameters: declared once per backend, validated the same way for the CLI, the
Python API and the widgets (which render them as a magicgui form).

A backend declares ``parameters = (Param("steps", 200, "optimisation steps", min=1, max=5000), ...)``.
The type comes from the default (bool, int, float or str); ``choices`` makes a str parameter a pick
list. Text values (``--param steps=300``) parse strictly: ``yes``/``no`` are booleans, ``1.5`` is
not an int, and an unknown name is an error listing the valid ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    help: str
    choices: tuple = ()
    min: Optional[float] = None
    max: Optional[float] = None

    def __post_init__(self):
        if type(self.default) not in _TYPES:
            raise TypeError(f"parameter '{self.name}': default must be bool, int, float or str, "
                            f"got {type(self.default).__name__}")
        if self.choices and self.default not in self.choices:
            raise ValueError(f"parameter '{self.name}': default {self.default!r} is not one of {self.choices}")

    @property
    def type(self) -> type:
        return type(self.default)

    def convert(self, value: Any) -> Any:
        """``value`` (typed, or text from the command line) as this parameter's type, range-checked."""
        kind = self.type
        if isinstance(value, str) and kind is not str:
            value = self._from_text(value.strip())
        elif kind is bool:
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise ValueError(f"parameter '{self.name}' is a yes/no value, got {value!r}")
            value = bool(value)
        elif kind is int:
            if isinstance(value, bool) or not float(value).is_integer():
                raise ValueError(f"parameter '{self.name}' must be a whole number, got {value!r}")
            value = int(value)
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError(f"parameter '{self.name}' must be a number, got {value!r}")
            value = float(value)
        elif not isinstance(value, str):
            raise ValueError(f"parameter '{self.name}' must be text, got {value!r}")
        return self._checked(value)

    def _from_text(self, text: str) -> Any:
        kind = self.type
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(f"parameter '{self.name}' is a yes/no value (true/false, yes/no, on/off, 1/0), got {text!r}")
        try:
            return int(text) if kind is int else float(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ValueError(f"parameter '{self.name}' must be {what}, got {text!r}") from None

    def _checked(self, value: Any) -> Any:
        if self.choices and value not in self.choices:
            raise ValueError(f"parameter '{self.name}' must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"parameter '{self.name}' must be finite, got {value!r}")
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            raise ValueError(f"parameter '{self.name}' must lie in [{self._bound(self.min)}, {self._bound(self.max)}], got {value!r}")
        return value

    @staticmethod
    def _bound(value) -> str:
        return "…" if value is None else f"{value:g}"

    def describe(self) -> dict:
        """A JSON-friendly description (``faceedit backends --json``)."""
        out = {"name": self.name, "type": self.type.__name__, "default": self.default, "help": self.help}
        if self.choices:
            out["choices"] = list(self.choices)
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        return out


def resolve(declared: Sequence[Param], given: Mapping[str, Any], owner: str = "backend") -> dict[str, Any]:
    """All declared parameters with ``given`` values converted and checked, defaults for the rest.
    An unknown name is an error listing the valid ones."""
    by_name = {p.name: p for p in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        valid = ", ".join(sorted(by_name)) or "none"
        raise ValueError(f"{owner} has no parameter {', '.join(map(repr, unknown))} (valid: {valid})")
    return {name: (p.convert(given[name]) if name in given else p.default) for name, p in by_name.items()}


def parse_assignments(items: Sequence[str], option: str = "--param") -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}`` (values stay text; ``resolve`` types them)."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{option} expects NAME=VALUE, got {item!r}")
        if name.strip() in out:
            raise ValueError(f"{option} {name.strip()} is given twice")
        out[name.strip()] = value
    return out
