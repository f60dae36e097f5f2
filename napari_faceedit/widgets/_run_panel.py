"""The panel every run-widget shares: backend and device pickers, Run, progress, Cancel."""
from __future__ import annotations

import threading
from typing import Callable, Optional

from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox, QFormLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget,
)

from ..registry import get_registry
from ..runner import execute, failure_message
from ..tasks import Request, Result, Task
from ._layers import InputInfo, result_layer_specs

# A request factory runs in the GUI thread when Run is pressed: it reads the layers and
# parameters *then*, so later selection changes cannot redirect the run.
RequestFactory = Callable[[str], tuple[Request, InputInfo]]


class _ProgressRelay(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progressed = Signal(int, int, str)


class RunPanel(QWidget):
    """Backend + device pickers, Run/Cancel, progress bar and status for one task."""

    run_finished = Signal(object)  # the Result, or None when cancelled or failed
    backend_changed = Signal(object)  # the newly selected backend class (or None)

    def __init__(self, viewer, task: Task, make_request: RequestFactory, run_text: str = "Run",
                 parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer = viewer
        self.task = Task(task)
        self.make_request = make_request
        self.worker = None
        self.running = False
        self.last_result: Optional[Result] = None
        self.last_error: Optional[str] = None
        self._cancel_event = threading.Event()
        self._pending_layers: list = []  # a result's layers not added yet (added one per event-loop turn)
        self._added_layers: list = []
        self._worker_done = True
        self._relay = _ProgressRelay()
        self._relay.progressed.connect(self._on_progress)

        self.backend_combo = QComboBox()
        self.device_combo = QComboBox()
        self.backend_info = QLabel()
        self.backend_info.setWordWrap(True)
        self.weights_button = QPushButton("Get weights…")
        self.weights_button.setToolTip("Download or import the checkpoint this backend needs (licence shown first)")
        self.weights_button.clicked.connect(self.open_weights_dialog)
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.failures_label = QLabel()
        self.failures_label.setWordWrap(True)
        self.failures_label.setStyleSheet("color: #e06c6c")

        form = QFormLayout()
        form.addRow("Backend", self.backend_combo)
        form.addRow("Device", self.device_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.backend_info)
        # The chosen backend's declared parameters, as a magicgui form (rebuilt on backend change).
        self.parameter_form = None
        self._form_holder = QVBoxLayout()
        layout.addLayout(self._form_holder)
        layout.addWidget(self.weights_button)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.failures_label)

        self.backend_combo.currentIndexChanged.connect(self._on_backend_changed)
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.refresh_backends()

    # -- backends -----------------------------------------------------------------------------
    def refresh_backends(self) -> None:
        registry = get_registry()
        current = self.backend_combo.currentData()
        self.backend_combo.blockSignals(True)
        self.backend_combo.clear()
        for backend in registry.for_task(self.task):
            ready, why = backend.ready()
            self.backend_combo.addItem(backend.name if ready else f"{backend.name} (needs weights)", backend.name)
            tip = "\n".join(filter(None, [backend.description, "Limits: " + backend.limitations
                                          if backend.limitations else "", "" if ready else why]))
            self.backend_combo.setItemData(self.backend_combo.count() - 1, tip, 3)  # Qt.ToolTipRole
        if current is not None and self.backend_combo.findData(current) >= 0:
            self.backend_combo.setCurrentIndex(self.backend_combo.findData(current))
        self.backend_combo.blockSignals(False)
        failures = registry.failures
        self.failures_label.setText(
            "\n".join(f"Plugin '{f.plugin}' failed ({f.stage}): {f.error}" for f in failures))
        self.failures_label.setVisible(bool(failures))
        self._on_backend_changed()

    def backend(self):
        name = self.backend_combo.currentData()
        return get_registry().backends.get(name) if name else None

    def select_backend(self, name: str) -> None:
        index = self.backend_combo.findData(name)
        if index < 0:
            raise KeyError(f"backend '{name}' is not offered for task '{self.task.value}'")
        self.backend_combo.setCurrentIndex(index)

    def _on_backend_changed(self, *_):
        backend = self.backend()
        self.device_combo.clear()
        ready, why = backend.ready() if backend is not None else (False, "")
        self.weights_button.setVisible(backend is not None and not ready)
        if backend is None:
            self.backend_info.setText(f"No installed backend can do '{self.task.value}'.")
            self.run_button.setEnabled(False)
            self.run_button.setToolTip(f"Install a backend plugin that supports '{self.task.value}'.")
        else:
            self.device_combo.addItems(backend.devices())
            text = backend.description + (f"\nLimits: {backend.limitations}" if backend.limitations else "")
            self.backend_info.setText(text if ready else f"{text}\nNot ready: {why}")
            self.run_button.setEnabled(ready and not self.running)
            self.run_button.setToolTip("" if ready else why)
        self._build_parameter_form(backend)
        self.backend_changed.emit(backend)

    def _build_parameter_form(self, backend) -> None:
        from ._param_form import parameter_form

        if self.parameter_form is not None:
            self._form_holder.removeWidget(self.parameter_form.native)
            self.parameter_form.native.setParent(None)
            self.parameter_form.native.deleteLater()
            self.parameter_form = None
        if backend is not None and backend.declared_parameters():
            self.parameter_form = parameter_form(backend.declared_parameters())
            self._form_holder.addWidget(self.parameter_form.native)

    def parameter_values(self) -> dict:
        """The form's values (validated against the declaration when the run starts)."""
        if self.parameter_form is None:
            return {}
        return {widget.name: widget.value for widget in self.parameter_form}

    def open_weights_dialog(self):
        from .weights_dialog import WeightsDialog

        dialog = WeightsDialog.for_backend(self.backend(), self)
        dialog.weights_changed.connect(self.refresh_backends)
        dialog.show()
        return dialog

    # -- running ------------------------------------------------------------------------------
    def start(self) -> None:
        """Capture inputs now, then run in a napari thread worker."""
        from napari.utils.notifications import show_error
        # superqt's worker is what napari.qt.threading wraps; napari 0.9's wrapper breaks on the
        # `errored` signal (its status lambda takes the wrong arity), so we use superqt's directly.
        from superqt.utils import create_worker

        backend = self.backend()
        if backend is None or self.running:
            return
        device = self.device_combo.currentText() or "cpu"
        try:
            request, source = self.make_request(device)
        except Exception as exc:  # noqa: BLE001 - bad input: tell the user, change nothing
            self.last_error = failure_message(exc)
            self.status.setText(f"Not run: {self.last_error}")
            show_error(f"napari-faceedit: {self.last_error}")
            return
        self._cancel_event = cancel_event = threading.Event()
        relay = self._relay

        def work():
            result = execute(backend, request, relay.progressed.emit, cancel_event.is_set)
            specs = result_layer_specs(result, source, self.task.value, backend.name) if result is not None else []
            return result, specs

        self.worker = worker = create_worker(work, _start_thread=False, _connect={
            "returned": lambda returned: self._on_returned(*returned),
            "errored": self._on_errored,
            "finished": self._on_finished,
        })
        self._set_running(True)
        self._worker_done = False
        self.last_error = None
        self.status.setText(f"Running {backend.name} on '{source.name}'…")
        self.progress_bar.setRange(0, 0)  # busy until the backend reports steps
        worker.start()

    def cancel(self) -> None:
        if self.running:
            self._cancel_event.set()
            self.status.setText("Cancelling…")

    def _on_progress(self, step: int, total: int, message: str) -> None:
        if total > 0:
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(min(step, total))
        if message:
            self.status.setText(message)

    def _on_returned(self, result: Optional[Result], layer_specs: list) -> None:
        self.last_result = result
        if result is None:
            self.status.setText("Cancelled: nothing was changed.")
            self.run_finished.emit(result)
            return
        self._pending_layers = list(layer_specs)
        self._added_layers = []
        self._add_next_layer()

    def _add_next_layer(self) -> None:
        # napari takes 50-100 ms to add one layer (its controls, visuals, events): one per event-loop
        # turn lets the window redraw in between. The run counts as running until the last is added.
        if self._pending_layers:
            try:
                self._added_layers.append(self._pending_layers.pop(0).add_to(self.viewer))
            except Exception:
                self._pending_layers = []
                self._finish_if_done()
                raise
        if self._pending_layers:
            # 1 ms, not 0: a zero timer can run before the paint and timer events already due.
            QTimer.singleShot(1, self._add_next_layer)
            return
        result = self.last_result
        took = result.provenance.wall_time_s if result.provenance else 0.0
        self.status.setText(f"Done in {took:.1f} s: added {', '.join(repr(l.name) for l in self._added_layers)}")
        self.run_finished.emit(result)
        self._finish_if_done()

    def _on_errored(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        self.last_result = None
        self.last_error = failure_message(exc)
        self.status.setText(f"Failed: {self.last_error}")
        show_error(f"napari-faceedit: {self.last_error}")
        self.run_finished.emit(None)

    def _on_finished(self) -> None:
        self._worker_done = True
        self._finish_if_done()

    def _finish_if_done(self) -> None:
        if not self._worker_done or self._pending_layers:
            return
        self._set_running(False)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1 if self.last_result is not None else 0)

    def _set_running(self, running: bool) -> None:
        self.running = running
        self.cancel_button.setEnabled(running)
        self.backend_combo.setEnabled(not running)
        self.device_combo.setEnabled(not running)
        backend = self.backend()
        self.run_button.setEnabled(not running and backend is not None and backend.ready()[0])
