"""Pluggy hook specifications. Third parties import ``hookimpl`` from here::

    from napari_faceedit.hookspecs import hookimpl

    @hookimpl
    def faceedit_backends():
        return [MyBackend]

and register the module under the ``napari_faceedit.backends`` entry-point group.
"""
from __future__ import annotations

import pluggy

PROJECT_NAME = "napari_faceedit"
ENTRY_POINT_GROUP = "napari_faceedit.backends"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def faceedit_backends() -> list:
    """Return a list of :class:`napari_faceedit.backend.Backend` subclasses this package provides."""


@hookspec
def faceedit_parity_models() -> list:
    """Return :class:`napari_faceedit.parity.ParityModel` objects for ``python -m napari_faceedit.parity``."""


@hookspec
def faceedit_trainers() -> dict:
    """Return ``{model_name: main(argv) -> int}``: training commands run as ``faceedit train MODEL ...``."""


@hookspec
def faceedit_weights() -> list:
    """Return :class:`napari_faceedit.weights.WeightsCatalogue` objects: the plugin's catalogue of
    published checkpoints (a TOML file inside the package), the folder of the models it ships, and
    a network builder per entry (``build(config) -> nn.Module``) to check files before trusting them.
    ``WeightsCatalogue.in_folder(Path(__file__).parent, builders)`` reads the usual layout
    (``weights.toml`` and ``models/`` beside the hooks module)."""
