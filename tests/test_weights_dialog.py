"""The weights dialog: import through the file chooser, download with progress, errors shown."""
from __future__ import annotations

import pytest

pytest.importorskip("qtpy")
pytest.importorskip("pytestqt")

from qtpy.QtCore import Qt  # noqa: E402
from qtpy.QtWidgets import QFileDialog  # noqa: E402

from napari_faceedit.backend import Backend  # noqa: E402
from napari_faceedit.widgets.weights_dialog import WeightsDialog  # noqa: E402
from test_weights import serve_tiny_catalogue, isolated, server, sha, tiny, use_catalogue  # noqa: E402,F401 - fixtures


class NeedsTiny(Backend):
    name = "needs-tiny"
    weights = ("tiny",)


@pytest.fixture
def catalogue(tmp_path, isolated, monkeypatch, server, tiny):  # noqa: F811
    return serve_tiny_catalogue(tmp_path, monkeypatch, server, tiny, "Tiny Licence: research only")


def test_dialog_imports_a_file(qtbot, catalogue, monkeypatch, isolated):  # noqa: F811
    data, digest, source = catalogue
    ready, why = NeedsTiny.ready()
    assert not ready and why.startswith("weights 'tiny' (tiny.pth") and "are missing" in why
    dialog = WeightsDialog.for_backend(NeedsTiny)
    qtbot.addWidget(dialog)
    row = dialog.rows["tiny"]
    assert row.status.text() == "missing"
    texts = [label.text() for label in dialog.findChildren(type(row.status))]
    assert any("Tiny Licence" in text for text in texts)
    assert any("(plugin: catalogue override)" in text for text in texts)  # who owns the entry
    assert any("Not verified: key layout, download URL" in text for text in texts)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(source), "")))
    with qtbot.waitSignal(dialog.weights_changed, timeout=20000):
        qtbot.mouseClick(row.import_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not dialog.is_busy(), timeout=20000)
    assert row.status.text() == "present" and not row.download.isEnabled()
    assert (isolated / "tiny" / "tiny.pth").read_bytes() == data
    assert NeedsTiny.ready() == (True, "ready")


def test_dialog_shows_a_bad_import(qtbot, catalogue, tmp_path, isolated):  # noqa: F811
    data, digest, _ = catalogue
    bad = tmp_path / "bad.pth"
    bad.write_bytes(data[:-1] + b"%")
    dialog = WeightsDialog(["tiny"])
    qtbot.addWidget(dialog)
    dialog.start_import("tiny", str(bad))
    qtbot.waitUntil(lambda: not dialog.is_busy(), timeout=20000)
    assert digest in dialog.message.text() and sha(bad.read_bytes()) in dialog.message.text()
    assert dialog.rows["tiny"].status.text() == "missing" and not (isolated / "tiny").exists()


def test_dialog_downloads_with_progress(qtbot, catalogue, server):  # noqa: F811
    dialog = WeightsDialog(["tiny"])
    qtbot.addWidget(dialog)
    assert dialog.rows["tiny"].download.isEnabled()
    with qtbot.waitSignal(dialog.weights_changed, timeout=20000):
        qtbot.mouseClick(dialog.rows["tiny"].download, Qt.LeftButton)
    qtbot.waitUntil(lambda: not dialog.is_busy(), timeout=20000)
    assert dialog.progress.value() == dialog.progress.maximum() == 1000
    assert dialog.rows["tiny"].status.text() == "present" and server.hits == ["/tiny.pth"]
