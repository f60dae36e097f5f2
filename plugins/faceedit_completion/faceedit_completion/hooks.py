from napari_faceedit.hookspecs import hookimpl


@hookimpl
def faceedit_backends():
    from .backend import ProgressiveCompletion

    return [ProgressiveCompletion]


@hookimpl
def faceedit_trainers():
    from .train import main

    return {"completion": main}
