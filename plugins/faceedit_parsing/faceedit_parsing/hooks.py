from napari_faceedit.hookspecs import hookimpl


@hookimpl
def faceedit_backends():
    from .backend import BiSeNetParser, CompactParserBackend

    return [CompactParserBackend, BiSeNetParser]


@hookimpl
def faceedit_parity_models():
    from .parity import BISENET_PARITY

    return [BISENET_PARITY]


@hookimpl
def faceedit_trainers():
    from .train import main

    return {"parser": main}


@hookimpl
def faceedit_weights():
    from pathlib import Path

    from napari_faceedit.weights import WeightsCatalogue

    def bisenet(config: dict):
        from .bisenet import BiSeNet

        return BiSeNet(**config)

    return [WeightsCatalogue.in_folder(Path(__file__).parent, {"bisenet-79999": bisenet})]
