"""Dialog to get the weights a backend needs: owning plugin, licence, size, what is unverified and
status of each file, with "Download" (in a worker thread, with progress, cancellable) and
"Import file..." buttons."""
from __future__ import annotations

import html
import threading
from typing import Callable, Iterable, Optional
from urllib.parse import urlsplit

from qtpy.QtCore import Qt, QThread, Signal
from qtpy.QtWidgets import (
    QDialog,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from .. import weights

_STATE_TEXT = {
    weights.PRESENT: "present",
    weights.MISSING: "missing",
    weights.CORRUPT: "corrupt (does not verify)",
}


class _Job(QThread):
    """Runs ``work(progress, cancelled)`` off the GUI thread and reports through signals."""

    progressed = Signal(object, object)  # done_bytes, total_bytes (Python ints: may exceed 2**31)
    succeeded = Signal(object)  # weights.FetchResult
    failed = Signal(str)

    def __init__(self, work: Callable, parent=None):
        super().__init__(parent)
        self._work = work
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def run(self) -> None:  # noqa: D401 - QThread API
        try:
            result = self._work(lambda done, total: self.progressed.emit(done, total), self._cancel.is_set)
        except weights.DownloadCancelled:
            self.failed.emit("cancelled; nothing was kept")
        except Exception as exc:  # noqa: BLE001 - every failure is shown to the user, never raised in a thread
            self.failed.emit(str(exc) or type(exc).__name__)
        else:
            self.succeeded.emit(result)


class _Row:
    def __init__(self, weights_id: str):
        self.id = weights_id
        self.status = QLabel()
        self.download = QPushButton("Download")
        self.import_button = QPushButton("Import file…")


class WeightsDialog(QDialog):
    """Get the weights files ``weights_ids`` (usually ``backend.weights``)."""

    weights_changed = Signal()  # a file was downloaded or imported: refresh readiness

    def __init__(self, weights_ids: Iterable[str], parent: Optional[QWidget] = None, title: str = ""):
        super().__init__(parent)
        self.setWindowTitle(title or "Weights")
        self.weights_ids = list(weights_ids)
        self.rows: dict[str, _Row] = {}
        self._job: Optional[_Job] = None
        self._job_id = ""

        layout = QVBoxLayout(self)
        intro = QLabel("These files are published by third parties under their own terms; read the licence "
                       "before downloading. A file is used only once it matches the hash its authors published; "
                       "without one, it must hold exactly the network's keys and shapes (read without running any "
                       "code), and its hash is then pinned.\n"
                       f"Cache: {weights.cache_dir()}")
        intro.setWordWrap(True)
        layout.addWidget(intro)

        body = QWidget()
        grid = QGridLayout(body)
        for position, weights_id in enumerate(self.weights_ids):
            self._add_row(grid, position * 3, weights_id)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # wrap long licence texts instead
        scroll.setWidget(body)
        layout.addWidget(scroll)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(self.message.textInteractionFlags() | _selectable())
        self.cancel_button = QPushButton("Cancel download")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        layout.addWidget(self.progress)
        layout.addWidget(self.message)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(close)
        layout.addLayout(buttons)
        self.resize(720, 480)
        self.refresh()

    @classmethod
    def for_backend(cls, backend_cls, parent: Optional[QWidget] = None) -> "WeightsDialog":
        return cls(getattr(backend_cls, "weights", ()), parent, title=f"Weights for {backend_cls.name}")

    def _add_row(self, grid: QGridLayout, line: int, weights_id: str) -> None:
        row = _Row(weights_id)
        self.rows[weights_id] = row
        try:
            item = weights.entry(weights_id)
        except weights.WeightsError as exc:
            grid.addWidget(QLabel(f"<b>{weights_id}</b>: {exc}"), line, 0, 1, 4)
            return
        title = QLabel(f"<b>{html.escape(weights_id)}</b> &nbsp; {html.escape(item.file_name)}, {item.size_text()}"
                       + (f" &nbsp; (plugin: {html.escape(item.plugin)})" if item.plugin else ""))
        title.setWordWrap(True)
        grid.addWidget(title, line, 0)
        grid.addWidget(row.status, line, 1)
        grid.addWidget(row.download, line, 2)
        grid.addWidget(row.import_button, line, 3)
        where = item.page or (item.urls[0] if item.urls else "")
        host = urlsplit(where).netloc or where
        licence = QLabel(f"Licence: {html.escape(item.license)}"
                         + (f"<br>Download page: <a href='{html.escape(where, quote=True)}'>{html.escape(host)}</a>"
                            if where else "")
                         + (f"<br>Not verified: {html.escape(', '.join(item.unverified()))}" if item.unverified() else "")
                         + ("" if item.hash_published else
                            "<br>No published hash: checked against the network, then pinned on first use")
                         + (f"<br><i>{html.escape(item.note)}</i>" if item.note else ""))
        licence.setWordWrap(True)
        licence.setOpenExternalLinks(True)
        licence.setTextInteractionFlags(licence.textInteractionFlags() | _selectable())
        grid.addWidget(licence, line + 1, 0, 1, 4)
        line_widget = QFrame()
        line_widget.setFrameShape(QFrame.HLine)
        grid.addWidget(line_widget, line + 2, 0, 1, 4)
        if not item.urls:
            row.download.setToolTip(f"No automatic download: get it from {item.page} and import it")
        row.download.clicked.connect(lambda _=False, i=weights_id: self.start_download(i))
        row.import_button.clicked.connect(lambda _=False, i=weights_id: self.choose_and_import(i))

    # -- state ---------------------------------------------------------------------------------
    def is_busy(self) -> bool:
        return self._job is not None

    def refresh(self) -> None:
        for weights_id, row in self.rows.items():
            try:
                found = weights.check(weights_id)
                item = weights.entry(weights_id)
            except weights.WeightsError as exc:  # e.g. a cache folder that cannot be used
                row.status.setText("unavailable")
                row.status.setToolTip(str(exc))
                row.download.setEnabled(False)
                row.import_button.setEnabled(False)
                continue
            text = _STATE_TEXT[found.state]
            if found.state == weights.PRESENT and found.hash_origin == "pinned":
                text += " (pinned hash)"
            elif found.state == weights.PRESENT and not found.hash_origin:
                text += " (checked, pinned on first use)"
            row.status.setText(text)
            row.status.setToolTip(found.message or str(found.path or ""))
            busy = self.is_busy()
            row.download.setEnabled(not busy and bool(item.urls) and found.state != weights.PRESENT)
            row.import_button.setEnabled(not busy)
        self.cancel_button.setEnabled(self.is_busy())

    # -- actions -------------------------------------------------------------------------------
    def start_download(self, weights_id: str) -> None:
        self._start(weights_id, lambda progress, cancelled: weights.download(weights_id, progress, cancelled),
                    f"Downloading {weights_id}…")

    def choose_and_import(self, weights_id: str) -> None:
        item = weights.entry(weights_id)
        file_name, _ = QFileDialog.getOpenFileName(self, f"Import {weights_id} ({item.file_name})", "",
                                                   f"Weights ({item.file_name} *.pth *.pt *.ckpt *.zip);;All files (*)")
        if file_name:
            self.start_import(weights_id, file_name)

    def start_import(self, weights_id: str, file_name: str, link: bool = False) -> None:
        self._start(weights_id,
                    lambda progress, cancelled: weights.import_file(weights_id, file_name, link=link,
                                                                    progress=progress, cancelled=cancelled),
                    f"Verifying and importing {file_name}…")

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.message.setText("Cancelling…")

    def _start(self, weights_id: str, work: Callable, text: str) -> None:
        if self.is_busy():
            return
        self._job_id = weights_id
        self._job = _Job(work, self)
        self._job.progressed.connect(self._on_progress)
        self._job.succeeded.connect(self._on_success)
        self._job.failed.connect(self._on_failure)
        self._job.finished.connect(self._on_finished)
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.message.setText(text)
        self._job.start()
        self.refresh()

    def _on_progress(self, done: int, total: int) -> None:
        if total:
            self.progress.setRange(0, 1000)
            self.progress.setValue(min(1000, int(1000 * done / total)))
        else:
            self.progress.setRange(0, 0)  # unknown size: busy indicator

    def _on_success(self, result: weights.FetchResult) -> None:
        self.progress.setRange(0, 1000)
        self.progress.setValue(1000)
        lines = [f"{result.id}: ready ({result.path})"]
        if result.message:
            lines.append(result.message)
        self.message.setText("\n".join(lines))
        self.weights_changed.emit()

    def _on_failure(self, text: str) -> None:
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.message.setText(f"{self._job_id}: {text}")

    def _on_finished(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            job.deleteLater()
        self.refresh()

    def wait_idle(self, timeout_ms: int = 30000) -> bool:
        """Block until the running job ends (tests, closing)."""
        return self._job.wait(timeout_ms) if self._job is not None else True

    def reject(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self._job.wait(10000)
        super().reject()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        if self._job is not None:
            self._job.cancel()
            self._job.wait(10000)
        super().closeEvent(event)


def _selectable():
    return Qt.TextSelectableByMouse
