"""Plugin manager: loads built-in and third-party backend packages through one entry-point group,
isolating failures so that one broken package never takes the others (or napari) down."""
from __future__ import annotations

import importlib.metadata
import traceback
from dataclasses import dataclass
from typing import Optional

import pluggy

from . import hookspecs
from .backend import Backend
from .tasks import Task


@dataclass(frozen=True)
class PluginFailure:
    plugin: str  # entry-point name or module name
    stage: str  # "import", "register", "hook", "backend" or "weights"
    error: str  # one line: exception type and message
    details: str = ""  # full traceback, for logs

    def __str__(self) -> str:
        return f"{self.plugin} ({self.stage}): {self.error}"


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class BackendRegistry:
    """Backends contributed by every registered plugin, looked up by name and task."""

    def __init__(self, entry_point_group: Optional[str] = hookspecs.ENTRY_POINT_GROUP):
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.plugin_manager.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.backends: dict[str, type[Backend]] = {}
        self.backend_plugin: dict[str, str] = {}
        self.weights_catalogues: list = []  # weights.PluginCatalogue, one per plugin contribution
        if entry_point_group:
            self._load_entry_points(entry_point_group)

    # -- loading ------------------------------------------------------------------------------
    def _load_entry_points(self, group: str) -> None:
        # Not pm.load_setuptools_entrypoints: it stops at the first package that fails to import.
        for entry_point in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
            try:
                plugin = entry_point.load()
            except Exception as exc:  # noqa: BLE001 - any import error of a third party is isolated
                self._fail(entry_point.name, "import", exc)
                continue
            self.register(plugin, entry_point.name)

    def register(self, plugin: object, name: Optional[str] = None) -> None:
        """Register a plugin object (usually a module with ``@hookimpl`` functions) and collect its backends."""
        name = name or getattr(plugin, "__name__", repr(plugin))
        if self.plugin_manager.get_plugin(name) is not None:
            return
        try:
            self.plugin_manager.register(plugin, name=name)
            self.plugin_manager.check_pending()
        except Exception as exc:  # noqa: BLE001 - e.g. a misspelt hook name
            if self.plugin_manager.is_registered(plugin):
                self.plugin_manager.unregister(plugin)
            self._fail(name, "register", exc)
            return
        # Call this plugin's hook on its own so that one raising does not hide the others.
        for impl in self.plugin_manager.hook.faceedit_backends.get_hookimpls():
            if impl.plugin_name != name:
                continue
            try:
                contributed = list(impl.function() or [])
            except Exception as exc:  # noqa: BLE001
                self._fail(name, "hook", exc)
                continue
            for backend in contributed:
                self._add_backend(backend, name)
        for impl in self.plugin_manager.hook.faceedit_weights.get_hookimpls():
            if impl.plugin_name != name:
                continue
            try:
                contributed = list(impl.function() or [])
            except Exception as exc:  # noqa: BLE001
                self._fail(name, "weights", exc)
                continue
            for catalogue in contributed:
                self._add_weights(catalogue, name)

    def _add_backend(self, backend: object, plugin_name: str) -> None:
        try:
            if not (isinstance(backend, type) and issubclass(backend, Backend)):
                raise TypeError(f"{backend!r} is not a subclass of napari_faceedit.backend.Backend")
            name = getattr(backend, "name", None)
            if not isinstance(name, str) or not name:
                raise TypeError(f"{backend.__name__} has no 'name'")
            unknown = [t for t in backend.tasks if not isinstance(t, Task)]
            if unknown or not backend.tasks:
                raise TypeError(f"{name}: 'tasks' must be a non-empty set of Task values, got {backend.tasks!r}")
            if name in self.backends:
                raise ValueError(f"backend name '{name}' is already provided by plugin '{self.backend_plugin[name]}'")
        except Exception as exc:  # noqa: BLE001
            self._fail(plugin_name, "backend", exc)
            return
        self.backends[name] = backend
        self.backend_plugin[name] = plugin_name

    def _add_weights(self, contribution: object, plugin_name: str) -> None:
        """A plugin's weights catalogue, read now: a broken one is a failure of that plugin only."""
        from .weights.catalogue import resolve_contribution
        from .weights.errors import CatalogueError

        try:
            resolved = resolve_contribution(contribution, plugin_name)
            for other in self.weights_catalogues:
                clash = sorted(set(resolved.entries) & set(other.entries))
                if clash:
                    raise CatalogueError(f"weights id(s) {', '.join(clash)} already provided by plugin '{other.plugin}'")
        except Exception as exc:  # noqa: BLE001
            self._fail(plugin_name, "weights", exc)
            return
        self.weights_catalogues.append(resolved)

    def _fail(self, plugin: str, stage: str, exc: BaseException) -> None:
        self.failures.append(PluginFailure(plugin, stage, _one_line(exc), traceback.format_exc()))

    # -- lookup -------------------------------------------------------------------------------
    def get(self, name: str) -> type[Backend]:
        try:
            return self.backends[name]
        except KeyError:
            known = ", ".join(sorted(self.backends)) or "none"
            raise KeyError(f"no backend named '{name}' (installed: {known})") from None

    def for_task(self, task: Task) -> list[type[Backend]]:
        """Backends supporting ``task``, best first (ready ones before those missing weights)."""
        task = Task(task)
        found = [b for b in self.backends.values() if task in b.tasks]
        return sorted(found, key=lambda b: (not b.ready()[0], -b.priority, b.name))

    def best_for(self, task: Task) -> type[Backend]:
        candidates = [b for b in self.for_task(task) if b.ready()[0]]
        if not candidates:
            raise LookupError(f"no ready backend supports the task '{Task(task).value}'")
        return candidates[0]

    def parity_models(self) -> dict:
        models = {}
        for impl in self.plugin_manager.hook.faceedit_parity_models.get_hookimpls():
            try:
                for model in impl.function() or []:
                    models[model.name] = model
            except Exception as exc:  # noqa: BLE001
                self._fail(impl.plugin_name, "hook", exc)
        return models


_REGISTRY: Optional[BackendRegistry] = None


def get_registry(reload: bool = False) -> BackendRegistry:
    """The process-wide registry (built on first use)."""
    global _REGISTRY
    if _REGISTRY is None or reload:
        _REGISTRY = BackendRegistry()
    return _REGISTRY
