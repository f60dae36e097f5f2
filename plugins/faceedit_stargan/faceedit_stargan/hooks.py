from napari_faceedit.hookspecs import hookimpl


@hookimpl
def faceedit_backends():
    from .backend import StarGAN256Backend, StarGANBackend

    return [StarGANBackend, StarGAN256Backend]


@hookimpl
def faceedit_parity_models():
    from .parity import PARITY_MODEL

    return [PARITY_MODEL]


@hookimpl
def faceedit_trainers():
    from .train import main

    return {"stargan": main}
