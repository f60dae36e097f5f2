from napari_faceedit.hookspecs import hookimpl


@hookimpl
def faceedit_backends():
    from .backend import CompactRestoration, GPEN256, GPEN512, GPEN1024

    return [CompactRestoration, GPEN256, GPEN512, GPEN1024]


@hookimpl
def faceedit_parity_models():
    from .model import parity_model

    return [parity_model()]


@hookimpl
def faceedit_trainers():
    from .train import main

    return {"restorer": main}
