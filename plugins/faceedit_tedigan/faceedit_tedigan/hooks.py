from napari_faceedit.hookspecs import hookimpl


@hookimpl
def faceedit_parity_models():
    from .parity_clip import CLIP_PARITY
    from .parity_stylegan import ENCODER_PARITY, STYLEGAN_PARITY

    return [CLIP_PARITY, STYLEGAN_PARITY, ENCODER_PARITY]


@hookimpl
def faceedit_backends():
    from .backend import TediGANBackend

    return [TediGANBackend]
