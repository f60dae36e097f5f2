"""Listing backends (`faceedit backends`, the widgets' backend lists) must not import what only a run
needs: torch, training code, model definitions, the heavier scipy and skimage submodules. Checked
in a fresh interpreter, since this test session has imported most of them already."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Each is imported inside the function that needs it; any one at module level costs the listing
# from 30 ms (skimage.measure) to over a second (torch).
LAZY_MODULES = (
    "faceedit_completion.model", "faceedit_completion.train", "faceedit_completion.data",
    "faceedit_stargan.model", "faceedit_stargan.train",
    "faceedit_gpen.model", "faceedit_parsing.compact", "faceedit_tedigan.stylegan", "faceedit_maskguided.learned",
    "scipy.stats", "scipy.sparse.linalg",
    "skimage.restoration", "skimage.filters", "skimage.color", "skimage.measure",
)

LIST_BACKENDS = """
import json, sys
from napari_faceedit.registry import get_registry

registry = get_registry()
assert not registry.failures, registry.failures
for backend in registry.backends.values():  # what `faceedit backends` asks of each
    backend.ready(), backend.devices(), backend.declared_parameters()
print(json.dumps({"backends": len(registry.backends), "modules": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def listed() -> dict:
    done = subprocess.run([sys.executable, "-c", LIST_BACKENDS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_listing_backends_imports_no_run_time_module(listed):
    assert listed["backends"] > 10  # every built-in plugin loaded
    imported = sorted(set(LAZY_MODULES) & set(listed["modules"]))
    assert not imported, f"listing backends imported {imported}: import them where they are used"


def test_listing_backends_does_not_import_torch(listed):
    assert "torch" not in listed["modules"]


def test_device_list_read_without_torch_agrees_with_torch():
    import torch

    from napari_faceedit.backend import _torch_is_cpu_only_build

    if _torch_is_cpu_only_build():
        assert not torch.cuda.is_available()
        assert not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available())
