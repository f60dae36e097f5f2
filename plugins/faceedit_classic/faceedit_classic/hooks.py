from napari_faceedit.hookspecs import hookimpl


@hookimpl
def faceedit_backends():
    from .complete import ClassicCompletion
    from .hair import ClassicHairColor
    from .restore import ClassicRestoration

    return [ClassicCompletion, ClassicHairColor, ClassicRestoration]
