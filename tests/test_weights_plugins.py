"""Plugins own their weights: a third-party package with a catalogue entry and a bundled model works
with no change to the core; a broken catalogue is reported like a broken backend and hides nothing."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import write_dist
from napari_faceedit import weights
from test_weights import isolated, state_bytes  # noqa: F401 - fixtures
from test_weights_cli import run

GOOD_PLUGIN = '''
    from pathlib import Path

    from torch import nn

    from napari_faceedit.backend import Backend
    from napari_faceedit.hookspecs import hookimpl
    from napari_faceedit.tasks import Result, Task
    from napari_faceedit.weights import WeightsCatalogue

    HERE = Path(__file__).parent


    class Doubler(nn.Module):
        def __init__(self, width=3):
            super().__init__()
            self.scale = nn.Linear(width, width)


    class UsesWeights(Backend):
        name = "thirdparty-weighted"
        tasks = frozenset({Task.RESTORE})
        weights = ("tp-doubler",)
        bundled = ("tp_small.pt",)

        def run(self, request, ctx):
            return Result(image=request.image)


    @hookimpl
    def faceedit_backends():
        return [UsesWeights]


    @hookimpl
    def faceedit_weights():
        return [WeightsCatalogue(HERE / "tp_weights.toml", HERE / "tp_models",
                                 {"tp-doubler": lambda config: Doubler(**config)})]
'''

TOML = '''
[tp-doubler]
backend = "thirdparty-weighted"
file_name = "doubler.pth"
urls = []
page = "https://example.org/doubler"
license = "third-party test licence"
paper = "none"
keys_verified = true
config = { width = 3 }
'''

BROKEN_PLUGIN = '''
    from pathlib import Path

    from napari_faceedit.hookspecs import hookimpl
    from napari_faceedit.weights import WeightsCatalogue


    @hookimpl
    def faceedit_weights():
        return [WeightsCatalogue(Path(__file__).parent / "tp_broken.toml")]
'''

SHADOW_PLUGIN = '''
    from pathlib import Path

    from napari_faceedit.hookspecs import hookimpl
    from napari_faceedit.weights import WeightsCatalogue


    @hookimpl
    def faceedit_weights():
        return [WeightsCatalogue(models_dir=Path(__file__).parent / "tp_shadow_models")]
'''

MODULES = ("thirdparty_weighted_backend", "thirdparty_broken_weights", "thirdparty_shadow_weights")


@pytest.fixture
def installed(tmp_path, monkeypatch, fresh_registry, isolated):  # noqa: F811
    """Two throw-away packages next to the real plugins: one with a catalogue entry and a bundled
    model, one whose catalogue is broken."""
    from torch import nn

    write_dist(tmp_path, "thirdparty-weighted", MODULES[0], GOOD_PLUGIN)
    (tmp_path / "tp_weights.toml").write_text(TOML)
    (tmp_path / "tp_models").mkdir()
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "tp_models" / "tp_small.pt")
    write_dist(tmp_path, "thirdparty-broken-weights", MODULES[1], BROKEN_PLUGIN)
    (tmp_path / "tp_broken.toml").write_text('[oops]\nbackend = "x"\nfile_name = "../escape.pth"\nlicense = "x"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    importlib.invalidate_caches()
    yield tmp_path
    for name in MODULES:
        sys.modules.pop(name, None)


def test_a_third_party_catalogue_and_bundled_model_work_without_core_changes(installed, fresh_registry, capsys):
    registry = fresh_registry()
    item = weights.entry("tp-doubler")
    assert item.plugin == "thirdparty-weighted" and item.license == "third-party test licence"
    assert weights.bundled_path("tp_small.pt") == installed / "tp_models" / "tp_small.pt"
    backend = registry.get("thirdparty-weighted")
    ok, why = backend.ready()
    assert not ok and "tp-doubler" in why and "faceedit weights import tp-doubler PATH" in why
    code, out, _ = run(["weights", "list", "--json"], capsys)
    rows = {row["id"]: row for row in json.loads(out)}
    assert code == 0 and rows["tp-doubler"]["plugin"] == "thirdparty-weighted"
    assert rows["tp-doubler"]["unverified"] == [] and rows["stargan-celeba-128"]["plugin"] == "stargan"
    code, out, _ = run(["weights", "list"], capsys)
    assert any(line.startswith("tp-doubler ") and "thirdparty-weighted" in line for line in out.splitlines())
    # The plugin's builder checks an imported file before it is trusted: right network in, wrong one out.
    from thirdparty_weighted_backend import Doubler

    good, wrong = installed / "good.pth", installed / "wrong.pth"
    good.write_bytes(state_bytes(Doubler().state_dict()))
    wrong.write_bytes(state_bytes(Doubler(width=4).state_dict()))
    with pytest.raises(weights.UntrustedFileError, match="plugin 'thirdparty-weighted'.*shape mismatch"):
        weights.import_file("tp-doubler", wrong)
    assert weights.import_file("tp-doubler", good).pinned_now
    assert backend.ready() == (True, "ready")


def test_a_broken_catalogue_is_reported_and_hides_nothing(installed, fresh_registry, capsys):
    registry = fresh_registry()
    broken = [f for f in registry.failures if f.plugin == "thirdparty-broken-weights"]
    assert [f.stage for f in broken] == ["weights"] and "bare file name" in broken[0].error
    ids = weights.ids()
    assert "oops" not in ids and "tp-doubler" in ids and "gpen-bfr-512" in ids and len(ids) >= 27
    code, _, _ = run(["weights", "list"], capsys)
    assert code == 0


def test_the_same_model_name_in_two_plugins_names_both(installed, fresh_registry):
    write_dist(installed, "thirdparty-shadow-weights", MODULES[2], SHADOW_PLUGIN)
    (installed / "tp_shadow_models").mkdir()
    (installed / "tp_shadow_models" / "tp_small.pt").write_bytes(b"another file of the same name")
    import importlib

    importlib.invalidate_caches()
    registry = fresh_registry()
    with pytest.raises(weights.CatalogueError, match="more than one plugin") as caught:
        weights.bundled_path("tp_small.pt")
    assert "plugin 'thirdparty-weighted'" in str(caught.value) and "plugin 'thirdparty-shadow-weights'" in str(caught.value)
    ok, why = registry.get("thirdparty-weighted").ready()
    assert not ok and "more than one plugin" in why


def test_an_id_two_plugins_claim_is_refused_for_the_second(installed, fresh_registry):
    clash = installed / "tp_clash.toml"
    clash.write_text(TOML)
    write_dist(installed, "thirdparty-zz-clash", "thirdparty_zz_clash", BROKEN_PLUGIN.replace("tp_broken", "tp_clash"))
    import importlib

    importlib.invalidate_caches()
    try:
        registry = fresh_registry()
        failures = [f for f in registry.failures if f.plugin == "thirdparty-zz-clash"]
        assert failures and "tp-doubler" in failures[0].error and "thirdparty-weighted" in failures[0].error
        assert weights.entry("tp-doubler").plugin == "thirdparty-weighted"
    finally:
        sys.modules.pop("thirdparty_zz_clash", None)
