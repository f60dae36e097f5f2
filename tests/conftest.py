from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"


def require_shared(*parts: str) -> Path:
    """Path inside ../shared; skip the test when that checkout is absent, but fail under CI=true
    (CI always has ../shared beside the clone, so a missing file there is a real failure)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"../shared is required under CI=true and {path} is missing")
        pytest.skip(f"../shared not available ({path})")
    return path


@pytest.fixture
def fresh_registry():
    """A registry built anew (and restored afterwards), so tests can add plugins without leaking."""
    from napari_faceedit import registry

    saved = registry._REGISTRY
    registry._REGISTRY = None
    yield registry.get_registry
    registry._REGISTRY = saved


def write_dist(root: Path, dist: str, module: str, source: str, entry_name: str | None = None) -> None:
    """Make an importable module plus a dist-info that registers it in our entry-point group,
    exactly as ``pip install`` of a third-party package would."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"  # dist-info names use underscores
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[napari_faceedit.backends]\n{entry_name or dist} = {module}\n")


@pytest.fixture
def third_party_plugins(tmp_path, monkeypatch, fresh_registry):
    """Two installed third-party packages: one good backend, one raising at import."""
    write_dist(tmp_path, "thirdparty-good", "thirdparty_good_backend", '''
        import numpy as np
        from napari_faceedit.backend import Backend
        from napari_faceedit.hookspecs import hookimpl
        from napari_faceedit.tasks import Result, Task

        class InvertRestore(Backend):
            name = "thirdparty-invert"
            version = "9.9"
            tasks = frozenset({Task.RESTORE})
            description = "test backend: inverts the image"

            def run(self, request, ctx):
                ctx.progress(1, 1, "inverting")
                return Result(image=255 - request.image)

        @hookimpl
        def faceedit_backends():
            return [InvertRestore]
    ''')
    write_dist(tmp_path, "thirdparty-broken", "thirdparty_broken_backend", '''
        raise RuntimeError("this plugin is broken on purpose")
    ''')
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    importlib.invalidate_caches()
    yield fresh_registry()
    for name in ("thirdparty_good_backend", "thirdparty_broken_backend"):
        sys.modules.pop(name, None)


@pytest.fixture
def portrait() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a test skipped for want of ../shared fails instead: CI always has it, so such a
    skip would hide a broken path (whatever way the test skips: marker, pytest.skip or a helper)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI", "").lower() == "true":
        reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
        if "shared" in reason:
            report.outcome = "failed"
            report.longrepr = f"CI=true: ../shared must be present, but the test skipped: {reason}"
