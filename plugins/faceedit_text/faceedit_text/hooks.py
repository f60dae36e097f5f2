from napari_faceedit.hookspecs import hookimpl


@hookimpl
def faceedit_backends():
    from .backend import OfflineTextEdit

    return [OfflineTextEdit]
