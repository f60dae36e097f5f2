from napari_faceedit.hookspecs import hookimpl


@hookimpl
def faceedit_parity_models():
    from .parity import PARITY_MODEL

    return [PARITY_MODEL]


@hookimpl
def faceedit_backends():
    from .backend import MaskGuidedEditing

    return [MaskGuidedEditing]
