from napari_faceedit.hookspecs import hookimpl


@hookimpl
def faceedit_backends():
    from .backend import ProgressiveCompletion

    return [ProgressiveCompletion]


@hookimpl
def faceedit_trainers():
    from .train import main

    return {"completion": main}


@hookimpl
def faceedit_weights():
    from pathlib import Path

    from napari_faceedit.weights import WeightsCatalogue

    # No published weights: only our trained generator, shipped in models/ once it beats the classical fill.
    return [WeightsCatalogue.in_folder(Path(__file__).parent)]
