from napari_faceedit.hookspecs import hookimpl


@hookimpl
def faceedit_backends():
    from .complete import ClassicCompletion
    from .hair import ClassicHairColor
    from .restore import ClassicRestoration
    from .synthesize import ClassicSynthesis

    return [ClassicCompletion, ClassicHairColor, ClassicRestoration, ClassicSynthesis]
